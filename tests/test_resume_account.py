"""What ``--resume`` says it found (``sweeps/resume_account.py``); the whole account is checked on a killed
sweep in tests/test_sweep_resume.py."""

from __future__ import annotations

import json

from sweeps.resume_account import checkpoint_step


def test_an_unfinished_trial_continues_from_its_newest_readable_checkpoint(tmp_path):
    run = tmp_path / "train_runs" / "sweep-a1b2c3d4"
    for name, step in (("checkpoint_2026-12-05_10-00-00.000001", 75), ("checkpoint_2026-12-05_10-05-00.000001", 150)):
        (run / name).mkdir(parents=True)
        (run / name / "metrics.json").write_text(json.dumps({"step": step, "val_dice": 0.3}))
    (run / "checkpoint_2026-12-05_10-09-00.000001").mkdir()  # being written when the driver died: no metrics
    (run / "checkpoint_manager_snapshot.json").write_text("{}")
    assert checkpoint_step(str(tmp_path / "train_runs"), "sweep-a1b2c3d4") == 150
    assert checkpoint_step(str(tmp_path / "train_runs"), "sweep-never-started") is None
