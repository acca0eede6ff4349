"""Validation pass: run the model over the validation loader and score it with :mod:`trainables.metrics`.

Predictions follow sam3's own inference post-processing (``sam3/model/sam3_image_processor.py``): a
query's score is ``sigmoid(pred_logits) * sigmoid(presence_logit_dec)`` and its mask is the low-res
mask logits resized bilinearly to the original image size, thresholded at 0.5. Each validation worker
scores its share of the images; the evaluator states are gathered and merged on every rank so that all
workers report the same figures.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from sam3.model.utils.misc import copy_data_to_device
from torch import nn

from trainables.config import TrialConfig
from trainables.metrics import CassEvaluator, PromptPrediction

MAX_DETS_PER_PROMPT = 20  # highest-scoring queries kept per (image, prompt) for AP; the rest score ~0


def final_output(stages) -> dict:
    """The last step of the last stage of a sam3 ``SAM3Output`` (the image model's prediction)."""
    return stages.output[-1][-1]


@torch.no_grad()
def predictions_from_output(out: dict, metadata, max_dets: int = MAX_DETS_PER_PROMPT) -> list[PromptPrediction]:
    """One :class:`PromptPrediction` per find-query row of a batch (one row = one image x one prompt)."""
    probs = out["pred_logits"].float().sigmoid().squeeze(-1)  # (rows, Q)
    presence = out["presence_logit_dec"].float().sigmoid().reshape(-1)  # (rows,)
    probs = probs * presence[:, None]
    preds = []
    for row in range(probs.shape[0]):
        height, width = (int(v) for v in metadata.original_size[row])
        top = probs[row].topk(min(max_dets, probs.shape[1])).indices
        # Resized transposed, (W, H), on the model's device: the host then holds each mask in column-major
        # order, the layout pycocotools' RLE encoder reads, and encodes it without copying (the copy was 2/3
        # of the encoding time: BENCHMARKS.md, validation cost).
        mask_logits = out["pred_masks"][row, top].float()[:, None].transpose(-1, -2)
        masks_wh = F.interpolate(mask_logits, (width, height), mode="bilinear", align_corners=False)[:, 0] > 0
        masks_wh = masks_wh.contiguous()  # whatever layout the resize chose for its transposed input
        preds.append(PromptPrediction(
            image_id=int(metadata.original_image_id[row]),
            category_id=int(metadata.original_category_id[row]),
            scores=probs[row, top].cpu().numpy(),
            masks=masks_wh.cpu().numpy().transpose(0, 2, 1),  # [K, H, W]; each masks[k] is column-major
            presence=float(presence[row]),
        ))
    return preds


def evaluate_across_ranks(evaluator: CassEvaluator) -> dict[str, float]:
    """Merge every rank's evaluator state on rank 0, score it there, and hand the metrics to all ranks."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return evaluator.evaluate()
    states = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(evaluator.state(), states, dst=0)
    metrics = [None]
    if dist.get_rank() == 0:
        merged = evaluator.empty_copy()
        merged.merge(states)
        metrics = [merged.evaluate()]
    dist.broadcast_object_list(metrics, src=0)
    return metrics[0]


@torch.no_grad()
def validate(model: nn.Module, loader, evaluator: CassEvaluator, device: torch.device) -> dict[str, float]:
    """Score ``model`` (unwrapped, not DDP) on this rank's validation batches; metrics of all ranks."""
    was_training = model.training
    model.eval()
    evaluator.reset()
    try:
        for batch in loader:
            batch = copy_data_to_device(batch, device, non_blocking=True)
            out = final_output(model(batch))
            evaluator.process(predictions_from_output(out, batch.find_metadatas[0]))
    finally:
        model.train(was_training)
    return evaluate_across_ranks(evaluator)


def evaluate_model(model: nn.Module, cfg: TrialConfig, device: torch.device | None = None) -> dict[str, float]:
    """Score a model on ``cfg``'s validation split in this process (e.g. an exported checkpoint)."""
    from trainables.data import build_loader

    loader = build_loader(cfg, "val")
    evaluator = CassEvaluator(loader.dataset.coco_gt(), score_threshold=cfg.score_threshold)
    return validate(model, loader, evaluator, device or torch.device("cpu"))
