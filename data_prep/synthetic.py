"""Procedurally drawn X-ray-angiogram-like frames with CASS segment masks, for tests and demos.

Each synthetic *patient* has one coronary anatomy: a right tree (RCA proximal -> mid -> distal ->
PDA) and a left tree (left main splitting into LAD proximal -> mid -> distal and LCX proximal ->
distal, an optional ramus between them, obtuse marginals branching off the LCX towards the LAD),
jittered per patient. Each *frame* jitters that geometry slightly and chooses what is in view: a
whole tree may be out of view, a tree may end early (the contrast has not reached the distal
segments), a branch may be missing. A segment that is absent is not drawn at all, so presence is
visible in the pixels; a drawn segment is always annotated, as exactly one COCO instance (compressed
RLE, bbox, area, ``iscrowd`` 0). Every frame shows 5-14 segments; each category is present in
roughly 40-80% of frames. Each category keeps a characteristic place, direction and length, so a
small model can tell them apart.

Frames are grey with a smooth uneven background, vignetting, a catheter and noise; vessels are dark,
3-8 px wide at 224 px, tapering distally. Output is byte-identical for a given seed and is written in
the :mod:`data_prep.layout` form (``images/<patient>_fNN.png``, ``annotations/{train,val}.json``, and
``annotations/test.json`` when test images are asked for), with ``patient_id`` on every image
(``FRAMES_PER_PATIENT`` frames each; no patient is in two splits). Asking for a test split leaves the train and
val files byte-identical.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from tqdm import tqdm

from common.errors import InputError, run_cli
from common.outputs import staged_folder
from data_prep import cass
from data_prep.coco_io import coco_document, instance_table, mask_annotation, write_json_atomic
from data_prep.layout import DatasetPaths

FRAMES_PER_PATIENT = 4
MIN_SEGMENTS, MAX_SEGMENTS = 5, 14
_REFERENCE_SIZE = 224  # radii below are in pixels at this size and scale with the image
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
PRE_CONTRAST = 0.2  # share of a Phase 1 set's frames drawn before the contrast arrives (no vessel)


@dataclass(frozen=True)
class _SegmentTemplate:
    """Where a segment starts (``parent`` at fraction ``attach`` of its length, or an ostium), its
    direction and length as a vector in image fractions, its bend (signed, fraction of length) and its
    radius at start and end (pixels at 224)."""

    short_name: str
    parent: str | None
    attach: float
    vector: tuple[float, float]
    bend: float
    radius: tuple[float, float]


# Image fractions, x to the right, y down. Parents come before their children.
_OSTIA = {"right": (0.26, 0.12), "left": (0.44, 0.15)}
_TEMPLATES: tuple[_SegmentTemplate, ...] = (
    _SegmentTemplate("proximal_rca", None, 1.0, (-0.12, 0.16), 0.15, (4.0, 3.6)),
    _SegmentTemplate("mid_rca", "proximal_rca", 1.0, (-0.03, 0.26), -0.10, (3.6, 3.1)),
    _SegmentTemplate("distal_rca", "mid_rca", 1.0, (0.12, 0.20), 0.12, (3.1, 2.6)),
    _SegmentTemplate("pda", "distal_rca", 1.0, (0.14, 0.12), -0.10, (2.3, 1.5)),
    _SegmentTemplate("left_main", None, 1.0, (0.08, 0.09), 0.05, (4.2, 4.0)),
    _SegmentTemplate("proximal_lad", "left_main", 1.0, (0.14, 0.14), 0.10, (3.6, 3.2)),
    _SegmentTemplate("mid_lad", "proximal_lad", 1.0, (0.10, 0.20), -0.10, (3.2, 2.5)),
    _SegmentTemplate("distal_lad", "mid_lad", 1.0, (0.05, 0.24), 0.10, (2.5, 1.5)),
    _SegmentTemplate("proximal_lcx", "left_main", 1.0, (-0.10, 0.15), -0.15, (3.4, 3.0)),
    _SegmentTemplate("distal_lcx", "proximal_lcx", 1.0, (-0.08, 0.24), -0.12, (3.0, 2.0)),
    _SegmentTemplate("ramus", "left_main", 1.0, (0.06, 0.20), 0.10, (2.6, 1.8)),
    _SegmentTemplate("obtuse_marginal_1", "proximal_lcx", 0.85, (0.06, 0.22), 0.10, (2.6, 1.6)),
    _SegmentTemplate("obtuse_marginal_2", "distal_lcx", 0.45, (0.08, 0.20), 0.10, (2.4, 1.5)),
    _SegmentTemplate("obtuse_marginal_3", "distal_lcx", 0.90, (0.07, 0.18), 0.10, (2.2, 1.5)),
)
_TREE_OF = {c.short_name: c.tree for c in cass.CASS_CATEGORIES}


@dataclass(frozen=True)
class _Anatomy:
    """One patient: segment start/control/end points (image fractions) and which branches exist."""

    curves: dict[str, np.ndarray]  # short name -> (3, 2) quadratic Bezier control points
    has_pda: bool
    has_ramus: bool
    has_om2: bool
    has_om3: bool


def _bezier(points: np.ndarray, t: np.ndarray | float) -> np.ndarray:
    """Points of the quadratic Bezier curve with control points ``points`` (3 x 2) at parameters ``t``."""
    t = np.asarray(t, dtype=float)[..., None]
    return (1 - t) ** 2 * points[0] + 2 * (1 - t) * t * points[1] + t**2 * points[2]


def _rotate(v: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def _build_curves(
    rng: np.random.Generator, *, angle_jitter: float, length_jitter: float, bend_jitter: float,
    shift_jitter: float, base: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Lay out the 14 segments, each jittered; with ``base`` the jitter is applied to that layout."""
    curves: dict[str, np.ndarray] = {}
    shifts = {tree: rng.uniform(-shift_jitter, shift_jitter, 2) for tree in ("right", "left")}
    for tpl in _TEMPLATES:
        if tpl.parent is None:
            tree = _TREE_OF[tpl.short_name]
            start = (np.array(_OSTIA[tree]) if base is None else base[tpl.short_name][0]) + shifts[tree]
        else:
            start = _bezier(curves[tpl.parent], tpl.attach)
        vector = np.array(tpl.vector) if base is None else base[tpl.short_name][2] - base[tpl.short_name][0]
        vector = _rotate(vector, rng.uniform(-angle_jitter, angle_jitter)) * rng.uniform(
            1 - length_jitter, 1 + length_jitter
        )
        end = start + vector
        normal = np.array([-vector[1], vector[0]])
        if base is None:
            bent = normal * tpl.bend
        else:  # keep the patient's bend
            bent = base[tpl.short_name][1] - (base[tpl.short_name][0] + base[tpl.short_name][2]) / 2
        control = (start + end) / 2 + bent + normal * rng.uniform(-bend_jitter, bend_jitter)
        curves[tpl.short_name] = np.stack([start, control, end])
    return curves


