"""Checkpoint files on disk: read safely, write atomically. Every checkpoint format of the project uses these.

:func:`safe_torch_load` is ``torch.load(weights_only=True)``: a file whose pickle would run code is refused,
and every way a file can be unreadable becomes one :class:`~common.errors.InputError` that says what is
wrong. :func:`atomic_torch_save` writes a temporary file beside the target and renames it into place, so a
crash never leaves half a checkpoint.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from common.errors import InputError
from trainables.checkpoints.allowlist import described, metadata_globals


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def safe_torch_load(path: str | os.PathLike, *, mmap: bool = False, metadata: bool = False) -> Any:
    """``torch.load(weights_only=True)`` on the CPU, with an :class:`InputError` that says what is wrong.

    ``mmap``: map the tensors' bytes instead of reading them (checking a large file's keys costs no
    memory); used only for zip-format files, the only ones ``torch.load`` can map.
    ``metadata``: also accept the plain metadata training scripts save beside the weights (numpy scalars,
    ``argparse.Namespace``, OmegaConf configs, ...: :mod:`.allowlist`). A global outside the allowlist is
    refused by name either way, before anything of the file runs.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint file not found")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: checkpoint file is empty (an interrupted write?)")
    allowed = metadata_globals() if metadata else []
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        detail = _unpickler_detail(str(err))
        refused = re.search(r"GLOBAL ([\w.]+)", str(err))
        if refused or detail.startswith(("Can only", "Trying to")):  # a global, or an object built unlike data
            with torch.serialization.safe_globals(allowed):
                names = _unsafe_globals(path) or ([refused.group(1)] if refused else [])
            needs = f"it needs {', '.join(names[:5])}, not allowed" if names else "it holds an object built unlike data"
            accepted = f"tensors, plain containers and {described()}" if metadata else "tensors and plain containers"
            raise InputError(f"{path}: refused: the file holds pickled Python objects that would run code when "
                             f"loaded: {needs} (accepted: {accepted}); nothing of it ran. If you trust the file, "
                             f"load it with torch.load(weights_only=False) in Python and torch.save only its weights "
                             f"(e.g. ckpt['model']), then use that file ({detail})") from None
        raise InputError(f"{path}: not a readable torch checkpoint, truncated or corrupt ({detail})") from None
    except Exception as err:  # noqa: BLE001 (torch.load on arbitrary bytes raises IndexError, KeyError, ...)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{path}: truncated or corrupt checkpoint ({type(err).__name__}: {first})") from None


def _unsafe_globals(path: Path) -> list[str]:
    """Every global of a zip-format file's pickle that is not allowed (read statically: nothing runs), or []."""
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 (a legacy or damaged file: the unpickler's one name is enough)
        return []


def _unpickler_detail(message: str) -> str:
    """The one informative line of torch's weights-only error (it buries it in advice)."""
    text = " ".join(message.split())
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    return text.split(" Check the documentation", 1)[0].split(". Please use", 1)[0].strip()[:200]
