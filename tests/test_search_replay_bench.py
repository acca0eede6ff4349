"""bench/search_replay.py: searchers replayed against a tabular benchmark's table, judged on test Dice."""

from __future__ import annotations

import csv
import json
import math

import pytest

from bench import search_replay, tabular


def write_table(folder, points, curve_of):
    """A bench/tabular.py folder: ``points`` and, per (configuration, seed), the rows ``curve_of(c, s)``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "design.json").write_text(json.dumps({"configs": len(points), "design_seed": 0, "points": points}))
    with (folder / "table.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["config", "seed", "step", "val_dice", "val_ap75", "test_dice",
                                               "test_ap75"])
        writer.writeheader()
        for c in range(len(points)):
            for s in (0, 1):
                writer.writerows({"config": c, "seed": s, **row} for row in curve_of(c, s))


def test_the_nearest_configuration_is_found_in_the_design_cube(tmp_path):
    points = tabular.design(6, seed=0)
    write_table(tmp_path, points, lambda c, s: [{"step": 10, "val_dice": 0.1, "val_ap75": 0, "test_dice": 0.1,
                                                 "test_ap75": 0}])
    table = search_replay.read_table(tmp_path)
    for c, point in enumerate(points):
        assert search_replay.nearest(table, point) == c
        nudged = {**point, "lr_transformer": point["lr_transformer"] * 1.01}
        assert search_replay.nearest(table, nudged) == c
    assert search_replay.draw_seed(table, 0, points[0]) in (0, 1)
    assert {search_replay.draw_seed(table, k, points[0]) for k in range(20)} == {0, 1}  # both seeds get drawn


def test_a_configuration_missing_a_seed_is_left_out(tmp_path):
    points = tabular.design(3, seed=0)
    write_table(tmp_path, points, lambda c, s: [] if (c, s) == (2, 1) else
                [{"step": 10, "val_dice": 0.1, "val_ap75": 0, "test_dice": 0.1, "test_ap75": 0}])
    assert {c for c, _ in search_replay.read_table(tmp_path).curves} == {0, 1}


def test_the_pick_is_the_highest_val_dice_within_the_budget_and_its_figure_the_test_dice():
    reports = [{"spent": 10, "val_dice": 0.3, "test_dice": 0.2}, {"spent": 20, "val_dice": 0.5, "test_dice": 0.4},
               {"spent": 30, "val_dice": 0.5, "test_dice": 0.45}, {"spent": 40, "val_dice": 0.9, "test_dice": 0.1}]
    assert search_replay.pick_test_dice(reports, 35) == 0.45  # the last of equals, as sweeps/results.py
    assert search_replay.pick_test_dice(reports, 40) == 0.1
    assert math.isnan(search_replay.pick_test_dice(reports, 5))


def test_the_sign_test_and_the_summary():
    assert search_replay.sign_test(0, 0) == 1.0
    assert search_replay.sign_test(20, 0) == pytest.approx(2 / 2**20)
    assert search_replay.sign_test(15, 5) == pytest.approx(0.0414, abs=1e-4)  # binomial(20, 0.5), two-sided
    summary = search_replay.compare([0.1, 0.0, -0.05, 0.2, math.nan])
    assert (summary["wins"], summary["ties"], summary["losses"]) == (2, 1, 1)
    assert summary["median"] == pytest.approx(0.05)


def test_replayed_sweeps_through_the_sweeps_tune_config(tmp_path, monkeypatch):
    """Random and ASHA + TPE sweeps replay the table through Ray Tune: every report carries a spent budget, the
    ASHA sweep stops some trials at its rung, and the picks' test Dice come from the table. The command caches
    each replay's figures (a rerun replays nothing) and logs its table."""
    import ray

    points = tabular.design(8, seed=0)

    def curve(c, s):  # configuration c learns at rate (c + 1) / 8; seed 1 a little better on test
        return [{"step": step, "val_dice": (c + 1) / 8 * step / 400, "val_ap75": 0.0,
                 "test_dice": (c + 1) / 8 * step / 400 + 0.01 * s, "test_ap75": 0.0} for step in range(50, 401, 50)]

    write_table(tmp_path / "t", points, curve)
    table = search_replay.read_table(tmp_path / "t")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        random = search_replay.replay_sweep(table, "random", 0, 3, tmp_path / "s")
        asha = search_replay.replay_sweep(table, "asha+tpe", 0, 3, tmp_path / "s")
        with_baseline = search_replay.replay_sweep(table, "asha+tpe+baseline", 0, 1, tmp_path / "s")
        logged = []
        monkeypatch.setattr(search_replay, "append_benchmark", lambda *args: logged.append(args))
        command = ["--table", str(tmp_path / "t"), "--seeds", "0", "1", "--samples", "1", "--methods", "asha+tpe"]
        assert search_replay.main(command) == 0
        monkeypatch.setattr(search_replay, "replay_sweep", lambda *args: pytest.fail("replayed a cached sweep"))
        assert search_replay.main(command) == 0
    finally:
        ray.shutdown()
    assert [r["spent"] for r in random] == sorted(r["spent"] for r in random) and random[-1]["spent"] == 3 * 400
    values = {round(row["test_dice"], 6) for rows in table.curves.values() for row in rows}
    assert round(search_replay.pick_test_dice(random, 1200), 6) in values
    asha_trials = {r["trial_id"] for r in asha}
    assert len(asha_trials) > 3  # ASHA stopped some at step 150, so more trials fit the same budget
    assert any(max(r["step"] for r in asha if r["trial_id"] == t) == 150 for t in asha_trials)
    assert with_baseline[0]["config_id"] == search_replay.nearest(table, search_replay.baseline_point())
    records = [json.loads(line) for line in (tmp_path / "t" / "replays.jsonl").read_text().splitlines()]
    assert sorted((r["method"], r["seed"]) for r in records) == [("asha+tpe", 0), ("asha+tpe", 1), ("random", 0),
                                                                  ("random", 1)]
    assert len(logged) == 2 and "| asha+tpe | full |" in logged[0][2] and "2 searcher seeds" in logged[0][0]