def _sample_anatomy(rng: np.random.Generator) -> _Anatomy:
    curves = _build_curves(rng, angle_jitter=0.14, length_jitter=0.12, bend_jitter=0.08, shift_jitter=0.03)
    return _Anatomy(
        curves=curves,
        has_pda=rng.random() < 0.9,
        has_ramus=rng.random() < 0.6,
        has_om2=rng.random() < 0.9,
        has_om3=rng.random() < 0.8,
    )


def _sample_visible(rng: np.random.Generator, anatomy: _Anatomy) -> list[str]:
    """Which segments a frame shows: trees in/out of view, trees ending early, branches missing."""
    while True:
        shown: list[str] = []
        if rng.random() < 0.72:  # right tree in view; how far the contrast reaches along the RCA
            depth = rng.choice(4, p=[0.12, 0.12, 0.13, 0.63]) + 1
            shown += ["proximal_rca", "mid_rca", "distal_rca", "pda"][:depth]
            if depth == 4 and not anatomy.has_pda:
                shown.remove("pda")
        if rng.random() < 0.8:  # left tree in view
            if rng.random() < 0.7:
                shown.append("left_main")
            shown += ["proximal_lad", "mid_lad", "distal_lad"][: rng.choice(4, p=[0.25, 0.15, 0.15, 0.45])]
            lcx_depth = rng.choice(3, p=[0.3, 0.15, 0.55])
            shown += ["proximal_lcx", "distal_lcx"][:lcx_depth]
            if anatomy.has_ramus and rng.random() < 0.9:
                shown.append("ramus")
            if lcx_depth >= 1 and rng.random() < 0.8:
                shown.append("obtuse_marginal_1")
            if lcx_depth == 2 and anatomy.has_om2 and rng.random() < 0.9:
                shown.append("obtuse_marginal_2")
            if lcx_depth == 2 and anatomy.has_om3 and rng.random() < 0.9:
                shown.append("obtuse_marginal_3")
        if MIN_SEGMENTS <= len(shown) <= MAX_SEGMENTS:
            return shown


