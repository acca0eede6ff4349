"""The validation-cost benchmark (``bench/eval_cost.py``): how it splits and shares out validation time.

Specification:
- validation's share at ``val_every`` is its time over itself plus ``val_every`` training steps, from the
  steady-state windows (the first one, with model build and warm-up, left out), and the smallest
  ``val_every`` it names brings the share to the goal;
- a part timer accumulates wall time per name until taken;
- scoring column-major masks (the validation pass's layout) gives the metrics of row-major ones, and
  faster-coco-eval, where installed, those of pycocotools;
- one command runs both parts end to end and appends both tables to BENCHMARKS-LOG.md.
"""

from __future__ import annotations

import math
import time

import pytest

import bench.common
from bench import eval_cost


def report(step: int, step_s: float, val_s: float, elapsed: float) -> dict[str, float]:
    return {"step": step, "seconds_per_step": step_s, "val_seconds": val_s, "elapsed_s": elapsed,
            "forward": val_s / 2, "predictions": val_s / 4, "process": val_s / 8, "evaluate": val_s / 8}


def test_share_uses_the_steady_windows_and_names_the_val_every_that_meets_the_goal():
    reports = [report(10, 5.0, 9.0, 70.0), report(20, 1.0, 2.0, 82.0), report(30, 1.0, 2.0, 94.0)]
    summary = eval_cost.share_summary(reports, val_every=10, n_val=4)

    assert summary["seconds_per_step"] == 1.0 and summary["val_seconds"] == 2.0  # first window left out
    assert summary["share"] == pytest.approx(2.0 / 12.0)
    assert summary["trial_share"] == pytest.approx(13.0 / 94.0)
    assert summary["val_s_per_image"] == 0.5 and summary["forward"] == 0.25
    val_every = summary["min_val_every"]
    assert 2.0 / (2.0 + val_every) <= eval_cost.GOAL_SHARE < 2.0 / (2.0 + val_every - 1)


def test_part_timer_accumulates_per_name_until_taken():
    timer = eval_cost.PartTimer()
    nap = timer.timed("nap", lambda seconds: time.sleep(seconds) or "done")

    assert nap(0.01) == "done" and nap(0.01) == "done"
    taken = timer.take()
    assert taken["nap"] >= 0.02 and timer.take() == {}


def test_metrics_comparison_treats_nan_as_equal_and_any_other_difference_as_a_mismatch():
    assert eval_cost.same_metrics({"a": math.nan, "b": 0.5}, {"a": math.nan, "b": 0.5})
    assert not eval_cost.same_metrics({"a": 0.5}, {"a": 0.5 + 1e-6})
    assert not eval_cost.same_metrics({"a": 0.5}, {"a": 0.5, "b": 0.1})


def test_column_major_masks_give_the_metrics_of_row_major_ones():
    rows = eval_cost.measure_scoring(n_images=2, size=96, dets=20)

    assert [(r["step"], r["variant"]) for r in rows[:3]] == [
        ("process", "row-major masks"), ("process", "column-major masks"), ("evaluate", "pycocotools")]
    assert rows[1]["agrees"] == "yes" and rows[1]["metrics"] == rows[0]["metrics"]


@pytest.mark.skipif(eval_cost.faster_coco_eval() is None, reason="faster-coco-eval is not installed")
def test_faster_coco_eval_gives_pycocotools_metrics_on_the_same_predictions():
    rows = eval_cost.measure_scoring(n_images=3, size=96, dets=20)

    assert [r["variant"] for r in rows[2:]] == ["pycocotools", "faster-coco-eval"]
    assert rows[3]["agrees"] == "yes" and rows[3]["metrics"]["val_ap75"] == rows[2]["metrics"]["val_ap75"]


def test_one_command_prints_and_appends_both_parts(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench.common, "LOG", tmp_path / "BENCHMARKS-LOG.md")

    assert eval_cost.main(["--images", "2", "--size", "96", "--steps", "4", "--val-every", "2", "--val", "2",
                           "--train", "4", "--threads", "1"]) == 0

    printed = capsys.readouterr().out
    assert "| pycocotools |" in printed and "| column-major masks |" in printed and "Validation share of trial time" in printed
    appended = (tmp_path / "BENCHMARKS-LOG.md").read_text()
    assert "### Validation cost: scoring per image" in appended
    assert "### Validation cost: share of a tiny-preset trial" in appended
    rows = [line.split(" | ") for line in appended.splitlines() if line.startswith(("| 2 | ", "| 4 | "))]
    assert len(rows) == 2  # one row per validation, at steps 2 and 4
    assert all(float(seconds) > 0 for row in rows for seconds in row[1:7])  # step, validation and its parts


def test_bad_parts_are_refused_naming_the_option(capsys):
    with pytest.raises(SystemExit):
        eval_cost.main(["--parts", "scoring,plots"])
    assert "--parts" in capsys.readouterr().err
