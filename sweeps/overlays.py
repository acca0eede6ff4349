"""Prediction overlays of an exported checkpoint: ground truth beside prediction, one colour per CASS segment.

An export directory (``sweeps/export.py``) holds ``model.pt`` (native format), ``trial_config.json`` (the
trial's :class:`~trainables.config.TrialConfig` as a dict) and ``metrics.json``. :func:`predict_masks` runs
that model on the first validation images through validation's own inference loop
(:func:`trainables.inference.predict`: sam3's score ``sigmoid(logits) * presence``, masks at the original size).
A category's predicted mask is the union of its queries scoring ``>= score_threshold`` (the Dice
convention of :mod:`trainables.metrics`). :func:`compose_overlay` draws one image as
``[ground truth | prediction | legend]`` below a header strip of :data:`HEADER_PX` pixels; an image without
annotations (:mod:`sweeps.predict`) as ``[image | prediction | legend]``, the legend giving each segment's score.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from data_prep.cass import CASS_CATEGORIES

#: One colour per CASS id, chosen so that neighbouring segments of one artery differ in hue.
SEGMENT_COLOURS: dict[int, str] = {
    1: "#e6194b",  # proximal_rca
    2: "#3cb44b",  # mid_rca
    3: "#4363d8",  # distal_rca
    4: "#f58231",  # pda
    5: "#911eb4",  # proximal_lad
    6: "#42d4f4",  # mid_lad
    7: "#f032e6",  # distal_lad
    8: "#bfef45",  # distal_lcx
    9: "#ffe119",  # obtuse_marginal_1
    10: "#469990",  # obtuse_marginal_2
    11: "#9a6324",  # obtuse_marginal_3
    12: "#800000",  # left_main
    13: "#aaffc3",  # ramus
    14: "#000075",  # proximal_lcx
}
HEADER_PX = 24  # height of the title strip above the panels
ALPHA = 0.55  # opacity of a painted mask


@dataclass(frozen=True)
class ImageMasks:
    """One validation image (H, W, 3 uint8) with boolean (H, W) masks per CASS id, true and predicted.

    ``ground_truth`` None: an image without annotations (its left panel is the plain image); ``scores``: each
    predicted segment's score, written beside its name in the legend (segments without one in grey)."""

    image_id: int
    file_name: str
    image: np.ndarray
    ground_truth: dict[int, np.ndarray] | None
    prediction: dict[int, np.ndarray]
    scores: dict[int, float] | None = None


def rgb(colour: str) -> tuple[int, int, int]:
    """``"#rrggbb"`` as an (r, g, b) tuple."""
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))


def paint(image: np.ndarray, masks: dict[int, np.ndarray], alpha: float = ALPHA) -> np.ndarray:
    """``image`` (H, W, 3 uint8) with each category's mask blended in its colour (later ids on top)."""
    out = image.astype(np.float32)
    for category_id in sorted(masks):
        mask = masks[category_id]
        out[mask] = (1 - alpha) * out[mask] + alpha * np.array(rgb(SEGMENT_COLOURS[category_id]), np.float32)
    return out.round().clip(0, 255).astype(np.uint8)


def compose_overlay(item: ImageMasks) -> Image.Image:
    """``[ground truth | prediction | legend]`` below a titled header; panels are at (0 or W, HEADER_PX)."""
    height, width = item.image.shape[:2]
    font_px = max(10, min(height // 18, 24))
    font = ImageFont.load_default(size=font_px)
    legend_width = (12 if item.scores is None else 15) * font_px
    canvas = Image.new("RGB", (2 * width + legend_width, HEADER_PX + max(height, 15 * (font_px + 4))), "white")
    canvas.paste(Image.fromarray(paint(item.image, item.ground_truth or {})), (0, HEADER_PX))
    canvas.paste(Image.fromarray(paint(item.image, item.prediction)), (width, HEADER_PX))
    draw = ImageDraw.Draw(canvas)
    title_font = ImageFont.load_default(size=14)
    title = item.file_name if item.ground_truth is None else f"ground truth: {item.file_name}"
    draw.text((4, 4), title, fill="black", font=title_font)
    draw.text((width + 4, 4), "prediction", fill="black", font=title_font)
    for row, category in enumerate(CASS_CATEGORIES):
        top = HEADER_PX + row * (font_px + 4)
        left = 2 * width + 6
        draw.rectangle((left, top, left + font_px, top + font_px), fill=SEGMENT_COLOURS[category.id])
        score = None if item.scores is None else item.scores.get(category.id)
        label = category.short_name if score is None else f"{category.short_name} {score:.2f}"
        colour = "black" if item.scores is None or score is not None else "#999999"
        draw.text((left + font_px + 4, top), label, fill=colour, font=font)
    return canvas


def ground_truth_masks(coco, image_id: int) -> dict[int, np.ndarray]:
    """The union of each category's annotated masks on one image (a ``pycocotools.coco.COCO``)."""
    masks: dict[int, np.ndarray] = {}
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
        mask = coco.annToMask(ann).astype(bool)
        category_id = ann["category_id"]
        masks[category_id] = masks[category_id] | mask if category_id in masks else mask
    return masks


def predict_masks(export_dir: Path, max_images: int) -> list[ImageMasks]:
    """Run an export's model on its first ``max_images`` validation images; thresholded masks per category."""
    import torch
    from pycocotools.coco import COCO

    from trainables.checkpoints.exported import load_exported
    from trainables.data import build_loader
    from trainables.inference import predict

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, cfg = load_exported(export_dir, device=device)  # manifest checked, strict load, trial resolution
    predicted: dict[int, dict[int, np.ndarray]] = {}
    with contextlib.closing(predict(model, build_loader(cfg, "val"), device)) as batches:
        for predictions in batches:
            if len(predicted) >= max_images:
                break
            for p in predictions:
                kept = p.masks[p.scores >= cfg.score_threshold]
                union = kept.any(axis=0) if len(kept) else np.zeros(p.masks.shape[1:], bool)
                predicted.setdefault(p.image_id, {})[p.category_id] = union
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco = COCO(cfg.val_json)
    items = []
    for image_id in sorted(predicted)[:max_images]:
        info = coco.imgs[image_id]
        image = np.asarray(Image.open(Path(cfg.images_dir) / info["file_name"]).convert("RGB"))
        items.append(ImageMasks(image_id, info["file_name"], image, ground_truth_masks(coco, image_id),
                                {c: m for c, m in predicted[image_id].items() if m.any()}))
    return items


def write_overlays(export_dir: Path, out_dir: Path, max_images: int = 4) -> list[Path]:
    """``overlay_<image id>.png`` in ``out_dir`` for the first ``max_images`` validation images of an export."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for item in predict_masks(export_dir, max_images):
        path = out_dir / f"overlay_{item.image_id}.png"
        compose_overlay(item).save(path)
        paths.append(path)
    return paths
