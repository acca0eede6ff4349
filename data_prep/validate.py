"""Check a COCO CASS annotation file (and its images) before anything trains on it.

Every loader calls this at the edge, so it reports *all* problems at once, each naming the file, the
image / annotation / category id, the field, and what to do. Errors make the file unusable (sam3's
loader would crash or silently learn garbage); warnings are worth a look but do not stop a run.

Errors: a file that is not UTF-8 text, invalid JSON (line and column), missing keys (top level and per
record), wrong types (NaN and Infinity, which Python's json accepts, are not numbers here),
duplicate ids or file names, annotations pointing at unknown images or categories, categories that
are not the 14 CASS categories of :mod:`data_prep.cass` (ids and prompt names), missing / unreadable /
corrupt image files, image sizes differing from the JSON, images that sam3's loader would not read faithfully
(16-bit, 32-bit or float: :func:`data_prep.images.sam3_mode_problem` names the command that
converts them), empty / degenerate / out-of-bounds
segmentations (polygons with < 3 points, RLE whose size is not the image's), a bbox more than
``BBOX_TOLERANCE_PX`` away from its mask, zero area, and a missing ``iscrowd``. With several files
(train, val and test), a patient whose frames appear in two of them is an error too: every pair is checked,
by the images' ``patient_id`` (images without one, such as ARCADE's, cannot be checked).

Warnings: a category never present in a file, an ``area`` far from the mask's area. (A category absent
from the training file is deliberately not an error: the model still sees its prompt as a negative query,
every trial of a sweep is affected alike, and subsets without a rare segment are legitimate.)

The annotations of an image record that is refused are not reported again one by one: the image's own
error is the one to fix.

CLI: ``python -m data_prep.validate ANNOTATIONS.json [MORE.json] --images DIR``: exit 2 listing every
error; exit 0 printing any warnings.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from common.errors import InputError, run_cli
from common.typed_yaml import excerpt
from data_prep import cass
from data_prep.images import sam3_mode_problem
from data_prep.layout import DatasetPaths, image_file

BBOX_TOLERANCE_PX = 2.0
AREA_WARN_FRACTION = 0.1  # warn when |area - mask area| > this fraction of the mask area (+ 2 px)
_IMAGE_KEYS = ("id", "file_name", "width", "height")
_ANNOTATION_KEYS = ("id", "image_id", "category_id", "segmentation", "bbox", "area", "iscrowd")
_CATEGORY_KEYS = ("id", "name")


@dataclass
class ValidationReport:
    """The problems found in one or more COCO files."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def extend(self, other: "ValidationReport") -> None:
        self.errors += other.errors
        self.warnings += other.warnings

    def raise_if_errors(self) -> None:
        """Raise :class:`InputError` listing every defect once (:func:`summarise`; warnings not included)."""
        if self.errors:
            raise InputError(
                f"COCO validation failed with {len(self.errors)} error(s); fix them and rerun "
                "`python -m data_prep.validate`", summarise(self.errors))


_RECORD_ID = re.compile(r"\b(annotation|image) id [^ ,:;)]+|\b(annotations|images|categories)\[\d+\]")
MAX_IDS_LISTED = 5


