"""A finished (or interrupted) sweep, read-only: its trials, its Pareto front and its best checkpoint.

This module is the one place that decides what "best" means. The driver's summary, the W&B summary run,
the HTML report and the export all read a sweep through :func:`load_sweep` and name the same trial and
checkpoint.

It reads what the driver leaves in the experiment folder (``<storage_path>/<name>``, a local folder or a
pyarrow URI such as ``s3://bucket/sweeps/name``): Tune's per-trial histories (``ExperimentAnalysis``, one
row per report; ``checkpoint_path`` names the Train checkpoint a report saved) and the Optuna study in its
journal (:func:`sweeps.config.default_journal` unless the sweep named another file).

The rules:

- a trial's reports are one per step, the last of a step's (a resumed trial reports its resume checkpoint
  again: :func:`one_row_per_step`);
- a trial's objectives are its LAST report, as Optuna was told; its status is Optuna's (COMPLETE,
  PRUNED = stopped early by ASHA, FAIL = diverged or errored), else Tune's;
- a trial's **best report** by a metric (default ``val_dice``) is its highest-valued report among those
  that saved a checkpoint; on ties the latest, the one Train's retention (``num_to_keep`` by ``val_dice``)
  keeps;
- the **best checkpoint** of the sweep is the best report over every trial (ties: the first trial);
  the **best trial** is the trial that holds it. Kept by measurement (``bench/selection.py``, BENCHMARKS.md
  "Checkpoint selection"): averaging a trial's last validations picked worse test Dice, a lower confidence
  bound no better;
- the **Pareto front** is Optuna's Pareto-optimal COMPLETE trials on (val_dice, val_ap75), highest
  val_dice first, each with its best report's checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pyarrow.fs

from common.errors import InputError
from common.paths import is_uri, last_part, open_location
from common.typed_yaml import excerpt
from sweeps.config import METRIC, SECOND_OBJECTIVE, TIME_ATTR, default_journal
from sweeps.optuna_search import DRAW_ATTR, RAY_TRIAL_ID_ATTR
from sweeps.study_storage import is_database_url, open_storage, shown

CHECKPOINT_COLUMN = "checkpoint_path"  # the metric TuneReportCallback adds to a report that saved a checkpoint


@dataclass(frozen=True)
class CheckpointReport:
    """One report of one trial that saved a checkpoint: where the checkpoint is and what was reported."""

    trial_id: str
    checkpoint_path: str  # as recorded (a local path, or bucket-relative for URI storage)
    step: int
    val_dice: float
    val_ap75: float
    metrics: pd.Series = field(repr=False, compare=False)  # the whole report (per-category figures too)


@dataclass(frozen=True)
class ParetoRow:
    """One Pareto-optimal trial: its Ray id, sampled hyperparameters, objectives and best checkpoint."""

    trial_id: str
    params: dict
    val_dice: float
    val_ap75: float
    checkpoint_path: str | None


def best_report(history: pd.DataFrame | None, metric: str = METRIC) -> pd.Series | None:
    """The row of ``history`` (a trial's reports) with the highest ``metric`` among those that saved a
    checkpoint (among all, for a history that records no checkpoints); the latest on ties. None if none."""
    if history is None or metric not in history:
        return None
    rows = history.dropna(subset=[metric])
    if CHECKPOINT_COLUMN in history:
        rows = rows.dropna(subset=[CHECKPOINT_COLUMN])
    if rows.empty:
        return None
    return rows[rows[metric] == rows[metric].max()].iloc[-1]


def best_checkpoint(history: pd.DataFrame | None, metric: str = METRIC) -> str | None:
    """The ``checkpoint_path`` of :func:`best_report` (None when no report saved one)."""
    row = best_report(history, metric)
    return str(row[CHECKPOINT_COLUMN]) if _saved_checkpoint(row) else None


def _saved_checkpoint(row: pd.Series | None) -> bool:
    return row is not None and CHECKPOINT_COLUMN in row and not pd.isna(row[CHECKPOINT_COLUMN])


def checkpoint_report(trial_id: str, row: pd.Series) -> CheckpointReport:
    """A :class:`CheckpointReport` of one history row that saved a checkpoint."""
    return CheckpointReport(trial_id=trial_id, checkpoint_path=str(row[CHECKPOINT_COLUMN]), step=int(row[TIME_ATTR]),
                            val_dice=float(row[METRIC]), val_ap75=float(row.get(SECOND_OBJECTIVE, math.nan)),
                            metrics=row)


def best_of(histories: Mapping[str, pd.DataFrame | None], metric: str = METRIC) -> CheckpointReport | None:
    """The sweep's best checkpoint by ``metric``: each trial's :func:`best_report` that saved a checkpoint, the
    highest of them (the first trial on ties). ``histories``: trial id -> its reports."""
    best = None
    for trial_id, history in histories.items():
        row = best_report(history, metric)
        if not _saved_checkpoint(row):
            continue
        report = checkpoint_report(trial_id, row)
        if best is None or report.metrics[metric] > best.metrics[metric]:
            best = report
    return best


@dataclass(frozen=True)
class TrialRecord:
    """One trial: Ray id, sampled hyperparameters, status, its reports (one row each, by step) and how its
    parameters were drawn (``baseline``, ``random`` or ``model``: :func:`sweeps.optuna_search.draw_kind`; None
    without a study, or for a study written before draws were recorded)."""

    trial_id: str
    params: dict[str, Any]
    status: str
    history: pd.DataFrame = field(repr=False)
    draw: str | None = None
    tune_status: str | None = None  # Tune's saved status (TERMINATED, RUNNING, PENDING, PAUSED, ERROR)

    def last(self, key: str) -> float:
        """The last reported value of ``key`` (nan if never reported)."""
        if key not in self.history:
            return math.nan
        values = self.history[key].dropna()
        return float(values.iloc[-1]) if len(values) else math.nan

    @property
    def val_dice(self) -> float:
        return self.last(METRIC)

    @property
    def val_ap75(self) -> float:
        return self.last(SECOND_OBJECTIVE)

    @property
    def steps(self) -> int:
        """The last reported step (0 if none)."""
        step = self.last(TIME_ATTR)
        return 0 if math.isnan(step) else int(step)

    @property
    def validation_share(self) -> float:
        """The share of the training loop's time spent validating: the reports' ``val_seconds`` over their
        ``elapsed_s`` (which restarts from 0 when a run resumes, so each run's last value counts); nan when the
        reports carry no timings."""
        if "val_seconds" not in self.history or "elapsed_s" not in self.history:
            return math.nan
        timed = self.history[["val_seconds", "elapsed_s"]].dropna()
        elapsed = timed["elapsed_s"].to_numpy()
        run_ends = np.append(elapsed[1:] < elapsed[:-1], True)  # the last report before each restart, and the last
        total = float(elapsed[run_ends].sum()) if len(elapsed) else 0.0
        return float(timed["val_seconds"].sum()) / total if total > 0 else math.nan

    def best_report(self, metric: str = METRIC) -> pd.Series | None:
        """This trial's best report (:func:`best_report`), or None if it never validated."""
        return best_report(self.history, metric)


@dataclass(frozen=True)
class SweepResults:
    """A sweep as :func:`load_sweep` reads it. ``pareto``: Optuna's Pareto front, highest ``val_dice`` first."""

    name: str
    experiment_dir: str | Path
    trials: list[TrialRecord]
    study: optuna.Study | None
    pareto: list[ParetoRow]
    notes: list[str]

    @property
    def pareto_ids(self) -> list[str]:
        return [row.trial_id for row in self.pareto]

    @property
    def histories(self) -> dict[str, pd.DataFrame]:
        """Trial id -> its reports."""
        return {t.trial_id: t.history for t in self.trials}

    def best_checkpoint(self, metric: str = METRIC) -> CheckpointReport | None:
        """The sweep's best checkpoint by ``metric`` (:func:`best_of`; None when no report saved one)."""
        return best_of(self.histories, metric)

    @property
    def best(self) -> TrialRecord | None:
        """The trial that holds the best checkpoint by ``val_dice`` (without checkpoints: the best report)."""
        scored = [t for t in self.trials if t.best_report() is not None]
        chosen = self.best_checkpoint()
        if chosen is not None:
            return next(t for t in scored if t.trial_id == chosen.trial_id)
        return max(scored, key=lambda t: t.best_report()[METRIC], default=None)


def load_study(storage: str, study_name: str | None, fallback_name: str, notes: list[str]) -> optuna.Study | None:
    """The study ``study_name`` (default: the storage's only study, else ``fallback_name``) from a journal file or
    database (:mod:`sweeps.study_storage`), or None with a note saying why."""
    if not is_database_url(storage) and not Path(storage).is_file():
        notes.append(f"no Optuna journal at {storage}: trial states come from Tune, no Pareto front or "
                     "importances")
        return None
    opened = open_storage(storage)
    names = optuna.get_all_study_names(opened)
    name = study_name or (names[0] if len(names) == 1 else fallback_name)
    if name not in names:
        notes.append(f"{shown(storage)} has no study {name!r} (it has {names})")
        return None
    return optuna.load_study(study_name=name, storage=opened)


def experiment_filesystem(experiment: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The experiment folder's filesystem and its path there; refuses a folder that does not exist."""
    fs, path = open_location(experiment)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.Directory:
        raise InputError(f"{experiment}: experiment folder not found (expected <storage_path>/<sweep name>)")
    return fs, path


def one_row_per_step(history: pd.DataFrame) -> pd.DataFrame:
    """A trial's reports by step, one per step: the last of a step's reports. A resumed trial reports its
    resume checkpoint again (Tune may have lost the first report with the driver); the first report's
    checkpoint may be gone since (Train keeps ``num_to_keep``), the second's is not."""
    if TIME_ATTR not in history:
        return history
    history = history.sort_values(TIME_ATTR, kind="stable")
    return history.drop_duplicates(subset=[TIME_ATTR], keep="last").reset_index(drop=True)


def load_sweep(experiment_dir: str | Path, *, journal: str | Path | None = None,
               study_name: str | None = None) -> SweepResults:
    """Read a sweep's Tune results and its Optuna study (no Ray cluster needed).

    ``journal``: where the study lives (a journal file or database URL, :mod:`sweeps.study_storage`); default
    :func:`~sweeps.config.default_journal` of a local experiment folder (a URI's study needs it named).
    ``study_name``: default the storage's only study, else the experiment folder's name (the driver's default).
    A missing journal or study is not an error: states then come from Tune, there is no Pareto front, and
    ``notes`` says why.
    """
    from ray.tune import ExperimentAnalysis

    experiment = str(experiment_dir)
    fs, fs_path = experiment_filesystem(experiment)
    try:
        analysis = ExperimentAnalysis(fs_path, storage_filesystem=fs)
    except Exception as err:  # noqa: BLE001 (Tune's reader raises KeyError, TypeError... on a damaged state file)
        detail = str(err).splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{experiment}: not a Tune experiment directory, or its state is damaged "
                         f"({type(err).__name__}: {excerpt(detail, 200)})") from None
    name = last_part(experiment)
    notes: list[str] = []
    if journal is None and is_uri(experiment):
        notes.append(f"{experiment} is not a local folder: name its Optuna journal (a local/NFS file) to read "
                     "trial states, the Pareto front and importances")
        study = None
    else:
        study = load_study(str(journal or default_journal(experiment)), study_name, name, notes)
    states = {t.user_attrs.get(RAY_TRIAL_ID_ATTR): t.state.name for t in study.trials} if study else {}
    draws = {t.user_attrs.get(RAY_TRIAL_ID_ATTR): t.user_attrs.get(DRAW_ATTR) for t in study.trials} if study else {}
    trials = []
    for trial in analysis.trials:
        history = analysis.trial_dataframes.get(trial.trial_id)
        history = pd.DataFrame() if history is None else history
        history = one_row_per_step(history)
        trials.append(TrialRecord(trial.trial_id, dict(trial.config), states.get(trial.trial_id, trial.status),
                                  history, draws.get(trial.trial_id), trial.status))
    return SweepResults(name, Path(experiment).absolute() if not is_uri(experiment) else experiment, trials, study,
                        pareto_front(study, {t.trial_id: t.history for t in trials}), notes)


def pareto_front(study: optuna.Study | None, histories: Mapping[str, pd.DataFrame]) -> list[ParetoRow]:
    """Optuna's Pareto-optimal COMPLETE trials, highest val_dice first, each with its best checkpoint."""
    if study is None:
        return []
    rows = []
    for t in study.best_trials:
        trial_id = t.user_attrs.get(RAY_TRIAL_ID_ATTR, f"optuna-{t.number}")
        rows.append(ParetoRow(trial_id=trial_id, params=t.params, val_dice=t.values[0], val_ap75=t.values[1],
                              checkpoint_path=best_checkpoint(histories.get(trial_id))))
    return sorted(rows, key=lambda r: -r.val_dice)
