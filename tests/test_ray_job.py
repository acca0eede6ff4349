"""Acceptance: the sweep submitted as a Ray job to a running head joins that head and succeeds (issue 5).

The README recipe "On one machine", run as written on a machine that has no Ray token yet (a fresh home
folder, which also keeps the test out of the user's ``~/.ray``): its ``ray get-auth-token --generate``,
``RAY_AUTH_MODE=token ray start --head`` and ``RAY_AUTH_MODE=token ray job submit ...`` lines are read from
README.md, and only what cannot be the same here is replaced (free ports for 6379 and 8265, the test's config
and submission id; ``ray start`` gets ``--block`` and the other ports, so that the test can stop exactly the
head it started). The job is one trial of 1 worker x 2 steps of the REAL training loop (tiny preset). The
test checks that the job SUCCEEDED, that its driver joined the head instead of starting a second Ray
(``address: null`` + the job's ``RAY_ADDRESS``), that the uploaded working directory left out the virtual
environment and data (.gitignore), and that the sweep wrote its results where the config said.

Then the README's "From another machine" token recipe, from a second fresh home folder (the other machine;
the SSH tunnel is not run: the head's port is already local): without the token the head refuses the CLI,
with ``RAY_AUTH_TOKEN`` set to what ``ray get-auth-token`` printed on the head it answers.

Every port is a free one (another Ray may be using the defaults), and the head is stopped by killing
only the processes its ``ray start --block`` started: ``ray stop`` has no address and would stop every
Ray on the machine.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psutil
import pytest
from readme import cli_env, free_ports, readme_commands, substituted
from sweep_configs import write_tiny_sweep

from sweeps.config import load_sweep_config
from sweeps.study_storage import journal_storage

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
JOB_ID = "sweep-job-test"  # in place of the README's stage2-cass


def write_config(tmp_path: Path) -> Path:
    """A one-trial sweep; data and results under tmp_path (absolute), the search space in the working dir."""
    return write_tiny_sweep(tmp_path / "job.yaml", name="job-test", root=tmp_path,
                            search_space="search_spaces/local.yaml")  # relative: read from the uploaded working dir


def stop_head(head: subprocess.Popen) -> None:
    """Terminate (then kill) the ``ray start --block`` process and every process it started."""
    procs = [psutil.Process(head.pid), *psutil.Process(head.pid).children(recursive=True)]
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=20)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(alive, timeout=20)
    assert not alive, f"processes of the test's Ray head still alive: {alive}"


def ray_job(env: dict[str, str], command: str, address: str) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, "job", command, "--address", address, JOB_ID], env=env, capture_output=True,
                          text=True, timeout=60)


def run_readme(command: tuple[dict[str, str], list[str]], env: dict[str, str], here: dict[str, str],
               **kwargs) -> subprocess.CompletedProcess:
    """One README command (its environment assignments over ``env``), with this test's replacements."""
    assignments, argv = command
    return subprocess.run([RAY, *substituted(argv, here)[1:]], env={**env, **assignments}, capture_output=True,
                          text=True, **kwargs)


def uploaded_working_dirs(gcs_server: psutil.Process) -> list[Path]:
    """The unpacked ``--working-dir`` packages in the session of the head whose GCS server is given."""
    log_dir = next(a.split("=", 1)[1] for a in gcs_server.cmdline() if a.startswith("--log_dir="))
    return sorted(p for p in Path(log_dir).parent.glob("runtime_resources/working_dir_files/_ray_pkg_*")
                  if p.is_dir())


def gcs_servers(head: subprocess.Popen) -> list[psutil.Process]:
    """The GCS servers among the head's processes: one per Ray cluster started under it."""
    return [p for p in psutil.Process(head.pid).children(recursive=True) if p.name() == "gcs_server"]


def test_the_readme_recipe_makes_a_token_starts_a_head_then_submits_and_resumes_the_stage2_sweep():
    """What the acceptance test below runs, read from README.md: the commands and their order."""
    (gen_env, generate), (start_env, start), (submit_env, submit), (resume_env, resume) = readme_commands(
        "On one machine:")
    assert generate == ["ray", "get-auth-token", "--generate"] and gen_env == {}
    assert start[:3] == ["ray", "start", "--head"] and "--dashboard-host" in start
    assert start[start.index("--dashboard-host") + 1] == "127.0.0.1"  # never a public interface
    # token auth is required, never silently off: start, submit and resume all say so
    assert start_env == submit_env == resume_env == {"RAY_AUTH_MODE": "token"}
    assert submit[:3] == ["ray", "job", "submit"]
    assert submit[-4:] == ["python", "sweeps/stage2.py", "--config", "sweeps/configs/stage2.yaml"]
    assert resume == [*substituted(submit, {"stage2-cass": "stage2-cass-r1"}), "--resume"]


