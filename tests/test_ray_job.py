"""Acceptance: the sweep submitted as a Ray job to a running head joins that head and succeeds (issue 5).

The README recipe "On one machine", run as written: its ``ray start --head`` and ``RAY_AUTH_MODE=token ray job
submit ...`` lines are read from README.md, and only what cannot be the same here is replaced (free ports
for 6379 and 8265, the test's config and submission id; ``ray start`` gets ``--block`` and the other ports,
so that the test can stop exactly the head it started). The job is one trial of 1 worker x 2 steps of the
REAL training loop (tiny preset). The test checks that the job SUCCEEDED, that its driver
joined the head instead of starting a second Ray (``address: null`` + the job's ``RAY_ADDRESS``), that
the uploaded working directory left out the virtual environment and data (.gitignore), and that the
sweep wrote its results where the config said.

Every port is a free one (another Ray may be using the defaults), and the head is stopped by killing
only the processes its ``ray start --block`` started: ``ray stop`` has no address and would stop every
Ray on the machine.
"""

from __future__ import annotations

import itertools
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psutil
import pytest
import yaml

from sweeps.config import load_sweep_config
from sweeps.results import journal_storage

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
JOB_ID = "sweep-job-test"  # in place of the README's stage2-cass


def readme_commands(after: str) -> list[tuple[dict[str, str], list[str]]]:
    """The commands of the first ``bash`` block after the line ``after`` in README.md: (leading environment
    assignments, argv), continuation lines joined, comments and ``source`` lines left out."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text[text.index(after):].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if not words or words[0] == "source":
            continue
        assignments = len(words) - len(list(itertools.dropwhile(lambda w: "=" in w and w.split("=")[0].isupper(),
                                                                 words)))
        commands.append((dict(w.split("=", 1) for w in words[:assignments]), words[assignments:]))
    return commands


def substituted(argv: list[str], replacements: dict[str, str]) -> list[str]:
    """``argv`` with each replacement made inside every argument."""
    for old, new in replacements.items():
        argv = [arg.replace(old, new) for arg in argv]
    return argv


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def cli_env() -> dict[str, str]:
    """The venv first on PATH (the job's ``python``), no inherited RAY_ADDRESS, token auth for the CLI."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_MODE="token",
               TORCHDYNAMO_DISABLE="1", PYTHONUNBUFFERED="1", WANDB_MODE="disabled")
    return env


