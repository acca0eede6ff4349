"""W&B for a sweep with no network: one offline run per trial, one summary run, and the API key nowhere.

The sweep uses a TEST STAND-IN train loop (no model, the real metric keys). ``WANDB_API_KEY`` is set to a
random marker before Ray starts; every file the sweep, the summary run and the report write is then
searched for it.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

import pytest
import ray
import yaml

from search_spaces import load_search_spec
from sweeps import ray_compat
from sweeps.config import parse_sweep_config
from sweeps.report import build_report
from sweeps.results import load_sweep
from sweeps.stage2 import run_sweep
from sweeps.wandb_summary import SUMMARY_JOB_TYPE, log_sweep_summary, trial_callbacks

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # tests/ is not importable on workers

API_KEY_MARKER = "wandbkeymarker" + secrets.token_hex(16)
LRS = (8e-5, 1.5e-5)  # a good lr (completes) and a poor one (ASHA stops it)


def stand_in_train_loop(config: dict) -> None:
    """TEST STAND-IN: Dice grows with the step and peaks at lr 8e-5."""
    import ray.train

    trial = config["trial"]
    quality = max(0.05, 1.0 - abs(math.log10(trial["lr_transformer"] / 8e-5)))
    for step in range(trial["val_every"], trial["max_steps"] + 1, trial["val_every"]):
        time.sleep(0.1)
        dice = quality * step / trial["max_steps"]
        metrics = {"val_dice": dice, "val_ap75": 0.8 * dice, "val_dice/proximal_rca": dice, "step": step,
                   "train_loss": 1.0 / step, "lr": trial["lr_transformer"], "diverged": False}
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "state.json").write_text(json.dumps({"step": step}))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def offline_config(tmp: Path, mode: str = "offline"):
    space = tmp / "space.yaml"
    space.write_text(yaml.safe_dump({
        "params": {"lr_transformer": {"type": "loguniform", "low": 1e-5, "high": 3e-4}},
        "points_to_evaluate": [{"lr_transformer": lr} for lr in LRS],
    }))
    return parse_sweep_config({
        "name": "wandb-sweep", "storage_path": str(tmp / "out"), "search_space": str(space),
        "num_samples": len(LRS), "max_concurrent_trials": 1,
        "trial": {"max_steps": 6, "val_every": 2, "num_workers": 1, "cpu_threads_per_worker": 1},
        "scheduler": {"grace_period": 2, "reduction_factor": 2}, "checkpoint": {"num_to_keep": 1},
        "wandb": {"mode": mode, "project": "sam3-cass-test"},
    }, source="test")


@pytest.fixture(scope="module")
def offline_sweep(tmp_path_factory):
    """A 2-trial sweep logged to W&B offline with a marker API key in the environment, then its summary."""
    saved = {k: os.environ.get(k) for k in ("WANDB_API_KEY", "WANDB_MODE")}
    os.environ["WANDB_API_KEY"] = API_KEY_MARKER
    os.environ["WANDB_MODE"] = "offline"  # what the driver's ray_env gives every Ray process
    cfg = offline_config(tmp_path_factory.mktemp("wandb"))
    ray_compat.init_ray(None, "127.0.0.1", {**ray_compat.worker_env_vars(0.5), "WANDB_MODE": "offline"}, num_cpus=2)
    try:
        start = time.monotonic()
        run_sweep(cfg, load_search_spec(cfg.search_space), train_loop=stand_in_train_loop)
        print(f"2 trials logged offline took {time.monotonic() - start:.1f} s")
        summary_dir = log_sweep_summary(cfg)
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return cfg, summary_dir


def offline_runs(root: str | Path) -> list[Path]:
    return sorted(p for p in Path(root).rglob("offline-run-*") if p.is_dir())


def run_bytes(run_dir: Path) -> bytes:
    """An offline run's ``.wandb`` log (W&B 0.31 has no Python reader for it: its records are protobuf, so
    keys, names and string values appear in it verbatim)."""
    return next(run_dir.glob("*.wandb")).read_bytes()


def trial_run_logs(cfg, summary_dir) -> dict[str, tuple[str, bytes]]:
    """Each trial's status and its offline run's log, keyed by trial id (the run's folder ends with it)."""
    sweep = load_sweep(cfg.experiment_dir)
    trial_runs = [r for r in offline_runs(cfg.experiment_dir) if r != summary_dir]
    assert len(trial_runs) == len(sweep.trials) == len(LRS)
    logs = {}
    for trial in sweep.trials:
        (run_dir,) = [r for r in trial_runs if trial.trial_id in str(r)]
        logs[trial.trial_id] = (trial.status, run_bytes(run_dir))
    return logs


def assert_full_run(log: bytes, cfg) -> None:
    assert cfg.name.encode() in log and cfg.wandb.project.encode() in log  # group and project
    assert b"lr_transformer" in log  # the sampled hyperparameters are the run's config
    for key in ("val_dice", "val_ap75", "val_dice/proximal_rca", "step", "train_loss", "lr"):
        assert key.encode() in log, f"{key} was not logged"


def test_each_trial_gets_an_offline_run_in_its_trial_directory_grouped_by_sweep(offline_sweep):
    cfg, summary_dir = offline_sweep
    completed = [log for status, log in trial_run_logs(cfg, summary_dir).values() if status == "COMPLETE"]
    assert completed
    for log in completed:
        assert_full_run(log, cfg)


def test_every_run_lies_where_the_readmes_one_sync_command_finds_it(offline_sweep):
    """`wandb sync <experiment dir>/wandb/offline-run-*` uploads every trial's run and the summary."""
    cfg, summary_dir = offline_sweep
    listed = sorted(Path(cfg.experiment_dir).glob("wandb/offline-run-*"))  # the README's glob
    assert listed == offline_runs(cfg.experiment_dir), offline_runs(cfg.experiment_dir)  # none elsewhere
    assert len(listed) == len(LRS) + 1 and summary_dir in listed, (listed, summary_dir)
    sizes = {run.name: next(run.glob("*.wandb")).stat().st_size for run in listed}
    assert min(sizes.values()) > 1000, sizes  # complete, not a bare header


def test_an_early_stopped_trial_keeps_its_offline_run_too(offline_sweep):
    """The last trial to end (here the stopped one) used to keep a 7-byte header in the experiment folder: Tune
    copied the trial folders before the run was complete (RELIABILITY.md). Its run is now written in place."""
    cfg, summary_dir = offline_sweep
    stopped = [log for status, log in trial_run_logs(cfg, summary_dir).values() if status != "COMPLETE"]
    assert stopped
    for log in stopped:
        assert_full_run(log, cfg)


def test_the_summary_run_has_one_row_per_trial_and_the_pareto_front(offline_sweep):
    cfg, summary_dir = offline_sweep
    assert summary_dir is not None and summary_dir.parent == Path(cfg.experiment_dir) / "wandb"
    log = run_bytes(summary_dir)
    assert cfg.name.encode() in log and SUMMARY_JOB_TYPE.encode() in log
    tables = {p.name.split("_")[0]: json.loads(p.read_text()) for p in summary_dir.rglob("*.table.json")}
    trials, front = tables["trials"], tables["pareto"]
    assert trials["columns"] == ["trial_id", "lr_transformer", "val_dice", "val_ap75", "status"]
    sweep = load_sweep(cfg.experiment_dir)
    assert sorted(row[0] for row in trials["data"]) == sorted(t.trial_id for t in sweep.trials)
    assert sorted(row[-1] for row in trials["data"]) == ["COMPLETE", "PRUNED"]
    assert [row[0] for row in front["data"]] == sweep.pareto_ids and len(sweep.pareto_ids) == 1


def test_the_api_key_appears_in_no_file_of_the_experiment_or_its_report(offline_sweep, tmp_path):
    cfg, _ = offline_sweep
    build_report(cfg.experiment_dir, tmp_path / "report")
    marker = API_KEY_MARKER.encode()
    searched = [p for root in (cfg.experiment_dir, tmp_path / "report") for p in Path(root).rglob("*")
                if p.is_file() and not p.is_symlink()]
    assert len(searched) > 20
    assert [str(p) for p in searched if marker in p.read_bytes()] == []


def test_an_offline_sweep_needs_no_api_key_in_the_driver(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))  # no ~/.netrc or settings of this machine are read
    (callback,) = trial_callbacks(offline_config(tmp_path))
    callback.setup()  # Ray's callback raises "No WandB API key found" unless WANDB_MODE says offline
    assert os.environ["WANDB_MODE"] == "offline"


