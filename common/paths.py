"""Path helpers every layer shares: a URI or a local path, joining either, and where creating a path would start.

A storage location is a pyarrow URI (``s3://bucket/sweeps``, ``file:///data``) or a local path, Windows ones
included: ``E:\\sweeps``, ``E:/sweeps`` and ``\\\\server\\share`` are local paths, not URIs (Ray #37639), and
are joined with their own separator, never a mix of both (Ray #37226).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath

import pyarrow.fs


def is_uri(path: str) -> bool:
    """Whether ``path`` is a pyarrow filesystem URI (``s3://...``) rather than a local path."""
    return "://" in path


def join(base: str, *parts: str, flavour: type[PurePath] = Path) -> str:
    """``base`` with ``parts`` appended: with ``/`` for a URI, with the platform's separator for a local path
    (``flavour``: the path class of the platform, ``PureWindowsPath`` to reason about Windows elsewhere)."""
    if is_uri(base):
        return "/".join([base.rstrip("/"), *parts])
    return str(flavour(base).joinpath(*parts))


def open_location(location: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The pyarrow filesystem that holds ``location`` and its path there (a local path absolute, with ``/``
    separators on every OS, as pyarrow expects)."""
    if is_uri(location):
        return pyarrow.fs.FileSystem.from_uri(location)
    return pyarrow.fs.LocalFileSystem(), Path(location).absolute().as_posix()


def last_part(location: str, flavour: type[PurePath] = Path) -> str:
    """The last component of a URI or local path (the sweep name of an experiment folder)."""
    return location.rstrip("/").rpartition("/")[2] if is_uri(location) else flavour(location).name


def nearest_existing(path: str | os.PathLike) -> Path:
    """``path`` if it exists, else its nearest existing ancestor: where creating ``path`` would start."""
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing
