"""The Phase 1 training wrapper's checkpoint format: write a sam3 model the way it saved one (demo, tests).

Real Phase 1 checkpoints come from the users' domain-adaptation runs; this module produces a file of
the same shape from any model so that :mod:`trainables.checkpoints.surgery` can be exercised end to end:
``{"model": {"sam3.<key>": tensor, "seg_head.*": ..., "view_encoder.*": ...}, "epoch": N}`` with the RoPE
tables at the resolution Phase 1 trained at (672 px in the Stage 2 notes), not the native grid.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from trainables.resolution import global_attention_blocks, patch_size, rope_table


def write_phase1_checkpoint(model: nn.Module, path: Path, *, resolution: int = 448) -> dict[str, torch.Tensor]:
    """Save ``model`` in the Phase 1 wrapper's format, with fake custom heads; return the saved state."""
    state = {f"sam3.{k}": v.clone() for k, v in model.state_dict().items()}
    for name, attn in global_attention_blocks(model).items():
        state[f"sam3.{name}.freqs_cis"] = rope_table(attn, resolution // patch_size(model))
    generator = torch.Generator().manual_seed(0)
    state["seg_head.conv.weight"] = torch.randn(8, 64, 3, 3, generator=generator)
    state["seg_head.conv.bias"] = torch.zeros(8)
    state["view_encoder.embed.weight"] = torch.randn(4, 64, generator=generator)
    torch.save({"model": state, "epoch": 12}, path)
    return state
