"""What a person watching a sweep sees (``sweeps/console.py``, ``trainables/progress.py``): one line per
validation and per trial end, progress between validations, and everything else in the sweep's log files."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sweeps import console
from sweeps.console import Console, WorkerLog, format_end, format_validation, worker_line
from trainables.progress import PROGRESS_TAG, ProgressPrinter, format_duration

REPO = Path(__file__).resolve().parents[1]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_validation_line_says_where_the_trial_is_and_how_long_is_left():
    result = {"step": 150, "val_dice": 0.4123, "val_ap75": 0.13, "seconds_per_step": 0.5, "val_seconds": 10.0}
    line = format_validation("a1b2c3d4", result, max_steps=400, previous_step=75)
    # 250 steps at 0.5 s, and 4 more validations of 10 s (one per 75 steps): 165 s
    assert re.fullmatch(r"\d\d:\d\d:\d\d a1b2c3d4 step 150/400  val Dice 0.412  AP75 0.130  0.50 s/step  ~3 min left",
                        line)
    assert "left" not in format_validation("a1b2c3d4", {**result, "step": 400}, max_steps=400, previous_step=300)


@pytest.mark.parametrize("last, expected", [
    ({"step": 400, "val_dice": 0.5}, "a1 completed 400 steps (best val Dice 0.600 at step 300)"),
    ({"step": 150, "val_dice": 0.2}, "a1 stopped by ASHA at step 150 (best val Dice 0.600 at step 300)"),
    ({"step": 37, "diverged": True}, "a1 diverged at step 37: non-finite loss (best val Dice 0.600 at step 300)"),
])
def test_a_trial_end_says_how_it_ended(last, expected):
    assert format_end("a1", last, max_steps=400, best=(0.6, 300)).endswith(expected)


def test_durations_read_as_a_person_says_them():
    assert [format_duration(s) for s in (45, 600, 3 * 3600 + 1800, float("nan"))] == ["45 s", "10 min", "3.5 h", "?"]


def test_progress_lines_are_throttled_and_name_their_trial(capsys, monkeypatch):
    clock = iter([0.0, 5.0, 20.0, 21.0, 40.0])
    monkeypatch.setattr("trainables.progress.time.monotonic", lambda: next(clock))
    printer = ProgressPrinter("a1b2c3d4", max_steps=100, min_interval_s=15)
    for step, pace in ((1, 9.0), (2, 2.0), (11, 2.0), (12, 1.0), (31, 1.0)):  # the first step starts the clock
        printer(step, pace)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{PROGRESS_TAG}a1b2c3d4 step 11/100, 2.00 s/step, ~3 min left",
                     f"{PROGRESS_TAG}a1b2c3d4 step 31/100, 1.00 s/step, ~69 s left"]
    assert worker_line(lines[0]) == ("a1b2c3d4", "a1b2c3d4 step 11/100, 2.00 s/step, ~3 min left")
    assert worker_line("Reporting training result 1: TrainingReport(...)") is None


def test_on_a_plain_stream_progress_is_a_line_at_most_every_interval_per_trial():
    out = io.StringIO()
    plain = Console(out, plain_interval_s=3600)
    plain.progress("a", "a step 1/9")
    plain.progress("a", "a step 2/9")  # within the interval: dropped
    plain.progress("b", "b step 1/9")
    plain.line("a step 3/9  val Dice 0.100")
    assert out.getvalue().splitlines() == ["a step 1/9", "b step 1/9", "a step 3/9  val Dice 0.100"]


def test_on_a_terminal_progress_is_one_status_line_rewritten_in_place_below_the_lines():
    out = Terminal()
    tty = Console(out)
    tty.progress("a", "a step 1/9")
    tty.progress("b", "b step 1/9")
    tty.line("a step 3/9  val Dice 0.100")
    tty.forget("a")
    screen = out.getvalue()
    assert screen.endswith("\r\x1b[Kb step 1/9")  # what stays on screen: b's progress alone
    assert "\r\x1b[Ka step 3/9  val Dice 0.100\n\r\x1b[Ka step 1/9 | b step 1/9" in screen


def test_a_trial_that_ended_shows_no_late_progress_and_the_end_of_the_sweep_clears_the_status_line():
    out = Terminal()
    tty = Console(out)
    tty.progress("a", "a step 1/9")
    tty.forget("a")
    tty.progress("a", "a step 2/9")  # Train ran on after the report that ended the trial
    tty.progress("b", "b step 1/9")
    tty.close()
    assert "a step 2/9" not in out.getvalue() and out.getvalue().endswith("b step 1/9\r\x1b[K")


def test_a_windows_console_without_ansi_support_gets_plain_lines(monkeypatch):
    monkeypatch.setattr(console.sys, "platform", "win32")
    import ctypes

    monkeypatch.delattr(ctypes, "windll", raising=False)  # as a console whose mode cannot be set
    assert not console.supports_ansi(Terminal())
    assert not console.supports_ansi(io.StringIO())


TUNE_ERROR = """Failure # 1 (occurred at 2026-12-05_17-20-31)
ray::_Inner.train() (pid=4913, ip=192.0.2.2, actor_id=1f08804f)
  File "/work/main/sweeps/stage2.py", line 218, in sam3_trial
    trainer.fit()
