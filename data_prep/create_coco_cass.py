"""Convert angiogram frames with CASS label maps and/or per-segment masks (a Medis-style export) to COCO.

Inputs, matched by the image's file stem:

* ``--images DIR``: the frames or runs: PNG, JPEG, TIFF, BMP of any bit depth and DICOM (``.dcm``, or any
  file with a DICOM preamble), single- or multi-frame, read through :mod:`data_prep.images`.
* ``--label-maps DIR``: ``<stem>.png``, one value per pixel = CASS category id (1-14), 0 background.
* ``--masks DIR``: ``<stem>_<short name>.png`` per segment (e.g. ``P012_f03_mid_lad.png``), non-zero =
  the segment; short names are those of :mod:`data_prep.cass`.

Frames of multi-frame files (DICOM cine runs): a label named ``<stem>_frame<k>`` labels frame ``k`` (from 0)
of ``<stem>``, one named ``<stem>`` its frame ``--frame`` (default 0); see :mod:`data_prep.label_frames`.

Both sources may be given; a segment's mask is then the union of the two. A frame with no label
map and no mask file is unlabelled and skipped (counted in the summary); a label map that is all
background is kept as a frame with no segment. Each connected component (8-connectivity) of a
category's mask becomes one instance; components smaller than ``--min-area`` pixels are dropped.

Patients: frames of one patient never land in two splits. The patient id comes from
``--patient-csv`` (columns ``file_name,patient_id``) or from ``--patient-regex`` applied to the file
name (its group ``patient``, or group 1). The default takes the text before the first ``_`` or
``-``: ``P012_f03.png`` and ``P012-0003.png`` -> ``P012``. A ``--val-fraction`` of the patients (default
0.2), chosen with ``--seed``, goes to val; a ``--test-fraction`` (default 0: no test split, no ``test.json``)
goes to test, the held-out split that a sweep never reads; the rest is train. Fractions that would leave
train without a patient are refused (see :func:`split_patients`).

Output: the :mod:`data_prep.layout` folder ``--out`` with the images in ``images/`` (the folder is
self-contained and can be moved), and ``patient_id`` and ``windowing`` on every image. A single-frame 8-bit
grey or RGB file is COPIED as it is; any other frame (16-bit, DICOM, a frame of a run) is written as
``<label stem>.png`` in 8 bits, its ``windowing`` (:mod:`data_prep.images`: the DICOM's window, else its
stored bit range, ...; ``--bits`` fixes a 16-bit PNG's) recorded in the image entry. Frames without a label
are not read. It is built in a temporary
folder beside ``--out``, validated with :mod:`data_prep.validate`, and renamed into place only on
success: bad input leaves no partial output.
"""

from __future__ import annotations

import argparse
import csv
import random
import re
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from common.errors import InputError, run_cli
from common.outputs import check_apart, check_replaceable, staged_folder
from common.typed_yaml import excerpt
from data_prep import cass
from data_prep.coco_io import coco_document, instance_table, mask_annotation, write_json_atomic
from data_prep.images import SUFFIXES, check_bits, frame_count, is_image_file, kept_as_is, read_image, write_png
from data_prep.label_frames import frames_of, label_stems
from data_prep.layout import DatasetPaths
from data_prep.validate import validate_dataset

IMAGE_SUFFIXES = SUFFIXES
DEFAULT_PATIENT_REGEX = r"^(?P<patient>.+?)[_-]"
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass
class _Frame:
    """One labelled frame, before the split."""

    path: Path
    patient_id: str
    width: int
    height: int
    instances: list[dict]  # COCO annotations; ``id`` and ``image_id`` are set when written
    frame: int  # the frame of ``path`` (0 unless a multi-frame file)
    file_name: str  # in the dataset's images/: ``path``'s own name when kept as is, else <label stem>.png
    windowing: dict  # how it was mapped to 8 bits (data_prep.images.read_image)


def _patient_ids(paths: list[Path], regex: str, csv_path: Path | None, problems: list[str]) -> dict[Path, str]:
    if csv_path is not None:
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if rows and not {"file_name", "patient_id"} <= set(rows[0]):
            raise InputError(f"{csv_path}: needs the columns file_name,patient_id; found {list(rows[0])}")
        mapping = {row["file_name"]: row["patient_id"] for row in rows}
        unmapped = [p.name for p in paths if p.name not in mapping]
        if unmapped:
            problems.append(f"{csv_path}: no patient_id for {len(unmapped)} image(s), e.g. {unmapped[:5]}; "
                            "add rows for them")
        return {p: mapping[p.name] for p in paths if p.name in mapping}
    try:
        pattern = re.compile(regex)
    except re.error as err:
        raise InputError(f"--patient-regex {regex!r} is not a valid regular expression: {err}") from err
    ids: dict[Path, str] = {}
    for p in paths:
        match = pattern.search(p.name)
        if match is None or not match.groups():
            problems.append(f"{p}: --patient-regex {regex!r} finds no patient id in the file name; "
                            "pass a --patient-regex with a (?P<patient>...) group, or --patient-csv")
            continue
        ids[p] = match.group("patient") if "patient" in pattern.groupindex else match.group(1)
    return ids