def summarise(messages: list[str]) -> list[str]:
    """One line per defect: messages that differ only in the record they name (``annotation id 7``,
    ``images[3]``) become the first of them plus how many more records share it, with a few of their ids."""
    groups: dict[str, list[str]] = {}
    for message in messages:
        groups.setdefault(_RECORD_ID.sub(lambda m: f"{m.group(1) or m.group(2)} <id>", message), []).append(message)
    lines = []
    for similar in groups.values():
        line = similar[0]
        if len(similar) > 1:
            others = [m.group(0) for message in similar[1:MAX_IDS_LISTED + 1] if (m := _RECORD_ID.search(message))]
            more = len(similar) - 1
            line += f" (and {more} more record(s) with the same defect: {', '.join(others)}" + \
                (", ..." if more > len(others) else "") + ")"
        lines.append(line)
    return lines


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    """A finite int or float (Python's json reads the non-standard NaN and Infinity tokens as floats)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _missing_keys(record: object, keys: Sequence[str]) -> list[str] | None:
    """The required keys ``record`` lacks, or ``None`` when it is not an object at all."""
    if not isinstance(record, dict):
        return None
    return [k for k in keys if k not in record]


def _compressed_rle_length(counts: str) -> int | None:
    """Sum of the run lengths in a compressed COCO RLE string (``None`` if it is malformed).

    pycocotools exposes no way to read the runs back and its ``decode`` leaves pixels uninitialised
    when the runs are too short, so this mirrors ``rleFrString`` of its ``maskApi.c``.
    """
    runs: list[int] = []
    p = 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            if p >= len(counts):
                return None
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        if x < 0:
            return None
        runs.append(x)
    return sum(runs)


def _segmentation_rle(segm: object, h: int, w: int) -> tuple[dict | None, str | None]:
    """Turn a COCO segmentation into RLE for an h x w image, or say what is wrong with it."""
    if isinstance(segm, list):
        if not segm:
            return None, "is empty (no polygon); draw the segment or drop the annotation"
        for i, poly in enumerate(segm):
            if not isinstance(poly, list) or not all(_is_number(v) for v in poly) or len(poly) % 2:
                return None, f"polygon {i} is not a flat list of x, y numbers"
            if len(poly) < 6:
                return None, f"polygon {i} has {len(poly) // 2} point(s), a polygon needs at least 3"
            xs, ys = np.array(poly[0::2]), np.array(poly[1::2])
            if xs.min() < 0 or ys.min() < 0 or xs.max() > w or ys.max() > h:
                return None, (f"polygon {i} leaves the {w}x{h} image (x {xs.min():g}..{xs.max():g}, "
                              f"y {ys.min():g}..{ys.max():g}); clip it to the image")
        return mask_utils.merge(mask_utils.frPyObjects(segm, h, w)), None
    if isinstance(segm, dict):
        if "size" not in segm or "counts" not in segm:
            return None, "is an RLE without 'size' and 'counts'"
        if list(segm["size"]) != [h, w]:
            return None, f"RLE size {segm['size']} differs from the image's [height, width] [{h}, {w}]"
        counts = segm["counts"]
        if isinstance(counts, list):
            if not all(_is_int(c) and c >= 0 for c in counts) or sum(counts) != h * w:
                return None, f"uncompressed RLE counts must be non-negative ints summing to {h * w}"
            return mask_utils.frPyObjects(segm, h, w), None
        if isinstance(counts, str):
            total = _compressed_rle_length(counts)
            if total != h * w:
                return None, (f"compressed RLE counts are corrupt: they cover {total} pixels, the image has "
                              f"{h * w}")
            return {"size": [h, w], "counts": counts.encode("ascii")}, None
        return None, "RLE counts must be a list of ints or a compressed string"
    return None, "must be a list of polygons or an RLE object"


def _check_image_file(path: Path, width: int, height: int) -> str | None:
    """Why the image file at ``path`` is unusable, or ``None`` when it loads at the JSON's size."""
    if not path.is_file():
        return f"file {path} does not exist; copy it there or fix file_name / --images"
    try:
        with Image.open(path) as im:
            im.load()
            size, mode = im.size, im.mode
    except Exception as err:  # PIL raises many types for unreadable or truncated files
        return f"file {path} cannot be read as an image ({type(err).__name__}: {err}); re-export it"
    if size != (width, height):
        return (f"file {path} is {size[0]}x{size[1]} px but the JSON says width {width}, height {height}; "
                "fix width/height or the file")
    problem = sam3_mode_problem(path, mode)
    return f"file {path} {problem}" if problem else None


