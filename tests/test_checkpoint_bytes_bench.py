"""``bench/checkpoint_bytes.py`` on the tiny preset: one trial checkpoint written resumable and not, its bytes
against ``estimated_bytes``, and the Stage 2 sweep's peak under the old and the new rule (the full preset's
figures are in BENCHMARKS.md)."""

from __future__ import annotations

import re

import pytest

import bench.common
from bench import checkpoint_bytes
from trainables.checkpoints.trial import estimated_bytes


def row(table: str, label: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith(f"| {label}"))
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


def bytes_of(cell: str) -> int | None:
    return None if cell == "-" else int(cell.split()[0])


def test_the_bench_measures_one_checkpoint_and_the_sweep_peak(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench.common, "LOG", tmp_path / "BENCHMARKS-LOG.md")
    assert checkpoint_bytes.main(["--preset", "tiny", "--folder", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    resumable = [bytes_of(c) for c in row(table, "resumable=True")]
    final = [bytes_of(c) for c in row(table, "resumable=False")]
    (model, state, metrics, total), (final_model, final_state, final_metrics, final_total) = resumable, final
    assert total == model + state + metrics and state > 0
    assert final_state is None and final_total == final_model + final_metrics
    assert final_model == model and final_metrics == metrics

    expected = estimated_bytes("tiny", freeze_text_encoder=True)
    assert model == pytest.approx(expected.model, rel=0.05)
    # Every trained tensor got a (zero) gradient, so AdamW holds state for all of them: the estimate's bound is
    # met up to the per-tensor records of the file (0.7% over on the tiny preset; negligible on the full one)
    assert re.search(r"trained in (\d+) tensors, AdamW state for \1 after", table)
    assert state == pytest.approx(expected.trainer_state, rel=0.05)

    old, new = ([float(c.split()[0]) for c in row(table, label)[:2]] for label in ("old:", "new:"))
    assert all(n < o for n, o in zip(new, old))  # kept checkpoints without optimizer state take less
    assert "Checkpoint bytes: one tiny-preset trial checkpoint" in (tmp_path / "BENCHMARKS-LOG.md").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["BENCHMARKS-LOG.md"]  # the checkpoints were removed
