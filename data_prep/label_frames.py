"""Which frame of which image a label map labels: the naming convention of :mod:`data_prep.create_coco_cass`.

A label map (``--label-maps``) or per-segment mask (``--masks``) is named after the frame it labels:

* ``<stem>.png`` / ``<stem>_<short name>.png``: the image ``<stem>.<ext>``; for a multi-frame file (a DICOM
  cine run, a multi-page TIFF) its frame ``--frame`` (default 0).
* ``<stem>_frame<k>.png`` / ``<stem>_frame<k>_<short name>.png``: frame ``k`` (counted from 0) of
  ``<stem>.<ext>``, so one run can have several labelled frames (``P012_run3_frame27.png``).

Each labelled frame becomes one image of the dataset, named after its label: ``<stem>.png`` or
``<stem>_frame<k>.png`` (the names :mod:`data_prep.convert_images` gives the frames of a multi-frame file,
so converting the runs first or not gives the same dataset).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from data_prep import cass

_FRAME_STEM = re.compile(r"^(?P<stem>.+)_frame(?P<frame>\d+)$")


@dataclass(frozen=True)
class LabelledFrame:
    """A frame that labels may name: ``stem`` (the labels' name, and the dataset image's) and ``frame``, or None
    for ``<stem>`` itself: frame ``--frame`` of a multi-frame file, frame 0 of any other (:meth:`index`)."""

    stem: str
    frame: int | None

    def index(self, frames: int, default_frame: int) -> int:
        """The frame index in a file of ``frames`` frames, ``default_frame`` being ``--frame``."""
        if self.frame is not None:
            return self.frame
        return default_frame if frames > 1 else 0


def label_stems(label_maps: Path | None, masks_dir: Path | None) -> set[str]:
    """The stems that the label files name: ``<stem>.png`` label maps, ``<stem>_<short name>.png`` masks."""
    stems = {p.stem for p in label_maps.glob("*.png")} if label_maps is not None else set()
    if masks_dir is not None:
        for p in masks_dir.glob("*.png"):
            stems |= {p.stem.removesuffix(f"_{c.short_name}") for c in cass.CASS_CATEGORIES
                      if p.stem.endswith(f"_{c.short_name}")}
    return stems


def frames_of(image: Path, labelled: set[str]) -> list[LabelledFrame]:
    """The frames of ``image`` that may carry labels: one per ``<stem>_frame<k>`` in ``labelled`` (from
    :func:`label_stems`), and ``<stem>`` itself when it is labelled or no frame of it is."""
    found = sorted((LabelledFrame(stem, int(m["frame"])) for stem in labelled
                    if (m := _FRAME_STEM.match(stem)) and m["stem"] == image.stem), key=lambda f: f.frame)
    if image.stem in labelled or not found:
        found.insert(0, LabelledFrame(image.stem, None))
    return found
