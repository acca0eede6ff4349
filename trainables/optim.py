"""AdamW with SAM3's three learning rates and its schedule, built from a :class:`TrialConfig`.

Parameter groups follow SAM3's fine-tuning recipe: the vision backbone, the language backbone and
everything else (fusion encoder, decoder, heads) each get their own learning rate; biases and
normalisation weights (1-d tensors) get no weight decay. The schedule is linear warm-up followed by
SAM3's own inverse-square-root decay (``sam3.train.optim.schedulers``) or a cosine decay.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from sam3.train.optim.schedulers import InverseSquareRootParamScheduler
from torch import nn

from trainables.config import TrialConfig

# sam3 submodule prefixes (of Sam3Image.state_dict keys) that get their own learning rate
VISION_PREFIX = "backbone.vision_backbone."
LANGUAGE_PREFIX = "backbone.language_backbone."


def lr_group(param_name: str) -> str:
    """Which learning-rate group a parameter of a ``Sam3Image`` belongs to: vision, language or transformer."""
    name = param_name.removeprefix("module.")
    if name.startswith(VISION_PREFIX):
        return "vision"
    if name.startswith(LANGUAGE_PREFIX):
        return "language"
    return "transformer"


def build_optimizer(model: nn.Module, cfg: TrialConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, six groups: {vision, language, transformer} x {decay, no decay}."""
    lrs = {"vision": cfg.lr_vision, "language": cfg.lr_language, "transformer": cfg.lr_transformer}
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = param.ndim > 1
        groups.setdefault((lr_group(name), decay), []).append(param)
    param_groups = [
        {"params": params, "lr": lrs[group], "weight_decay": cfg.weight_decay if decay else 0.0,
         "name": f"{group}{'' if decay else '_no_decay'}"}
        for (group, decay), params in sorted(groups.items())
    ]
    return torch.optim.AdamW(param_groups, lr=cfg.lr_transformer, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrialConfig) -> Callable[[int], float]:
    """The multiplier of each group's base learning rate at optimizer step ``step`` (0-based)."""
    warmup = cfg.warmup_steps
    if cfg.schedule == "inverse_sqrt":
        # SAM3's scheduler with base_lr 1.0 is exactly the factor (warm-up, then 1/sqrt decay)
        sched = InverseSquareRootParamScheduler(base_lr=1.0, warmup_steps=warmup, cooldown_steps=0,
                                                timescale=max(warmup, 1))
        return lambda step: sched(step + 1, (step + 1) / cfg.max_steps)
    if cfg.schedule == "cosine":
        def cosine(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, cfg.max_steps - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return cosine
    return lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrialConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying :func:`lr_factor` to every group (its state dict resumes exactly)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg))
