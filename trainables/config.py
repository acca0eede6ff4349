"""The typed configuration of one trial: every knob a sweep can touch, with SAM3's defaults.

A trial's config flows one way: sweep YAML -> :class:`TrialConfig` (validated here) -> a search-space
sample overrides some fields -> ``train_loop_per_worker`` reads it. Nothing reads a knob elsewhere.

Each field is declared with :func:`setting`: its default, what it means, its allowed range and whether a
search space may vary it. Types and numbers are checked by :mod:`common.typed_yaml` (the rule every config
of the project shares); ranges here, from those declarations.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from common.errors import InputError
from common.typed_yaml import parse_fields

PATCH_SIZE = 14
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit


def setting(default: Any, doc: str, *, minimum: float | None = None, maximum: float | None = None,
            searchable: bool = True) -> Any:
    """A :class:`TrialConfig` field: ``default``, its meaning, its range (inclusive), and whether a search
    space may sample it (``searchable=False``: fixed per sweep: data, resources, the step budget)."""
    return field(default=default, metadata={"doc": doc, "minimum": minimum, "maximum": maximum,
                                            "searchable": searchable})


@dataclass
class TrialConfig:
    """All settings of one trial. Defaults are SAM3's published fine-tuning values where one exists."""

    # --- data (COCO CASS files) ---
    train_json: str = setting("", "COCO CASS training annotations", searchable=False)
    val_json: str = setting("", "COCO CASS validation annotations", searchable=False)
    images_dir: str = setting("", "the folder that image `file_name`s are relative to", searchable=False)
    follow_image_links: bool = setting(False, "image files may be symlinks to files outside images_dir (off: "
                                       "such a link is refused, so a dataset is read only from its folder)",
                                       searchable=False)
    categories: Literal["cass", "vessel"] = setting("cass", "what the COCO files label: `cass`, the 14 CASS "
                                                    "segments (Stage 2); `vessel`, Phase 1's one `coronary artery` "
                                                    "category (binary vessel segmentation: the demo's domain "
                                                    "adaptation, sweeps/demo_phase1.py)", searchable=False)
    # --- model ---
    preset: Literal["tiny", "full"] = setting("tiny", "sam3 architecture: `full` (SAM3) or `tiny` (same classes, "
                                              "small widths, for CPUs and tests)")
    resolution: int = setting(224, "input size in px; a positive multiple of the patch size 14 (multiples of 336 "
                              "need no window padding)")
    checkpoint: str | None = setting(None, "starting weights: surgered Phase 1 weights in the native "
                                     "(`detector.`-prefixed) format; null: random init", searchable=False)
    freeze_text_encoder: bool = setting(False, "freeze the text encoder and cache the 14 prompt embeddings (cuts "
                                        "compute and all-reduce)")
    # --- optimisation (SAM3 defaults: lr 8e-5 / 2.5e-5 / 5e-6, wd 0.1, clip 0.1, inverse sqrt) ---
    lr_transformer: float = setting(8e-5, "AdamW learning rate of the detector transformer and heads", minimum=0)
    lr_vision: float = setting(2.5e-5, "AdamW learning rate of the vision backbone", minimum=0)
    lr_language: float = setting(5e-6, "AdamW learning rate of the text encoder", minimum=0)
    weight_decay: float = setting(0.1, "AdamW weight decay", minimum=0)
    grad_clip: float = setting(0.1, "gradient norm clip (0: none)", minimum=0)
    warmup_steps: int = setting(20, "linear learning-rate warm-up, in optimizer steps", minimum=0)
    schedule: Literal["inverse_sqrt", "cosine", "constant"] = setting("inverse_sqrt", "learning-rate schedule "
                                                                      "after warm-up")
    max_steps: int = setting(200, "optimizer steps of the trial (ASHA's max_t)", minimum=1, searchable=False)
    batch_size: int = setting(1, "images per worker per step (each image asks all 14 prompts)", minimum=1)
    category_chunk_size: int = setting(14, "prompts per forward/backward chunk (bounds decoder and mask memory)",
                                       minimum=1)
    grad_accum_steps: int = setting(1, "batches per optimizer step (mean of their gradients; one all-reduce per "
                                    "step)", minimum=1)
    grad_compression: Literal["none", "bf16"] = setting("none", "DDP gradient all-reduce in bf16 (torch's hook)")
    # --- SAM3 loss weights (fine-tuning defaults 5, 2, 20, 20, 200, 10) ---
    loss_bbox: float = setting(5.0, "weight of the L1 box loss", minimum=0)
    loss_giou: float = setting(2.0, "weight of the GIoU box loss", minimum=0)
    loss_ce: float = setting(20.0, "weight of the query classification (focal) loss", minimum=0)
    presence_loss: float = setting(20.0, "weight of the presence-token loss", minimum=0)
    loss_mask: float = setting(200.0, "weight of the mask focal loss", minimum=0)
    loss_dice: float = setting(10.0, "weight of the mask Dice loss", minimum=0)
    absent_query_loss: bool = setting(False, "sam3 trains query scores only on present prompts (absence goes "
                                      "through the presence token alone); true also pushes every query of an "
                                      "absent prompt towards 0 (trainables/loss.py)")
    # --- augmentation ---
    hflip: bool = setting(False, "random left/right flips (off: they swap coronary anatomy)")
    brightness_contrast: float = setting(0.1, "strength of random brightness/contrast jitter", minimum=0)
    # --- validation ---
    val_every: int = setting(50, "steps between validations (each one reports to Ray)", minimum=1,
                             searchable=False)
    val_max_images: int | None = setting(None, "validation images per pass (null: all)", minimum=1,
                                         searchable=False)
    val_batch_size: int | None = setting(None, "images per validation forward (null: batch_size); no gradients "
                                         "are kept, so it can exceed batch_size", minimum=1, searchable=False)
    score_threshold: float = setting(0.5, "query score at and above which a mask counts for Dice", minimum=0,
                                     maximum=1)
    # --- execution ---
    precision: Literal["fp32", "tf32", "bf16"] = setting("fp32", "arithmetic of the forward and backward pass")
    activation_checkpointing: Literal["sam3", "minimal", "none"] = setting(
        "sam3", "`sam3`: sam3's activation checkpointing everywhere; `minimal`: only where sam3 asserts it (fusion "
        "encoder, decoder); `none`: nowhere. Same math; each step faster and using more memory "
        "(trainables.model.configure_activation_checkpointing)")
    backend: Literal["gloo", "nccl"] = setting("gloo", "torch.distributed backend", searchable=False)
    num_workers: int = setting(2, "Ray Train workers (processes, one GPU each when use_gpu)", minimum=1,
                               searchable=False)
    use_gpu: bool = setting(False, "one GPU per worker", searchable=False)
    cpu_threads_per_worker: int = setting(1, "CPUs Ray reserves for, and torch uses in, each worker", minimum=1,
                                          searchable=False)
    seed: int = setting(0, "seed of the model init, data order and augmentation", minimum=0, maximum=MAX_SEED)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config", prefix: str = "") -> "TrialConfig":
        """Build from a mapping, refusing unknown keys, wrong types and values out of range; every problem is
        listed in one :class:`InputError` headed by ``source``, each key named ``prefix + key``."""
        problems: list[str] = []
        fields = parse_fields(cls, values, prefix, problems)
        if problems:
            raise InputError(f"{source}: invalid trial settings", problems)
        cfg = cls(**fields)
        cfg.validate(source=source, prefix=prefix)
        return cfg

    def replace(self, **overrides: Any) -> "TrialConfig":
        """A validated copy with some fields changed (a search-space sample, say)."""
        return TrialConfig.from_dict({**dataclasses.asdict(self), **overrides}, source="trial overrides")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, *, source: str = "config", prefix: str = "") -> None:
        """Check each field against the range its :func:`setting` declares; list every problem at once."""
        problems = [f"{prefix}{f.name}: {problem}" for f in dataclasses.fields(self)
                    if (problem := _out_of_range(getattr(self, f.name), f))]
        if self.resolution <= 0 or self.resolution % PATCH_SIZE:
            problems.append(f"{prefix}resolution: {self.resolution!r} must be a positive multiple of the patch size "
                            f"{PATCH_SIZE}")
        if problems:
            raise InputError(f"{source}: invalid trial settings", problems)


def searchable_fields() -> list[str]:
    """The :class:`TrialConfig` fields a search space may sample."""
    return [f.name for f in dataclasses.fields(TrialConfig) if f.metadata["searchable"]]


def _out_of_range(value: Any, f: dataclasses.Field) -> str | None:
    """Why ``value`` lies outside the range field ``f`` declares, or None."""
    low, high = f.metadata["minimum"], f.metadata["maximum"]
    if value is None or isinstance(value, (bool, str)) or (low is None and high is None):
        return None
    if (low is None or value >= low) and (high is None or value <= high):
        return None
    if low is not None and high is not None:
        return f"{value!r} must lie in [{low:g}, {high:g}]"
    if isinstance(value, int):
        return f"{value!r} must be an integer >= {low:g}" + (", or null" if f.default is None else "")
    return f"{value!r} must be >= {low:g}"
