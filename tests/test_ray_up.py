"""Acceptance: the shipped on-premises cluster file starts with ``ray up``, a sweep submitted to it runs its
trials on worker nodes the autoscaler adds, and ``ray down`` stops it (issue 20).

The README's "A Ray cluster" commands run as written, on this one machine, in a fresh home folder:
``ray get-auth-token --generate``, ``ray up``, ``ray dashboard``, ``ray job submit`` (the stage2 driver),
``python -m sweeps.export`` and ``python -m sweeps.report`` on the shared storage, ``ray down``. The cluster
file is ``ray_cluster.yaml`` with what this machine cannot be replaced:

- its machines: the provider is ``tests/fake_cluster.py``'s launcher for Ray's fake multi-node provider (the
  head is this machine; worker nodes are local raylets the head's autoscaler starts, 1 CPU each, as many as
  the file's ``max_workers``), in two shapes: on-premises (the node type declares no resources and every
  machine starts at once: the driver waits for them to join) and autoscaling (declared resources, machines
  started on demand: the driver sizes by the autoscaler's maximum before any worker is up);
- the head's start command exports ``RAY_FAKE_CLUSTER=1`` and gets this test's ports; its ``ray stop`` runs as written;
- the project mount, ``make venv`` and the SSH key are left out (this checkout and its venv are the nodes').

Checked: the job succeeds; the driver derived its concurrency from the joined machines or the autoscaler's
maximum (the head has no CPU for trials); the trials' Train workers ran on more than one worker node and never
on the head; the CLI without the token is refused; the export and report come out of the shared storage;
``ray down`` leaves no Ray process (here every node is this machine: the head's ``ray stop`` ends them all).
Not proven here: SSH, ``rsync`` and the setup commands on real machines, the NVIDIA driver and GPUs, cloud
APIs and instance roles (``ray_cluster_aws.yaml`` is checked only as a file), a storage folder shared over a
network, and ``ray down`` reaching other machines.

``ray stop`` (in the head's start commands and in ``ray down``) stops every Ray process on the machine: the
test is skipped where another Ray process runs.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml
from readme import cli_env, free_ports, ray_processes, readme_commands, substituted
from sweep_configs import write_tiny_sweep

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FAKE_HEAD_NODE_ID = "f" * 51 + "00000"  # the id RAY_FAKE_CLUSTER gives the head (fake_multi_node)


WORKER = {"CPU": 1, "object_store_memory": 200 * 2**20}  # what each fake worker machine has


def worker_types(shape: str, machines: int) -> dict:
    """The worker node type: as on-premises (no declared resources, every machine started at once: the driver
    waits for them to join) or as a cloud autoscaler's (declared resources, started on demand: the driver sizes
    by the maximum)."""
    if shape == "on-premises":
        return {"local.cluster.node": {"resources": {}, "node_config": {"resources": WORKER},
                                       "min_workers": machines, "max_workers": machines}}
    return {"worker": {"resources": WORKER, "node_config": {}, "min_workers": 0, "max_workers": machines}}


def fake_cluster_file(tmp_path: Path, gcs_port: int, dashboard_port: int, shape: str) -> Path:
    """``ray_cluster.yaml`` on this machine (see the module docstring for what is replaced)."""
    from ray.util import get_node_ip_address

    shipped = yaml.safe_load((REPO / "ray_cluster.yaml").read_text(encoding="utf-8"))
    here = {"--port=6379": f"--port={gcs_port}", "--dashboard-port=8265": f"--dashboard-port={dashboard_port}"}
    head_start = [c if c.strip() == "ray stop" else f"export RAY_FAKE_CLUSTER=1 AUTOSCALER_UPDATE_INTERVAL_S=1; {c}"
                  for c in substituted(shipped["head_start_ray_commands"], here)]
    cluster = {
        **shipped,
        "cluster_name": f"{shipped['cluster_name']}-{uuid.uuid4().hex[:8]}",  # its state file: /tmp/ray/cluster-*
        "provider": {"type": "external", "module": "fake_cluster.ThisMachine", "head_ip": "127.0.0.1",
                     "worker_ips": [], "fake_gcs_address": f"{get_node_ip_address()}:{gcs_port}"},
        "auth": {"ssh_user": shipped["auth"]["ssh_user"]},
        "available_node_types": {
            # the head's resources are its start command's (--num-cpus=0 --num-gpus=0), as on-premises: declared
            # ones would reach the head's autoscaler as RAY_OVERRIDE_RESOURCES, and the fake worker nodes it hosts
            "ray.head.default": {"resources": {}, "node_config": {}, "max_workers": 0},
            **worker_types(shape, shipped["max_workers"])},
        "head_node_type": "ray.head.default",
        "file_mounts": {remote: local for remote, local in shipped["file_mounts"].items() if "token" in remote},
        "setup_commands": [c for c in shipped["setup_commands"] if c.startswith("chmod")],
        "head_start_ray_commands": head_start,
        "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_filter": [],
        "initialization_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
    }
    path = tmp_path / "ray_cluster.yaml"
    path.write_text(yaml.safe_dump(cluster))
    return path


def sweep_config(tmp_path: Path) -> Path:
    """4 one-worker CPU trials of the tiny preset; data and storage on the (here: local) shared folder."""
    shared = tmp_path / "shared"
    return write_tiny_sweep(shared / "cluster-test.yaml", name="cluster-test", root=shared,
                            storage_path=str(shared / "sweeps"), search_space="search_spaces/local.yaml",
                            num_samples=4, max_concurrent_trials=None,  # derived from the cluster
                            dataset={"synthetic": {"train": 8, "val": 4, "test": 4, "size": 224, "seed": 0}},
                            trial={"resolution": 112, "max_steps": 4, "batch_size": 1, "freeze_text_encoder": True},
                            ray={"address": "auto"})


def run(argv: list[str], env: dict[str, str], log: Path, timeout: float) -> subprocess.CompletedProcess:
    """Run a README command (``ray`` and ``python`` from this venv); its output goes to the test's log too. A
    command the README sends to the background (``&``: the dashboard tunnel) runs in the foreground: here it
    opens no tunnel (the head's port is on this machine) and returns at once."""
    argv = argv[:-1] if argv[-1] == "&" else argv
    executable = str(BIN / argv[0]) if argv[0] in ("ray", "python") else argv[0]
    try:
        done = subprocess.run([executable, *argv[1:]], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as e:
        said = b"".join(out or b"" for out in (e.stdout, e.stderr)).decode(errors="replace")
        pytest.fail(f"`{' '.join(argv)}` ran past {timeout} s:\n{said[-5000:]}")
    with log.open("a") as f:
        f.write(f"$ {' '.join(argv)}\n{done.stdout}{done.stderr}\n[exit {done.returncode}]\n")
    return done


def worker_nodes_of_trials(env: dict[str, str], address: str, log: Path) -> list[str]:
    """The node id of every Train worker actor the cluster ran (Ray's state API keeps dead actors)."""
    listed = run(["ray", "list", "actors", "--address", address, "--filter", "class_name=RayTrainWorker",
                  "--detail", "--format", "json", "--limit", "1000"], env, log, timeout=120)
    assert listed.returncode == 0, listed.stderr[-3000:]
    return [actor["node_id"] for actor in json.loads(listed.stdout)]


# How the driver sized the sweep. On-premises it counts the machines once joined: Ray's v1 autoscaler, looping
# every second here, sometimes launches a third fake node and removes it at once (over max_workers), which the
# count may catch.
SIZED = {"on-premises": r"concurrency: [23] trial\(s\) at once \([23] CPUs once all of the 2 worker machines had "
                        r"joined",
         "autoscaling": r"concurrency: 2 trial\(s\) at once \(2 CPUs at the autoscaler's maximum"}


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("shape", ["on-premises", "autoscaling"])
def test_ray_up_of_the_on_premises_file_runs_the_sweep_on_its_worker_nodes(tmp_path, shape):
    if others := ray_processes():
        pytest.skip(f"{len(others)} other Ray process(es) run on this machine: the cluster's `ray stop` "
                    "would stop them")
    from ray.autoscaler._private.local.config import get_lock_path, get_state_path

    gcs_port, dashboard_port = free_ports(2)
    cluster_file = fake_cluster_file(tmp_path, gcs_port, dashboard_port, shape)
    cluster_name = yaml.safe_load(cluster_file.read_text())["cluster_name"]
    cfg_file = sweep_config(tmp_path)
    log = tmp_path / "cluster.log"
    env = {**cli_env(tmp_path / "home"), "PYTHONPATH": str(REPO / "tests")}  # the launcher: tests/fake_cluster.py
    here = {"ray_cluster.yaml": str(cluster_file), "sweeps/configs/stage2.yaml": str(cfg_file),
            "8265": str(dashboard_port), "EXPERIMENT_DIR": str(tmp_path / "shared" / "sweeps" / "cluster-test"),
            "EXPORT_DIR": str(tmp_path / "shared" / "best"), "REPORT_DIR": str(tmp_path / "shared" / "report"),
            "~": str(tmp_path / "home")}
    commands = [(assignments, substituted(argv, here)) for assignments, argv in readme_commands("A Ray cluster")]
    names = [" ".join(argv[:2]) for _, argv in commands]
    assert names == ["ray get-auth-token", "chmod 600", "ray up", "ray dashboard", "ray job", "python -m",
                     "python -m", "ray down"], names
    (generate, chmod, up, dashboard, submit, export, report, down) = commands
    config_caches = set(Path(tempfile.gettempdir()).glob("ray-config-*"))
    start = time.monotonic()
    try:
        for step, timeout in ((generate, 60), (chmod, 60), (up, 300), (dashboard, 60)):
            done = run(step[1], {**env, **step[0]}, log, timeout)
            assert done.returncode == 0, log.read_text()[-5000:]
        print(f"ray up: {time.monotonic() - start:.0f} s")

        job = run(submit[1], {**env, **submit[0]}, log, timeout=420)
        console = job.stdout + job.stderr
        assert job.returncode == 0, log.read_text()[-8000:]
        print(f"job: {time.monotonic() - start:.0f} s")
        # The head has no CPU for trials; sized by the machines once joined, or by what the cluster can grow to.
        assert re.search(SIZED[shape], console), console[-4000:]
        address = f"http://127.0.0.1:{dashboard_port}"
        nodes = worker_nodes_of_trials({**env, **submit[0]}, address, log)
        print(f"Train workers per node: { {n[-5:]: nodes.count(n) for n in set(nodes)} }")
        assert len(nodes) >= 4 and FAKE_HEAD_NODE_ID not in nodes
        assert len(set(nodes)) >= 2, "every trial ran on one worker node"
        # Without the token, the cluster answers nothing.
        refused = run(["ray", "job", "list", "--address", address], env, log, timeout=60)
        assert refused.returncode != 0 and re.search("401|unauthori[sz]ed|token", refused.stdout + refused.stderr,
                                                     re.IGNORECASE), refused.stderr[-2000:]

        # The export and the report, from the shared storage (any machine that mounts it).
        for step in (export, report):
            done = run(step[1], {**env, **step[0]}, log, timeout=300)
            assert done.returncode == 0, log.read_text()[-5000:]
        assert (tmp_path / "shared" / "best" / "MANIFEST.sha256").is_file()
        assert (tmp_path / "shared" / "report" / "index.html").is_file()
    finally:
        stopped = run(down[1], {**env, **down[0]}, log, timeout=300)
        # this test's own files outside tmp_path: the launcher's state file and lock, ray up's config cache
        for leftover in (Path(get_state_path(cluster_name)), Path(get_lock_path(cluster_name)),
                         *(set(Path(tempfile.gettempdir()).glob("ray-config-*")) - config_caches)):
            leftover.unlink(missing_ok=True)
    assert stopped.returncode == 0, log.read_text()[-5000:]
    deadline = time.monotonic() + 60
    while ray_processes() and time.monotonic() < deadline:
        time.sleep(1)
    assert not ray_processes(), f"Ray processes left after `ray down`: {ray_processes()}"
    print(f"ray up + job + export + report + ray down: {time.monotonic() - start:.0f} s")