def _draw_segment(curve: np.ndarray, radius: tuple[float, float], size: int) -> np.ndarray:
    """Binary mask (size x size) of a tapering tube along a Bezier curve given in image fractions."""
    pts = curve * size
    length = float(np.linalg.norm(pts[1] - pts[0]) + np.linalg.norm(pts[2] - pts[1]))
    n = max(8, int(length / 0.7))
    t = np.linspace(0.0, 1.0, n)
    centres = _bezier(pts, t)
    radii = (radius[0] + (radius[1] - radius[0]) * t) * size / _REFERENCE_SIZE
    img = Image.new("1", (size, size), 0)
    draw = ImageDraw.Draw(img)
    for (x, y), r in zip(centres, radii):
        draw.ellipse([x - r, y - r, x + r, y + r], fill=1)
    return np.array(img, dtype=bool)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Grey X-ray-like background in [0, 1]: smooth unevenness times a vignette."""
    coarse = rng.normal(0.0, 1.0, (6, 6)).astype(np.float32)
    smooth = np.array(Image.fromarray(coarse, mode="F").resize((size, size), Image.BICUBIC))
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    cx, cy = rng.uniform(0.4, 0.6, 2)
    vignette = 1.0 - rng.uniform(0.3, 0.45) * ((xx - cx) ** 2 + (yy - cy) ** 2) / 0.5
    return (rng.uniform(0.72, 0.8) + 0.04 * smooth) * vignette


def _render_frame(
    rng: np.random.Generator, curves: dict[str, np.ndarray], shown: list[str], size: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The uint8 grey image and the mask of each shown segment."""
    radii = {tpl.short_name: tpl.radius for tpl in _TEMPLATES}
    masks = {name: _draw_segment(curves[name], radii[name], size) for name in shown}
    opacity = np.zeros((size, size), dtype=np.float32)
    for name, mask in masks.items():
        opacity = np.maximum(opacity, mask * rng.uniform(0.45, 0.55))
    # the catheter comes down from the top edge into the ostium of the injected tree (not annotated)
    left_injected = any(_TREE_OF[name] == "left" for name in shown)
    ostium = curves["left_main" if left_injected else "proximal_rca"][0]
    catheter = np.stack([np.array([ostium[0] + rng.uniform(-0.15, 0.05), -0.05]),
                         np.array([ostium[0] - 0.05, ostium[1] / 2]), ostium])
    opacity = np.maximum(opacity, _draw_segment(catheter, (1.8, 1.8), size) * 0.3)
    opacity = np.maximum(opacity, ndimage.gaussian_filter(opacity, 0.8))  # soft edges outside the masks
    image = _background(rng, size) * (1.0 - opacity) + rng.normal(0.0, 0.02, (size, size))
    return (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8), masks


