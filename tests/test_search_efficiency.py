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


def test_trace_records_how_each_trial_ended_in_the_order_they_started():
    reports = [{**report("b", 100, 0.1, 3), "point": (2.0,)}, {**report("a", 100, 0.0, 1), "point": (1.0,)},
               {**report("a", 200, 0.2, 2), "point": (1.0,)}, {**report("c", 100, 0.3, 4), "point": (1.0,)}]
    trace = se.sweep_trace("random", 0, reports)
    assert trace.order == ((1.0,), (2.0,), (1.0,))
    assert trace.ends == (((1.0,), 200, 0.2), ((2.0,), 100, 0.1), ((1.0,), 100, 0.3))
    summary = se.trials_summary(trace, {"lr_transformer": [1.0, 2.0]})
    assert summary.splitlines()[1:] == ["  lr_transformer=1: 1 x to step 100 (0.300)",
                                        "  lr_transformer=1: 1 x to step 200 (0.200)",
                                        "  lr_transformer=2: 1 x to step 100 (0.100)"]


def curve(*dice: float, every: int = 100) -> list[dict]:
    return [{"step": float(every * (i + 1)), "val_dice": d} for i, d in enumerate(dice)]


def test_asha_floor_charges_the_first_trial_in_full_and_each_later_one_its_grace_period():
    curves = {(1.0,): curve(0.1, 0.2, 0.3, 0.3), (2.0,): curve(0.0, 0.0, 0.1, 0.2), (3.0,): curve(0.2, 0.4, 0.6, 0.7)}
    order = ((1.0,), (2.0,), (2.0,), (3.0,))
    # 400 (first, run to max_t) + 100 + 100 (stopped at grace) + 300 (the third point reaches 0.6 at step 300)
    assert se.asha_floor(order, curves, target=0.6, max_t=400, grace=100) == 900
    # the first trial reaches 0.3 itself at step 300: nothing later is cheaper
    assert se.asha_floor(order, curves, target=0.3, max_t=400, grace=100) == 300
    assert se.asha_floor(order, curves, target=0.7, max_t=300, grace=100) is None  # only reached after max_t


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
    row = se.compare(random, asha, budget=1600, floor=1200)
    assert row["target"] == 0.6 and row["random_steps"] == 1600 and row["asha_steps"] == 400
    assert row["ratio"] == pytest.approx(0.25) and row["floor_ratio"] == pytest.approx(0.75)
    assert (row["random_third"], row["asha_third"]) == (-math.inf, 0.65)  # within 1600 // 3 = 533 trial-steps
    never = se.compare(random, se.SweepTrace("asha+tpe:val_dice", 1, 6, [(100, 0.1)]), budget=1600)
    assert never["asha_steps"] is None and math.isinf(never["ratio"])


def test_median_ratio_per_asha_metric():
    rows = [{"method": "asha+tpe:val_dice", "ratio": r} for r in (0.5, 0.2, math.inf)]
    rows += [{"method": "asha+tpe:val_presence_auroc", "ratio": 0.1}]
    assert se.median_ratios(rows) == {"val_dice": 0.5, "val_presence_auroc": 0.1}


def test_equal_budget_tally_counts_seeds_where_asha_found_more_the_same_or_less_within_a_third():
    rows = [{"asha_third": a, "random_third": r} for a, r in
            ((0.6, 0.5), (0.5, 0.5), (0.4, 0.5), (0.3, math.nan), (math.nan, math.nan), (math.nan, 0.2))]
    assert se.equal_budget_tally(rows) == (2, 2, 2)


def test_grid_option_names_float_trial_settings():
    grid = se.parse_grid(["lr_transformer=1e-4,3e-4", "lr_vision=1e-3"])
    assert grid == {"lr_transformer": [1e-4, 3e-4], "lr_vision": [1e-3]}
    assert se.grid_points(grid) == [(1e-4, 1e-3), (3e-4, 1e-3)]
    for bad in ("lr_transformer", "no_such_setting=1", "preset=1", "lr_vision=1e-3,fast", "lr_vision="):
        with pytest.raises(SystemExit, match="--grid"):
            se.parse_grid([bad])