def test_disabled_wandb_logs_nothing(tmp_path):
    cfg = offline_config(tmp_path, mode="disabled")
    assert trial_callbacks(cfg) == [] and log_sweep_summary(cfg) is None
    assert not Path(cfg.experiment_dir).exists()


def test_the_deepest_path_of_a_sweep_fits_windows_below_a_40_character_storage_root(offline_sweep):
    """Trial folders, Train runs, checkpoints and W&B runs (the deepest kind of file a sweep writes): below a
    40-character root (E:\\... on a workstation) every path stays under 200 characters, and the bound the
    preflight uses for Windows is not smaller than what the sweep really wrote."""
    from sweeps.preflight import deepest_path_length

    cfg, _ = offline_sweep
    storage = Path(cfg.storage_path)
    deepest = max(Path(cfg.experiment_dir).rglob("*"), key=lambda p: len(p.relative_to(storage).as_posix()))
    depth = len(deepest.relative_to(storage).as_posix())
    assert 40 + 1 + depth < 200, deepest
    assert deepest_path_length(cfg) - len(cfg.storage_path) >= 1 + depth + len("trainer_state.pt") - len("state.json")
    trial_dirs = [p for p in Path(cfg.experiment_dir).iterdir() if (p / "params.json").is_file()]
    assert trial_dirs and all(len(p.name) <= 16 for p in trial_dirs)  # the trial id, no sampled values
