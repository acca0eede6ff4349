"""The give-up marker that keeps Tune from re-running a trial whose Train run already gave up.

Specification (``sweeps/trial_retries.py``; the end-to-end sweep is in ``tests/test_faults.py``):
- before a Train run gives up, nothing stops a trial from starting;
- after it gave up, a re-run in the same driver session is refused, naming the run, the first failure's
  last line, and ``--resume``;
- a new driver session (``--resume``) is not refused: errored trials get their full budget again;
- storage may be a local folder or a pyarrow URI.
"""

from __future__ import annotations

import pytest

from sweeps.trial_retries import GiveUpMarker, TrainRunGaveUp, new_session


def out_of_memory() -> RuntimeError:
    return RuntimeError("Training failed due to worker errors:\n[Rank 0]\nRuntimeError: CUDA out of memory (injected)")


def test_a_run_that_has_not_given_up_may_start(tmp_path):
    GiveUpMarker(str(tmp_path / "train_runs"), "sweep-t1", new_session()).raise_if_recorded()


def test_a_run_that_gave_up_is_refused_in_the_same_session_naming_its_first_failure(tmp_path):
    marker = GiveUpMarker(str(tmp_path / "train_runs"), "sweep-t1", new_session())
    marker.record(out_of_memory())

    with pytest.raises(TrainRunGaveUp) as refused:
        marker.raise_if_recorded()
    message = str(refused.value)
    assert "sweep-t1" in message and "--resume" in message
    assert message.endswith("RuntimeError: RuntimeError: CUDA out of memory (injected)")


def test_another_session_or_another_run_is_not_refused(tmp_path):
    storage = str(tmp_path / "train_runs")
    GiveUpMarker(storage, "sweep-t1", "first").record(out_of_memory())

    GiveUpMarker(storage, "sweep-t1", "resumed").raise_if_recorded()
    GiveUpMarker(storage, "sweep-t2", "first").raise_if_recorded()


def test_uri_storage_works_like_a_local_folder(tmp_path):
    marker = GiveUpMarker(f"file://{tmp_path}/bucket/train_runs", "sweep-t1", "s")
    marker.record(out_of_memory())

    assert (tmp_path / "bucket" / "train_runs" / "sweep-t1.gave-up-s").is_file()
    with pytest.raises(TrainRunGaveUp):
        marker.raise_if_recorded()


def test_sessions_are_distinct():
    assert len({new_session() for _ in range(100)}) == 100
