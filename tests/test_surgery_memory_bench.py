"""``bench/surgery_memory.py`` on the tiny preset: it writes a Phase 1 file, converts it in a fresh process and
appends its table to the log (the full preset's figures, under 2x the file's size, are in BENCHMARKS.md)."""

from __future__ import annotations

import re

import bench.common
from bench import surgery_memory


def test_the_bench_measures_the_surgery_against_the_file_size(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench.common, "LOG", tmp_path / "BENCHMARKS-LOG.md")
    assert surgery_memory.main(["--preset", "tiny", "--folder", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    ratios = [float(r) for r in re.findall(r"\| ([0-9.]+)(?: \(goal < 2: (?:met|NOT met)\))? \|", table)]
    assert len(ratios) == 4 and ratios[0] == 1.0 and all(r > 0 for r in ratios)
    assert "surgery IN OUT --preset tiny" in table and "goal < 2" in table
    assert "Weight surgery's peak host memory" in (tmp_path / "BENCHMARKS-LOG.md").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["BENCHMARKS-LOG.md"]  # IN and OUT were removed
