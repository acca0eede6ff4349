"""Validation pass: the model's predictions (:func:`trainables.inference.predict`) scored with
:mod:`trainables.metrics`.

Each validation worker scores its share of the images; the evaluator states are gathered and merged on rank 0,
whose evaluator then holds every image's figures (:meth:`~trainables.metrics.CassEvaluator.pair_figures`, kept
with the checkpoint), and the metrics are handed to every rank so that all workers report the same figures.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from trainables.config import TrialConfig
from trainables.inference import predict
from trainables.metrics import CassEvaluator


def evaluate_across_ranks(evaluator: CassEvaluator) -> dict[str, float]:
    """Merge every rank's evaluator state into rank 0's ``evaluator``, score it there, and hand the metrics to all
    ranks."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return evaluator.evaluate()
    states = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(evaluator.state(), states, dst=0)
    metrics = [None]
    if dist.get_rank() == 0:
        evaluator.merge(states)  # its own state among them: merging a state into itself changes nothing
        metrics = [evaluator.evaluate()]
    dist.broadcast_object_list(metrics, src=0)
    return metrics[0]


@torch.no_grad()
def validate(model: nn.Module, loader, evaluator: CassEvaluator, device: torch.device) -> dict[str, float]:
    """Score ``model`` (unwrapped, not DDP) on this rank's validation batches; metrics of all ranks.

    Each prompt keeps the evaluator's ``max_dets_per_prompt`` best queries, the number COCOeval counts.
    """
    evaluator.reset()
    for predictions in predict(model, loader, device, evaluator.max_dets_per_prompt):
        evaluator.process(predictions)
    return evaluate_across_ranks(evaluator)


def evaluate_model(model: nn.Module, cfg: TrialConfig, device: torch.device | None = None) -> dict[str, float]:
    """Score a model on ``cfg``'s validation split in this process (e.g. an exported checkpoint)."""
    from trainables.data import build_loader

    loader = build_loader(cfg, "val")
    evaluator = CassEvaluator(loader.dataset.coco_gt(), score_threshold=cfg.score_threshold)
    return validate(model, loader, evaluator, device or torch.device("cpu"))
