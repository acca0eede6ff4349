"""The README's cleanup after a crash: ``ray stop --force`` ends the Ray processes a killed driver left.

A one-trial sweep runs as a user runs it (``python sweeps/stage2.py --config CFG``, its own local Ray, its
console to a file). Once that console shows the trial's progress line (rank 0 prints one after 15 s of
training: the only end-to-end check that progress between validations reaches the person watching), the
driver is killed the way a crash kills it: SIGKILL to the driver alone. The test checks that Ray processes
outlive the driver (what the README warns of), then runs the README's ``ray stop --force`` as written and
checks that none is left.

``ray stop`` stops every Ray process on the machine, not only the killed driver's: the test is skipped where
any other Ray process runs (a user's sweep, another Ray test), and it finds Ray processes with the same
filter ``ray stop`` uses.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from readme import cli_env, ray_processes, readme_commands
from sweep_configs import write_tiny_sweep

REPO = Path(__file__).resolve().parents[1]


def write_config(tmp_path: Path) -> Path:
    """One trial long enough to be training when the driver is killed."""
    return write_tiny_sweep(tmp_path / "crash.yaml", name="crash-test", root=tmp_path,
                            trial={"max_steps": 400, "val_every": 200}, scheduler={"grace_period": 200},
                            checkpoint={"num_to_keep": 2})


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_training_trial_shows_progress_and_ray_stop_force_ends_what_its_killed_driver_left(tmp_path):
    if others := ray_processes():
        pytest.skip(f"{len(others)} other Ray process(es) run on this machine (e.g. {others[0].name()}): "
                    "`ray stop --force` would stop them too")
    (_, stop), = [command for command in readme_commands("From another machine") if command[1][:2] == ["ray", "stop"]]
    env = cli_env(tmp_path / "home")  # the local Ray writes its token into ~/.ray: this test's home, not the user's
    driver = subprocess.Popen([sys.executable, "sweeps/stage2.py", "--config", str(write_config(tmp_path))],
                              cwd=REPO, env=env, stdout=(tmp_path / "driver.log").open("w"),
                              stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        progress = re.compile(r"^\w+ step \d+/400, [\d.]+ s/step, ~[\d.]+ (s|min|h) left$", re.MULTILINE)
        while not progress.search(console := (tmp_path / "driver.log").read_text()):
            assert driver.poll() is None, console[-3000:]
            assert time.monotonic() < deadline, f"no progress line on the console:\n{console[-3000:]}"
            time.sleep(1)
        print(f"progress on the console: {progress.search(console).group(0)!r}")
        driver.kill()  # the crash: the driver alone
        driver.wait(timeout=30)
        time.sleep(5)
        left = ray_processes()
        assert left, "no Ray process outlived the killed driver: the README's warning is out of date"
        print(f"left after the crash: {sorted(p.name() for p in left)}")
    finally:  # the README's cleanup, whatever happened (no other Ray runs here: checked above)
        if driver.poll() is None:
            driver.kill()
        cleanup = subprocess.run([str(Path(sys.executable).with_name(stop[0])), *stop[1:]], env=env,
                                 capture_output=True, text=True, timeout=120)
    assert cleanup.returncode == 0, cleanup.stdout + cleanup.stderr
    _, alive = psutil.wait_procs(left, timeout=30)
    assert not alive and not ray_processes(), f"Ray processes still alive after `ray stop --force`: {alive}"