def _vessel_masks(masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A Phase 1 frame's instances: the union of each coronary tree's drawn segments, by tree."""
    trees: dict[str, np.ndarray] = {}
    for name, mask in masks.items():
        tree = _TREE_OF[name]
        trees[tree] = trees[tree] | mask if tree in trees else mask
    return trees


def _write_split(
    paths: DatasetPaths, split: str, n_images: int, size: int, seed: int, first_image_id: int,
    pre_contrast: float | None = None,
) -> tuple[list[dict], list[dict]]:
    """Draw one split's frames and their annotations. ``pre_contrast`` is None for CASS labels; a number
    selects Phase 1 labels (:func:`_vessel_masks`) with that share of frames drawn before the contrast arrives."""
    images: list[dict] = []
    annotations: list[dict] = []
    n_patients = math.ceil(n_images / FRAMES_PER_PATIENT)
    with tqdm(total=n_images, desc=f"synthetic {split}", unit="img", leave=False, disable=None) as bar:  # no bar in a pipe
        for p in range(n_patients):
            anatomy = _sample_anatomy(np.random.default_rng([seed, _SPLIT_CODES[split], p]))
            patient_id = f"{split}{p:04d}"
            for f in range(min(FRAMES_PER_PATIENT, n_images - p * FRAMES_PER_PATIENT)):
                rng = np.random.default_rng([seed, _SPLIT_CODES[split], p, f + 1])
                curves = _build_curves(rng, angle_jitter=0.04, length_jitter=0.04, bend_jitter=0.02,
                                       shift_jitter=0.015, base=anatomy.curves)
                shown = _sample_visible(rng, anatomy)
                if pre_contrast is not None and rng.random() < pre_contrast:
                    shown = []  # a frame before the contrast arrives: catheter, no vessel
                pixels, masks = _render_frame(rng, curves, shown, size)
                image_id = first_image_id + len(images)
                file_name = f"{patient_id}_f{f:02d}.png"
                Image.fromarray(pixels, mode="L").save(paths.images_dir / file_name)
                images.append({"id": image_id, "file_name": file_name, "width": size, "height": size,
                               "patient_id": patient_id})
                if pre_contrast is not None:
                    labelled = [(mask, cass.VESSEL_CATEGORY["id"]) for _, mask in sorted(_vessel_masks(masks).items())]
                else:
                    labelled = [(masks[name], cass.BY_SHORT_NAME[name].id)
                                for name in sorted(masks, key=lambda n: cass.BY_SHORT_NAME[n].id)]
                for mask, category_id in labelled:
                    annotations.append(mask_annotation(mask, ann_id=len(annotations) + 1, image_id=image_id,
                                                       category_id=category_id))
                bar.update()
    return images, annotations


def generate_dataset(out: Path, n_train: int, n_val: int, size: int = 224, seed: int = 0, *, n_test: int = 0,
                     overwrite: bool = False, vessel: bool = False,
                     pre_contrast: float = PRE_CONTRAST) -> DatasetPaths:
    """Write a synthetic CASS dataset to ``out`` (images + train/val COCO JSON, and test JSON when ``n_test`` > 0)
    and return its paths.

    ``vessel``: a Phase 1 (domain adaptation) set instead: one category, :data:`data_prep.cass.VESSEL_CATEGORY`,
    one instance per coronary tree in view, and a ``pre_contrast`` share of frames with no vessel (the frames
    of a run before the contrast arrives), so that "no vessel here" is learned too. Use a ``seed`` of its own:
    Phase 1 and Stage 2 images should not be the same patients.

    Deterministic: the same arguments give byte-identical files. Train, val and test use different patients.
    Built beside ``out`` and renamed into place at the end (:func:`common.outputs.staged_folder`): an existing
    ``out`` is replaced only with ``overwrite`` and only if this project wrote it.
    """
    if n_train < 1 or n_val < 0 or n_test < 0 or size < 64:
        raise InputError(f"synthetic dataset: need --train >= 1, --val >= 0, --test >= 0, --size >= 64; "
                         f"got {n_train}, {n_val}, {n_test}, {size}")
    counts: dict[str, dict[int, int]] = {}
    with staged_folder(Path(out), overwrite=overwrite, command="python -m data_prep.synthetic") as staging:
        paths = DatasetPaths(staging)
        paths.images_dir.mkdir(parents=True)
        next_id = 1
        for split, n in (("train", n_train), ("val", n_val), *((("test", n_test),) if n_test else ())):
            images, annotations = _write_split(paths, split, n, size, seed, next_id,
                                               pre_contrast if vessel else None)
            next_id += len(images)
            if vessel:
                doc = {"info": {"description": f"synthetic Phase 1 vessels {split}, seed {seed}"}, "images": images,
                       "annotations": annotations, "categories": [cass.VESSEL_CATEGORY]}
            else:
                doc = coco_document(images, annotations, description=f"synthetic CASS {split}, seed {seed}")
            write_json_atomic(paths.annotations(split), doc)
            counts[split] = dict(Counter(a["category_id"] for a in annotations))
    if vessel:
        print("vessel instances: " + ", ".join(f"{split} {sum(c.values())}" for split, c in counts.items()))
    else:
        print(instance_table(counts))
    return DatasetPaths(Path(out))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    parser.add_argument("--train", type=int, default=64, help="number of training images")
    parser.add_argument("--val", type=int, default=16, help="number of validation images")
    parser.add_argument("--test", type=int, default=0,
                        help="number of held-out test images (default 0: no test.json)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vessel", action="store_true",
                        help="a Phase 1 set: one 'coronary artery' category (binary vessel segmentation), "
                             f"{PRE_CONTRAST:.0%} of frames before the contrast arrives")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out if it is a dataset this project wrote")
    args = parser.parse_args(argv)
    paths = generate_dataset(args.out, args.train, args.val, size=args.size, seed=args.seed, n_test=args.test,
                             overwrite=args.overwrite, vessel=args.vessel)
    print(f"wrote {', '.join(str(paths.annotations(split)) for split in paths.splits())}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
