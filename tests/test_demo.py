"""``make demo`` reuses its finished steps only while sweeps/configs/local.yaml and Phase 1 are unchanged."""

from __future__ import annotations

import yaml

from sweeps import demo, demo_phase1

PHASE1 = f"phase1-{demo_phase1.phase1_key()}"


def earlier_run(out, config_text: str) -> None:
    for name in ("data", "sweeps/local-cass", "best", "report"):
        (out / name).mkdir(parents=True)
        (out / name / "marker").write_text(name)
    (out / PHASE1).mkdir()
    (out / PHASE1 / demo_phase1.NATIVE_FILE).write_text("weights")
    (out / demo.CONFIG_FILE).write_text(config_text)


def test_demo_config_points_at_the_demo_folder(tmp_path):
    raw = yaml.safe_load(demo.demo_sweep_config(tmp_path, tmp_path / PHASE1 / demo_phase1.NATIVE_FILE))
    assert raw["storage_path"] == str(tmp_path / "sweeps")
    assert raw["dataset"]["dir"] == str(tmp_path / "data")
    assert raw["trial"]["checkpoint"] == str(tmp_path / PHASE1 / demo_phase1.NATIVE_FILE)


def test_unchanged_config_keeps_the_earlier_run(tmp_path):
    text = demo.demo_sweep_config(tmp_path, tmp_path / PHASE1 / demo_phase1.NATIVE_FILE)
    earlier_run(tmp_path, text)
    assert demo.set_aside_if_changed(tmp_path, text) is None
    assert (tmp_path / "sweeps/local-cass/marker").exists()


def test_changed_config_moves_the_derived_outputs_aside(tmp_path):
    earlier_run(tmp_path, "trial: {resolution: 224}\n")
    in_use = tmp_path / PHASE1
    previous = demo.set_aside_if_changed(tmp_path, demo.demo_sweep_config(tmp_path, in_use / demo_phase1.NATIVE_FILE),
                                         phase1=in_use)
    assert previous is not None and previous.parent == tmp_path
    for name in ("data", "sweeps", "best", "report", demo.CONFIG_FILE):
        assert not (tmp_path / name).exists()
        assert (previous / name).exists()
    assert (previous / "sweeps/local-cass/marker").read_text() == "sweeps/local-cass"
    assert (in_use / demo_phase1.NATIVE_FILE).read_text() == "weights"  # the Phase 1 in use is cached apart: kept


def test_the_phase1_cache_key_follows_its_settings_and_data():
    assert demo_phase1.phase1_key() == demo_phase1.phase1_key(dict(demo_phase1.SETTINGS), dict(demo_phase1.DATA))
    assert demo_phase1.phase1_key({**demo_phase1.SETTINGS, "max_steps": 1}) != demo_phase1.phase1_key()
    assert demo_phase1.phase1_key(data={**demo_phase1.DATA, "seed": 1}) != demo_phase1.phase1_key()


def test_a_changed_phase1_sets_the_stage2_outputs_and_the_old_phase1_aside(tmp_path):
    """Stage 2's config names the surgered file inside the Phase 1 folder, so new Phase 1 settings change it; the
    old Phase 1 folder and an older demo's top-level Phase 1 files go with the outputs made from them."""
    earlier_run(tmp_path, demo.demo_sweep_config(tmp_path, tmp_path / PHASE1 / demo_phase1.NATIVE_FILE))
    (tmp_path / "phase1_tiny_native.pt").write_text("an older demo's")
    new = tmp_path / "phase1-000000000000"
    new.mkdir()
    previous = demo.set_aside_if_changed(tmp_path, demo.demo_sweep_config(tmp_path, new / demo_phase1.NATIVE_FILE),
                                         phase1=new)
    assert previous is not None and new.is_dir()
    assert (previous / PHASE1).is_dir() and (previous / "phase1_tiny_native.pt").is_file()
    assert not (tmp_path / PHASE1).exists() and not (tmp_path / "phase1_tiny_native.pt").exists()


def test_first_run_has_nothing_to_set_aside(tmp_path):
    assert demo.set_aside_if_changed(tmp_path, demo.demo_sweep_config(tmp_path, tmp_path / PHASE1 / demo_phase1.NATIVE_FILE)) is None


