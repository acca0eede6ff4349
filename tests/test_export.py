"""Exporting a sweep's best checkpoint, on a real experiment folder written by the sweep driver.

``checkpointing_train_loop`` below is a TEST STAND-IN for ``trainables.train_loop.train_loop_per_worker``:
it builds the real tiny sam3 model, takes real optimizer steps on a dummy loss, writes real trial
checkpoints (``save_trial_checkpoint``) and reports SCRIPTED metrics, so that the best row is known:

    trial   lr      step 1          step 2          step 3          (val_dice, val_ap75)
    A       8e-5    (0.30, 0.10)    (0.80, 0.20)    (0.50, 0.30)    best dice: step 2, not the last
    B       2e-5    (0.20, 0.50)    (0.30, 0.60)    (0.40, 0.70)    best ap75: step 3

Optuna sees each trial's last values, (0.5, 0.3) and (0.4, 0.7): both are Pareto-optimal.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow.fs
import pytest
import ray
import torch
import yaml

from common.errors import InputError, run_cli
from common.outputs import MARKER
from search_spaces import load_search_spec
from sweeps import ray_compat
from sweeps.config import parse_sweep_config
from sweeps.export import choose, export_best, locate_checkpoint, main
from sweeps.stage2 import run_sweep
from trainables.checkpoints.exported import MANIFEST, load_exported, load_with_sam3, verify_export
from trainables.checkpoints.files import safe_torch_load
from trainables.checkpoints.frozen import FrozenSource, frozen_part
from trainables.checkpoints.trial import FROZEN_SOURCE_FILE, MODEL_FILE, TRAINED_FILE, load_model_weights
from trainables.model import build_model
from trainables.resolution import current_resolution

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # tests/ is not importable on workers

LR_A, LR_B = 8e-5, 2e-5
SCRIPT = {LR_A: [(0.30, 0.10), (0.80, 0.20), (0.50, 0.30)],
          LR_B: [(0.20, 0.50), (0.30, 0.60), (0.40, 0.70)]}
RESOLUTION = 336  # not the tiny preset's native 224: the export must set it after loading


def checkpointing_train_loop(config: dict) -> None:
    """TEST STAND-IN: real tiny model, real optimizer steps and trial checkpoints; scripted metrics."""
    from trainables.checkpoints.trial import save_trial_checkpoint
    from trainables.config import TrialConfig
    from trainables.model import build_model
    from trainables.optim import build_optimizer, build_scheduler

    trial = TrialConfig.from_dict(config["trial"])
    torch.set_num_threads(1)
    model = build_model(trial.preset, seed=trial.seed)
    optimizer = build_optimizer(model, trial)
    scheduler = build_scheduler(optimizer, trial)
    decoder = model.transformer.decoder
    for step, (dice, ap75) in enumerate(SCRIPT[trial.lr_transformer], start=1):
        optimizer.zero_grad()
        sum((p - 1.0).square().sum() for p in decoder.parameters()).backward()  # weights change every step
        optimizer.step()
        scheduler.step()
        metrics = {"val_dice": dice, "val_ap75": ap75, "step": step, "diverged": False}
        with tempfile.TemporaryDirectory() as tmp:
            save_trial_checkpoint(Path(tmp), model, optimizer, scheduler, step, metrics, trial.to_dict())
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    """A finished 2-trial sweep (trials A and B above) run by the driver; Ray is shut down afterwards."""
    root = tmp_path_factory.mktemp("export-sweep")
    space = root / "space.yaml"
    space.write_text(yaml.safe_dump({
        "params": {"lr_transformer": {"type": "loguniform", "low": 1e-5, "high": 3e-4}},
        "points_to_evaluate": [{"lr_transformer": LR_A}, {"lr_transformer": LR_B}],
    }))
    cfg = parse_sweep_config({
        "name": "export-sweep", "storage_path": str(root / "out"), "search_space": str(space),
        "num_samples": 2, "max_concurrent_trials": 1,
        "trial": {"max_steps": 3, "val_every": 1, "num_workers": 1, "cpu_threads_per_worker": 1,
                  "resolution": RESOLUTION},
        "scheduler": {"grace_period": 3, "reduction_factor": 2},  # ASHA never stops a trial early
        "checkpoint": {"num_to_keep": 2},
    }, source="test")
    repo = str(Path(__file__).resolve().parents[1])
    env = {**ray_compat.worker_env_vars(0.5), "PYTHONPATH": repo}
    ray_compat.init_ray(None, "127.0.0.1", env, num_cpus=2)
    try:
        outcome = run_sweep(cfg, load_search_spec(cfg.search_space), train_loop=checkpointing_train_loop)
    finally:
        ray.shutdown()  # the export reads the folder alone
    assert outcome.num_trials == 2 and len(outcome.pareto_front) == 2
    return Path(cfg.experiment_dir)


@pytest.fixture(scope="module")
def dice_export(experiment, tmp_path_factory):
    return export_best(experiment, tmp_path_factory.mktemp("exports") / "best-dice", pick="dice")


def checkpoint_of(export_dir: Path) -> Path:
    return Path(json.loads((export_dir / "export.json").read_text())["source_checkpoint"])


def test_dice_pick_exports_the_max_val_dice_row_of_all_trials_not_the_last_one(dice_export, experiment):
    (model,) = dice_export.models
    assert (model.step, model.metrics["val_dice"], model.metrics["val_ap75"]) == (2, 0.8, 0.2)
    out = dice_export.out
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["model.pt", "trial_config.json", "metrics.json", "export.json", MANIFEST, MARKER])
    assert json.loads((out / "metrics.json").read_text()) == {"val_dice": 0.8, "val_ap75": 0.2, "step": 2,
                                                             "diverged": False}
    config = json.loads((out / "trial_config.json").read_text())
    assert config["lr_transformer"] == LR_A and config["resolution"] == RESOLUTION
    provenance = json.loads((out / "export.json").read_text())
    assert provenance["pick"] == "dice" and provenance["trial_id"] == model.trial_id
    assert (provenance["preset"], provenance["resolution"], provenance["step"]) == ("tiny", RESOLUTION, 2)
    assert provenance["experiment"] == str(experiment) and provenance["created"]
    source = checkpoint_of(out)
    assert source.is_relative_to(experiment / "train_runs")
    assert (source / "model.pt").read_bytes() == (out / "model.pt").read_bytes()  # bytes unchanged


def test_the_result_carries_what_re_evaluation_needs(dice_export):
    (model,) = dice_export.models
    assert model.directory == dice_export.out and model.model_path.is_file()
    assert (model.preset, model.resolution) == ("tiny", RESOLUTION)
    assert model.trial_config.lr_transformer == LR_A and model.metrics["val_dice"] == 0.8
    assert model.check.ok and model.check.resolution == RESOLUTION


def test_the_manifest_verifies_with_verify_export_and_with_sha256sum(dice_export):
    verify_export(dice_export.out)
    checked = subprocess.run(["sha256sum", "-c", MANIFEST], cwd=dice_export.out, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count(": OK") == 5  # model, config, metrics, provenance, the output marker


def test_a_tampered_or_added_file_fails_verification(dice_export, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(dice_export.out, copy)
    metrics = copy / "metrics.json"
    metrics.write_text(metrics.read_text().replace("0.8", "0.9"))
    (copy / "notes.txt").write_text("extra")
    with pytest.raises(InputError) as err:
        verify_export(copy)
    assert "metrics.json: sha256 differs" in str(err.value) and "notes.txt: not in the manifest" in str(err.value)


def test_strict_reload_gives_the_trial_checkpoints_parameters_bitwise_at_the_trial_resolution(dice_export):
    model, cfg = load_exported(dice_export.out)
    assert current_resolution(model) == RESOLUTION and cfg.resolution == RESOLUTION
    reference = build_model("tiny", seed=123)
    load_model_weights(checkpoint_of(dice_export.out), reference)
    exported = dict(model.named_parameters())
    for name, param in reference.named_parameters():
        assert torch.equal(exported[name], param), name
    fresh = dict(build_model("tiny", seed=0).named_parameters())
    assert not torch.equal(exported["transformer.decoder.query_embed.weight"],
                           fresh["transformer.decoder.query_embed.weight"])  # trained weights, not a fresh init


def test_sam3s_own_loader_loads_every_key_of_the_export(dice_export):
    model = build_model("tiny", seed=7)
    keys, missing, unexpected = load_with_sam3(model, dice_export.out / "model.pt")
    assert (missing, unexpected) == ([], [])
    assert sorted(keys) == sorted(model.state_dict())
    state = safe_torch_load(dice_export.out / "model.pt")
    assert all(torch.equal(model.state_dict()[k.removeprefix("detector.")], v) for k, v in state.items())


def test_ap75_pick_exports_the_max_val_ap75_row(experiment, tmp_path):
    result = export_best(experiment, tmp_path / "best-ap75", pick="ap75")
    (model,) = result.models
    assert (model.trial_config.lr_transformer, model.step, model.metrics["val_ap75"]) == (LR_B, 3, 0.7)


def test_pareto_pick_exports_every_front_member_into_its_own_folder(experiment, tmp_path, dice_export):
    result = export_best(experiment, tmp_path / "front", pick="pareto")
    by_lr = {m.trial_config.lr_transformer: m for m in result.models}
    assert sorted(by_lr) == [LR_B, LR_A]
    assert (by_lr[LR_A].step, by_lr[LR_B].step) == (2, 3)  # each with its best-val_dice checkpoint
    for m in result.models:
        assert m.directory == result.out / m.trial_id
        verify_export(m.directory)
    verify_export(result.out)
    index = json.loads((result.out / "pareto.json").read_text())
    assert sorted(row["folder"] for row in index) == sorted(m.trial_id for m in result.models)
    assert (by_lr[LR_A].model_path.read_bytes() == (dice_export.out / "model.pt").read_bytes())


def test_an_existing_out_is_refused_without_overwrite_and_replaced_with_it(experiment, tmp_path, capsys):
    out = tmp_path / "best"
    assert run_cli(main, [str(experiment), "--out", str(out)]) == 0  # an earlier export
    (out / "old.txt").write_text("old")
    assert run_cli(main, [str(experiment), "--out", str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err and (out / "old.txt").exists()
    assert run_cli(main, [str(experiment), "--out", str(out), "--overwrite"]) == 0
    printed = capsys.readouterr().out
    assert "step 2: val_dice=0.8" in printed and "0 missing, 0 unexpected" in printed
    assert not (out / "old.txt").exists()
    verify_export(out)
    assert [p.name for p in tmp_path.iterdir()] == ["best"]  # no staging or old folder left behind


def test_overwrite_never_replaces_a_folder_the_export_did_not_write(experiment, tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    assert run_cli(main, [str(experiment), "--out", str(out), "--overwrite"]) == 2
    assert "not an output of this project" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_a_missing_experiment_exits_2_and_creates_nothing(tmp_path, capsys):
    out = tmp_path / "exports" / "best"
    assert run_cli(main, [str(tmp_path / "no-such-sweep"), "--out", str(out)]) == 2
    assert "experiment folder not found" in capsys.readouterr().err
    assert not out.exists()


def test_a_folder_that_is_not_a_tune_experiment_exits_2(tmp_path, capsys):
    (tmp_path / "sweep").mkdir()
    assert run_cli(main, [str(tmp_path / "sweep"), "--out", str(tmp_path / "best")]) == 2
    assert "not a Tune experiment directory" in capsys.readouterr().err
    assert not (tmp_path / "best").exists()


def test_a_corrupt_best_checkpoint_exits_2_and_leaves_no_out(experiment, tmp_path, dice_export, capsys):
    moved = tmp_path / "moved" / experiment.name  # a copy: its own checkpoints are the ones read
    shutil.copytree(experiment, moved)
    broken = moved / checkpoint_of(dice_export.out).relative_to(experiment) / "model.pt"
    broken.write_bytes(broken.read_bytes()[:1000])
    out = tmp_path / "best"
    assert run_cli(main, [str(moved), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(broken) in err and "corrupt" in err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["moved"]


def share_frozen_part(checkpoint: Path, starting: Path) -> None:
    """Rewrite a trial checkpoint as a trial started from ``starting`` with a frozen text encoder writes it:
    ``model_trained.pt`` and the record of where its frozen tensors are (``starting`` gets them)."""
    whole = safe_torch_load(checkpoint / MODEL_FILE)
    torch.save(whole, starting)  # a starting checkpoint whose text encoder the trial kept
    source = FrozenSource.of(starting)
    torch.save({k: v for k, v in whole.items() if k not in frozen_part(whole)}, checkpoint / TRAINED_FILE)
    source.write(checkpoint / FROZEN_SOURCE_FILE)
    (checkpoint / MODEL_FILE).unlink()


def test_a_checkpoint_that_shares_its_frozen_text_encoder_is_exported_whole(experiment, tmp_path, dice_export,
                                                                            capsys):
    moved = tmp_path / "moved" / experiment.name
    shutil.copytree(experiment, moved)
    checkpoint = moved / checkpoint_of(dice_export.out).relative_to(experiment)
    starting = tmp_path / "weights" / "stage2_init.pt"
    starting.parent.mkdir()
    share_frozen_part(checkpoint, starting)

    assert run_cli(main, [str(moved), "--out", str(tmp_path / "best")]) == 0
    assert f"frozen text encoder from {starting}" in capsys.readouterr().out
    exported = tmp_path / "best"
    assert (exported / "model.pt").is_file() and not list(exported.glob("*trained*"))
    original, whole = safe_torch_load(dice_export.out / "model.pt"), safe_torch_load(exported / "model.pt")
    assert whole.keys() == original.keys() and all(torch.equal(whole[k], original[k]) for k in whole)
    record = json.loads((exported / "export.json").read_text())["frozen_text_encoder_from"]
    assert record == {"checkpoint": str(starting), "sha256": FrozenSource.of(starting).sha256}
    verify_export(exported)

    copy = tmp_path / "elsewhere" / "init.pt"  # the starting checkpoint moved: the sweep's path is gone
    copy.parent.mkdir()
    starting.rename(copy)
    assert run_cli(main, [str(moved), "--out", str(tmp_path / "b2")]) == 2
    assert "which is not there" in capsys.readouterr().err and not (tmp_path / "b2").exists()
    assert run_cli(main, [str(moved), "--out", str(tmp_path / "b3"), "--frozen-from", str(copy)]) == 0
    assert safe_torch_load(tmp_path / "b3" / "model.pt").keys() == original.keys()

    changed = safe_torch_load(copy)
    key = next(iter(frozen_part(changed)))
    changed[key] = changed[key] * 2
    torch.save(changed, copy)
    assert run_cli(main, [str(moved), "--out", str(tmp_path / "b4"), "--frozen-from", str(copy)]) == 2
    err = capsys.readouterr().err
    assert "is not the one this checkpoint was trained with" in err and str(checkpoint) in err
    assert not (tmp_path / "b4").exists()


def test_a_checkpoint_deleted_from_the_experiment_and_its_recorded_place_is_refused(tmp_path):
    recorded = f"{tmp_path}/old-place/sweep/train_runs/sweep-t1/checkpoint_2"
    with pytest.raises(InputError, match="model.pt or model_trained.pt not found .*num_to_keep"):
        locate_checkpoint(pyarrow.fs.LocalFileSystem(), str(tmp_path / "sweep"), recorded)


def history(*rows: dict) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


def test_no_trial_with_val_metrics_is_refused():
    diverged = history({"step": 1, "diverged": True, "train_loss": float("nan")})
    with pytest.raises(InputError, match="reported val_dice"):
        choose({"t1": diverged, "t2": pd.DataFrame()}, "dice")


def test_val_metrics_without_any_checkpoint_are_refused():
    unsaved = history({"step": 1, "val_dice": 0.5, "val_ap75": 0.1})
    with pytest.raises(InputError, match="saved a checkpoint"):
        choose({"t1": unsaved}, "dice")


def test_the_best_row_that_saved_a_checkpoint_wins_across_trials():
    t1 = history({"step": 1, "val_dice": 0.9, "val_ap75": 0.0, "checkpoint_path": None},
                 {"step": 2, "val_dice": 0.6, "val_ap75": 0.9, "checkpoint_path": "/x/t1/c2"})
    t2 = history({"step": 1, "val_dice": 0.7, "val_ap75": 0.1, "checkpoint_path": "/x/t2/c1"},
                 {"step": 2, "val_dice": 0.4, "val_ap75": 0.2, "checkpoint_path": "/x/t2/c2"})
    (dice,) = choose({"t1": t1, "t2": t2}, "dice")
    assert (dice.trial_id, dice.step, dice.checkpoint_path) == ("t2", 1, "/x/t2/c1")
    (ap75,) = choose({"t1": t1, "t2": t2}, "ap75")
    assert (ap75.trial_id, ap75.step, ap75.val_ap75) == ("t1", 2, 0.9)


def test_an_empty_pareto_front_is_refused():
    saved = history({"step": 1, "val_dice": 0.5, "val_ap75": 0.1, "checkpoint_path": "/x/c1"})
    with pytest.raises(InputError, match="Pareto front is empty"):
        choose({"t1": saved}, "pareto", front=[])


def test_a_pyarrow_uri_experiment_is_read_through_its_filesystem(experiment, tmp_path, dice_export):
    result = export_best(f"file://{experiment}", tmp_path / "best", pick="dice")
    (model,) = result.models
    assert model.step == 2 and model.model_path.read_bytes() == (dice_export.out / "model.pt").read_bytes()


def test_on_tied_scores_the_latest_checkpoint_is_the_best_one_as_trains_retention_keeps_it():
    import pandas as pd

    from sweeps.results import best_checkpoint

    history = pd.DataFrame({"step": [5, 10, 15], "val_dice": [0.0, 0.0, 0.0],
                            "checkpoint_path": ["a", "b", "c"]})
    assert best_checkpoint(history) == "c"
    history["val_dice"] = [0.0, 0.2, 0.2]
    assert best_checkpoint(history) == "c"
    history["val_dice"] = [0.3, 0.2, 0.2]
    assert best_checkpoint(history) == "a"


def test_a_checkpoint_recorded_outside_the_named_experiment_folder_is_not_read(tmp_path):
    """The experiment folder was copied without its checkpoints: the original place is not read."""
    original = tmp_path / "old-place" / "sweep" / "train_runs" / "sweep-t1" / "checkpoint_2"
    original.mkdir(parents=True)
    (original / "model.pt").write_bytes(b"weights")
    (tmp_path / "copy" / "train_runs").mkdir(parents=True)
    with pytest.raises(InputError, match="not found in the experiment folder"):
        locate_checkpoint(pyarrow.fs.LocalFileSystem(), str(tmp_path / "copy"), str(original))
