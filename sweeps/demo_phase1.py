"""The demo's Phase 1: a tiny SAM3 model domain-adapted as binary vessel segmentation, saved the way the
Phase 1 training wrapper saves it.

The group's real Phase 1 is their own training script (0.8 vessel Dice on their angiograms, Stage 2 notes):
one category, every coronary vessel, in a custom wrapper whose checkpoint holds a ``sam3.``-prefixed model
beside its own heads. This module plays that part on synthetic angiograms so that ``make demo`` tells Stage 2's
story from its start:

1. a Phase 1 set of its own patients (``generate_dataset(vessel=True)``: one ``coronary artery`` category, one
   instance per tree, some frames before the contrast arrives);
2. :data:`SETTINGS` trained in this process by the trial loop Stage 2 uses (sam3's model, matcher and loss;
   ``categories: vessel``), validated on the Phase 1 val split (its Dice is the vessel Dice);
3. the result written in the wrapper's format (:func:`trainables.checkpoints.phase1.write_phase1_checkpoint`),
   then turned into the native format by :mod:`trainables.checkpoints.surgery`, as a user would.

Cached: everything lives in ``OUT/phase1-<key>/``, the key a hash of :data:`SETTINGS`, :data:`DATA` and
:data:`RECIPE_VERSION`; ``phase1.json`` is written last, so a run that finds it there (with both checkpoints)
reuses the folder, and an interrupted one starts it again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Phase 1's trial settings (TrialConfig fields): the learning study's CPU settings (BENCHMARKS.md, "Learning"),
#: one category. Vessel Dice 0.90 at step 700, 0.93 at 1500, ~0.11 s/step on 2 cores (BENCHMARKS.md, "The demo").
SETTINGS: dict[str, Any] = {
    "categories": "vessel",
    "preset": "tiny",
    "resolution": 112,
    "batch_size": 4,
    "lr_transformer": 1e-3,
    "lr_vision": 1e-3,
    "lr_language": 0.0,
    "freeze_text_encoder": True,
    "absent_query_loss": True,
    "warmup_steps": 20,
    "schedule": "constant",
    "activation_checkpointing": "none",
    "max_steps": 1500,
    "val_every": 250,
    "num_workers": 1,
    "cpu_threads_per_worker": 2,
    "seed": 0,
}
#: the Phase 1 set: patients of a seed no Stage 2 split uses, 20% of frames before the contrast arrives
DATA: dict[str, float] = {"train": 256, "val": 16, "size": 224, "seed": 100, "pre_contrast": 0.2}
#: part of the cache key: raise it when the vessel set's drawing or this module's training changes
RECIPE_VERSION = 1
PHASE1_FILE, NATIVE_FILE, RECORD_FILE = "phase1_tiny.pt", "phase1_tiny_native.pt", "phase1.json"


@dataclass(frozen=True)
class Phase1:
    """A finished Phase 1: its folder, checkpoint (wrapper format), its surgered native file and final figures."""

    folder: Path
    checkpoint: Path
    native: Path
    metrics: dict[str, float]


def phase1_key(settings: dict[str, Any] = SETTINGS, data: dict[str, float] = DATA) -> str:
    """The cache key: 12 hex digits of a SHA-256 over the settings, the data recipe and :data:`RECIPE_VERSION`."""
    text = json.dumps({"settings": settings, "data": data, "version": RECIPE_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def train_phase1(out: Path, *, settings: dict[str, Any] = SETTINGS, data: dict[str, float] = DATA) -> Phase1:
    """Make (or reuse) ``out/phase1-<key>/``: the vessel set, the trained model in the Phase 1 wrapper's format
    (``phase1_tiny.pt``), its surgered native file (``phase1_tiny_native.pt``) and, last, ``phase1.json``
    (settings, seconds, final vessel Dice); return it."""
    folder = Path(out) / f"phase1-{phase1_key(settings, data)}"
    record = folder / RECORD_FILE
    done = Phase1(folder, folder / PHASE1_FILE, folder / NATIVE_FILE, {})
    if record.is_file() and done.checkpoint.is_file() and done.native.is_file():
        saved = json.loads(record.read_text(encoding="utf-8"))
        return Phase1(done.folder, done.checkpoint, done.native, saved["metrics"])

    from common.errors import InputError
    from data_prep.coco_io import write_json_atomic
    from data_prep.synthetic import generate_dataset
    from trainables.checkpoints.phase1 import write_phase1_checkpoint
    from trainables.checkpoints.surgery import surgery
    from trainables.checkpoints.trial import load_model_weights
    from trainables.config import TrialConfig
    from trainables.model import build_model
    from trainables.trial import run_trial

    folder.mkdir(parents=True, exist_ok=True)
    for stale in (record, done.checkpoint, done.native, done.native.with_name(done.native.name + ".extra_heads.pt")):
        stale.unlink(missing_ok=True)  # an interrupted run's: none may outlive the model it was made from
    paths = generate_dataset(folder / "data", int(data["train"]), int(data["val"]), size=int(data["size"]),
                             seed=int(data["seed"]), vessel=True, pre_contrast=data["pre_contrast"],
                             overwrite=True)  # only an interrupted run's set (this project's)
    cfg = TrialConfig.from_dict({**settings, **paths.trial_fields()}, source="sweeps/demo_phase1.py SETTINGS")
    last = folder / "last_checkpoint"
    start = time.perf_counter()
    metrics: dict[str, float] = {}

    def report(values: dict[str, Any], checkpoint: Path | None) -> None:
        if values.get("diverged"):
            raise InputError(f"Phase 1 diverged at step {values['step']} (a non-finite loss): lower the learning "
                             f"rates in sweeps/demo_phase1.py SETTINGS")
        metrics.update(step=values["step"], vessel_dice=values["val_dice"], vessel_ap75=values["val_ap75"],
                       presence_auroc=values["val_presence_auroc"], seconds=time.perf_counter() - start)
        print(f"Phase 1 step {values['step']}/{cfg.max_steps}: vessel Dice {values['val_dice']:.3f}, "
              f"AP75 {values['val_ap75']:.3f}, {values['seconds_per_step']:.2f} s/step, "
              f"{metrics['seconds']:.0f} s", flush=True)
        if checkpoint is not None:
            shutil.rmtree(last, ignore_errors=True)
            shutil.copytree(checkpoint, last)

    run_trial(cfg, report=report)
    model = build_model(cfg.preset, device="cpu", seed=cfg.seed)
    load_model_weights(last, model)
    write_phase1_checkpoint(model, done.checkpoint, resolution=cfg.resolution)
    shutil.rmtree(last)
    print(surgery(done.checkpoint, done.native, preset=cfg.preset))
    write_json_atomic(record, {"settings": settings, "data": data, "version": RECIPE_VERSION, "metrics": metrics})
    return Phase1(done.folder, done.checkpoint, done.native, metrics)