def test_the_readme_recipe_from_another_machine_prints_the_token_tunnels_and_sends_it():
    """The "From another machine" commands the acceptance test runs (all but the tunnel), read from README.md."""
    (_, token), (_, tunnel), (status_env, status), (_, stop) = readme_commands("From another machine")
    assert token == ["ray", "get-auth-token"]
    assert tunnel[:2] == ["ssh", "-N"] and "8265:127.0.0.1:8265" in tunnel  # to the head's loopback dashboard
    assert status_env == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "PASTE-THE-TOKEN"}
    assert status == ["ray", "job", "status", "--address", "http://127.0.0.1:8265", "stage2-cass"]
    assert stop == ["ray", "stop", "--force"]  # run by tests/test_ray_stop.py


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_sweep_runs_as_a_ray_job_on_a_running_head(tmp_path):
    cfg_file = write_config(tmp_path)
    cfg = load_sweep_config(cfg_file)
    gcs_port, dash_port, *other = free_ports(8)
    generate_cmd, start_cmd, (submit_env, submit_cmd), _ = readme_commands("On one machine:")
    here = {"6379": str(gcs_port), "8265": str(dash_port), "sweeps/configs/stage2.yaml": str(cfg_file),
            "stage2-cass": JOB_ID}
    env = cli_env(tmp_path / "head-home")  # a machine without a token yet
    start = time.monotonic()
    head_argv = [*substituted(start_cmd[1], here)[1:], "--block", "--num-cpus", "2",
                 "--dashboard-agent-listen-port", str(other[0]), "--dashboard-agent-grpc-port", str(other[1]),
                 "--runtime-env-agent-port", str(other[2]), "--metrics-export-port", str(other[3]),
                 "--ray-client-server-port", str(other[4]), "--node-manager-port", str(other[5]),
                 "--disable-usage-stats"]
    # Without a token, the README's start refuses (rather than start a cluster without authentication).
    refused = subprocess.Popen([RAY, *head_argv], cwd=REPO, env={**env, **start_cmd[0]}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        said, _ = refused.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        stop_head(refused)
        pytest.fail("with no token file, `RAY_AUTH_MODE=token ray start --head` started a head")
    assert refused.returncode != 0 and "token" in said.lower(), said[-2000:]
    generated = run_readme(generate_cmd, env, here, timeout=60)
    assert generated.returncode == 0, generated.stderr
    token = generated.stdout
    assert (tmp_path / "head-home" / ".ray" / "auth_token").read_text() == token and len(token) >= 32
    head = subprocess.Popen(
        [RAY, *head_argv], cwd=REPO, env={**env, **start_cmd[0]}, stdout=(tmp_path / "head.log").open("w"),
        stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash_port}"
    try:
        deadline = time.monotonic() + 120
        while subprocess.run([RAY, "job", "list", "--address", address], env={**env, **submit_env},
                             capture_output=True, timeout=60).returncode != 0:
            assert head.poll() is None, (tmp_path / "head.log").read_text()
            assert time.monotonic() < deadline, "the head's job server did not come up"
            time.sleep(2)
        print(f"head up after {time.monotonic() - start:.0f} s")

        # The README's submit, which streams the job until it ends. The job server answers before the
        # dashboard agent that runs jobs is up: retry "No available agent".
        command = [RAY, *substituted(submit_cmd, here)[1:]]
        while True:
            submit = subprocess.run(command, cwd=REPO, env={**env, **submit_env}, capture_output=True, text=True,
                                    timeout=480)
            if submit.returncode == 0 or "No available agent" not in submit.stdout + submit.stderr:
                break
            assert time.monotonic() < deadline + 60, "no dashboard agent to run the job"
            time.sleep(3)
        assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-4000:]  # 0: the job succeeded
        done = ray_job({**env, **submit_env}, "status", address)
        status = (done.stdout + done.stderr).upper()  # the CLI logs the status to stderr
        logs = ray_job({**env, **submit_env}, "logs", address).stdout
        (tmp_path / "job.log").write_text(submit.stdout + submit.stderr + "\n---- logs\n" + logs)
        assert "SUCCEEDED" in status, status + logs[-5000:]
        servers = gcs_servers(head)
        assert len(servers) == 1, "the job started a Ray of its own"
        uploaded = uploaded_working_dirs(servers[0])

        # "From another machine": its own home folder, so the head's token file is not there.
        printed, _, (status_env, status_cmd), _ = readme_commands("From another machine")
        shown = run_readme(printed, env, here, timeout=60)  # on the head
        assert shown.returncode == 0 and shown.stdout == token, shown.stderr
        other_machine = cli_env(tmp_path / "other-home")
        without = run_readme(({}, status_cmd), other_machine, here, timeout=60)  # no token to send
        assert without.returncode != 0, "the head answered a CLI that sent no token"
        assert re.search("401|unauthori[sz]ed|token", without.stdout + without.stderr, re.IGNORECASE), without.stderr
        with_token = run_readme(({**status_env, "RAY_AUTH_TOKEN": token}, status_cmd), other_machine, here,
                                timeout=60)
        assert with_token.returncode == 0, with_token.stdout + with_token.stderr
        assert "SUCCEEDED" in (with_token.stdout + with_token.stderr).upper()
    finally:
        stop_head(head)
    print(f"ray start + job + stop took {time.monotonic() - start:.0f} s")

    # The job's driver joined the head (RAY_ADDRESS) instead of starting a local Ray (Ray's log: the driver log).
    driver_log = (tmp_path / "out" / "job-test" / "logs" / "driver.log").read_text()
    assert "Connecting to existing Ray cluster" in driver_log and "Started a local Ray instance" not in driver_log
    assert "job-test" in logs and "Pareto front" in logs  # the console lines reach `ray job logs`
    assert "Pareto front" in submit.stdout + submit.stderr  # and the submitting terminal, as the README says
    # The uploaded working dir is the sources only: .gitignore keeps .venv, data/, sweeps_out/ out.
    (working_dir,) = uploaded
    assert (working_dir / "sweeps" / "stage2.py").exists()
    assert not [name for name in (".venv", "data", "sweeps_out", "demo_out") if (working_dir / name).exists()]
    size = sum(f.stat().st_size for f in working_dir.rglob("*") if f.is_file())
    print(f"uploaded working dir: {size / 2**20:.2f} MiB")
    assert size < 5 * 2**20
    # The one trial finished and the study holds it.
    study = optuna.load_study(study_name=cfg.study_name, storage=journal_storage(cfg.study_storage))
    assert [t.state.name for t in study.trials] == ["COMPLETE"]
    assert "Pareto front (1 of 1 trials" in logs
