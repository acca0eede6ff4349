"""Path helpers every layer shares: a URI or a local path, and where creating a path would start."""

from __future__ import annotations

import os
from pathlib import Path


def is_uri(path: str) -> bool:
    """Whether ``path`` is a pyarrow filesystem URI (``s3://...``) rather than a local path."""
    return "://" in path


def nearest_existing(path: str | os.PathLike) -> Path:
    """``path`` if it exists, else its nearest existing ancestor: where creating ``path`` would start."""
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing
