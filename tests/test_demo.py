"""``make demo`` reuses its finished steps only while sweeps/configs/local.yaml is unchanged."""

from __future__ import annotations

import yaml

from sweeps import demo


def earlier_run(out, config_text: str) -> None:
    for name in ("data", "sweeps/local-cass", "best", "report"):
        (out / name).mkdir(parents=True)
        (out / name / "marker").write_text(name)
    (out / demo.SURGERED).write_text("weights")
    (out / demo.CONFIG_FILE).write_text(config_text)


def test_demo_config_points_at_the_demo_folder(tmp_path):
    raw = yaml.safe_load(demo.demo_sweep_config(tmp_path))
    assert raw["storage_path"] == str(tmp_path / "sweeps")
    assert raw["dataset"]["dir"] == str(tmp_path / "data")
    assert raw["trial"]["checkpoint"] == str(tmp_path / demo.SURGERED)


def test_unchanged_config_keeps_the_earlier_run(tmp_path):
    text = demo.demo_sweep_config(tmp_path)
    earlier_run(tmp_path, text)
    assert demo.set_aside_if_changed(tmp_path, text) is None
    assert (tmp_path / "sweeps/local-cass/marker").exists()


def test_changed_config_moves_the_derived_outputs_aside(tmp_path):
    earlier_run(tmp_path, "trial: {resolution: 224}\n")
    previous = demo.set_aside_if_changed(tmp_path, demo.demo_sweep_config(tmp_path))
    assert previous is not None and previous.parent == tmp_path
    for name in ("data", "sweeps", "best", "report", demo.CONFIG_FILE):
        assert not (tmp_path / name).exists()
        assert (previous / name).exists()
    assert (previous / "sweeps/local-cass/marker").read_text() == "sweeps/local-cass"
    assert (tmp_path / demo.SURGERED).read_text() == "weights"  # does not depend on local.yaml: kept


def test_first_run_has_nothing_to_set_aside(tmp_path):
    assert demo.set_aside_if_changed(tmp_path, demo.demo_sweep_config(tmp_path)) is None
