"""Weights & Biases for a sweep: one run per trial (Ray's ``WandbLoggerCallback``) and one summary run.

Both kinds of run share ``group = <sweep name>`` (W&B has no offline "sweep" object; a group is how runs
are gathered). Per trial run: config = the sampled hyperparameters, history = every numeric metric the
trial reported (strings such as ``checkpoint_path`` are not metrics and are dropped by Ray). Summary run
(``job_type="sweep-summary"``): config = the sweep config; tables ``trials`` (one row per trial: id,
hyperparameters, val_dice, val_ap75, status) and ``pareto_front``; summary keys for the sweep's best checkpoint
(:mod:`sweeps.results`: the one the export takes).

Offline (``wandb.mode: offline``) needs no network: every run, the trials' and the summary, is written as an
``offline-run-*`` folder in one place (:func:`runs_dir`), so one ``wandb sync <runs dir>/wandb/offline-run-*``
uploads them all. ``disabled`` creates nothing. The API key is read by W&B itself from ``WANDB_API_KEY`` when
online; nothing here reads, passes or logs it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from common.paths import is_uri
from sweeps.config import METRIC, SECOND_OBJECTIVE, SweepConfig
from sweeps.results import SweepResults, load_sweep

UPLOAD_TIMEOUT_S = 60  # Ray waits this long for trial runs to finish at the end (default 1800 s)
SUMMARY_JOB_TYPE = "sweep-summary"


def runs_dir(cfg: SweepConfig) -> Path:
    """The folder whose ``wandb/`` holds every W&B run of the sweep: the experiment folder; for a sweep on
    object storage, ``<name>-wandb`` beside its Optuna journal (a local or NFS file for such a sweep)."""
    if is_uri(cfg.storage_path):
        return Path(cfg.study_storage).parent / f"{cfg.name}-wandb"
    return Path(cfg.experiment_dir)


def trial_callbacks(cfg: SweepConfig) -> list:
    """The Tune callbacks that log each trial to W&B (none when disabled). Call in the driver process.

    Each trial's run is written under :func:`runs_dir` (``dir=``, passed on to ``wandb.init`` by Ray's logging
    actor, which runs on the driver's node), not in the trial's folder, which Tune copies to storage before the
    last run is complete. Sets ``WANDB_MODE`` in this process: Ray's callback looks for an API key in the
    driver unless the environment says offline/disabled, so an offline sweep without a key would otherwise
    fail to start.
    """
    if cfg.wandb.mode == "disabled":
        return []
    from ray.air.integrations.wandb import WandbLoggerCallback

    os.environ["WANDB_MODE"] = cfg.wandb.mode
    folder = runs_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)  # wandb.init falls back to a temporary folder without it
    return [WandbLoggerCallback(project=cfg.wandb.project, group=cfg.name, mode=cfg.wandb.mode, dir=str(folder),
                                upload_timeout=UPLOAD_TIMEOUT_S)]


def trials_rows(sweep: SweepResults) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the ``trials`` table: one row per trial (last reported objectives)."""
    params = sorted({k for t in sweep.trials for k in t.params})
    columns = ["trial_id", *params, METRIC, SECOND_OBJECTIVE, "status"]
    rows = [[t.trial_id, *[t.params.get(p) for p in params], t.val_dice, t.val_ap75, t.status]
            for t in sweep.trials]
    return columns, rows


def pareto_rows(sweep: SweepResults) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the ``pareto_front`` table, highest val_dice first."""
    columns, rows = trials_rows(sweep)
    by_id = {row[0]: row for row in rows}
    return columns, [by_id[i] for i in sweep.pareto_ids if i in by_id]


def log_sweep_summary(cfg: SweepConfig, sweep: SweepResults | None = None) -> Path | None:
    """Write the sweep's summary run (after ``Tuner.fit``); return its run folder (None when disabled).

    ``sweep``: the sweep as :func:`sweeps.results.load_sweep` read it (read here when not given).
    """
    if cfg.wandb.mode == "disabled":
        return None
    import wandb

    if sweep is None:
        sweep = load_sweep(cfg.experiment_dir, journal=cfg.study_storage, study_name=cfg.study_name)
    best = sweep.best_checkpoint()
    folder = runs_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=cfg.wandb.project, group=cfg.name, name=f"{cfg.name}-summary",
                     job_type=SUMMARY_JOB_TYPE, dir=str(folder), mode=cfg.wandb.mode,
                     config=dataclasses.asdict(cfg))
    try:
        run.log({"trials": wandb.Table(*trials_rows(sweep)), "pareto_front": wandb.Table(*pareto_rows(sweep))})
        run.summary.update({"num_trials": len(sweep.trials),
                            "num_completed": sum(t.status == "COMPLETE" for t in sweep.trials)})
        if best is not None:
            run.summary.update({"best_trial_id": best.trial_id, "best_step": best.step, f"best_{METRIC}": best.val_dice,
                                f"best_{SECOND_OBJECTIVE}": best.val_ap75, "best_checkpoint": best.checkpoint_path})
        return Path(run.dir).parent
    finally:
        run.finish()

