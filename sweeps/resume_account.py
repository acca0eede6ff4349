"""What ``--resume`` found: the account a resumed sweep prints before it goes on (issue 23, item 4).

Read from what the interrupted run left (no Ray needed): Tune's saved trials (:func:`sweeps.results.load_sweep`),
the Optuna study, and each unfinished trial's Ray Train run, whose newest checkpoint is where it continues:

- finished trials (Tune's TERMINATED) are kept as they are;
- unfinished ones (RUNNING, PENDING, PAUSED) continue from their Train run's newest checkpoint, or start
  over when it has none;
- errored ones are tried again (from their newest checkpoint);
- Optuna trials asked after Tune's last snapshot (RUNNING in the study, unknown to Tune) are adopted by the
  next new trials (:class:`sweeps.optuna_search.ResumableOptunaSearch`);
- the rest of ``num_samples`` start as new trials.
"""

from __future__ import annotations

import json

import pyarrow.fs
from optuna.trial import TrialState

from common.paths import open_location
from sweeps.config import SweepConfig
from sweeps.optimizer_state import train_run_name
from sweeps.optuna_search import RAY_TRIAL_ID_ATTR
from sweeps.results import SweepResults, TrialRecord, load_sweep
from trainables.checkpoints.trial import METRICS_FILE

UNFINISHED = ("RUNNING", "PENDING", "PAUSED")


def checkpoint_step(train_runs: str, run_name: str) -> int | None:
    """The step of the newest checkpoint of Train run ``run_name`` (its saved metrics), None without one."""
    fs, root = open_location(train_runs)
    folders = fs.get_file_info(pyarrow.fs.FileSelector(f"{root}/{run_name}", allow_not_found=True))
    steps = []
    for folder in folders:
        if folder.type != pyarrow.fs.FileType.Directory or not folder.base_name.startswith("checkpoint_"):
            continue
        try:
            with fs.open_input_stream(f"{folder.path}/{METRICS_FILE}") as f:
                steps.append(int(json.loads(f.readall())["step"]))
        except (OSError, ValueError, KeyError, TypeError):  # a checkpoint being written when the driver died
            continue
    return max(steps, default=None)


def _ended(trial: TrialRecord, max_steps: int) -> str:
    if trial.status == "FAIL":
        return "diverged or failed"
    if trial.steps >= max_steps:
        return "completed"
    return f"stopped at step {trial.steps}"


def describe_resume(cfg: SweepConfig, sweep: SweepResults | None = None) -> str:
    """The account of what ``--resume`` of ``cfg`` found, one line per kind of trial (``sweep``: the sweep
    as read already, else read here)."""
    sweep = sweep or load_sweep(cfg.experiment_dir, journal=cfg.study_storage, study_name=cfg.study_name)
    tune_status = {t.trial_id: t.tune_status for t in sweep.trials}
    kept, continued, retried = [], [], []
    for trial in sweep.trials:
        status = trial.tune_status
        if status == "TERMINATED":
            kept.append(f"{trial.trial_id} ({_ended(trial, cfg.trial.max_steps)})")
        elif status in UNFINISHED or status == "ERROR":
            step = checkpoint_step(cfg.train_runs, train_run_name(cfg.name, trial.trial_id))
            where = f"{trial.trial_id} from step {step}" if step else f"{trial.trial_id} from the start"
            if step and step >= cfg.trial.max_steps:  # ended after Tune's last snapshot
                where = f"{trial.trial_id} (it had finished: its last result is reported again)"
            (retried if status == "ERROR" else continued).append(where)
    known = set(tune_status)
    adopted = [t.number for t in (sweep.study.trials if sweep.study else [])
               if t.state == TrialState.RUNNING and t.user_attrs.get(RAY_TRIAL_ID_ATTR) not in known]
    new = max(cfg.num_samples - len(tune_status), 0)
    lines = [f"resume of {cfg.name}: {len(tune_status)} of {cfg.num_samples} trials started before",
             f"  kept (finished)      : {len(kept)}" + (f": {', '.join(kept)}" if kept else ""),
             f"  continued            : {len(continued)}" + (f": {', '.join(continued)}" if continued else ""),
             f"  retried (errored)    : {len(retried)}" + (f": {', '.join(retried)}" if retried else ""),
             f"  new trials to start  : {new}" + (f", the first {len(adopted)} taking the parameters Optuna had "
                                                 f"drawn before the stop (Optuna trial "
                                                 f"{', '.join(f'#{n}' for n in adopted)})"
                                                 if adopted else "")]
    return "\n".join(lines)

