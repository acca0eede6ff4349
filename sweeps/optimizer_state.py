"""Optimizer state only where a resume needs it: the driver's half.

A worker keeps the trainer state (AdamW's moments: 8 bytes per trained parameter, more than the model) in
its trial's newest checkpoint only (:class:`trainables.train_loop.RayReporter`), and a trial's final
checkpoint has none. A trial that ends otherwise (stopped early by ASHA, or diverged) would keep one
forever although Tune never resumes it: when Tune reports a trial complete, this callback removes the trainer
state from every checkpoint of its Train run. An errored trial keeps it (``--resume`` retries it).

Tune reports a trial complete before it stops the trial's actor, so a trial stopped early can persist one more
checkpoint after that; the callback looks again at the end of the sweep, when Tune has stopped every actor.
"""

from __future__ import annotations

import logging

import pyarrow.fs
from ray.tune import Callback

from common.paths import open_location
from sweeps.config import SweepConfig

log = logging.getLogger(__name__)


def train_run_name(sweep_name: str, trial_id: str) -> str:
    """The Ray Train run of Tune trial ``trial_id`` (named after it, so that a restored driver resumes it)."""
    return f"{sweep_name}-{trial_id}"


def drop_state_of_train_run(train_runs: str, run_name: str) -> int:
    """Remove the trainer state from every checkpoint of the Train run ``run_name`` under ``train_runs`` (a
    local folder or URI); return how many files were removed."""
    from trainables.checkpoints.trial import drop_trainer_state  # late: it imports torch and sam3

    fs, root = open_location(train_runs)
    selector = pyarrow.fs.FileSelector(f"{root}/{run_name}", allow_not_found=True)
    folders = [info.path for info in fs.get_file_info(selector)
               if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("checkpoint_")]
    return sum(drop_trainer_state(fs, folder) for folder in folders)


class DropStateOfEndedTrials(Callback):
    """A Tune callback that drops the trainer state of each trial Tune reports complete (finished, stopped
    early or diverged; not errored)."""

    def __init__(self, cfg: SweepConfig) -> None:
        self.train_runs, self.sweep_name = cfg.train_runs, cfg.name
        self.ended: list[str] = []  # trial ids, in the order Tune reported them complete

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self.ended.append(trial.trial_id)
        self._drop(trial.trial_id)

    def on_experiment_end(self, trials: list, **info) -> None:
        # A checkpoint persisted between "complete" and the actor's stop. Not every trial marked TERMINATED:
        # Tune marks so the trials it stops when a sweep is interrupted, and those resume from their state.
        for trial_id in self.ended:
            self._drop(trial_id)

    def _drop(self, trial_id: str) -> None:
        try:
            removed = drop_state_of_train_run(self.train_runs, train_run_name(self.sweep_name, trial_id))
        except OSError as error:  # disk space is not worth failing a sweep over
            log.warning("trial %s: could not remove its optimizer state: %s", trial_id, error)
            return
        if removed:
            log.info("trial %s ended: removed the optimizer state of %d checkpoint(s)", trial_id, removed)
