"""Optimizer state is dropped from every checkpoint of a trial that ended (``sweeps.optimizer_state``),
including one the trial persisted after Tune reported it complete (Tune stops the actor afterwards)."""

from __future__ import annotations

from types import SimpleNamespace

from sweeps.optimizer_state import DropStateOfEndedTrials, train_run_name
from trainables.checkpoints.trial import STATE_FILE


def write_checkpoint(run, name):
    folder = run / name
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / STATE_FILE).write_bytes(b"optimizer state")
    return folder


def test_an_ended_trial_loses_its_optimizer_state_then_and_at_the_end_of_the_sweep(tmp_path):
    cfg = SimpleNamespace(train_runs=str(tmp_path), name="sweep")
    ended, running = (tmp_path / train_run_name("sweep", t) for t in ("a1", "b2"))
    first = write_checkpoint(ended, "checkpoint_1")
    other = write_checkpoint(running, "checkpoint_1")
    callback = DropStateOfEndedTrials(cfg)

    callback.on_trial_complete(iteration=1, trials=[], trial=SimpleNamespace(trial_id="a1"))
    assert not (first / STATE_FILE).exists() and (first / "model.safetensors").exists()
    assert (other / STATE_FILE).exists()  # another trial's run is not touched

    late = write_checkpoint(ended, "checkpoint_2")  # persisted before Tune stopped the trial's actor
    # b2 was running when the sweep was interrupted: Tune stopped it and marked it TERMINATED, never complete
    callback.on_experiment_end(trials=[SimpleNamespace(trial_id="a1", status="TERMINATED"),
                                       SimpleNamespace(trial_id="b2", status="TERMINATED")])
    assert not (late / STATE_FILE).exists() and (late / "model.safetensors").exists()
    assert (other / STATE_FILE).exists()  # --resume continues b2 from it


def test_a_missing_train_run_is_not_an_error(tmp_path):
    callback = DropStateOfEndedTrials(SimpleNamespace(train_runs=str(tmp_path / "none"), name="sweep"))
    callback.on_trial_complete(iteration=1, trials=[], trial=SimpleNamespace(trial_id="a1"))
    callback.on_experiment_end(trials=[])