def _load_masks(image: Path, stem: str, size: tuple[int, int], label_maps: Path | None, masks_dir: Path | None,
                problems: list[str]) -> dict[int, np.ndarray] | None:
    """Category id -> mask of the frame of ``image`` whose labels are named ``stem`` (``None`` when the frame
    has no label at all)."""
    masks: dict[int, np.ndarray] = {}
    labelled = False

    def read(path: Path) -> np.ndarray | None:
        try:
            with Image.open(path) as im:
                arr = np.array(im)
        except Exception as err:  # noqa: BLE001 (PIL raises many types for unreadable files)
            problems.append(f"{path}: cannot be read as an image ({type(err).__name__}: {excerpt(str(err), 120)})")
            return None
        if arr.ndim != 2 or arr.shape[::-1] != size:
            problems.append(f"{path}: is {arr.shape[1]}x{arr.shape[0]}{'' if arr.ndim == 2 else ' multi-channel'}"
                            f", expected a single-channel {size[0]}x{size[1]} image like {image.name}")
            return None
        return arr

    if label_maps is not None and (label_maps / f"{stem}.png").is_file():
        labelled = True
        path = label_maps / f"{stem}.png"
        arr = read(path)
        if arr is not None:
            bad = sorted(set(np.unique(arr).tolist()) - {0, *cass.BY_ID})
            if bad:
                problems.append(f"{path}: label values {bad[:10]} are not CASS ids (0 = background, "
                                f"1-{cass.NUM_CATEGORIES}); see data_prep.cass")
            for cid in cass.BY_ID:
                if (m := arr == cid).any():
                    masks[cid] = m
    if masks_dir is not None:
        for c in cass.CASS_CATEGORIES:
            path = masks_dir / f"{stem}_{c.short_name}.png"
            if path.is_file():
                labelled = True
                arr = read(path)
                if arr is not None and (arr > 0).any():
                    masks[c.id] = masks.get(c.id, np.zeros(arr.shape, bool)) | (arr > 0)
    return masks if labelled else None


def _links_leaving(folder: Path) -> list[str]:
    """The files in ``folder`` that are symlinks to somewhere outside it, as problems."""
    inside = folder.resolve()
    return [f"{f}: a link to {f.resolve()}, outside {folder}; copy the file in, or pass --follow-links"
            for f in sorted(folder.iterdir()) if f.is_symlink() and not f.resolve().is_relative_to(inside)]


def _unknown_mask_files(masks_dir: Path, images: list[Path]) -> list[str]:
    stems = {f.stem for p in images for f in frames_of(p, label_stems(None, masks_dir))}
    expected = {f"{stem}_{c.short_name}.png" for stem in stems for c in cass.CASS_CATEGORIES}
    return [f"{f}: matches no <image stem>[_frame<k>]_<CASS short name>.png (short names: "
            f"{', '.join(cass.BY_SHORT_NAME)}); rename or remove it"
            for f in sorted(masks_dir.iterdir()) if f.is_file() and f.name not in expected]


def _read_frames(images: list[Path], patients: dict[Path, str], label_maps: Path | None,
                 masks_dir: Path | None, min_area: int, problems: list[str], *, default_frame: int = 0,
                 bits: int | None = None) -> tuple[list[_Frame], int, int]:
    """The labelled frames (:mod:`data_prep.label_frames`) with their instances, the number of unlabelled
    frames, and of small components dropped. Unlabelled frames are not read."""
    frames: list[_Frame] = []
    unlabelled = dropped = 0
    labelled = label_stems(label_maps, masks_dir)
    for path in tqdm(images, desc="reading frames", unit="img", leave=False):
        for labels in frames_of(path, labelled):
            if labels.stem not in labelled:
                unlabelled += 1
                continue
            try:
                index = labels.index(frame_count(path), default_frame)
                image = read_image(path, frame=index, bits=bits)
            except InputError as err:
                problems.append(str(err))
                continue
            masks = _load_masks(path, labels.stem, image.size, label_maps, masks_dir, problems)
            if masks is not None and path in patients:
                instances, n_small = _instances(masks, min_area)
                dropped += n_small
                name = path.name if kept_as_is(image.windowing) else f"{labels.stem}.png"
                frames.append(_Frame(path, patients[path], *image.size, instances, index, name, image.windowing))
    names = Counter(frame.file_name for frame in frames)
    problems += [f"{images[0].parent}: {n} labelled frames would be written as {name}; rename the images or labels "
                 "so that each name is used once" for name, n in names.items() if n > 1]
    return frames, unlabelled, dropped


