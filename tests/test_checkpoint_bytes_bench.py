"""``bench/checkpoint_bytes.py`` on the tiny preset: one trial checkpoint written resumable and not, its bytes
against ``estimated_bytes``, and the Stage 2 sweep's peak under the old and the new rule (the full preset's
figures are in BENCHMARKS.md)."""

from __future__ import annotations

import re

import pytest

import bench.common
from bench import checkpoint_bytes
from trainables.checkpoints.trial import estimated_bytes
from trainables.model import PRESET_SIZES


def row(table: str, label: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith(f"| {label}"))
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


def bytes_of(cell: str) -> int | None:
    return None if cell == "-" else int(cell.split()[0])


def test_the_bench_measures_one_checkpoint_and_the_sweep_peak(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench.common, "LOG", tmp_path / "BENCHMARKS-LOG.md")
    assert checkpoint_bytes.main(["--preset", "tiny", "--folder", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    (model, state, small, total), (kept_model, kept_state, kept_small, kept_total) = (
        [bytes_of(c) for c in row(table, label)] for label in ("whole, resumable", "whole, kept"))
    assert total == model + state + small and state > 0
    assert kept_state is None and (kept_model, kept_small, kept_total) == (model, small, model + small)
    (trained, shared_state, shared_small, shared_total), (kept_trained, none, _, _) = (
        [bytes_of(c) for c in row(table, label)] for label in ("shared, resumable", "shared, kept"))
    assert shared_state == state and none is None and kept_trained == trained
    assert shared_total == trained + state + shared_small and shared_small > small  # + frozen_source.json

    whole = estimated_bytes("tiny", freeze_text_encoder=True, starting_checkpoint=False)
    shared = estimated_bytes("tiny", freeze_text_encoder=True, starting_checkpoint=True)
    assert model == pytest.approx(whole.model, rel=0.05) and trained == pytest.approx(shared.model, rel=0.05)
    assert model - trained == pytest.approx(PRESET_SIZES["tiny"].text_encoder_bytes, rel=0.02)
    # Every trained tensor got a (zero) gradient, so AdamW holds state for all of them: the estimate's bound is
    # met up to the per-tensor records of the file (0.7% over on the tiny preset; negligible on the full one)
    assert re.search(r"trained in (\d+) tensors, AdamW state for \1 after", table)
    assert state == pytest.approx(whole.trainer_state, rel=0.05)

    peaks = [[float(c.split()[0]) for c in row(table, label)[:2]]
             for label in ("every kept checkpoint", "optimizer state only", "and the frozen text encoder")]
    assert all(a > b > c for a, b, c in zip(*peaks)), peaks  # each rule writes less than the one before
    assert "Checkpoint bytes: one tiny-preset trial checkpoint" in (tmp_path / "BENCHMARKS-LOG.md").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["BENCHMARKS-LOG.md"]  # the checkpoints were removed
