"""``bench/host_memory.py`` on the tiny preset: it measures a worker's start in fresh processes and appends its
table to the log (the full preset's figures are in BENCHMARKS.md)."""

from __future__ import annotations

import re

import bench.common
from bench import host_memory


def test_the_bench_measures_build_and_load_against_the_checkpoint_size(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench.common, "LOG", tmp_path / "BENCHMARKS-LOG.md")
    assert host_memory.main(["--preset", "tiny", "--folder", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    ratios = [float(r) for r in re.findall(r"\| ([0-9.]+)(?: \(goal <= 1.5\))? \|\n?", table)]
    assert len(ratios) == 4 and ratios[0] == 1.0 and all(r > 0 for r in ratios)
    assert "build_model + load_native" in (tmp_path / "BENCHMARKS-LOG.md").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["BENCHMARKS-LOG.md"]  # the checkpoint was removed