def write_config(tmp_path: Path) -> Path:
    """A one-trial sweep; data and results under tmp_path (absolute), the search space in the working dir."""
    raw = {
        "name": "job-test",
        "storage_path": str(tmp_path / "out"),
        "search_space": "search_spaces/local.yaml",  # relative: read from the uploaded working dir
        "num_samples": 1,
        "max_concurrent_trials": 1,
        "dataset": {"dir": str(tmp_path / "data"), "synthetic": {"train": 8, "val": 4, "size": 224, "seed": 0}},
        "trial": {"preset": "tiny", "resolution": 224, "max_steps": 2, "warmup_steps": 1, "val_every": 2,
                  "num_workers": 1, "use_gpu": False, "cpu_threads_per_worker": 1, "backend": "gloo",
                  "precision": "fp32"},
        "scheduler": {"grace_period": 2, "reduction_factor": 2},
        "checkpoint": {"num_to_keep": 1},
        "wandb": {"mode": "disabled"},
        "ray": {"address": None, "dashboard_host": "127.0.0.1", "health_check_interval_s": 0.5},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


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


def uploaded_working_dirs(gcs_server: psutil.Process) -> list[Path]:
    """The unpacked ``--working-dir`` packages in the session of the head whose GCS server is given."""
    log_dir = next(a.split("=", 1)[1] for a in gcs_server.cmdline() if a.startswith("--log_dir="))
    return sorted(p for p in Path(log_dir).parent.glob("runtime_resources/working_dir_files/_ray_pkg_*")
                  if p.is_dir())


def gcs_servers(head: subprocess.Popen) -> list[psutil.Process]:
    """The GCS servers among the head's processes: one per Ray cluster started under it."""
    return [p for p in psutil.Process(head.pid).children(recursive=True) if p.name() == "gcs_server"]


def test_the_readme_recipe_starts_a_head_then_submits_and_resumes_the_stage2_sweep():
    """What the acceptance test below runs, read from README.md: the commands and their order."""
    (start_env, start), (submit_env, submit), (resume_env, resume) = readme_commands("On one machine:")
    assert start[:3] == ["ray", "start", "--head"] and "--dashboard-host" in start
    assert start[start.index("--dashboard-host") + 1] == "127.0.0.1"  # never a public interface
    assert submit_env == resume_env == {"RAY_AUTH_MODE": "token"}  # the CLI sends the token only then
    assert submit[:3] == ["ray", "job", "submit"]
    assert submit[-4:] == ["python", "sweeps/stage2.py", "--config", "sweeps/configs/stage2.yaml"]
    assert resume == [*substituted(submit, {"stage2-cass": "stage2-cass-r1"}), "--resume"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_sweep_runs_as_a_ray_job_on_a_running_head(tmp_path):
    cfg_file = write_config(tmp_path)
    cfg = load_sweep_config(cfg_file)
    gcs_port, dash_port, *other = free_ports(8)
    (_, start_cmd), (submit_env, submit_cmd), _ = readme_commands("On one machine:")
    here = {"6379": str(gcs_port), "8265": str(dash_port), "sweeps/configs/stage2.yaml": str(cfg_file),
            "stage2-cass": JOB_ID}
    env = {**cli_env(), **submit_env}
    start = time.monotonic()
    head = subprocess.Popen(
        [RAY, *substituted(start_cmd, here)[1:], "--block", "--num-cpus", "2",
         "--dashboard-agent-listen-port", str(other[0]), "--dashboard-agent-grpc-port", str(other[1]),
         "--runtime-env-agent-port", str(other[2]), "--metrics-export-port", str(other[3]),
         "--ray-client-server-port", str(other[4]), "--node-manager-port", str(other[5]),
         "--disable-usage-stats"],
        cwd=REPO, env=env, stdout=(tmp_path / "head.log").open("w"), stderr=subprocess.STDOUT,
        start_new_session=True)
    address = f"http://127.0.0.1:{dash_port}"
    try:
        deadline = time.monotonic() + 120
        while subprocess.run([RAY, "job", "list", "--address", address], env=env, capture_output=True,
                             timeout=60).returncode != 0:
            assert head.poll() is None, (tmp_path / "head.log").read_text()
            assert time.monotonic() < deadline, "the head's job server did not come up"
            time.sleep(2)
        print(f"head up after {time.monotonic() - start:.0f} s")

        # The README's submit, which streams the job until it ends. The job server answers before the
        # dashboard agent that runs jobs is up: retry "No available agent".
        command = [RAY, *substituted(submit_cmd, here)[1:]]
        while True:
            submit = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=480)
            if submit.returncode == 0 or "No available agent" not in submit.stdout + submit.stderr:
                break
            assert time.monotonic() < deadline + 60, "no dashboard agent to run the job"
            time.sleep(3)
        assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-4000:]  # 0: the job succeeded
        done = ray_job(env, "status", address)
        status = (done.stdout + done.stderr).upper()  # the CLI logs the status to stderr
        logs = ray_job(env, "logs", address).stdout
        (tmp_path / "job.log").write_text(submit.stdout + submit.stderr + "\n---- logs\n" + logs)
        assert "SUCCEEDED" in status, status + logs[-5000:]
        servers = gcs_servers(head)
        assert len(servers) == 1, "the job started a Ray of its own"
        uploaded = uploaded_working_dirs(servers[0])
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
    study = optuna.load_study(study_name=cfg.study_name, storage=journal_storage(cfg.optuna_journal))
    assert [t.state.name for t in study.trials] == ["COMPLETE"]
    assert "Pareto front (1 of 1 trials" in logs
