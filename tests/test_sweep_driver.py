"""The sweep driver end to end on a real (small) Ray: Tune + Optuna + ASHA + one TorchTrainer per trial.

``fake_train_loop`` below is a TEST STAND-IN for ``trainables.train_loop.train_loop_per_worker``: it
reports plausible metrics computed from the trial config (no model), so these tests check the Ray/Optuna
wiring only. The real loop is wired by the lead.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import ray
import yaml
from optuna.trial import TrialState

from common.errors import InputError
from search_spaces import load_search_spec
from sweeps import console, ray_compat
from sweeps.config import JOURNAL_FILE, parse_sweep_config
from sweeps.optuna_search import DRAW_ATTR, RAY_TRIAL_ID_ATTR, optuna_state
from sweeps.stage2 import check_inputs, format_outcome, main, make_searcher, run_sweep
from sweeps.study_storage import journal_storage
from trainables.checkpoints.trial import STATE_FILE
from trainables.trial import diverged_report

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # tests/ is not importable on workers

BASELINE_LR, POOR_LR, DIVERGING_LR = 8e-5, 2e-5, 2.9e-4


def fake_train_loop(config: dict) -> None:
    """TEST STAND-IN: Dice grows with the step and peaks at lr 8e-5; lr > 2.5e-4 'diverges'."""
    trial = config["trial"]
    quality = max(0.05, 1.0 - abs(math.log10(trial["lr_transformer"] / BASELINE_LR)))
    rank = ray.train.get_context().get_world_rank()
    for step in range(trial["val_every"], trial["max_steps"] + 1, trial["val_every"]):
        time.sleep(0.2)
        if trial["lr_transformer"] > 2.5e-4:  # like the real loop: no validation after a non-finite loss
            ray.train.report(diverged_report(step))
            return
        dice = quality * step / trial["max_steps"]
        metrics = {"val_dice": dice, "val_ap75": 0.8 * dice, "step": step, "epoch": 0, "diverged": False}
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                with open(os.path.join(tmp, "state.json"), "w") as f:
                    json.dump({"step": step}, f)
                with open(os.path.join(tmp, STATE_FILE), "wb") as f:  # as the real loop's, until the trial ends
                    f.write(b"optimizer state")
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)


@pytest.fixture(scope="module")
def ray_local():
    ray_compat.init_ray(None, "127.0.0.1", ray_compat.worker_env_vars(0.5), num_cpus=2)
    yield
    ray.shutdown()


def sweep_config(tmp_path, **overrides):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "params": {"lr_transformer": {"type": "loguniform", "low": 1e-5, "high": 3e-4}},
        "points_to_evaluate": [{"lr_transformer": lr} for lr in (BASELINE_LR, POOR_LR, DIVERGING_LR)],
    }))
    raw = {
        "name": "test-sweep", "storage_path": str(tmp_path / "out"), "search_space": str(space),
        "num_samples": 3, "max_concurrent_trials": 1,
        "trial": {"max_steps": 8, "val_every": 2, "num_workers": 1, "cpu_threads_per_worker": 1},
        "scheduler": {"grace_period": 2, "reduction_factor": 2},
        "checkpoint": {"num_to_keep": 1},
        **overrides,
    }
    return parse_sweep_config(raw, source="test")


QUIET_CONSOLE: list[str] = []  # what finished_sweep printed


@pytest.fixture(scope="module")
def finished_sweep(ray_local, tmp_path_factory):
    """One 3-trial sweep (baseline, a poor lr, a diverging lr), one at a time, shared by the tests below; run
    quiet, its console lines kept in ``QUIET_CONSOLE``."""
    cfg = sweep_config(tmp_path_factory.mktemp("sweep"))
    start = time.monotonic()
    shown, before = io.StringIO(), console.CONSOLE
    console.CONSOLE = console.Console(shown)
    try:
        outcome = run_sweep(cfg, load_search_spec(cfg.search_space), train_loop=fake_train_loop, quiet=True)
    finally:
        console.CONSOLE = before
    print(f"3 trials (1 worker each, one at a time) took {time.monotonic() - start:.1f} s")
    QUIET_CONSOLE[:] = shown.getvalue().splitlines()
    return cfg, outcome


def test_a_quiet_sweep_prints_each_validation_and_how_each_trial_ended(finished_sweep):
    lines = QUIET_CONSOLE
    assert sum(" completed 8 steps (best val Dice 1.000 at step 8)" in line for line in lines) == 1  # the baseline
    assert sum(" stopped by ASHA at step 2 " in line for line in lines) == 1  # the poor lr
    assert sum(" diverged at step 2: non-finite loss" in line for line in lines) == 1
    assert sum(re.search(r" step \d/8  val Dice ", line) is not None for line in lines) == 4 + 1  # 4 + 1 validations


def test_a_sweep_prunes_asha_stopped_trials_fails_diverged_ones_and_prints_the_pareto_front(finished_sweep):
    cfg, outcome = finished_sweep
    study = optuna.load_study(study_name=cfg.study_name, storage=journal_storage(cfg.study_storage))
    by_lr = {t.params["lr_transformer"]: t for t in study.trials}
    assert by_lr[BASELINE_LR].state == TrialState.COMPLETE
    assert by_lr[POOR_LR].state == TrialState.PRUNED  # ASHA stopped it at step 2 (< max_steps 8)
    assert by_lr[DIVERGING_LR].state == TrialState.FAIL
    assert outcome.num_trials == 3

    (best,) = outcome.pareto_front
    assert best.trial_id == by_lr[BASELINE_LR].user_attrs[RAY_TRIAL_ID_ATTR]
    assert best.val_dice == pytest.approx(1.0)
    with open(os.path.join(best.checkpoint_path, "state.json")) as f:
        assert json.load(f) == {"step": 8}  # the best report's checkpoint, kept by val_dice

    # Every trial ended (finished, stopped by ASHA, diverged): none keeps an optimizer state, all keep weights.
    checkpoints = [c for c in Path(cfg.train_runs).glob("*/checkpoint_*") if c.is_dir()]
    assert len(checkpoints) >= 3 and all((c / "state.json").is_file() for c in checkpoints)
    assert not [c for c in checkpoints if (c / STATE_FILE).exists()]

    text = format_outcome(outcome)
    assert "Pareto front (1 of 3 trials" in text and best.trial_id in text and cfg.study_storage in text


def test_resuming_a_finished_sweep_reloads_its_study_without_enqueuing_the_baseline_again(finished_sweep):
    cfg, outcome = finished_sweep
    resumed = run_sweep(cfg, load_search_spec(cfg.search_space), resume=True, train_loop=fake_train_loop)
    study = optuna.load_study(study_name=cfg.study_name, storage=journal_storage(cfg.study_storage))
    assert len(study.trials) == 3
    assert resumed.pareto_front == outcome.pareto_front


def test_a_sweep_keeps_its_study_in_a_database_when_searcher_storage_names_one(ray_local, tmp_path):
    """searcher.storage as an SQLAlchemy URL (SQLite here; PostgreSQL/MySQL the same through their drivers):
    the study, its trials and their states live in the database, and the results read them from there."""
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    cfg = sweep_config(tmp_path, searcher={"storage": url})
    outcome = run_sweep(cfg, load_search_spec(cfg.search_space), train_loop=fake_train_loop, quiet=True)
    study = optuna.load_study(study_name=cfg.study_name, storage=url)
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "FAIL", "PRUNED"]
    assert not (Path(cfg.experiment_dir) / JOURNAL_FILE).exists()
    assert outcome.num_trials == 3 and len(outcome.pareto_front) == 1
    assert f"optuna study   : {cfg.study_name} in {url}" in format_outcome(outcome)


def test_a_new_run_over_an_existing_sweep_is_refused(finished_sweep):
    cfg, _ = finished_sweep
    with pytest.raises(InputError, match="pass --resume"):
        check_inputs(cfg, resume=False)


def test_the_report_queue_wait_returns_only_once_tune_has_taken_the_last_result(ray_local, monkeypatch):
    from ray.train._internal import session as train_session
    from ray.util.queue import Queue

    queue = Queue(1)
    queue.put({"val_dice": 0.5})
    fake = type("Session", (), {"_inter_actor_queue": queue})()
    monkeypatch.setattr(train_session, "get_session", lambda: fake)
    assert ray_compat.wait_for_tune_report_queue_drained(timeout_s=0.5) is False
    queue.get()
    assert ray_compat.wait_for_tune_report_queue_drained(timeout_s=0.5) is True


def test_outside_tune_there_is_no_queue_to_wait_for():
    assert ray_compat.wait_for_tune_report_queue_drained(timeout_s=0.1) is True


@pytest.mark.parametrize("result, error, expected", [
    ({"val_dice": 0.7, "val_ap75": 0.5, "step": 8}, False, TrialState.COMPLETE),
    ({"val_dice": 0.7, "val_ap75": 0.5, "step": 4}, False, TrialState.PRUNED),  # stopped by ASHA
    ({"val_dice": 0.1, "val_ap75": 0.0, "step": 2, "diverged": True}, False, TrialState.FAIL),
    ({"val_dice": float("nan"), "val_ap75": 0.0, "step": 8}, False, TrialState.FAIL),
    ({"val_dice": 0.7, "step": 8}, False, TrialState.FAIL),  # an objective missing
    (None, True, TrialState.FAIL),  # errored
    (None, False, TrialState.PRUNED),  # removed before it reported
])
def test_optuna_is_told_how_a_trial_really_ended(result, error, expected):
    assert optuna_state(result, error=error, objectives=["val_dice", "val_ap75"], step_key="step",
                        max_steps=8) == expected


@pytest.mark.parametrize("sampler, expected", [
    ("tpe", ["baseline", "baseline", "baseline", "random", "model"]),  # 4 startup trials, the baselines counted
    ("random", ["baseline", "baseline", "baseline", "random", "random"]),
])
def test_each_optuna_trial_records_whether_it_was_a_baseline_point_a_random_draw_or_the_samplers_choice(
        tmp_path, sampler, expected):
    cfg = sweep_config(tmp_path, searcher={"sampler": sampler, "seed": 0, "startup_trials": 4})
    spec = load_search_spec(cfg.search_space)
    searcher = make_searcher(cfg, spec)
    searcher.set_search_properties(None, None, spec.params)
    sampled_at_random = set()  # what Optuna itself drew at random: TPE's fallback, or the random sampler
    random_sampler = getattr(searcher._ot_study.sampler, "_random_sampler", searcher._ot_study.sampler)
    draw = random_sampler.sample_independent
    random_sampler.sample_independent = lambda study, trial, *args: (sampled_at_random.add(trial.number),
                                                                     draw(study, trial, *args))[1]
    kinds = []
    for i in range(5):
        searcher.suggest(f"t{i}")
        kinds.append(searcher._ot_trials[f"t{i}"].user_attrs[DRAW_ATTR])
        searcher.on_trial_complete(f"t{i}", {"val_dice": 0.1 * i, "val_ap75": 0.1, "step": 8})
    assert kinds == expected
    assert sampled_at_random == {i for i, kind in enumerate(kinds) if kind == "random"}


def test_an_nsga2_sweep_records_no_draws(tmp_path):
    """NSGA-II's first generation is random, but not told apart: no label rather than a wrong one."""
    cfg = sweep_config(tmp_path, searcher={"sampler": "nsga2", "seed": 0})
    spec = load_search_spec(cfg.search_space)
    searcher = make_searcher(cfg, spec)
    searcher.set_search_properties(None, None, spec.params)
    for i in range(4):
        searcher.suggest(f"t{i}")
        assert DRAW_ATTR not in searcher._ot_trials[f"t{i}"].user_attrs
        searcher.on_trial_complete(f"t{i}", {"val_dice": 0.1 * i, "val_ap75": 0.1, "step": 8})


