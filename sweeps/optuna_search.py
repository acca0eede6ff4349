"""Ray's ``OptunaSearch``, told the truth about how each trial ended.

Ray tells Optuna each trial's LAST result as COMPLETE, including trials ASHA stopped early (their values
are truncated and would bias the sampler toward short trials) and trials whose loss diverged.
:func:`optuna_state` classifies a trial from its last result instead; :class:`SweepOptunaSearch` tells
Optuna that state and records on each Optuna trial the Ray trial id (user attribute ``ray_trial_id``) and
how its parameters were drawn (``draw``: :func:`draw_kind`), so that a report can tell the sweep's random
draws, an unbiased sample of the search space, from those the sampler chose.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

logger = logging.getLogger(__name__)

RAY_TRIAL_ID_ATTR = "ray_trial_id"
#: the user attribute saying how a trial's parameters were drawn: one of DRAW_KINDS
DRAW_ATTR = "draw"
#: a point of the search space's ``baseline`` / ``points_to_evaluate``; a random draw; the sampler's model
DRAW_KINDS = ("baseline", "random", "model")


def draw_kind(trial: optuna.Trial, random_draws: float) -> str:
    """How ``trial``'s parameters were drawn, asked just now from its study: ``baseline`` (an enqueued point),
    ``random`` (fewer than ``random_draws`` trials had finished, COMPLETE or PRUNED, baselines included, as
    Optuna's TPE counts its ``n_startup_trials``; ``math.inf`` for a random sampler) or ``model``."""
    if "fixed_params" in trial.storage.get_trial_system_attrs(trial._trial_id):  # Study.enqueue_trial's mark
        return "baseline"
    finished = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    return "random" if len(finished) < random_draws else "model"


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
        random_draws: finished trials before which the sampler draws at random (:func:`draw_kind`); None for a
            sampler whose random draws are not told apart (NSGA-II's first generation): no ``draw`` is recorded.
        **kwargs: passed to ``OptunaSearch`` (``metric`` and ``mode`` lists, ``sampler``, ``storage``...).
    """

    def __init__(self, *, max_steps: int, step_key: str = "step", random_draws: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._max_steps = max_steps
        self._step_key = step_key
        self._random_draws = random_draws

    def suggest(self, trial_id: str) -> dict | None:
        params = super().suggest(trial_id)
        trial = self._ot_trials[trial_id]
        trial.set_user_attr(RAY_TRIAL_ID_ATTR, trial_id)
        if self._random_draws is not None and DRAW_ATTR not in trial.user_attrs:  # an adopted trial keeps its own
            trial.set_user_attr(DRAW_ATTR, draw_kind(trial, self._random_draws))
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


class ResumableOptunaSearch(SweepOptunaSearch):
    """``SweepOptunaSearch`` that reconciles its restored state with the live Optuna study on ``--resume``.

    Tune restores the searcher from its last experiment snapshot, but the study (a journal file) is
    written live, so after a driver kill it can be ahead of the snapshot in two ways:

    - a trial was asked (RUNNING in the study) after the snapshot: Tune does not know it and will ask
      for a new one. The next new Tune trial ADOPTS that Optuna trial (its sampled parameters, its
      ``ray_trial_id`` updated) instead of asking another: no RUNNING trial is left behind, none is
      duplicated, and an interrupted baseline point is run rather than lost or enqueued twice. The
      sampler's random generator is then reseeded: restored from the snapshot, it would draw the adopted
      trials' parameters once more.
    - a trial was told (finished in the study) after the snapshot: Tune runs it again (its Train run
      resumes from its last checkpoint). The study keeps the outcome it was first told; the second
      completion is not told (Optuna refuses to tell a finished trial twice).
    """

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        stored = {t._trial_id: t for t in self._ot_study.get_trials(deepcopy=False)}
        known = {t._trial_id for t in self._ot_trials.values()}
        self._adoptable = sorted(sid for sid, t in stored.items() if t.state == TrialState.RUNNING and sid not in known)
        self._told_before_restore = {rid for rid, t in self._ot_trials.items()
                                     if rid not in self._completed_trials and stored[t._trial_id].state.is_finished()}
        if self._adoptable:  # the snapshot's sampler RNG would draw the adopted trials' parameters again
            self._ot_study.sampler.reseed_rng()
        if self._adoptable or self._told_before_restore:
            logger.warning("Optuna study ahead of Tune's snapshot: adopting %d asked trial(s); keeping the "
                           "first outcome of %s", len(self._adoptable), sorted(self._told_before_restore))

    def suggest(self, trial_id: str) -> dict | None:
        adoptable = getattr(self, "_adoptable", None)
        if adoptable and trial_id not in self._ot_trials:
            self._ot_trials[trial_id] = optuna.Trial(self._ot_study, adoptable.pop(0))
        return super().suggest(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in getattr(self, "_told_before_restore", ()) and trial_id not in self._completed_trials:
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result=result, error=error)