def test_every_method_is_a_setting_the_sweep_config_accepts():
    from sweeps.config import parse_sweep_config

    for name, method in search_replay.METHODS.items():
        cfg = parse_sweep_config({"name": "m", "storage_path": "/tmp/m", "search_space": "x", "trial": {},
                                  "searcher": {"sampler": method.sampler, "startup_trials": method.startup_trials}},
                                 source=name)
        assert (cfg.searcher.sampler, cfg.searcher.startup_trials) == (method.sampler, method.startup_trials)


def test_the_surrogate_distance_follows_the_knobs_the_table_says_matter(tmp_path):
    """Where only lr_vision changes the outcome, the fitted length-scales single it out, and a trial's nearest
    configuration is the one closest in lr_vision, whatever the other knobs say."""
    points = tabular.design(30, seed=0)

    def curve(c, s):
        u = search_replay.unit("lr_vision", points[c]["lr_vision"])
        return [{"step": 400, "val_dice": 0.6 - 0.5 * u + 0.005 * s, "val_ap75": 0, "test_dice": 0.5,
                 "test_ap75": 0}]

    write_table(tmp_path, points, curve)
    table = search_replay.read_table(tmp_path)
    others = [v for n, v in table.scales.items() if n != "lr_vision"]
    assert table.scales["lr_vision"] * 10 < min(others)
    for c in range(0, 30, 7):  # point c's lr_vision, every other knob from another point
        mixed = {**points[(c + 1) % 30], "lr_vision": points[c]["lr_vision"] * 1.01}
        assert search_replay.nearest(table, mixed) == c


