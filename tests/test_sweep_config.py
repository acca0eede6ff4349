"""Sweep configs: the shipped ones load; typos, wrong types and impossible settings are refused, all at once."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from common.errors import InputError
from sweeps.config import load_sweep_config, parse_sweep_config

MINIMAL = {"name": "s", "storage_path": "/tmp/sweeps", "search_space": "search_spaces/local.yaml",
           "trial": {"max_steps": 200}}


def refused(raw) -> str:
    with pytest.raises(InputError) as err:
        parse_sweep_config(raw, source="my.yaml")
    assert "my.yaml" in str(err.value)
    return str(err.value)


def with_(**changes):
    raw = copy.deepcopy(MINIMAL)
    raw.update(changes)
    return raw


def test_local_config_is_a_small_cpu_sweep_on_generated_data():
    """Laid out as stage2.yaml (one-worker trials, two at once on 2 CPUs), ASHA deciding on val Dice at reports
    of their own, at least 6 trials (the demo's issue)."""
    cfg = load_sweep_config("sweeps/configs/local.yaml")
    t = cfg.trial
    assert t.preset == "tiny" and not t.use_gpu and t.num_workers == 1 and t.cpu_threads_per_worker == 1
    assert cfg.num_samples >= 6 and cfg.scheduler.metric == "val_dice"
    rungs = [cfg.scheduler.grace_period * cfg.scheduler.reduction_factor ** k for k in range(3)]
    assert all(r % t.val_every == 0 for r in rungs if r < t.max_steps)
    assert cfg.dataset.synthetic is not None and cfg.dataset.synthetic.test > 0
    assert cfg.trial.train_json == str(Path(cfg.dataset.dir) / "annotations" / "train.json")
    assert Path(cfg.search_space).exists()


def test_stage2_config_is_the_full_model_one_gpu_per_trial_two_images_per_step_fp32():
    """One-GPU trials, two at once on a 2-GPU workstation (bench/trial_layouts.py favoured this layout), with
    the same 2 images per optimizer step as two workers would take."""
    cfg = load_sweep_config("sweeps/configs/stage2.yaml")
    t = cfg.trial
    assert (t.preset, t.resolution, t.num_workers, t.use_gpu, t.backend, t.precision) == (
        "full", 672, 1, True, "gloo", "fp32")
    assert t.num_workers * t.batch_size * t.grad_accum_steps == 2 and cfg.max_concurrent_trials is None
    assert t.checkpoint and cfg.dataset.synthetic is None and cfg.ray.address == "auto"
    rungs = [cfg.scheduler.grace_period * cfg.scheduler.reduction_factor ** k for k in range(3)]
    rungs = [r for r in rungs if r < t.max_steps]
    assert rungs == [750] and all(r % t.val_every == 0 for r in rungs)  # ASHA decides on fresh reports


def test_defaults_fill_every_optional_section():
    cfg = parse_sweep_config(MINIMAL, source="my.yaml")
    assert cfg.searcher.sampler == "tpe" and cfg.study_name == "s" and cfg.max_concurrent_trials is None
    assert cfg.experiment_dir == "/tmp/sweeps/s"
    assert cfg.study_storage == "/tmp/sweeps/s/optuna_journal.log"
    assert cfg.ray.dashboard_host == "127.0.0.1" and cfg.wandb.mode == "disabled"


def test_relative_storage_is_made_absolute_and_uris_are_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_sweep_config(with_(storage_path="out"), source="x").storage_path == str(tmp_path / "out")
    cfg = parse_sweep_config(with_(storage_path="s3://bucket/sweeps", searcher={"storage": "/nfs/j.log"}),
                             source="x")
    assert cfg.experiment_dir == "s3://bucket/sweeps/s" and cfg.study_storage == "/nfs/j.log"


def test_the_files_a_trial_reads_get_absolute_paths_as_workers_run_in_their_trial_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trial = {"checkpoint": "weights/init.pt", "train_json": "d/annotations/train.json", "images_dir": "d/images",
             "val_json": "/data/d/annotations/val.json"}
    cfg = parse_sweep_config(with_(trial=trial), source="x")
    assert cfg.trial.checkpoint == str(tmp_path / "weights" / "init.pt")
    assert cfg.trial.train_json == str(tmp_path / "d" / "annotations" / "train.json")
    assert cfg.trial.images_dir == str(tmp_path / "d" / "images") and cfg.trial.val_json == "/data/d/annotations/val.json"
    for kept in ("E:/weights/init.pt", "E:\\weights\\init.pt", "s3://bucket/init.pt"):  # a drive or a URI: as given
        assert parse_sweep_config(with_(trial={"checkpoint": kept}), source="x").trial.checkpoint == kept


def test_a_uri_storage_needs_an_explicit_journal():
    cfg = parse_sweep_config(with_(storage_path="s3://bucket/sweeps"), source="x")
    with pytest.raises(InputError, match="searcher.storage"):
        cfg.study_storage


@pytest.mark.parametrize("change, message", [
    ({"nmae": "x"}, "nmae: unknown key"),
    ({"scheduler": {"grace": 3}}, "scheduler.grace: unknown key"),
    ({"searcher": {"sampler": "cmaes"}}, "searcher.sampler: 'cmaes' is not one of ['tpe', 'nsga2', 'random']"),
    ({"num_samples": "ten"}, "num_samples: expected int, got 'ten'"),
    ({"num_samples": 0}, "num_samples: 0 must be >= 1"),
    ({"wandb": {"mode": "cloud"}}, "wandb.mode: 'cloud' is not one of"),
    ({"scheduler": {"grace_period": 500}}, "scheduler.grace_period: 500 exceeds trial.max_steps 200"),
    ({"scheduler": {"reduction_factor": 1}}, "scheduler.reduction_factor: 1 must be >= 2"),
    ({"ray": {"dashboard_host": "0.0.0.0"}}, "ray.dashboard_host: '0.0.0.0'"),
    ({"trial": {"resolution": 1000}}, "resolution: 1000 must be a positive multiple"),
    ({"trial": {"max_stepz": 200}}, "trial.max_stepz: unknown key"),
    ({"trial": {"batch_size": 2.5}}, "trial.batch_size: expected int, got 2.5"),
    ({"trial": {"hflip": "yes"}}, "trial.hflip: expected bool, got 'yes'"),
    ({"trial": {"lr_vision": "fast"}}, "trial.lr_vision: expected float, got 'fast'"),
    ({"trial": {"checkpoint": 3}}, "trial.checkpoint: expected str or null, got 3"),
    ({"trial": {"val_batch_size": 0}}, "trial.val_batch_size: 0 must be an integer >= 1, or null"),
    ({"trial": {"categories": "vessel"}}, "trial.categories: 'vessel' is the demo's Phase 1 task"),
    ({"dataset": {"dir": "d"}, "trial": {"train_json": "t.json"}},
     "trial: ['train_json'] come from dataset.dir"),
    ({"dataset": {"synthetic": {"train": 2}}}, "dataset.dir: required"),
    ({"dataset": {"dir": "d", "synthetic": {"trian": 2}}}, "dataset.synthetic.trian: unknown key"),
])
def test_each_bad_setting_is_refused_by_its_dotted_key(change, message):
    assert message in refused(with_(**change))


def test_a_yaml_1_1_exponent_without_a_dot_is_still_a_float():
    """PyYAML reads ``2e-3`` as a string (YAML 1.1 wants ``2.0e-3``); a float setting accepts it as 0.002."""
    raw = yaml.safe_load("trial: {lr_transformer: 2e-3}")
    assert raw["trial"]["lr_transformer"] == "2e-3"
    assert parse_sweep_config(with_(**raw), source="x").trial.lr_transformer == 0.002


def test_missing_required_keys_and_all_problems_are_listed_together():
    text = refused({"trial": {}, "num_samples": -1, "bogus": 1})
    for expected in ("name: required", "storage_path: required", "search_space: required", "bogus: unknown key"):
        assert expected in text


def test_an_unreadable_file_is_an_input_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(InputError, match="not valid YAML"):
        load_sweep_config(bad)
    with pytest.raises(InputError, match="cannot read"):
        load_sweep_config(tmp_path / "absent.yaml")


def test_yaml_round_trip_of_a_shipped_config_is_stable(tmp_path):
    raw = yaml.safe_load(Path("sweeps/configs/local.yaml").read_text())
    assert parse_sweep_config(raw, source="x") == load_sweep_config("sweeps/configs/local.yaml")


def test_asha_may_stop_on_another_reported_validation_metric_but_not_on_an_unknown_one():
    from sweeps.config import parse_sweep_config

    base = {"name": "x", "storage_path": "/tmp/x", "search_space": "search_spaces/local.yaml",
            "trial": {"max_steps": 200}}
    assert parse_sweep_config({**base, "scheduler": {"metric": "val_presence_auroc"}},
                              source="t").scheduler.metric == "val_presence_auroc"
    with pytest.raises(InputError, match="scheduler.metric: 'val_dcie'"):
        parse_sweep_config({**base, "scheduler": {"metric": "val_dcie"}}, source="t")


def test_the_sweep_never_reads_the_test_split(synthetic_dataset, tmp_path, capsys):
    """A dataset's test.json is held out: the trials are pointed at train and val only, and the dry run (which
    validates every COCO file a trial reads, see the catalogue's 'dataset whose COCO file is broken') passes
    although test.json is garbage that the validator refuses."""
    import shutil

    from data_prep.layout import DatasetPaths
    from data_prep.validate import validate_dataset
    from sweeps import stage2

    data = DatasetPaths(Path(shutil.copytree(synthetic_dataset.root, tmp_path / "data")))
    data.test_json.write_bytes(b"\x00 not a COCO file")
    assert any(str(data.test_json) in error for error in validate_dataset(data).errors)
    raw = with_(storage_path=str(tmp_path / "out"), dataset={"dir": str(data.root)}, num_samples=1,
                trial={"max_steps": 4, "val_every": 2, "num_workers": 1, "cpu_threads_per_worker": 1},
                scheduler={"grace_period": 2})
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(raw))
    trial = load_sweep_config(config).trial.to_dict()
    assert (trial["train_json"], trial["val_json"]) == (str(data.train_json), str(data.val_json))
    assert str(data.test_json) not in map(str, trial.values())
    assert stage2.main(["--config", str(config), "--dry-run"]) == 0, capsys.readouterr().err
