"""Specification of "best": one rule (``sweeps.results``) that the driver's summary, W&B, the report and the
export share, so that they all name the same checkpoint, ties and unsaved reports included."""

from __future__ import annotations

import pandas as pd
import pytest

from sweeps.export import choose
from sweeps.report import FIGURES, make_figure
from sweeps.results import ParetoRow, SweepResults, TrialRecord, best_of, best_report
from sweeps.stage2 import SweepOutcome, format_outcome


def trial(trial_id: str, *rows: dict) -> TrialRecord:
    return TrialRecord(trial_id, {"lr_transformer": 1e-4}, "COMPLETE", pd.DataFrame(list(rows)))


def report(step: int, dice: float, ap75: float, checkpoint: str | None) -> dict:
    return {"step": step, "val_dice": dice, "val_ap75": ap75, "checkpoint_path": checkpoint,
            "val_dice/proximal_rca": dice + step / 100}


def sweep_of(*trials: TrialRecord) -> SweepResults:
    return SweepResults("s", "/tmp/s", list(trials), study=None,
                        pareto=[ParetoRow(t.trial_id, t.params, t.val_dice, t.val_ap75, None) for t in trials],
                        notes=[])


def test_all_dice_tied_the_report_and_the_export_name_the_same_checkpoint(tmp_path):
    """The demo's case: every val_dice is 0. The latest checkpoint of the first trial, for every reader."""
    sweep = sweep_of(trial("t1", report(2, 0.0, 0.3, "/x/t1/c2"), report(4, 0.0, 0.1, "/x/t1/c4")),
                     trial("t2", report(2, 0.0, 0.9, "/x/t2/c2"), report(4, 0.0, 0.2, "/x/t2/c4")))
    best = sweep.best_checkpoint()
    assert (best.trial_id, best.step, best.checkpoint_path) == ("t1", 4, "/x/t1/c4")
    assert choose(sweep.histories, "dice") == [best]
    assert sweep.best.trial_id == "t1" and sweep.best.best_report()["step"] == 4
    per_category = make_figure(sweep, tmp_path, *next(f for f in FIGURES if f[1] == "per_category.png"))
    assert per_category.images  # drawn from the best trial's best report, the exported checkpoint
    outcome = SweepOutcome(sweep=sweep, study_storage="j", study_name="s", num_trials=2, errors={})
    assert "best checkpoint (what `python -m sweeps.export` takes): t1 step 4" in format_outcome(outcome)


def test_a_report_that_saved_no_checkpoint_is_never_the_best():
    """A higher Dice whose checkpoint was not saved cannot be exported, so it is not the best either."""
    history = pd.DataFrame([report(2, 0.9, 0.1, None), report(4, 0.5, 0.2, "/x/t1/c4")])
    assert best_report(history)["step"] == 4
    sweep = sweep_of(trial("t1", *history.to_dict("records")), trial("t2", report(2, 0.6, 0.0, "/x/t2/c2")))
    assert sweep.best_checkpoint().trial_id == "t2" and sweep.best.trial_id == "t2"
    assert choose(sweep.histories, "dice")[0].trial_id == "t2"


def test_the_best_by_ap75_is_the_highest_ap75_that_saved_a_checkpoint():
    histories = {"t1": pd.DataFrame([report(2, 0.5, 0.7, "/a"), report(4, 0.6, 0.7, "/b")]),
                 "t2": pd.DataFrame([report(2, 0.9, 0.6, "/c")])}
    best = best_of(histories, "val_ap75")
    assert (best.trial_id, best.checkpoint_path, best.val_ap75) == ("t1", "/b", pytest.approx(0.7))


def test_a_history_that_records_no_checkpoints_still_has_a_best_report_but_no_best_checkpoint():
    sweep = sweep_of(trial("t1", {"step": 2, "val_dice": 0.3}, {"step": 4, "val_dice": 0.2}))
    assert sweep.best.trial_id == "t1" and sweep.best.best_report()["step"] == 2
    assert sweep.best_checkpoint() is None


def test_a_step_reported_twice_keeps_its_last_report():
    """A resumed trial reports its resume checkpoint again: one row per step, the second report's checkpoint."""
    from sweeps.results import one_row_per_step

    history = pd.DataFrame([report(2, 0.3, 0.1, "/c/first-2"), report(4, 0.5, 0.2, "/c/first-4"),
                            report(4, 0.5, 0.2, "/c/again-4"), report(6, 0.4, 0.2, "/c/6")])
    rows = one_row_per_step(history)
    assert rows["step"].tolist() == [2, 4, 6]
    assert rows["checkpoint_path"].tolist() == ["/c/first-2", "/c/again-4", "/c/6"]
    assert best_report(rows)["checkpoint_path"] == "/c/again-4"
