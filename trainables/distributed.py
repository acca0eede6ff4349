"""Prepare a sam3 image model for DistributedDataParallel (Gloo on CPU or across GPUs, NCCL alike).

Applied from outside the model, after build -> load checkpoint -> set_resolution. Choices, measured on
the tiny preset with 2 Gloo processes (see tests/test_ddp_gloo.py):

- fp32 everywhere: Gloo has no bf16 parameters; bf16 tensors are cast to fp32.
- ``segmentation_head.semantic_seg_head`` is frozen: sam3's instance loss never uses its output, and with
  ``find_unused_parameters=True`` DDP then fails on the 2nd iteration ("Expected to have finished
  reduction in the prior iteration"). Freezing it keeps its (unused) weights as loaded. The other
  parameters that get no gradient (unused FPN level, ``text_projection``, one pixel-decoder stage) are
  handled by ``find_unused_parameters=True``.
- ``broadcast_buffers=False``: the only buffers are deterministic (complex RoPE tables), identical on every
  rank by construction; ``static_graph`` is never used (it lets ranks diverge silently with sam3).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

UNUSED_BY_INSTANCE_LOSS = "segmentation_head.semantic_seg_head"


def prepare_for_ddp(model: nn.Module) -> nn.Module:
    """Cast bf16 parameters/buffers to fp32 and freeze the semantic-seg head (in place); return the model."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.dtype == torch.bfloat16:
            tensor.data = tensor.data.float()
    model.get_submodule(UNUSED_BY_INSTANCE_LOSS).requires_grad_(False)
    return model


def wrap_ddp(model: nn.Module, device_ids: Sequence[int] | None = None) -> DistributedDataParallel:
    """Wrap a prepared model in DDP (process group must be initialised): no buffer broadcast, no static graph."""
    with warnings.catch_warnings():
        # torch >= 2.14 deprecates broadcast_buffers for forward_sync_buffers, whose False still syncs at init;
        # its own warning says to keep broadcast_buffers=False until init_sync_buffers exists
        warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
        return DistributedDataParallel(model, device_ids=list(device_ids) if device_ids is not None else None,
                                       broadcast_buffers=False, find_unused_parameters=True)