def test_read_curves_groups_rows_by_grid_point(tmp_path):
    path = tmp_path / "curves.csv"
    path.write_text("lr_transformer,lr_vision,step,val_dice,val_ap75,val_presence_auroc,train_loss\n"
                    "0.001,0.001,200,0.5,0.1,0.9,3.0\n0.001,0.001,100,0.2,0.0,0.7,4.0\n"
                    "0.0001,0.001,100,0.0,0.0,0.6,5.0\n")
    curves = se.read_curves(path, ["lr_transformer", "lr_vision"])
    assert [r["step"] for r in curves[(1e-3, 1e-3)]] == [100.0, 200.0]
    assert curves[(1e-4, 1e-3)][0]["val_presence_auroc"] == 0.6


def test_complete_cached_curves_need_no_start_model(tmp_path):
    (tmp_path / "curves-pretrained-800.csv").write_text(
        "lr_transformer,lr_vision,step,val_dice,val_ap75,val_presence_auroc,train_loss\n"
        "0.001,0.001,100,0.2,0.0,0.7,4.0\n0.001,0.001,200,0.5,0.1,0.9,3.0\n")

    def no_pretraining():
        raise AssertionError("pretrained although every curve was cached")

    curves = se.measure_curves(tmp_path, {"lr_transformer": [1e-3], "lr_vision": [1e-3]}, "pretrained-800",
                               no_pretraining, steps=200, val_every=100, jobs=1, threads=1)
    assert [r["val_dice"] for r in curves[(1e-3, 1e-3)]] == [0.2, 0.5]


def test_curves_of_another_grid_are_refused_with_the_file_named(tmp_path):
    path = tmp_path / "curves-scratch.csv"
    path.write_text("lr_transformer,lr_vision,step,val_dice,val_ap75,val_presence_auroc,train_loss\n"
                    "0.001,0.001,100,0.2,0.0,0.7,4.0\n")
    with pytest.raises(SystemExit, match=r"curves-scratch\.csv: columns .*another --out"):
        se.read_curves(path, ["lr_transformer", "lr_language"])


@pytest.mark.slow
def test_replayed_sweeps_run_through_the_sweeps_tune_config(tmp_path):
    """Random runs every trial to the end; ASHA stops some early; both see the measured curves."""
    import ray

    from sweeps import ray_compat

    steps = [100, 200, 300, 400]
    # the best point learns; every other point's Dice is flat and lower (ASHA stops them at its rungs)
    curves = {p: [{"step": float(s), "val_dice": (s / 400 if p == (1e-3, 1e-3) else 0.1 * i / 8),
                   "val_ap75": 0.0, "val_presence_auroc": 0.5, "train_loss": 1.0} for s in steps]
              for i, p in enumerate(se.grid_points(se.GRID))}
    args = argparse.Namespace(samples=4, asha_samples_factor=2, steps=400, val_every=100, grace=100, reduction=2,
                              grid=se.GRID)
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
    assert len(random.order) == 4 and set(random.order) <= set(curves)


def test_train_keeps_the_final_weights_in_sams_native_format(synthetic_dataset, tmp_path):
    """What ``--init pretrained`` starts every trial from: the pretraining run's last checkpoint, loadable."""
    import torch

    from trainables.checkpoints.native import load_native
    from trainables.model import build_model

    weights = tmp_path / "pretrained-2" / "model.pt"
    rows = se.train({**synthetic_dataset.trial_fields(), "max_steps": 2, "val_every": 1,
                     "cpu_threads_per_worker": 1}, keep=weights)
    assert [r["step"] for r in rows] == [1.0, 2.0] and weights.is_file()
    model = build_model("tiny", seed=se.DATA["seed"])
    untrained = {k: v.clone() for k, v in model.state_dict().items()}
    load_native(model, weights)  # strict: every tensor of the model, nothing else
    assert any(not torch.equal(untrained[k], v) for k, v in model.state_dict().items())
