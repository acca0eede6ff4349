"""A trial's resumable checkpoint: the model in SAM3's native format plus the training state.

Layout of a checkpoint directory (what ``ray.train.Checkpoint.from_directory`` wraps):

- ``model.pt``: the weights in the native format (:mod:`trainables.checkpoints.native`), loadable by sam3's
  own builder and by the export; RoPE tables at the preset's native grid. Or, when the trial's text encoder is
  frozen and unchanged from its starting checkpoint, ``model_trained.pt`` (every other tensor, same format)
  and ``frozen_source.json`` (where the frozen tensors are, with their digest: :mod:`.frozen`) instead: the
  full preset's checkpoints are 1.4 GB smaller. :func:`read_model_state` puts the two back together, checked;
  the export writes a whole ``model.pt``.
- ``trainer_state.pt``: optimizer, LR scheduler, the number of optimizer steps taken, RNG states. Only a
  resume needs it, and a resume starts from a trial's newest checkpoint: the final checkpoint of a trial is
  written without it, and a worker removes it from its previous checkpoint once a newer one is persisted
  (:func:`drop_trainer_state`), so a trial holds at most one (AdamW's moments are 8 bytes per trained
  parameter: more than the model itself).
- ``metrics.json``: the step, the metrics reported with this checkpoint and the trial config (for humans,
  export, and the resume of a finished trial).
- ``val_pairs.csv``: the validation's figures per (image, category) pair
  (:class:`~trainables.metrics.PairFigures`, one row each): what ``val_dice`` and the other figures average, so
  that the sweep's selection can be bootstrapped over validation images (:func:`read_val_pairs`).

Everything is read back with ``torch.load(weights_only=True)``: no pickle code runs on resume.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs
import torch
from torch import nn

from common.errors import InputError
from trainables.checkpoints.files import atomic_torch_save, safe_torch_load
from trainables.checkpoints.frozen import FrozenSource, assemble, frozen_part
from trainables.checkpoints.native import can_assign, load_native_state, native_state_dict
from trainables.metrics import PairFigures
from trainables.model import PRESET_SIZES

log = logging.getLogger(__name__)

#: What the file format adds to the tensors' bytes (zip records, pickled structure, AdamW's step counters).
FORMAT_OVERHEAD = 1.02

MODEL_FILE = "model.pt"
TRAINED_FILE = "model_trained.pt"  # the weights without the frozen ones shared with the starting checkpoint
FROZEN_SOURCE_FILE = "frozen_source.json"
STATE_FILE = "trainer_state.pt"
METRICS_FILE = "metrics.json"
VAL_PAIRS_FILE = "val_pairs.csv"


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

    model: int  # model.pt (the native model in fp32), or model_trained.pt when the frozen part is shared
    trainer_state: int  # trainer_state.pt: AdamW's two fp32 moments for every trained parameter


def estimated_bytes(preset: str, *, freeze_text_encoder: bool, starting_checkpoint: bool) -> CheckpointBytes:
    """What one trial checkpoint of ``preset`` writes to disk, part by part; a frozen text encoder is shared
    with the ``starting_checkpoint`` when there is one (not written)."""
    size = PRESET_SIZES[preset]
    trained = size.parameters - (size.text_encoder if freeze_text_encoder else 0)
    shared = size.text_encoder_bytes if freeze_text_encoder and starting_checkpoint else 0
    return CheckpointBytes(model=int(FORMAT_OVERHEAD * (size.native_bytes - shared)),
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
                          metrics: dict[str, Any], config: dict[str, Any], *, resumable: bool = True,
                          frozen: FrozenSource | None = None, val_pairs: list[PairFigures] | None = None) -> Path:
    """Write a checkpoint of ``model`` (unwrapped, not DDP) after ``step`` optimizer steps; with the trainer
    state when ``resumable`` (not for a trial's final checkpoint: nothing is left to resume). Tensors equal to
    ``frozen``'s (the starting checkpoint's frozen text encoder) are recorded by reference, not written.
    ``val_pairs``: the validation's per-pair figures, kept as ``val_pairs.csv``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = native_state_dict(model)
    if frozen is not None and frozen.shared_by(state):
        shared = frozen_part(state)
        atomic_torch_save({k: v for k, v in state.items() if k not in shared}, directory / TRAINED_FILE)
        frozen.write(directory / FROZEN_SOURCE_FILE)
    else:
        if frozen is not None:
            log.warning("the frozen text encoder differs from %s's (not fp32 there, or changed): this checkpoint "
                        "holds the whole model, %.2f GB more than the disk budget counted", frozen.checkpoint,
                        sum(v.numel() * v.element_size() for v in frozen_part(state).values()) / 1e9)
        atomic_torch_save(state, directory / MODEL_FILE)
    del state
    if resumable:
        torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": capture_rng()}, directory / STATE_FILE)
    (directory / METRICS_FILE).write_text(json.dumps({"step": step, "metrics": metrics, "config": config},
                                                     indent=2, default=float))
    if val_pairs is not None:
        (directory / VAL_PAIRS_FILE).write_text(format_val_pairs(val_pairs), encoding="utf-8")
    return directory


def format_val_pairs(pairs: list[PairFigures]) -> str:
    """The per-pair figures as CSV text: a header of :class:`~trainables.metrics.PairFigures`' fields, a row each."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    fields = [f.name for f in dataclasses.fields(PairFigures)]
    writer.writerow(fields)
    writer.writerows([repr(getattr(p, name)) for name in fields] for p in pairs)
    return out.getvalue()


def read_val_pairs(text: str, source: str) -> list[PairFigures]:
    """The per-pair figures of a checkpoint's ``val_pairs.csv`` (its text; ``source`` names it in errors)."""
    types = {f.name: (int if f.type in ("int", int) else float) for f in dataclasses.fields(PairFigures)}
    try:
        rows = list(csv.DictReader(io.StringIO(text)))
        return [PairFigures(**{name: kind(row[name]) for name, kind in types.items()}) for row in rows]
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{source}: not a val_pairs.csv of this project ({err})") from None


def read_model_state(directory: Path, *, mmap: bool = False,
                     frozen_from: str | Path | None = None) -> dict[str, torch.Tensor]:
    """A checkpoint's whole native state: ``model.pt``, or ``model_trained.pt`` with the frozen tensors read
    (and digest-checked) from the starting checkpoint its record names (or ``frozen_from``, a copy of it)."""
    directory = Path(directory)
    if (directory / MODEL_FILE).is_file() or not (directory / TRAINED_FILE).is_file():
        return safe_torch_load(directory / MODEL_FILE, mmap=mmap)
    source = FrozenSource.read(directory / FROZEN_SOURCE_FILE)
    return assemble(safe_torch_load(directory / TRAINED_FILE, mmap=mmap), source,
                    record=str(directory / FROZEN_SOURCE_FILE), frozen_from=frozen_from)


def load_model_weights(directory: Path, model: nn.Module, *, map_file: bool = False) -> None:
    """Load a checkpoint's weights strictly into a freshly built ``model`` (before set_resolution);
    ``map_file`` as in :func:`~trainables.checkpoints.native.load_native`."""
    assign = map_file and can_assign(model)
    load_native_state(model, read_model_state(directory, mmap=assign), str(directory), assign=assign)


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
