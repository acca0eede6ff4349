"""The Phase 1 training wrapper's checkpoint format: write a sam3 model the way it saved one (demo, tests).

Real Phase 1 checkpoints come from the users' domain-adaptation runs; this module produces a file of
the same shape from any model so that :mod:`trainables.checkpoints.surgery` can be exercised end to end:
``{"model": {"sam3.<key>": tensor, "seg_head.*": ..., "view_encoder.*": ...}, "epoch": N}`` with the RoPE
tables at the resolution Phase 1 trained at (672 px in the Stage 2 notes), not the native grid.

``layout`` writes the same weights the other ways training scripts save them (:data:`LAYOUTS`), so that the
surgery is tried on files that look like the users' own:

- ``"wrapped"`` (the default): ``{"model": state, "epoch": 12}``;
- ``"plain"``: the state dict alone;
- ``"training"``: ``{"model": state, "epoch": numpy.int64(3), "step": numpy.int64, "best_dice": numpy.float32,
  "args": argparse.Namespace(... paths ...), "cfg": an OmegaConf DictConfig, "optimizer": an AdamW-shaped state
  dict, "scheduler": {...}, "rng": {"numpy": numpy.random.get_state(), "torch": tensor}}``;
- ``"ddp"``: a DDP save, ``{"state_dict": {"module.sam3.<key>": ...}, "epoch": 3}``;
- ``"ema"``: ``"training"`` plus ``"ema": {"module.sam3.<key>": EMA weights, "n_averaged": tensor}`` (torch's
  ``AveragedModel`` / timm's ``ModelEmaV2`` layout), the EMA weights being the raw ones + 1.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from trainables.resolution import global_attention_blocks, patch_size, rope_table

LAYOUTS = ("wrapped", "plain", "training", "ddp", "ema")


def write_phase1_checkpoint(model: nn.Module, path: Path, *, resolution: int = 448,
                            layout: str = "wrapped") -> dict[str, torch.Tensor]:
    """Save ``model`` in the Phase 1 wrapper's format, with fake custom heads; return the saved (raw) state."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
    state = {f"sam3.{k}": v.clone() for k, v in model.state_dict().items()}
    for name, attn in global_attention_blocks(model).items():
        state[f"sam3.{name}.freqs_cis"] = rope_table(attn, resolution // patch_size(model))
    generator = torch.Generator().manual_seed(0)
    state["seg_head.conv.weight"] = torch.randn(8, 64, 3, 3, generator=generator)
    state["seg_head.conv.bias"] = torch.zeros(8)
    state["view_encoder.embed.weight"] = torch.randn(4, 64, generator=generator)
    if layout == "wrapped":
        torch.save({"model": state, "epoch": 12}, path)
    elif layout == "plain":
        torch.save(state, path)
    elif layout == "ddp":
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    else:
        checkpoint = {"model": state, **training_metadata(state, resolution)}
        if layout == "ema":
            ema = {f"module.{k}": v + 1 if v.is_floating_point() else v.clone() for k, v in state.items()}
            checkpoint["ema"] = {**ema, "n_averaged": torch.tensor(40)}
        torch.save(checkpoint, path)
    return state


def training_metadata(state: dict[str, torch.Tensor], resolution: int) -> dict[str, object]:
    """What a training script saves beside the weights: numpy scalars and RNG state, its arguments, its config,
    the optimizer and scheduler state (AdamW-shaped, for the first two parameters)."""
    import argparse

    import numpy as np

    args = argparse.Namespace(data_dir=Path("E:/AngioMLDL_data/coco_cass_segments"), lr=1e-4, resolution=resolution,
                              batch_size=1, amp=False)
    names = list(state)[:2]
    optimizer = {"state": {i: {"step": torch.tensor(3.0), "exp_avg": torch.zeros_like(state[n]),
                               "exp_avg_sq": torch.zeros_like(state[n])} for i, n in enumerate(names)},
                 "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.05,
                                   "amsgrad": False, "params": list(range(len(names)))}]}
    metadata: dict[str, object] = {
        "epoch": np.int64(3), "step": np.int64(1200), "best_dice": np.float32(0.8),
        "args": args, "optimizer": optimizer, "scheduler": {"last_epoch": 3, "base_lrs": [1e-4]},
        "rng": {"numpy": np.random.RandomState(0).get_state(), "torch": torch.get_rng_state()}}
    try:
        from omegaconf import OmegaConf
    except ImportError:
        return metadata
    metadata["cfg"] = OmegaConf.create({"model": {"resolution": resolution, "heads": ["seg_head", "view_encoder"]},
                                        "optim": {"lr": 1e-4, "warmup": None}, "out": "${model.resolution}px"})
    return metadata
