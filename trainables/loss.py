"""sam3's native training loss, weighted from the trial config, and sam3's native training step.

:func:`build_loss` wires sam3's own classes as its fine-tuning config with segmentation does
(``configs/roboflow_v100/roboflow_v100_full_ft_100_images.yaml``, the segmentation block; the one-to-many
and matcher settings of ``roboflow_seg_example.yaml`` agree):

* ``Sam3LossWrapper`` with the one-to-one matcher ``BinaryHungarianMatcherV2`` (focal costs: class 2,
  bbox 5, giou 2; the model carries an identical one and matches its final outputs itself) and the
  one-to-many matcher ``BinaryOneToManyMatcher(alpha=0.3, threshold=0.4, topk=4)``, one-to-many weight 2,
  the one-to-one matcher on one-to-many auxiliary outputs, ``scale_by_find_batch_size=True`` (the core
  loss is multiplied by sqrt(find-query rows)).
* ``Boxes`` (``loss_bbox``, ``loss_giou``), ``IABCEMdetr`` (``loss_ce`` and ``presence_loss``; pos_weight 10,
  alpha 0.25, gamma 2, presence token on, ``weak_loss=False``, ``pad_n_queries`` = the decoder's query
  count: 200 as sam3, 16 for the tiny preset), ``Masks`` (focal
  ``loss_mask`` alpha 0.25 gamma 2 and ``loss_dice``, final layer only). Weights come from the trial config.
* Normalisation ``"global"`` under DDP (the instance count is all-reduced: every rank divides by the
  world's mean count) and ``"local"`` in one process (``"global"`` calls ``all_reduce`` unconditionally).
* sam3's focal loss defaults to a Triton GPU kernel and its loss classes have no flag to choose the torch
  implementation; :func:`trainables.sam3_compat.apply` (called here) routes non-CUDA tensors to sam3's
  own torch path.

Prompt chunks: sam3 normalises ``loss_ce`` and ``presence_loss`` per find-query row (a mean over rows)
and ``loss_bbox``, ``loss_giou``, ``loss_mask``, ``loss_dice`` per ground-truth instance of the forwarded
batch (a sum over matched instances divided by their count), then multiplies the core loss by
sqrt(rows). A chunk of ``r`` of a batch's ``R`` rows holding ``n_c`` of its ``n`` instances is therefore
normalised here as part of its batch: its instance normaliser is ``n * r / R`` and its sqrt factor
sqrt(R). Weighted by ``r / R`` (:func:`trainables.data.iter_prompt_chunks`), the chunk losses then sum to
exactly the unchunked loss: ``sum_c (r/R) * mean_c = mean`` for the row terms and
``sum_c (r/R) * S_c / (n r / R) = S / n`` for the instance terms. Matching is per row, so it is unchanged.
The reported components sum the same way.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from sam3.model.data_misc import BatchedDatapoint
from sam3.model.utils.misc import copy_data_to_device
from sam3.train.loss.loss_fns import CORE_LOSS_KEY, Boxes, IABCEMdetr, Masks
from sam3.train.loss.sam3_loss import Sam3LossWrapper
from sam3.train.matcher import BinaryHungarianMatcherV2, BinaryOneToManyMatcher
from torch import nn

from trainables import sam3_compat
from trainables.config import TrialConfig
from trainables.data import PromptChunk

O2M_WEIGHT = 2.0
POS_WEIGHT = 10.0
# sam3 divides the query classification loss by pad_n_queries x rows, set to its decoder's 200 queries (a
# mean over queries); the tiny preset has 16, and dividing its loss by 200 would shrink loss_ce 12.5-fold
PAD_N_QUERIES = {"full": 200, "tiny": 16}
# Stable reporting keys: the six weighted terms of the final decoder layer (one-to-one queries), sam3's two
# accuracy figures, and the total that is back-propagated.
COMPONENT_KEYS = ("core_loss", "loss_ce", "presence_loss", "loss_bbox", "loss_giou", "loss_mask", "loss_dice",
                  "ce_f1", "presence_dec_acc")


class ChunkAwareLossWrapper(Sam3LossWrapper):
    """sam3's ``Sam3LossWrapper`` that can also normalise one prompt chunk as part of its whole batch.

    Called as ``loss(stages, targets)`` it is sam3's wrapper unchanged; ``loss(stages, targets, chunk)``
    applies the chunk normalisation of this module's docstring.
    """

    _chunk: PromptChunk | None = None

    def forward(self, find_stages, find_targets, chunk: PromptChunk | None = None) -> dict[str, torch.Tensor]:
        self._chunk = chunk
        try:
            losses = super().forward(find_stages, find_targets)
        finally:
            self._chunk = None
        if chunk is not None and self.scale_by_find_batch_size:
            # sam3 multiplied by sqrt(chunk rows); the whole batch's factor is sqrt(batch rows)
            losses[CORE_LOSS_KEY] = losses[CORE_LOSS_KEY] * math.sqrt(chunk.batch_rows / chunk.rows)
        return losses

    def _get_num_boxes(self, targets: dict) -> torch.Tensor:
        if self._chunk is None:
            return super()._get_num_boxes(targets)
        count = torch.tensor(float(self._chunk.batch_boxes), device=targets["num_boxes"].device)
        if self.normalization == "global":
            dist.all_reduce(count)
            count = count / dist.get_world_size()
        return torch.clamp(count, min=1) * self._chunk.row_fraction


class AbsentQueryIABCEMdetr(IABCEMdetr):
    """sam3's ``IABCEMdetr`` that also supervises the queries of absent prompts (``absent_query_loss``).

    With the presence token on, sam3 multiplies the query classification loss by ``keep_loss`` (1 only for
    find-query rows with a visible target), so a prompt's absence is learned from one presence bit per
    row. Here ``loss_ce`` is sam3's own term computed as without the presence token (every query of
    an absent prompt is a negative, weighted like any other negative); ``presence_loss`` and the
    accuracy figures are sam3's unchanged.
    """

    def get_loss(self, outputs, targets, indices, num_boxes):
        losses = super().get_loss(outputs, targets, indices, num_boxes)
        self.use_presence = False
        try:
            losses["loss_ce"] = super().get_loss(outputs, targets, indices, num_boxes)["loss_ce"]
        finally:
            self.use_presence = True
        return losses


def build_loss(cfg: TrialConfig, *, distributed: bool) -> ChunkAwareLossWrapper:
    """sam3's loss for a trial: the config's six weights, global normalisation iff ``distributed``."""
    sam3_compat.apply()  # sam3's focal loss: torch, not Triton, off CUDA
    return ChunkAwareLossWrapper(
        loss_fns_find=[
            Boxes(weight_dict={"loss_bbox": cfg.loss_bbox, "loss_giou": cfg.loss_giou}),
            (AbsentQueryIABCEMdetr if cfg.absent_query_loss else IABCEMdetr)(
                pos_weight=POS_WEIGHT,
                weight_dict={"loss_ce": cfg.loss_ce, "presence_loss": cfg.presence_loss},
                alpha=0.25,
                gamma=2,
                weak_loss=False,
                use_presence=True,
                pos_focal=False,
                pad_n_queries=PAD_N_QUERIES[cfg.preset],
                pad_scale_pos=1.0,
            ),
            Masks(weight_dict={"loss_mask": cfg.loss_mask, "loss_dice": cfg.loss_dice},
                  focal_alpha=0.25, focal_gamma=2.0, compute_aux=False),
        ],
        normalization="global" if distributed else "local",
        matcher=BinaryHungarianMatcherV2(focal=True, cost_class=2.0, cost_bbox=5.0, cost_giou=2.0,
                                         alpha=0.25, gamma=2, stable=False),
        o2m_matcher=BinaryOneToManyMatcher(alpha=0.3, threshold=0.4, topk=4),
        o2m_weight=O2M_WEIGHT,
        use_o2m_matcher_on_o2m_aux=False,
        scale_by_find_batch_size=True,
    )


def training_step_loss(model: nn.Module, batch: BatchedDatapoint | PromptChunk,
                       loss_fn: ChunkAwareLossWrapper) -> tuple[torch.Tensor, dict[str, float]]:
    """sam3's native step (``train/trainer.py:492-506``) on one batch or prompt chunk.

    Moves the batch to the model's device, runs ``stages = model(batch)``, converts the targets with the
    model's ``back_convert`` and returns ``(core_loss, components)``: the tensor to back-propagate and
    the :data:`COMPONENT_KEYS` as floats. ``model`` may be DDP-wrapped. For a :class:`PromptChunk`, both
    are normalised as part of its batch (see the module docstring): multiply by the chunk's weight.
    """
    chunk = batch if isinstance(batch, PromptChunk) else None
    data = chunk.batch if chunk is not None else batch
    data = copy_data_to_device(data, next(model.parameters()).device, non_blocking=True)
    stages = model(data)
    sam3_model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    targets = [sam3_model.back_convert(t) for t in data.find_targets]
    losses = loss_fn(stages, targets, chunk)
    components = {key: losses[key].detach().item() for key in COMPONENT_KEYS}
    return losses[CORE_LOSS_KEY], components
