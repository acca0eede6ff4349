"""Ray's ``OptunaSearch``, told the truth about how each trial ended.

Ray tells Optuna each trial's LAST result as COMPLETE, including trials ASHA stopped early (their values
are truncated and would bias the sampler toward short trials) and trials whose loss diverged.
:func:`optuna_state` classifies a trial from its last result instead; :class:`SweepOptunaSearch` tells
Optuna that state and records the Ray trial id on each Optuna trial (user attribute ``ray_trial_id``).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

logger = logging.getLogger(__name__)

RAY_TRIAL_ID_ATTR = "ray_trial_id"


def optuna_state(result: dict[str, Any] | None, *, error: bool, objectives: list[str], step_key: str,
                 max_steps: int) -> TrialState:
    """How a Ray trial ended, for Optuna.

    FAIL: the trial errored, reported ``diverged=True``, or lacks a finite value of an objective.
    PRUNED: it never reported (removed before running), or its last ``step_key`` is below ``max_steps``
    (stopped early by the scheduler). COMPLETE: it reached ``max_steps`` with finite objectives.
    """
    if error:
        return TrialState.FAIL
    if not result:
        return TrialState.PRUNED
    if result.get("diverged"):
        return TrialState.FAIL
    values = [result.get(name) for name in objectives]
    if any(not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
        return TrialState.FAIL
    if result.get(step_key, 0) < max_steps:
        return TrialState.PRUNED
    return TrialState.COMPLETE


class SweepOptunaSearch(OptunaSearch):
    """``OptunaSearch`` (multi-objective) that tells PRUNED/FAIL per :func:`optuna_state`.

    Args:
        max_steps: the step count of a trial that ran to the end (the trial config's ``max_steps``).
        step_key: the reported step counter (the scheduler's time attribute).
        **kwargs: passed to ``OptunaSearch`` (``metric`` and ``mode`` lists, ``sampler``, ``storage``...).
    """

    def __init__(self, *, max_steps: int, step_key: str = "step", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._max_steps = max_steps
        self._step_key = step_key

    def suggest(self, trial_id: str) -> dict | None:
        params = super().suggest(trial_id)
        self._ot_trials[trial_id].set_user_attr(RAY_TRIAL_ID_ATTR, trial_id)
        return params

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        objectives = self.metric if isinstance(self.metric, list) else [self.metric]
        state = optuna_state(result, error=error, objectives=objectives, step_key=self._step_key,
                             max_steps=self._max_steps)
        if state == TrialState.COMPLETE or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        logger.info("Optuna: trial %s -> %s", trial_id, state.name)
        self._ot_study.tell(self._ot_trials[trial_id], None, state=state)
        self._completed_trials.add(trial_id)