def test_worker_environment_disables_dynamo_and_shortens_the_health_check():
    env = ray_compat.worker_env_vars(0.5)
    assert env["TORCHDYNAMO_DISABLE"] == "1" and env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.5"
    assert ("USE_LIBUV" in env) == (sys.platform == "win32")


def test_dry_run_prints_the_plan_and_starts_nothing(tmp_path, capsys):
    cfg = sweep_config(tmp_path)
    config_file = tmp_path / "sweep.yaml"
    config_file.write_text(yaml.safe_dump({"name": cfg.name, "storage_path": cfg.storage_path,
                                           "search_space": cfg.search_space, "trial": {"max_steps": 8},
                                           "scheduler": {"grace_period": 2}}))
    assert main(["--config", str(config_file), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "sweep test-sweep (new)" in out and "ASHA           : val_dice max on 'step'" in out
    assert not (tmp_path / "out").exists()


def test_a_disk_too_small_for_the_sweeps_checkpoints_is_refused_with_the_figure_and_what_shrinks_it(
        tmp_path, monkeypatch):
    """Stage 2's shipped sweep keeps 2 checkpoints of each of its trials, each the model without its frozen text
    encoder (shared with the starting checkpoint); AdamW's state only in the newest checkpoint of a running trial
    (and the one being written)."""
    import shutil
    from collections import namedtuple

    from sweeps import preflight
    from sweeps.config import load_sweep_config

    cfg = load_sweep_config("sweeps/configs/stage2.yaml")
    cfg.storage_path = str(tmp_path)
    budget = preflight.disk_budget(cfg)
    from trainables.model import PRESET_SIZES

    full = PRESET_SIZES["full"]
    trained = full.parameters - full.text_encoder
    assert budget.model_bytes == pytest.approx(full.native_bytes - full.text_encoder_bytes, rel=0.03)
    assert budget.state_bytes == pytest.approx(8 * trained, rel=0.03)
    running, trials = preflight.local_concurrency(cfg), cfg.num_samples
    assert budget.models == trials * (2 + 1) + running and budget.states == 2 * running  # Train keeps the latest too
    assert budget.total > trials * 2 * (full.native_bytes - full.text_encoder_bytes)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**13, 0, int(budget.total) - 1))
    (problem,) = preflight.disk_problems(cfg)
    assert f"({trials} trials x (2 kept checkpoints + the latest)" in problem and "lower num_samples or checkpoint.num_to_keep" in problem
    assert "freeze_text_encoder" not in problem  # already frozen in stage2.yaml
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**13, 0, int(budget.total)))
    assert preflight.disk_problems(cfg) == []