def _check_categories(src: str, categories: list, report: ValidationReport, vessel: bool = False) -> set[int]:
    """Check the categories list against CASS (or, with ``vessel``, against the Phase 1 vessel category); return
    the ids usable by annotations."""
    expected_by_id = ({cass.VESSEL_CATEGORY["id"]: cass.VESSEL_CATEGORY} if vessel
                      else {c.id: c.coco() for c in cass.CASS_CATEGORIES})
    kind = "Phase 1 vessel" if vessel else "CASS"
    seen: set[int] = set()
    for i, cat in enumerate(categories):
        missing = _missing_keys(cat, _CATEGORY_KEYS)
        if missing is None or missing:
            report.errors.append(f"{src}: categories[{i}] lacks field(s) {missing or list(_CATEGORY_KEYS)}")
            continue
        cid = cat["id"]
        if _is_int(cid) and cid in seen:
            report.errors.append(f"{src}: category id {cid} field 'id' is duplicated; ids must be unique")
            continue
        if not _is_int(cid) or cid not in expected_by_id:
            fix = (f"a Phase 1 vessel file has the one category {cass.VESSEL_CATEGORY}" if vessel else
                   f"use ids 1-{cass.NUM_CATEGORIES} from data_prep.cass (convert with data_prep.create_coco_cass, or "
                   "map an existing COCO file with data_prep.remap)")
            report.errors.append(
                f"{src}: category id {excerpt(cid)} ({excerpt(cat['name'])}) field 'id' is not a {kind} category; {fix}")
            continue
        seen.add(cid)
        expected = expected_by_id[cid]
        if cat["name"] != expected["name"]:
            fix = "" if vessel else ("; map an existing COCO file's categories with "
                                     "`python -m data_prep.remap IN.json OUT.json`")
            report.errors.append(
                f"{src}: category id {cid} field 'name' is {excerpt(cat['name'])}, expected the {kind} prompt "
                f"{expected['name']!r} (sam3 uses 'name' as the text prompt){fix}")
        if "short_name" in cat and cat["short_name"] != expected["short_name"]:
            report.errors.append(f"{src}: category id {cid} field 'short_name' is {excerpt(cat['short_name'])}, "
                                 f"expected {expected['short_name']!r}")
    if not vessel and [c.get("id") for c in categories if isinstance(c, dict)] == [cass.VESSEL_CATEGORY["id"]] \
            and categories[0].get("name") == cass.VESSEL_CATEGORY["name"]:
        report.errors.append(f"{src}: this is a Phase 1 vessel file (one {cass.VESSEL_CATEGORY['name']!r} category), "
                             "not a CASS one: validate it with --vessel; Stage 2 trains on the 14 CASS categories")
    absent = sorted(set(expected_by_id) - seen)
    if absent:
        listing = f"the one category {cass.VESSEL_CATEGORY}" if vessel else (
            f"all {cass.NUM_CATEGORIES} (data_prep.cass.coco_categories())")
        report.errors.append(f"{src}: field 'categories' lacks {kind} category id(s) {absent}; list {listing}")
    return seen


def _check_images(src: str, images: list, images_dir: Path | None, check_files: bool,
                  report: ValidationReport, follow_links: bool = False) -> tuple[dict[int, dict], set[str]]:
    """Check image records (and files); return the usable ones by id, and the ids (as text) of refused ones."""
    by_id: dict[int, dict] = {}
    refused: set[str] = set()
    names: Counter[str] = Counter()
    for i, img in enumerate(images):
        if isinstance(img, dict) and "id" in img:
            refused.add(str(img["id"]))  # until the record passes every check below
        missing = _missing_keys(img, _IMAGE_KEYS)
        if missing is None or missing:
            ident = f"image id {img.get('id')}" if isinstance(img, dict) and "id" in img else f"images[{i}]"
            report.errors.append(f"{src}: {ident} lacks field(s) {missing or list(_IMAGE_KEYS)}; add them")
            continue
        iid, w, h = img["id"], img["width"], img["height"]
        if not _is_int(iid):
            report.errors.append(f"{src}: images[{i}] field 'id' must be an int, got {excerpt(iid)}")
            continue
        if iid in by_id:
            report.errors.append(f"{src}: image id {iid} field 'id' is duplicated; ids must be unique")
            continue
        if not (_is_int(w) and _is_int(h) and w > 0 and h > 0):
            report.errors.append(f"{src}: image id {iid} fields 'width'/'height' must be positive ints, "
                                 f"got {excerpt(w)}/{excerpt(h)}")
            continue
        try:
            path = image_file(images_dir or Path("."), img["file_name"], follow_links=follow_links or not images_dir)
        except ValueError as err:
            report.errors.append(f"{src}: image id {iid} field 'file_name': {err}")
            continue
        refused.discard(str(iid))
        names[img["file_name"]] += 1
        by_id[iid] = img
        if check_files and images_dir is not None:
            problem = _check_image_file(path, w, h)
            if problem:
                report.errors.append(f"{src}: image id {iid} field 'file_name': {problem}")
    for name, n in names.items():
        if n > 1:
            report.errors.append(f"{src}: field 'file_name' {excerpt(name)} is used by {n} images; make it unique")
    return by_id, refused - {str(iid) for iid in by_id}


