"""Where a COCO CASS dataset's files live.

A dataset folder ``D`` holds ``D/images/<file_name>`` and ``D/annotations/{train,val}.json``, and may hold
``D/annotations/test.json``: a held-out split, patient-disjoint from the other two, that a sweep never reads
(:meth:`DatasetPaths.trial_fields` names train and val only). Each image's ``file_name`` is relative to
``D/images``, whatever its split. Converters write this layout; loaders read it.

An image file stays inside its images folder (:func:`image_file`): a ``file_name`` that is absolute, names a
drive or climbs with ``..`` is refused, and so is a symlink whose target lies outside the folder unless the
user says such links are intended (``--follow-links``, ``trial.follow_image_links``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

SPLITS = ("train", "val", "test")
#: The splits every dataset has and a sweep reads (``test`` is optional and held out).
SWEEP_SPLITS = ("train", "val")


@dataclass(frozen=True)
class DatasetPaths:
    """The files of one dataset folder."""

    root: Path

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    def annotations(self, split: str) -> Path:
        """The COCO JSON of ``split`` (one of :data:`SPLITS`)."""
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {SPLITS}")
        return self.root / "annotations" / f"{split}.json"

    @property
    def train_json(self) -> Path:
        return self.annotations("train")

    @property
    def val_json(self) -> Path:
        return self.annotations("val")

    @property
    def test_json(self) -> Path:
        return self.annotations("test")

    def splits(self) -> tuple[str, ...]:
        """The splits of this dataset: train and val (every dataset has them; a missing file is the validator's
        error to report) and test when ``annotations/test.json`` exists."""
        return SWEEP_SPLITS + (("test",) if self.test_json.exists() else ())

    def trial_fields(self) -> dict[str, str]:
        """The ``TrialConfig`` fields that point a trial at this dataset: train and val, never the test split."""
        return {"train_json": str(self.train_json), "val_json": str(self.val_json), "images_dir": str(self.images_dir)}


def image_file(images_dir: Path, file_name: object, *, follow_links: bool = False) -> Path:
    """The file that ``file_name`` names inside ``images_dir``; ``ValueError`` saying why when it would be read
    from outside the folder (see the module doc). Backslashes count as separators, as on Windows."""
    if not isinstance(file_name, str) or not file_name.strip():
        raise ValueError(f"{file_name!r} is not a relative file path")
    posix = PurePosixPath(file_name.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(file_name).drive or ".." in posix.parts:
        raise ValueError(f"{file_name!r} leaves the images folder (an absolute path, a drive or '..'); a "
                         "file_name is relative to the images folder")
    path = Path(images_dir) / posix
    if not follow_links:
        target = path.resolve()
        if not target.is_relative_to(Path(images_dir).resolve()):
            raise ValueError(f"{file_name!r} is a link to {target}, outside the images folder {images_dir}; copy "
                             "the file in, or allow such links (validate --follow-links, trial.follow_image_links)")
    return path