def test_phase1_trains_on_vessels_saves_the_wrapper_format_that_surgery_converts_and_is_cached(tmp_path, capsys):
    """A few steps of the demo's Phase 1 (same code, smaller settings): a Phase 1 file with ``sam3.`` keys and
    custom heads, which the surgery turned into a native checkpoint; a second call reuses both without training."""
    import torch

    from trainables.checkpoints.native import load_native
    from trainables.model import build_model

    settings = {**demo_phase1.SETTINGS, "max_steps": 2, "val_every": 2, "cpu_threads_per_worker": 1}
    data = {**demo_phase1.DATA, "train": 4, "val": 2, "size": 112}
    phase1 = demo_phase1.train_phase1(tmp_path, settings=settings, data=data)
    assert phase1.folder == tmp_path / f"phase1-{demo_phase1.phase1_key(settings, data)}"
    assert phase1.metrics["step"] == 2 and 0.0 <= phase1.metrics["vessel_dice"] <= 1.0
    assert "Phase 1 step 2/2: vessel Dice" in capsys.readouterr().out
    state = torch.load(phase1.checkpoint, weights_only=True)["model"]
    assert any(k.startswith("sam3.") for k in state) and any(k.startswith("seg_head.") for k in state)
    assert not (phase1.folder / "last_checkpoint").exists()

    assert phase1.native == phase1.folder / demo_phase1.NATIVE_FILE
    load_native(build_model("tiny", seed=1), phase1.native)  # strict: every native key, nothing else

    stamp = phase1.checkpoint.stat().st_mtime_ns
    again = demo_phase1.train_phase1(tmp_path, settings=settings, data=data)
    assert again == phase1 and phase1.checkpoint.stat().st_mtime_ns == stamp
    assert "Phase 1 step" not in capsys.readouterr().out


def test_an_interrupted_phase1_is_trained_again_and_never_reuses_a_stale_native_file(tmp_path, monkeypatch):
    """A folder without its record (an interrupted run) is started again: its old checkpoints are removed first,
    so the native file always comes from the model the record describes."""
    settings = {**demo_phase1.SETTINGS, "max_steps": 1, "val_every": 1, "cpu_threads_per_worker": 1}
    data = {**demo_phase1.DATA, "train": 4, "val": 2, "size": 112}
    folder = tmp_path / f"phase1-{demo_phase1.phase1_key(settings, data)}"
    folder.mkdir()
    (folder / demo_phase1.NATIVE_FILE).write_text("an interrupted run's")
    calls = []
    import trainables.checkpoints.surgery as surgery_module

    real = surgery_module.surgery
    monkeypatch.setattr(surgery_module, "surgery", lambda *a, **k: calls.append(a) or real(*a, **k))
    phase1 = demo_phase1.train_phase1(tmp_path, settings=settings, data=data)
    assert calls and (folder / demo_phase1.NATIVE_FILE).read_bytes() != b"an interrupted run's"
    assert (folder / demo_phase1.RECORD_FILE).is_file() and phase1.native.is_file()
    (folder / demo_phase1.PHASE1_FILE).unlink()  # a record whose checkpoint is gone is not a finished Phase 1
    assert demo_phase1.train_phase1(tmp_path, settings=settings, data=data).checkpoint.is_file()


def test_a_diverged_phase1_says_what_to_change(tmp_path, monkeypatch):
    import pytest
    import torch

    import trainables.trial
    from common.errors import InputError

    monkeypatch.setattr(trainables.trial, "train_step", lambda *a, **k: (torch.tensor(float("nan")), {}))
    settings = {**demo_phase1.SETTINGS, "max_steps": 1, "val_every": 1, "cpu_threads_per_worker": 1}
    data = {**demo_phase1.DATA, "train": 4, "val": 2, "size": 112}
    with pytest.raises(InputError, match="Phase 1 diverged at step 1 .*lower the learning rates"):
        demo_phase1.train_phase1(tmp_path, settings=settings, data=data)
    assert not (tmp_path / f"phase1-{demo_phase1.phase1_key(settings, data)}" / demo_phase1.RECORD_FILE).exists()