ray.train.TrainingFailedError: Training failed due to worker errors
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB
"""


def test_a_failed_trial_shows_the_exception_not_tunes_header(monkeypatch):
    class FailedTrial:
        trial_id, path, last_result = "a1b2c3d4", "/sweeps/s/a1b2c3d4", {"step": 200}

        def get_error(self):
            return TUNE_ERROR

    out = io.StringIO()
    monkeypatch.setattr(console, "CONSOLE", Console(out))
    console.SweepProgress(max_steps=400).on_trial_error(0, [], FailedTrial())
    assert out.getvalue().rstrip().endswith(
        "a1b2c3d4 failed after step 200: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB "
        "(details: /sweeps/s/a1b2c3d4/error.txt)")
    assert console.error_summary(None) == "(no message)"


def test_a_resumed_trial_reporting_its_checkpoint_again_gets_a_resume_line_not_a_time_estimate(monkeypatch):
    class Trial:
        trial_id = "a1"

    out = io.StringIO()
    monkeypatch.setattr(console, "CONSOLE", Console(out))
    progress = console.SweepProgress(max_steps=400)
    result = {"step": 150, "val_dice": 0.4, "val_ap75": 0.1, "seconds_per_step": 0.5, "val_seconds": 40.0}
    progress.on_trial_result(0, [], Trial(), result)
    progress.on_trial_result(0, [], Trial(), result)  # the same checkpoint, reported again after a restart
    first, again = out.getvalue().splitlines()
    assert "~" in first and again.endswith("a1 resumed at step 150  val Dice 0.400")
    assert progress.get_state()["previous_step"] == {"a1": 150}


def test_the_progress_callback_keeps_each_trials_best_across_a_resume():
    progress = console.SweepProgress(max_steps=400)
    progress.set_state({"previous_step": {"a1": 150}, "best": {"a1": [0.41, 150]}})
    assert progress.get_state() == {"previous_step": {"a1": 150}, "best": {"a1": (0.41, 150)}}


def test_every_worker_line_goes_to_the_workers_log_and_progress_also_to_the_console(tmp_path, monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(console, "CONSOLE", Console(out, plain_interval_s=0))
    log = WorkerLog(tmp_path / console.WORKERS_LOG)
    log({"pid": 42, "actor_name": "RayTrainWorker", "is_err": True,
         "lines": ["creating index...", f"{PROGRESS_TAG}a1 step 5/10, 1.00 s/step, ~5 s left"]})
    log({"pid": "raylet", "is_err": False, "lines": ["WARNING: 8 PYTHON worker processes have been started"]})
    log.close()
    assert (tmp_path / console.WORKERS_LOG).read_text().splitlines() == [
        "(RayTrainWorker pid=42) creating index...",
        f"(RayTrainWorker pid=42) {PROGRESS_TAG}a1 step 5/10, 1.00 s/step, ~5 s left",
        "(raylet) WARNING: 8 PYTHON worker processes have been started"]
    assert out.getvalue() == "a1 step 5/10, 1.00 s/step, ~5 s left\n"


def test_driver_logging_goes_to_the_driver_log_and_each_warning_reaches_the_console_once(tmp_path, monkeypatch):
    import logging
    import warnings

    out = io.StringIO()
    monkeypatch.setattr(console, "CONSOLE", Console(out))
    with console.driver_logs_to(tmp_path) as path, warnings.catch_warnings():
        warnings.simplefilter("always")  # as a warning raised from several places of a library
        logging.getLogger("ray.tune").info("Wrote the experiment state")
        logging.getLogger("ray").warning("Token authentication is enabled")
        for _ in range(3):
            warnings.warn("the same deprecation", DeprecationWarning, stacklevel=1)
    text = path.read_text()
    assert "Wrote the experiment state" in text and "Token authentication" in text
    assert text.count("DeprecationWarning: the same deprecation") == 3
    assert out.getvalue().count("the same deprecation") == 1 and "Token" not in out.getvalue()


def tiny_sweep_config(folder: Path) -> Path:
    """sweeps/configs/local.yaml cut to a 4-trial sweep of 20 steps, validating every 10."""
    cfg = yaml.safe_load((REPO / "sweeps" / "configs" / "local.yaml").read_text())
    cfg.update(name="console4", storage_path=str(folder / "out"), num_samples=4)
    cfg["dataset"] = {"dir": str(folder / "data"), "synthetic": {"train": 8, "val": 4, "test": 4, "size": 224,
                                                                 "seed": 0}}
    cfg["trial"].update(max_steps=20, val_every=10)
    cfg["scheduler"] = {"grace_period": 10, "reduction_factor": 2, "metric": "val_dice"}
    path = folder / "tiny4.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


MEANT_FOR_A_PERSON = [  # every line a quiet sweep prints matches one of these
    r"sweep console4 \(new\)", r"  [A-Za-z][A-Za-z ]+: .*", r"    \w+: \w+ .*",  # the plan: labels, search space
    r"  \w{8}  val_dice=.*", r"      best checkpoint: .*", r"      /\S+",  # the Pareto front
    r"concurrency: .*",
    r"\d\d:\d\d:\d\d \w{8} step \d+/20  val Dice \d\.\d{3}  AP75 \d\.\d{3}  \d+\.\d\d s/step(  ~.* left)?",
    r"\d\d:\d\d:\d\d \w{8} (completed 20 steps|stopped by ASHA at step \d+|diverged at step \d+: .*)( \(best .*\))?",
    r"\w{8} step \d+/20, .* left",  # a progress line (a plain stream: the test's pipe)
    r"Pareto front .*", r"best checkpoint .*", r"experiment dir : .*", r"optuna study   : .*",
    r"warning \(shown once; all in the driver log\): .*",
]


def test_a_four_trial_sweep_prints_under_60_lines_each_meant_for_a_person_and_logs_the_rest(tmp_path):
    config = tiny_sweep_config(tmp_path)
    start = time.monotonic()
    run = subprocess.run([sys.executable, "sweeps/stage2.py", "--config", str(config)], cwd=REPO,
                         capture_output=True, text=True, timeout=900)
    print(f"4-trial quiet sweep: {time.monotonic() - start:.0f} s")
    assert run.returncode == 0, run.stdout + run.stderr
    lines = (run.stdout + run.stderr).splitlines()
    print("\n".join(lines))
    assert len(lines) < 60
    strays = [line for line in lines if line.strip() and not any(re.fullmatch(p, line) for p in MEANT_FOR_A_PERSON)]
    assert not strays
    ends = [line for line in lines if re.search(r" (completed|stopped by ASHA|diverged|failed)", line)]
    assert len(ends) == 4  # one line per trial end
    assert sum(" val Dice " in line and "/20 " in line for line in lines) >= 4
    logs = tmp_path / "out" / "console4" / console.LOG_FOLDER
    workers, driver = (logs / console.WORKERS_LOG).read_text(), (logs / console.DRIVER_LOG).read_text()
    assert "has no instance in this file" in workers  # sam3-cass's data warning, from every worker
    assert "Reporting training result" in workers and "creating index" in workers  # Train's and pycocotools'
    assert "Started a local Ray instance" in driver and "ramus" in driver  # Ray's log and the dataset's table
