"""A trial's resumable checkpoint: the model in SAM3's native format plus the training state.

Layout of a checkpoint directory (what ``ray.train.Checkpoint.from_directory`` wraps):

- ``model.pt``: the weights in the native format (:mod:`trainables.checkpoints.native`), loadable by sam3's
  own builder and by the export; RoPE tables at the preset's native grid.
- ``trainer_state.pt``: optimizer, LR scheduler, the number of optimizer steps taken, RNG states. Only a
  resume needs it, and a resume starts from a trial's newest checkpoint: the final checkpoint of a trial is
  written without it, and a worker removes it from its previous checkpoint once a newer one is persisted
  (:func:`drop_trainer_state`), so a trial holds at most one (AdamW's moments are 8 bytes per trained
  parameter: more than the model itself).
- ``metrics.json``: the step, the metrics reported with this checkpoint and the trial config (for humans,
  export, and the resume of a finished trial).

Everything is read back with ``torch.load(weights_only=True)``: no pickle code runs on resume.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs
import torch
from torch import nn

from common.errors import InputError
from trainables.checkpoints.files import safe_torch_load
from trainables.checkpoints.native import load_native, save_native
from trainables.model import PRESET_SIZES

#: What the file format adds to the tensors' bytes (zip records, pickled structure, AdamW's step counters).
FORMAT_OVERHEAD = 1.02

MODEL_FILE = "model.pt"
STATE_FILE = "trainer_state.pt"
METRICS_FILE = "metrics.json"


@dataclass
class TrainerState:
    """What a resumed trial needs besides the weights."""

    step: int
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]


@dataclass(frozen=True)
class CheckpointBytes:
    """The disk bytes of one trial checkpoint's parts (checked against written checkpoints in
    tests/test_trial.py)."""

    model: int  # model.pt: the native model in fp32
    trainer_state: int  # trainer_state.pt: AdamW's two fp32 moments for every trained parameter


def estimated_bytes(preset: str, *, freeze_text_encoder: bool) -> CheckpointBytes:
    """What one trial checkpoint of ``preset`` writes to disk, part by part."""
    size = PRESET_SIZES[preset]
    trained = size.parameters - (size.text_encoder if freeze_text_encoder else 0)
    return CheckpointBytes(model=int(FORMAT_OVERHEAD * size.native_bytes),
                           trainer_state=int(FORMAT_OVERHEAD * 8 * trained))


def capture_rng() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as plain tensors/tuples (``weights_only``-loadable)."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }


def restore_rng(rng: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    random.setstate(rng["python"])
    name, keys, *rest = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(rng["torch"])


def save_trial_checkpoint(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                          scheduler: torch.optim.lr_scheduler.LRScheduler, step: int,
                          metrics: dict[str, Any], config: dict[str, Any], *, resumable: bool = True) -> Path:
    """Write a checkpoint of ``model`` (unwrapped, not DDP) after ``step`` optimizer steps; with the trainer
    state when ``resumable`` (not for a trial's final checkpoint: nothing is left to resume)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_native(model, directory / MODEL_FILE)
    if resumable:
        torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": capture_rng()}, directory / STATE_FILE)
    (directory / METRICS_FILE).write_text(json.dumps({"step": step, "metrics": metrics, "config": config},
                                                     indent=2, default=float))
    return directory


def load_model_weights(directory: Path, model: nn.Module, *, map_file: bool = False) -> None:
    """Load a checkpoint's weights strictly into a freshly built ``model`` (before set_resolution);
    ``map_file`` as in :func:`~trainables.checkpoints.native.load_native`."""
    load_native(model, Path(directory) / MODEL_FILE, map_file=map_file)


def load_trainer_state(directory: Path) -> TrainerState:
    """Read the optimizer/scheduler/step/RNG part of a checkpoint."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise InputError(f"{path}: missing, so this checkpoint cannot resume training (only a trial's newest "
                         "checkpoint keeps its optimizer state, and a finished trial's none); resume from the "
                         "trial's newest checkpoint")
    raw = safe_torch_load(path)
    return TrainerState(step=int(raw["step"]), optimizer=raw["optimizer"], scheduler=raw["scheduler"],
                        rng=raw["rng"])


def load_saved_metrics(directory: Path) -> dict[str, Any]:
    """The metrics that were reported together with this checkpoint (``step`` among them)."""
    return json.loads((Path(directory) / METRICS_FILE).read_text())["metrics"]


def drop_trainer_state(filesystem: pyarrow.fs.FileSystem, directory: str) -> bool:
    """Remove the trainer state from a persisted checkpoint ``directory`` on ``filesystem`` (a trial's previous
    checkpoint, once a newer one is persisted); the weights and metrics stay. True when a file was removed;
    a checkpoint already deleted (``num_to_keep``) or without one is left as it is."""
    path = f"{directory.rstrip('/')}/{STATE_FILE}"
    if filesystem.get_file_info(path).type != pyarrow.fs.FileType.File:
        return False
    try:
        filesystem.delete_file(path)
    except FileNotFoundError:  # Train's num_to_keep deleted the checkpoint meanwhile
        return False
    return True