def split_patients(patient_ids: Sequence[str], val_fraction: float, seed: int, test_fraction: float = 0.0, *,
                   source: str = "the input") -> dict[str, set[str]]:
    """The held-out patients of each split, ``{"val": ..., "test": ...}`` (``test`` only when ``test_fraction``
    > 0); every other patient is in train.

    Each split takes ``round(fraction * n)`` of the n distinct ids, at least 1 when its fraction is > 0, from one
    seeded shuffle of the sorted ids: val first, then test, so adding a test split keeps the val patients of the
    same seed. Without a test split val takes at most n - 1 patients (as it always has); with one, sizes that
    leave train empty are an :class:`InputError` naming ``source``, and so are too few patients."""
    unique = sorted(set(patient_ids))
    n = len(unique)
    fractions = {"val": val_fraction, "test": test_fraction}
    asked = [split for split, fraction in fractions.items() if fraction > 0]
    if asked and n < 1 + len(asked):
        raise InputError(f"only {n} patient(s) found in {source}: a patient-wise split into train and "
                         f"{' and '.join(asked)} needs at least {1 + len(asked)} (check --patient-regex / "
                         f"--patient-csv, or pass {' / '.join(f'--{s}-fraction' for s in asked)} 0)")
    sizes = {split: max(1, round(fraction * n)) if fraction > 0 else 0 for split, fraction in fractions.items()}
    if test_fraction <= 0:
        sizes["val"] = min(sizes["val"], n - 1)
    elif sizes["val"] + sizes["test"] >= n:
        raise InputError(f"{source}: {n} patients with --val-fraction {val_fraction} and --test-fraction "
                         f"{test_fraction} give val {sizes['val']} and test {sizes['test']} (round(fraction x {n}), "
                         "at least 1 each), leaving train no patient; lower the fractions")
    random.Random(seed).shuffle(unique)
    held_out = {"val": set(unique[:sizes["val"]])}
    if test_fraction > 0:
        held_out["test"] = set(unique[sizes["val"]:sizes["val"] + sizes["test"]])
    return held_out


def _instances(masks: dict[int, np.ndarray], min_area: int) -> tuple[list[dict], int]:
    """One annotation per connected component of each category; also the count of dropped small ones."""
    annotations: list[dict] = []
    dropped = 0
    for cid in sorted(masks):
        labels, n = ndimage.label(masks[cid], structure=_EIGHT_CONNECTED)
        areas = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
        for k, area in enumerate(areas, start=1):
            if area < min_area:
                dropped += 1
                continue
            annotations.append(mask_annotation(labels == k, ann_id=0, image_id=0, category_id=cid))
    return annotations, dropped


def _write_dataset(root: Path, frames: list[_Frame], held_out: dict[str, set[str]]) -> dict:
    """Copy images and write the JSON of train and of each split in ``held_out`` (split -> its patients) under
    ``root``; return per-split instance counts."""
    paths = DatasetPaths(root)
    paths.images_dir.mkdir(parents=True)
    split_of = {patient: split for split, patients in held_out.items() for patient in patients}
    docs: dict[str, tuple[list[dict], list[dict]]] = {s: ([], []) for s in ("train", *held_out)}
    ann_id = 1
    for image_id, frame in enumerate(tqdm(frames, desc="writing", unit="img", leave=False), start=1):
        images, annotations = docs[split_of.get(frame.patient_id, "train")]
        if kept_as_is(frame.windowing):
            shutil.copyfile(frame.path, paths.images_dir / frame.file_name)
        else:
            write_png(read_image(frame.path, frame=frame.frame, bits=frame.windowing.get("bits")),
                      paths.images_dir / frame.file_name)
        images.append({"id": image_id, "file_name": frame.file_name, "width": frame.width,
                       "height": frame.height, "patient_id": frame.patient_id, "windowing": frame.windowing})
        for ann in frame.instances:
            annotations.append({**ann, "id": ann_id, "image_id": image_id})
            ann_id += 1
    for split, (images, annotations) in docs.items():
        write_json_atomic(paths.annotations(split), coco_document(images, annotations,
                                                                   description=f"CASS {split} (create_coco_cass)"))
    return {s: dict(Counter(a["category_id"] for a in anns)) for s, (_, anns) in docs.items()}


