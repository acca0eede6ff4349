"""Inference: the model's scored predictions per (image, prompt), the one loop that validation, the report's
overlays and prediction on new images share.

Predictions follow sam3's own inference post-processing (``sam3/model/sam3_image_processor.py``): a
query's score is ``sigmoid(pred_logits) * sigmoid(presence_logit_dec)`` and its mask is the low-res
mask logits resized bilinearly to the original image size, thresholded at 0.5. Each prompt keeps its
:data:`MAX_DETS_PER_PROMPT` highest-scoring queries (defined in :mod:`trainables.metrics`, whose evaluator
counts exactly these for AP; the reason for the number is there), for validation and new images alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from sam3.model.utils.misc import copy_data_to_device
from torch import nn

from trainables.metrics import MAX_DETS_PER_PROMPT, PromptPrediction

# Rows (image x prompt) resized at once. On a GPU one image's prompts, one resize and one copy to the host
# (faster than the per-row loop on an H200); on the CPU one row, whose float masks stay in cache (resizing 14
# at once was slower there). Measured by bench/eval_cost.py: BENCHMARKS.md, "Validation cost".
ROWS_PER_RESIZE = {"cuda": 14, "cpu": 1}


def final_output(stages) -> dict:
    """The last step of the last stage of a sam3 ``SAM3Output`` (the image model's prediction)."""
    return stages.output[-1][-1]


@torch.no_grad()
def predictions_from_output(out: dict, metadata, max_dets: int = MAX_DETS_PER_PROMPT,
                            rows_per_resize: int | None = None) -> list[PromptPrediction]:
    """One :class:`PromptPrediction` per find-query row of a batch (one row = one image x one prompt).

    Vectorised over rows: one ``topk``, then one resize and one copy to the host per ``rows_per_resize`` rows of
    the same original size (default: :data:`ROWS_PER_RESIZE` for the outputs' device). The former per-row loop
    waited for the device twice per row (``bench/eval_cost.py`` compares them).
    """
    probs = out["pred_logits"].float().sigmoid().squeeze(-1)  # (rows, Q)
    presence = out["presence_logit_dec"].float().sigmoid().reshape(-1)  # (rows,)
    scores, top = (probs * presence[:, None]).topk(min(max_dets, probs.shape[1]), dim=1)  # best first
    kept = out["pred_masks"][torch.arange(len(top), device=top.device)[:, None], top]  # (rows, K, h, w)
    sizes = [(int(height), int(width)) for height, width in metadata.original_size.tolist()]
    step = rows_per_resize or ROWS_PER_RESIZE.get(kept.device.type, 1)
    masks: list = [None] * len(sizes)
    for height, width in dict.fromkeys(sizes):
        same = [row for row, size in enumerate(sizes) if size == (height, width)]
        for start in range(0, len(same), step):
            rows = same[start:start + step]
            # Resized transposed, (W, H), on the model's device: the host then holds each mask in column-major
            # order, the layout pycocotools' RLE encoder reads, and encodes it without copying (the copy was
            # 2/3 of the encoding time: BENCHMARKS.md, validation cost).
            logits = kept[rows].float().flatten(0, 1)[:, None].transpose(-1, -2)
            above = F.interpolate(logits, (width, height), mode="bilinear", align_corners=False)[:, 0] > 0
            host = above.contiguous().view(len(rows), -1, width, height).cpu().numpy()
            for row, row_masks in zip(rows, host.transpose(0, 1, 3, 2)):  # [K, H, W]; each [k] column-major
                masks[row] = row_masks
    scores, presence = scores.cpu().numpy(), presence.cpu().tolist()
    image_ids, category_ids = metadata.original_image_id.tolist(), metadata.original_category_id.tolist()
    return [PromptPrediction(image_id=int(image_ids[row]), category_id=int(category_ids[row]), scores=scores[row],
                             masks=masks[row], presence=presence[row]) for row in range(len(sizes))]


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable, device: torch.device | str,
            max_dets: int = MAX_DETS_PER_PROMPT) -> Iterator[list[PromptPrediction]]:
    """Run ``model`` (unwrapped, not DDP) in eval mode over sam3 ``batches``; yield each batch's predictions,
    each prompt's ``max_dets`` highest-scoring queries.

    The model's train/eval mode is restored when the iteration ends (or is closed early).
    """
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            batch = copy_data_to_device(batch, device, non_blocking=True)
            yield predictions_from_output(final_output(model(batch)), batch.find_metadatas[0], max_dets)
    finally:
        model.train(was_training)
