"""bench/tabular.py: a space-filling design over stage2.yaml's knobs, and restartable runs with val and test curves."""

from __future__ import annotations

import csv
import json

import pytest

from bench import tabular
from sweeps import demo_phase1


def test_the_design_covers_every_stage2_knob_within_its_range():
    """Every knob stage2.yaml searches, stage2's ranges except the learning rates (local.yaml's, the tiny model's)."""
    from search_spaces import load_search_space

    points = tabular.design(48, seed=0)
    stage2, local = load_search_space(tabular.STAGE2_SPACE), load_search_space(tabular.LOCAL_SPACE)
    assert len(points) == 48 and set(points[0]) == set(stage2)
    for name in stage2:
        values = [p[name] for p in points]
        domain = local[name] if name in tabular.TINY_RANGES else stage2[name]
        if hasattr(domain, "categories"):
            assert set(values) == set(domain.categories)
        else:
            assert domain.lower <= min(values) and max(values) <= domain.upper
            # a Latin hypercube: each of the 48 equal slices of the range holds one point (spread, not clustered)
            assert len(set(values)) >= (21 if name == "warmup_steps" else 48)
    assert tabular.design(48, seed=0) == points and tabular.design(48, seed=1) != points


def test_a_design_is_kept_and_a_different_one_refused(tmp_path):
    first = tabular.load_design(tmp_path, 4, 0)
    assert tabular.load_design(tmp_path, 4, 0) == first
    with pytest.raises(SystemExit, match="use another --out"):
        tabular.load_design(tmp_path, 8, 0)


def test_runs_record_val_and_test_curves_and_a_rerun_trains_only_what_is_missing(tmp_path, monkeypatch, capsys):
    """Two configurations x one seed, 2 steps, on a small set: each run's rows name the configuration, the seed,
    the step and val and test figures; the second call trains nothing."""
    monkeypatch.setattr(demo_phase1, "SETTINGS", {**demo_phase1.SETTINGS, "max_steps": 2, "val_every": 2,
                                                  "cpu_threads_per_worker": 1})
    monkeypatch.setattr(demo_phase1, "DATA", {**demo_phase1.DATA, "train": 4, "val": 2, "size": 112})
    local = tmp_path / "local.yaml"
    text = tabular.LOCAL_CONFIG.read_text().replace("{train: 256, val: 32, test: 32, size: 224",
                                                    "{train: 4, val: 2, test: 2, size: 112")
    assert text != tabular.LOCAL_CONFIG.read_text()
    local.write_text(text)
    monkeypatch.setattr(tabular, "LOCAL_CONFIG", local)
    args = ["--out", str(tmp_path / "t"), "--configs", "2", "--seeds", "0", "--steps", "2", "--val-every", "1",
            "--jobs", "1"]
    assert tabular.main(args) == 0
    runs = sorted((tmp_path / "t" / "runs").glob("*.csv"))
    assert [p.name for p in runs] == ["c00-s0.csv", "c01-s0.csv"]
    rows = list(csv.DictReader((tmp_path / "t" / "table.csv").open()))
    assert [(r["config"], r["seed"], r["step"]) for r in rows] == [("0", "0", "1"), ("0", "0", "2"),
                                                                    ("1", "0", "1"), ("1", "0", "2")]
    design = json.loads((tmp_path / "t" / "design.json").read_text())["points"]
    assert float(rows[0]["lr_transformer"]) == pytest.approx(design[0]["lr_transformer"])
    for row in rows:
        for split in ("val", "test"):
            assert 0.0 <= float(row[f"{split}_dice"]) <= 1.0
    capsys.readouterr()
    assert tabular.main(args) == 0
    assert "0 run(s) missing" in capsys.readouterr().out
