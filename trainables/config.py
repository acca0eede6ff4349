"""The typed configuration of one trial: every knob a sweep can touch, with SAM3's defaults.

A trial's config flows one way: sweep YAML -> :class:`TrialConfig` (validated here) -> a search-space
sample overrides some fields -> ``train_loop_per_worker`` reads it. Nothing reads a knob elsewhere.
"""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from data_prep.errors import InputError

PATCH_SIZE = 14


@dataclass
class TrialConfig:
    """All settings of one trial. Defaults are SAM3's published fine-tuning values where one exists."""

    # --- data (COCO CASS files; image ``file_name``s are relative to ``images_dir``) ---
    train_json: str = ""
    val_json: str = ""
    images_dir: str = ""
    # --- model ---
    preset: Literal["tiny", "full"] = "tiny"
    resolution: int = 224  # px; a multiple of 14 (multiples of 336 need no window padding)
    checkpoint: str | None = None  # surgered Phase 1 weights in the native (detector.-prefixed) format
    freeze_text_encoder: bool = False  # also caches the 14 prompt embeddings (cuts compute and all-reduce)
    # --- optimisation (SAM3 defaults: lr 8e-5 / 2.5e-5 / 5e-6, wd 0.1, clip 0.1, inverse sqrt) ---
    lr_transformer: float = 8e-5
    lr_vision: float = 2.5e-5
    lr_language: float = 5e-6
    weight_decay: float = 0.1
    grad_clip: float = 0.1
    warmup_steps: int = 20
    schedule: Literal["inverse_sqrt", "cosine", "constant"] = "inverse_sqrt"
    max_steps: int = 200
    batch_size: int = 1  # images per worker per step (each image asks all 14 prompts)
    category_chunk_size: int = 14  # prompts per forward/backward chunk (bounds decoder and mask memory)
    grad_accum_steps: int = 1  # batches per optimizer step (mean of their gradients; one all-reduce per step)
    grad_compression: Literal["none", "bf16"] = "none"  # DDP gradient all-reduce in bf16 (torch's hook)
    # --- SAM3 loss weights (fine-tuning defaults 5, 2, 20, 20, 200, 10) ---
    loss_bbox: float = 5.0
    loss_giou: float = 2.0
    loss_ce: float = 20.0
    presence_loss: float = 20.0
    loss_mask: float = 200.0
    loss_dice: float = 10.0
    # sam3 trains query scores only on prompts that are present (absence goes through the presence token
    # alone); True also pushes every query of an absent prompt towards 0 (trainables/loss.py)
    absent_query_loss: bool = False
    # --- augmentation (no left/right flips by default: they swap coronary anatomy) ---
    hflip: bool = False
    brightness_contrast: float = 0.1
    # --- validation ---
    val_every: int = 50  # steps between validations (each one reports to Ray)
    val_max_images: int | None = None
    # images per validation forward (None: batch_size); no gradients are kept, so it can exceed batch_size
    val_batch_size: int | None = None
    score_threshold: float = 0.5
    # --- execution ---
    precision: Literal["fp32", "tf32", "bf16"] = "fp32"
    # "sam3": sam3's activation checkpointing everywhere; "minimal": only where sam3 asserts it (fusion encoder,
    # decoder); "none": nowhere. Same math; each step faster and using more memory
    # (trainables.model.configure_activation_checkpointing)
    activation_checkpointing: Literal["sam3", "minimal", "none"] = "sam3"
    backend: Literal["gloo", "nccl"] = "gloo"
    num_workers: int = 2
    use_gpu: bool = False
    cpu_threads_per_worker: int = 1
    seed: int = 0

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> "TrialConfig":
        """Build from a mapping, refusing unknown keys and wrong types with a message naming ``source``."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise InputError(f"{source}: unknown trial setting(s) {unknown}; valid keys: {sorted(known)}")
        hints = typing.get_type_hints(cls)
        values = {key: _plain_number(value, hints[key]) for key, value in values.items()}
        cfg = cls(**values)
        cfg.validate(source=source)
        return cfg

    def replace(self, **overrides: Any) -> "TrialConfig":
        """A validated copy with some fields changed (a search-space sample, say)."""
        return TrialConfig.from_dict({**dataclasses.asdict(self), **overrides}, source="trial overrides")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, *, source: str = "config") -> None:
        """Check types, then ranges and choices; list every problem at once."""
        hints = typing.get_type_hints(type(self))
        p = [f"{name}: {getattr(self, name)!r} is a {type(getattr(self, name)).__name__}, expected {_type_name(hint)}"
             for name, hint in hints.items() if not _has_type(getattr(self, name), hint)]
        if p:
            raise InputError(f"{source}: invalid trial settings", p)
        if self.resolution <= 0 or self.resolution % PATCH_SIZE:
            p.append(f"resolution: {self.resolution!r} must be a positive multiple of the patch size {PATCH_SIZE}")
        for name in ("lr_transformer", "lr_vision", "lr_language"):
            if not float(getattr(self, name)) >= 0:
                p.append(f"{name}: {getattr(self, name)!r} must be >= 0")
        for name in ("loss_bbox", "loss_giou", "loss_ce", "presence_loss", "loss_mask", "loss_dice"):
            if not float(getattr(self, name)) >= 0:
                p.append(f"{name}: {getattr(self, name)!r} must be >= 0")
        for name in ("max_steps", "batch_size", "val_every", "num_workers", "category_chunk_size",
                     "grad_accum_steps", "cpu_threads_per_worker"):
            if getattr(self, name) < 1:
                p.append(f"{name}: {getattr(self, name)!r} must be an integer >= 1")
        for name in ("val_max_images", "val_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                p.append(f"{name}: {getattr(self, name)!r} must be an integer >= 1, or null")
        if self.warmup_steps < 0:
            p.append(f"warmup_steps: {self.warmup_steps!r} must be >= 0")
        for name, hint in hints.items():
            choices = typing.get_args(hint) if typing.get_origin(hint) is Literal else ()
            if choices and getattr(self, name) not in choices:
                p.append(f"{name}: {getattr(self, name)!r} is not one of {', '.join(map(repr, choices))}")
        if not 0.0 <= self.score_threshold <= 1.0:
            p.append(f"score_threshold: {self.score_threshold!r} must lie in [0, 1]")
        if p:
            raise InputError(f"{source}: invalid trial settings", p)


def _plain_number(value: Any, hint: Any) -> Any:
    """A number for an ``int``/``float`` field as a plain Python number: numpy scalars (a search sample) become
    ``int``/``float``, and numeric strings become floats, since YAML 1.1 (PyYAML) reads ``2e-3`` as a string."""
    if isinstance(hint, types.UnionType):  # X | None
        hint = next(option for option in typing.get_args(hint) if option is not type(None))
    if isinstance(value, bool):
        return value
    if hint is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if hint is float and isinstance(value, numbers.Real):
        return float(value)
    if hint is int and isinstance(value, numbers.Integral):
        return int(value)
    return value


def _has_type(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits a field annotation (``int``/``float``/``bool``/``str``, ``X | None``, Literal)."""
    if typing.get_origin(hint) is Literal:
        return True  # checked against its choices
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return True
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if option in (bool, str) and isinstance(value, option):
            return True
    return False


def _type_name(hint: Any) -> str:
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return " or ".join("null" if o is type(None) else o.__name__ for o in options)