def _check_annotation(src: str, ann: dict, img: dict, report: ValidationReport) -> None:
    """Geometry checks of one annotation whose image is known."""
    where = f"{src}: annotation id {ann['id']} (image id {ann['image_id']})"
    h, w = img["height"], img["width"]
    if not _is_number(ann["area"]) or ann["area"] <= 0:
        report.errors.append(f"{where} field 'area' is {excerpt(ann['area'])}; it must be a finite number > 0 "
                             "(drop empty instances)")
    if ann["iscrowd"] not in (0, 1):
        report.errors.append(f"{where} field 'iscrowd' is {excerpt(ann['iscrowd'])}; use 0 (or 1 for crowd regions)")
    bbox = ann["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        report.errors.append(f"{where} field 'bbox' must be [x, y, width, height] numbers, got {excerpt(bbox)}")
        bbox = None
    elif bbox[2] <= 0 or bbox[3] <= 0:
        report.errors.append(f"{where} field 'bbox' {bbox} has zero width or height")
        bbox = None
    rle, problem = _segmentation_rle(ann["segmentation"], h, w)
    if problem:
        report.errors.append(f"{where} field 'segmentation' {problem}")
        return
    mask_area = int(mask_utils.area(rle))
    if mask_area == 0:
        report.errors.append(f"{where} field 'segmentation' covers no pixel; drop the annotation")
        return
    if bbox is not None:
        expected = [float(v) for v in mask_utils.toBbox(rle)]
        if max(abs(a - b) for a, b in zip(bbox, expected)) > BBOX_TOLERANCE_PX:
            report.errors.append(
                f"{where} field 'bbox' {[round(v, 1) for v in bbox]} disagrees with its mask's box "
                f"{[round(v, 1) for v in expected]}; recompute it from the segmentation (pycocotools toBbox)")
    if _is_number(ann["area"]) and abs(ann["area"] - mask_area) > AREA_WARN_FRACTION * mask_area + 2:
        report.warnings.append(f"{where} field 'area' is {ann['area']} but the mask covers {mask_area} px")


def _check_annotations(src: str, annotations: list, images: dict[int, dict], category_ids: set[int],
                       report: ValidationReport, refused_images: set[str] = frozenset(),
                       vessel: bool = False) -> None:
    """Check every annotation; those of an image record already refused (``refused_images``, ids as text) are
    skipped: their image's own error is the one to fix, and repeating it per annotation would bury it."""
    seen: set[int] = set()
    present: Counter[int] = Counter()
    for i, ann in enumerate(annotations):
        missing = _missing_keys(ann, _ANNOTATION_KEYS)
        if missing is None:
            report.errors.append(f"{src}: annotations[{i}] is not an object")
            continue
        ident = f"annotation id {ann['id']}" if "id" in ann else f"annotations[{i}]"
        if missing:
            hint = " (sam3's COCO loader reads it: set 0)" if "iscrowd" in missing else ""
            report.errors.append(f"{src}: {ident} lacks field(s) {missing}{hint}")
            continue
        not_int = [k for k in ("id", "image_id", "category_id") if not _is_int(ann[k])]
        if not_int:
            report.errors.append(f"{src}: {ident} field(s) {not_int} must be ints")
            continue
        if ann["id"] in seen:
            report.errors.append(f"{src}: {ident} field 'id' is duplicated; annotation ids must be unique")
            continue
        seen.add(ann["id"])
        if ann["category_id"] not in category_ids:
            known = sorted(category_ids) or "none"
            report.errors.append(f"{src}: {ident} field 'category_id' {excerpt(ann['category_id'])} is not a "
                                 f"category of this file (valid ids: {known})")
        else:
            present[ann["category_id"]] += 1
        if ann["image_id"] not in images:
            if str(ann["image_id"]) in refused_images:
                continue
            report.errors.append(f"{src}: {ident} field 'image_id' {excerpt(ann['image_id'])} names no valid image "
                                 "in 'images'")
            continue
        _check_annotation(src, ann, images[ann["image_id"]], report)
    for cid in sorted(category_ids - set(present)):
        name = cass.VESSEL_CATEGORY["short_name"] if vessel else cass.BY_ID[cid].short_name
        report.warnings.append(f"{src}: category id {cid} ({name}) has no instance in this file; its metrics will "
                               "be undefined")


def validate_coco(annotations: Path, images_dir: Path | None, *, check_images: bool = True,
                  follow_links: bool = False, vessel: bool = False) -> ValidationReport:
    """Validate one COCO CASS file; with ``images_dir`` and ``check_images`` also open every image. Every
    ``file_name`` must stay inside ``images_dir`` (:func:`data_prep.layout.image_file`; ``follow_links``:
    symlinks may point outside it). ``vessel``: a Phase 1 file, whose one category is
    :data:`data_prep.cass.VESSEL_CATEGORY`, instead of the 14 CASS categories."""
    report = ValidationReport()
    src = str(annotations)
    try:
        text = Path(annotations).read_text(encoding="utf-8")
    except OSError as err:
        report.errors.append(f"{src}: cannot read the file ({err.strerror}); check the path")
        return report
    except UnicodeDecodeError as err:
        report.errors.append(f"{src}: not UTF-8 text (byte {err.start}: {err.reason}); is it a COCO JSON file?")
        return report
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        report.errors.append(f"{src}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}")
        return report
    if not isinstance(doc, dict):
        report.errors.append(f"{src}: the top level must be an object with images, annotations, categories")
        return report
    bad = [k for k in ("images", "annotations", "categories") if not isinstance(doc.get(k), list)]
    if bad:
        report.errors.append(f"{src}: top-level field(s) {bad} missing or not lists; a COCO file needs all three")
        return report
    category_ids = _check_categories(src, doc["categories"], report, vessel)
    images, refused = _check_images(src, doc["images"], images_dir, check_images, report, follow_links)
    _check_annotations(src, doc["annotations"], images, category_ids, report, refused, vessel)
    return report


def _shared_patients(files: Sequence[Path]) -> list[str]:
    """Errors for patients whose frames appear in more than one of ``files`` (already valid JSON)."""
    owners: dict[str, list[str]] = defaultdict(list)
    for path in files:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        for pid in sorted({img["patient_id"] for img in doc["images"] if img.get("patient_id") is not None}):
            owners[str(pid)].append(str(path))
    return [f"patient_id {excerpt(pid)} has frames in {' and '.join(paths)}; split by patient so no patient "
            "is in two splits" for pid, paths in owners.items() if len(paths) > 1]


def validate_files(files: Sequence[Path], images_dir: Path | None, *, check_images: bool = True,
                   follow_links: bool = False, vessel: bool = False) -> ValidationReport:
    """Validate several COCO files sharing ``images_dir`` (e.g. train, val, test), plus patient leakage between
    any two of them."""
    report = ValidationReport()
    for path in files:
        report.extend(validate_coco(path, images_dir, check_images=check_images, follow_links=follow_links,
                                    vessel=vessel))
    if report.ok and len(files) > 1:
        report.errors += _shared_patients(files)
    return report


def validate_dataset(paths: DatasetPaths, *, check_images: bool = True, vessel: bool = False) -> ValidationReport:
    """Validate a dataset folder: the JSON of every split (train, val, and test when present), their images, and
    that no patient is in two splits."""
    return validate_files([paths.annotations(split) for split in paths.splits()], paths.images_dir,
                          check_images=check_images, vessel=vessel)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.validate", description=__doc__.split("\n")[0])
    parser.add_argument("annotations", type=Path, nargs="+",
                        help="COCO JSON file(s), e.g. train.json val.json test.json (no patient in two of them)")
    parser.add_argument("--images", type=Path, help="folder the images' file_name is relative to (must exist)")
    parser.add_argument("--no-image-check", action="store_true", help="do not open the image files")
    parser.add_argument("--follow-links", action="store_true",
                        help="image files may be symlinks to files outside --images (refused otherwise)")
    parser.add_argument("--vessel", action="store_true",
                        help="Phase 1 files (one 'coronary artery' category) instead of the 14 CASS categories")
    args = parser.parse_args(argv)
    if args.images is not None and not args.no_image_check and not args.images.is_dir():
        raise InputError(f"--images {args.images}: not a folder; pass the folder the file_names are relative to")
    report = validate_files(args.annotations, args.images, check_images=not args.no_image_check,
                            follow_links=args.follow_links, vessel=args.vessel)
    for warning in report.warnings:
        print(f"warning: {warning}")
    report.raise_if_errors()
    print(f"ok: {', '.join(map(str, args.annotations))} ({len(report.warnings)} warning(s))")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