def test_a_table_with_nothing_to_learn_weighs_every_knob_alike():
    assert search_replay.fit_scales([[0.1, 0.2], [0.5, 0.9], [0.7, 0.3]], [0.4, 0.4, 0.4]) == [1.0, 1.0]


def test_stage2s_asha_is_scaled_to_the_tables_trial_length():
    assert search_replay.asha_settings("stage2", 400)["grace_period"] == 150  # 750 of stage2.yaml's 2000 steps
    assert search_replay.asha_settings("stage2", 400)["reduction_factor"] == 4
    assert search_replay.asha_settings("local", 400)["grace_period"] == 150  # local.yaml's own length


def test_replays_are_cached_per_table_budget_and_method_settings(tmp_path, monkeypatch):
    path = tmp_path / "replays.jsonl"
    def cache(digest="aaa", samples=8):
        return search_replay.ReplayCache(path, table_digest=digest, samples=samples, max_steps=400)

    cache().put("random", 3, {"1/3": 0.4, "full": 0.5})
    cache().put("stage2-asha+tpe", 3, {"1/3": 0.4, "full": 0.6})
    assert cache().get("random", 3) == {"1/3": 0.4, "full": 0.5}
    assert cache("bbb").get("random", 3) is None and cache(samples=16).get("random", 3) is None
    monkeypatch.setitem(search_replay.METHODS, "random", search_replay.Method("random", asha="local"))
    assert cache().get("random", 3) is None
    assert cache().get("stage2-asha+tpe", 3) == {"1/3": 0.4, "full": 0.6}
    edited = {**search_replay.asha_settings("stage2", 400), "grace_period": 1}  # stage2.yaml's rung moved
    monkeypatch.setattr(search_replay, "asha_settings", lambda source, max_steps: edited)
    assert cache().get("stage2-asha+tpe", 3) is None


def test_a_replay_ends_when_its_budget_is_spent():
    stopper = search_replay.BudgetStopper(300)
    assert not stopper("a", {"step": 100}) and not stopper.stop_all()
    stopper("a", {"step": 200})
    stopper("b", {"step": 50})
    assert not stopper.stop_all()  # 250 of 300
    stopper("b", {"step": 100})
    assert stopper.stop_all()


def test_the_landscape_paragraph_names_spread_seed_noise_and_rung_rankings(tmp_path):
    points = tabular.design(5, seed=0)
    write_table(tmp_path, points, lambda c, s: [
        {"step": step, "val_dice": (c + 1) / 10 * step / 100 + 0.02 * s, "val_ap75": 0,
         "test_dice": (c + 1) / 10 * step / 100, "test_ap75": 0} for step in (50, 100)])
    text = search_replay.landscape(search_replay.read_table(tmp_path))
    assert "min 0.110, median 0.310, max 0.510" in text  # (c + 1) / 10 plus half of the seed offset
    assert "of the val Dice at step s with the best: 50 1.00." in text
    assert "differs by 0.020 (median; max 0.020)" in text


def test_a_diverged_run_ends_early_and_its_last_row_is_never_picked(tmp_path):
    points = tabular.design(3, seed=0)

    def curve(c, s):
        rows = [{"step": step, "val_dice": 0.1 * step / 100, "val_ap75": 0, "test_dice": 0.1, "test_ap75": 0}
                for step in (100, 200)]
        return rows[:1] + [{"step": 150, "val_dice": math.nan, "val_ap75": math.nan, "test_dice": math.nan,
                            "test_ap75": math.nan}] if c == 2 else rows

    write_table(tmp_path, points, curve)
    table = search_replay.read_table(tmp_path)
    assert table.max_steps == 200  # the trials' length, not the diverged run's
    assert search_replay.best_val_dice(table.curves[2, 0]) == pytest.approx(0.1)
    reports = [{**r, "spent": r["step"]} for r in table.curves[2, 0]]
    assert search_replay.pick_test_dice(reports, 200) == 0.1
