"""bench/search_efficiency.py: how replayed sweeps are charged and compared (its numbers are only as right as this)."""

from __future__ import annotations

import argparse
import math

import pytest

from bench import search_efficiency as se


def report(trial: str, step: int, dice: float, at: int) -> dict:
    return {"trial_id": trial, "step": step, "val_dice": dice, "reported_ns": at}


def test_trace_charges_each_trial_the_steps_it_ran_in_arrival_order():
    reports = [report("b", 100, 0.1, 3), report("a", 100, 0.0, 1), report("a", 200, 0.2, 2),
               report("b", 200, 0.5, 4)]
    trace = se.sweep_trace("random", 0, reports)
    assert trace.reports == [(100, 0.0), (200, 0.2), (300, 0.1), (400, 0.5)]
    assert trace.trials == 2 and trace.steps_spent == 400


def test_best_is_the_first_time_the_top_dice_was_reported():
    trace = se.SweepTrace("random", 0, 3, [(100, 0.2), (300, 0.6), (500, 0.6), (700, 0.4)])
    assert trace.best() == (0.6, 300)


def test_steps_to_reach_counts_only_reports_within_the_budget():
    trace = se.SweepTrace("asha+tpe", 0, 5, [(100, 0.2), (900, 0.55), (1200, 0.7)])
    assert trace.steps_to_reach(0.5, budget=1000) == 900
    assert trace.steps_to_reach(0.6, budget=1000) is None
    assert trace.steps_to_reach(0.6, budget=2000) == 1200


def test_compare_divides_asha_steps_by_the_steps_random_needed_for_its_best():
    random = se.SweepTrace("random", 1, 2, [(800, 0.3), (1600, 0.6)])
    asha = se.SweepTrace("asha+tpe:val_dice", 1, 6, [(100, 0.1), (400, 0.65)])
    row = se.compare(random, asha, budget=1600)
    assert row["target"] == 0.6 and row["random_steps"] == 1600 and row["asha_steps"] == 400
    assert row["ratio"] == pytest.approx(0.25)
    never = se.compare(random, se.SweepTrace("asha+tpe:val_dice", 1, 6, [(100, 0.1)]), budget=1600)
    assert never["asha_steps"] is None and math.isinf(never["ratio"])


def test_median_ratio_per_asha_metric():
    rows = [{"method": "asha+tpe:val_dice", "ratio": r} for r in (0.5, 0.2, math.inf)]
    rows += [{"method": "asha+tpe:val_presence_auroc", "ratio": 0.1}]
    assert se.median_ratios(rows) == {"val_dice": 0.5, "val_presence_auroc": 0.1}


def test_read_curves_groups_rows_by_grid_point(tmp_path):
    path = tmp_path / "curves.csv"
    path.write_text("lr_transformer,lr_vision,step,val_dice,val_ap75,val_presence_auroc,train_loss\n"
                    "0.001,0.001,200,0.5,0.1,0.9,3.0\n0.001,0.001,100,0.2,0.0,0.7,4.0\n"
                    "0.0001,0.001,100,0.0,0.0,0.6,5.0\n")
    curves = se.read_curves(path)
    assert [r["step"] for r in curves[(1e-3, 1e-3)]] == [100.0, 200.0]
    assert curves[(1e-4, 1e-3)][0]["val_presence_auroc"] == 0.6


@pytest.mark.slow
def test_replayed_sweeps_run_through_the_sweeps_tune_config(tmp_path):
    """Random runs every trial to the end; ASHA stops some early; both see the measured curves."""
    import ray

    from sweeps import ray_compat

    steps = [100, 200, 300, 400]
    # the best point learns; every other point's Dice is flat and lower (ASHA stops them at its rungs)
    curves = {p: [{"step": float(s), "val_dice": (s / 400 if p == (1e-3, 1e-3) else 0.1 * i / 8),
                   "val_ap75": 0.0, "val_presence_auroc": 0.5, "train_loss": 1.0} for s in steps]
              for i, p in enumerate(se.grid_points())}
    args = argparse.Namespace(samples=4, asha_samples_factor=2, steps=400, val_every=100, grace=100, reduction=2)
    ray_compat.init_ray(None, "127.0.0.1", ray_compat.worker_env_vars(0.5), num_cpus=2)
    try:
        random = se.replay_sweep(curves, "random", 0, args, tmp_path)
        asha = se.replay_sweep(curves, "asha+tpe:val_dice", 0, args, tmp_path)
    finally:
        ray.shutdown()
    assert random.trials == 4 and random.steps_spent == 4 * 400
    assert asha.trials == 8 and asha.steps_spent < 8 * 400  # some trials were stopped before max_t
    measured = {d for rows in curves.values() for d in (r["val_dice"] for r in rows)}
    assert {dice for _, dice in random.reports + asha.reports} <= measured
