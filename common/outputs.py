"""Where a command writes: never over its inputs, never over what it did not write, never half.

Every command that writes goes through this module:

- :func:`check_apart` refuses, before any work, an output that is, contains or lies inside one of the command's
  inputs (or the reverse), whatever ``--overwrite`` says: ``export EXP --out EXP`` cannot delete the sweep.
- :func:`staged_folder` / :func:`staged_file` build the output in a hidden staging place beside the target and
  rename it into place only when the command succeeded: an error, Ctrl-C or a kill leaves the target as it
  was (a killed command can leave its hidden staging folder behind, never a half-written target).
- ``--overwrite`` replaces only an output this project wrote there before: a folder holding :data:`MARKER`
  (written into every output folder) or a file that ``is_ours`` recognises. Never an arbitrary folder.

An existing empty folder counts as absent.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from common.errors import InputError

#: The file every output folder holds: what wrote it (a folder without it is never replaced).
MARKER = ".written-by-sam3-cass"


def resolved(path: str | os.PathLike) -> Path:
    """``path`` absolute, with ``~`` expanded and symlinks followed as far as they exist."""
    return Path(path).expanduser().resolve()


def check_apart(outputs: Mapping[str, str | os.PathLike | None],
                inputs: Mapping[str, str | os.PathLike | None]) -> None:
    """Refuse outputs that are, contain or lie inside an input (symlinks followed). Keys name the arguments
    (``--out``, ``IN``) in the message; None values are skipped."""
    problems = []
    for out_name, out in outputs.items():
        for in_name, source in inputs.items():
            if out is None or source is None:
                continue
            o, i = resolved(out), resolved(source)
            if o == i:
                relation = "is the same path as"
            elif o.is_relative_to(i):
                relation = "lies inside"
            elif i.is_relative_to(o):
                relation = "contains"
            else:
                continue
            problems.append(f"{out_name} {out} {relation} {in_name} {source}")
    if problems:
        raise InputError("the output would overlap an input (nothing was written; choose an output apart from "
                         "the inputs)", problems)


def is_empty_folder(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def is_our_folder(path: Path) -> bool:
    """Whether ``path`` is an output folder this project wrote (it holds :data:`MARKER`)."""
    return path.is_dir() and not path.is_symlink() and (path / MARKER).is_file()


def check_replaceable(out: Path, *, overwrite: bool, is_ours: Callable[[Path], bool] = is_our_folder,
                      option: str = "--out") -> None:
    """Refuse an existing ``out`` unless ``overwrite`` and it is this project's own output (an empty folder is
    fine); the message says what to do."""
    if not (out.exists() or out.is_symlink()) or is_empty_folder(out):
        return
    if not overwrite:
        raise InputError(f"{option} {out} already exists; pick another {option}, or pass --overwrite to replace "
                         "an output this command wrote before")
    if not is_ours(out):
        raise InputError(f"{option} {out} exists and is not an output of this project (a folder holding {MARKER}, "
                         f"or the file this command writes): --overwrite replaces only those; remove it yourself "
                         f"or pick another {option}")


def mark(folder: Path, command: str) -> None:
    """Write :data:`MARKER` into ``folder``: which command made it."""
    (folder / MARKER).write_text(f"{command}\n", encoding="utf-8")


@contextmanager
def staged_folder(out: Path, *, overwrite: bool = False, command: str = "sam3-cass",
                  option: str = "--out") -> Iterator[Path]:
    """Yield an empty hidden folder beside ``out`` (already marked); it replaces ``out`` when the block succeeds
    and is deleted when it raises (Ctrl-C included). See :func:`check_replaceable` for an existing ``out``."""
    out = Path(out)
    check_replaceable(out, overwrite=overwrite, option=option)
    created = make_parents(out)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.staging-"))
    try:
        mark(staging, command)
        yield staging
        publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        remove_if_empty(created)
        raise


@contextmanager
def staged_file(out: Path, *, overwrite: bool = False, is_ours: Callable[[Path], bool] = lambda _: False,
                option: str = "OUT") -> Iterator[Path]:
    """Yield a hidden temporary path beside the file ``out``; it is renamed to ``out`` when the block succeeds
    and removed when it raises. An existing ``out`` is replaced only with ``overwrite`` and ``is_ours(out)``."""
    out = Path(out)
    if out.is_dir():
        raise InputError(f"{option} {out} is a folder; name the file to write")
    check_replaceable(out, overwrite=overwrite, is_ours=is_ours, option=option)
    created = make_parents(out)
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".staging")
    os.close(fd)
    staging = Path(name)
    try:
        yield staging
        os.replace(staging, out)
    except BaseException:
        staging.unlink(missing_ok=True)
        remove_if_empty(created)
        raise


def make_parents(out: Path) -> list[Path]:
    """Create ``out``'s missing parent folders; return them, deepest first (to remove on failure)."""
    missing = [p for p in [out.parent, *out.parent.parents] if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    return missing


def remove_if_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) that are still empty: a refused command leaves no empty folder."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


def publish(staging: Path, out: Path) -> None:
    """Rename the finished ``staging`` folder to ``out``; an existing ``out`` is moved aside first and deleted
    only once the new one is in place."""
    if not (out.exists() or out.is_symlink()):
        os.replace(staging, out)
        return
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-")) / out.name
    os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old.parent)
