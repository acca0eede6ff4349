"""Numeric precision of a trial: true float32 by default, TF32 or bf16 autocast on request.

sam3 switches TF32 matmuls on at import on Ampere and newer GPUs, so "float32" on an RTX 3090 would
silently be TF32: :func:`configure_precision` sets the flags explicitly for every choice.
"""

from __future__ import annotations

import contextlib

import torch


def configure_precision(precision: str) -> None:
    """Set the process-wide TF32 switches for ``precision`` ("fp32", "tf32" or "bf16")."""
    allow_tf32 = precision in ("tf32", "bf16")
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32


def autocast_context(precision: str, device_type: str | None = None) -> contextlib.AbstractContextManager:
    """bf16 autocast for "bf16" (on the GPU when there is one), a no-op context otherwise.

    sam3's text encoder must then run without activation checkpointing
    (:func:`trainables.model.configure_activation_checkpointing` sees to it for a trial).
    """
    if precision != "bf16":
        return contextlib.nullcontext()
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
