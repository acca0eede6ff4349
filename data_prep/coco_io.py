"""Small helpers every COCO writer in ``data_prep`` shares.

* :func:`write_json_atomic`: a JSON file appears whole or not at all (temp file in the same folder,
  then ``os.replace``).
* :func:`mask_annotation`: one binary mask -> a COCO annotation (compressed RLE, bbox, area,
  ``iscrowd`` 0) computed with pycocotools, so masks, boxes and areas always agree.
* :func:`coco_document`: the top-level COCO dict with the CASS categories from :mod:`data_prep.cass`.
* :func:`instance_table`: a per-category x per-split count table for converter summaries.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from data_prep import cass


def write_json_atomic(path: Path, obj: object) -> None:
    """Write ``obj`` as JSON to ``path`` atomically: a reader sees the old file or the new one, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, separators=(",", ":"))
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def mask_annotation(mask: np.ndarray, *, ann_id: int, image_id: int, category_id: int) -> dict:
    """A COCO annotation for one non-empty binary ``mask`` (H x W): compressed RLE, bbox, area, iscrowd 0."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "area": int(mask_utils.area(rle)),
        "iscrowd": 0,
    }


def coco_document(images: list[dict], annotations: list[dict], *, description: str) -> dict:
    """A complete COCO dict with the 14 CASS categories (``name`` = SAM3 prompt)."""
    return {
        "info": {"description": description},
        "images": images,
        "annotations": annotations,
        "categories": cass.coco_categories(),
    }


def instance_table(counts: Mapping[str, Mapping[int, int]]) -> str:
    """Format ``counts[split][category_id]`` as a text table, one row per CASS category plus a total."""
    splits = list(counts)
    width = max(len(c.short_name) for c in cass.CASS_CATEGORIES)
    lines = [f"{'category':<{width}} " + " ".join(f"{s:>8}" for s in splits)]
    for c in cass.CASS_CATEGORIES:
        lines.append(f"{c.short_name:<{width}} " + " ".join(f"{counts[s].get(c.id, 0):>8}" for s in splits))
    lines.append(f"{'total':<{width}} " + " ".join(f"{sum(counts[s].values()):>8}" for s in splits))
    return "\n".join(lines)
