"""Where a COCO CASS dataset's files live.

A dataset folder ``D`` holds ``D/images/<file_name>`` and ``D/annotations/{train,val}.json``; each
image's ``file_name`` is relative to ``D/images``. Converters write this layout; loaders read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "val")


@dataclass(frozen=True)
class DatasetPaths:
    """The files of one dataset folder."""

    root: Path

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    def annotations(self, split: str) -> Path:
        """The COCO JSON of ``split`` (``train`` or ``val``)."""
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {SPLITS}")
        return self.root / "annotations" / f"{split}.json"

    @property
    def train_json(self) -> Path:
        return self.annotations("train")

    @property
    def val_json(self) -> Path:
        return self.annotations("val")

    def trial_fields(self) -> dict[str, str]:
        """The ``TrialConfig`` fields that point a trial at this dataset."""
        return {"train_json": str(self.train_json), "val_json": str(self.val_json), "images_dir": str(self.images_dir)}