def convert(images_dir: Path, out: Path, *, label_maps: Path | None = None, masks: Path | None = None,
            val_fraction: float = 0.2, test_fraction: float = 0.0, seed: int = 0, min_area: int = 10,
            patient_regex: str = DEFAULT_PATIENT_REGEX, patient_csv: Path | None = None,
            overwrite: bool = False, follow_links: bool = False, frame: int = 0,
            bits: int | None = None) -> DatasetPaths:
    """Build the COCO CASS dataset folder ``out`` from frames and their labels (see the module doc); ``frame``
    is ``--frame`` (the frame a ``<stem>`` label names in a multi-frame file), ``bits`` is ``--bits``.

    Reads only inside the folders it is given: a file there that is a symlink to somewhere else is refused
    unless ``follow_links``."""
    if label_maps is None and masks is None:
        raise InputError("give --label-maps and/or --masks: there is nothing to convert")
    for name, folder in (("--images", images_dir), ("--label-maps", label_maps), ("--masks", masks)):
        if folder is not None and not folder.is_dir():
            raise InputError(f"{name} {folder} is not a folder")
    if patient_csv is not None and not patient_csv.is_file():
        raise InputError(f"--patient-csv {patient_csv} is not a file")
    check_apart({"--out": out}, {"--images": images_dir, "--label-maps": label_maps, "--masks": masks,
                                 "--patient-csv": patient_csv})
    check_replaceable(out, overwrite=overwrite)  # checked again by staged_folder; here before the slow part
    check_bits(bits)
    for option, fraction in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
        if not 0 <= fraction < 1:
            raise InputError(f"{option} must be in [0, 1), got {fraction}")
    if val_fraction + test_fraction >= 1:
        raise InputError(f"--val-fraction {val_fraction} and --test-fraction {test_fraction} add up to "
                         f"{val_fraction + test_fraction:g} and would leave train no patient; they must add up to "
                         "less than 1")
    images = sorted(p for p in images_dir.iterdir() if is_image_file(p))
    if not images:
        raise InputError(f"--images {images_dir} holds no image ({', '.join(IMAGE_SUFFIXES)}, or DICOM)")
    problems: list[str] = _unknown_mask_files(masks, images) if masks is not None else []
    if not follow_links:
        problems += [problem for folder in (images_dir, label_maps, masks) if folder is not None
                     for problem in _links_leaving(folder)]
    patients = _patient_ids(images, patient_regex, patient_csv, problems)
    frames, unlabelled, dropped = _read_frames(images, patients, label_maps, masks, min_area, problems,
                                               default_frame=frame, bits=bits)
    if problems:
        raise InputError(f"cannot convert {images_dir}: {len(problems)} problem(s); nothing was written", problems)
    if not frames:
        raise InputError(f"none of the {len(images)} images in {images_dir} has a label map or mask file")
    held_out = split_patients([f.patient_id for f in frames], val_fraction, seed, test_fraction,
                              source=f"--images {images_dir}")

    with staged_folder(out, overwrite=overwrite, command="python -m data_prep.create_coco_cass") as tmp:
        counts = _write_dataset(tmp, frames, held_out)
        validate_dataset(DatasetPaths(tmp)).raise_if_errors()
    n_patients = len({f.patient_id for f in frames})
    print(f"{len(frames)} frames of {n_patients} patients "
          f"({', '.join(f'{len(patients)} in {split}' for split, patients in held_out.items())}); "
          f"{unlabelled} unlabelled frame(s) skipped; {dropped} component(s) under {min_area} px dropped")
    print(instance_table(counts))
    return DatasetPaths(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.create_coco_cass",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of frames")
    parser.add_argument("--label-maps", type=Path, help="folder of <stem>.png maps (value = CASS id)")
    parser.add_argument("--masks", type=Path, help="folder of <stem>_<short name>.png binary masks")
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to create")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="fraction of patients in val")
    parser.add_argument("--test-fraction", type=float, default=0.0,
                        help="fraction of patients in the held-out test split (default 0: no test.json)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient split")
    parser.add_argument("--min-area", type=int, default=10, help="drop components smaller than this (px)")
    parser.add_argument("--patient-regex", default=DEFAULT_PATIENT_REGEX,
                        help="regex on the file name; group 'patient' (or 1) is the patient id")
    parser.add_argument("--patient-csv", type=Path, help="CSV with columns file_name,patient_id")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out if it is a dataset this project wrote")
    parser.add_argument("--follow-links", action="store_true",
                        help="files in the input folders may be symlinks to files elsewhere (refused otherwise)")
    parser.add_argument("--frame", type=int, default=0,
                        help="frame (from 0) of a multi-frame file that a <stem> label names; <stem>_frame<k> "
                             "labels name frame k")
    parser.add_argument("--bits", type=int, help="bit depth of 16/32-bit PNG or TIFF values (default: the smallest "
                                                 "that holds each frame's largest value)")
    args = parser.parse_args(argv)
    paths = convert(args.images, args.out, label_maps=args.label_maps, masks=args.masks,
                    val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed,
                    min_area=args.min_area,
                    patient_regex=args.patient_regex, patient_csv=args.patient_csv, overwrite=args.overwrite,
                    follow_links=args.follow_links, frame=args.frame, bits=args.bits)
    print(f"wrote {paths.root}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
