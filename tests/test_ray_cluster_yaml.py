"""The two cluster files are valid Ray launcher files that keep the security defaults.

``ray_cluster.yaml`` (the lab's own machines, Ray's ``local`` provider) and ``ray_cluster_aws.yaml`` (AWS, GPU
workers added by the autoscaler) are checked against Ray's own schema and config preparation; that they
start is shown by ``tests/test_ray_up.py`` (``ray up`` on this machine with Ray's fake multi-node provider).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
ON_PREMISES, AWS = REPO / "ray_cluster.yaml", REPO / "ray_cluster_aws.yaml"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", [ON_PREMISES, AWS], ids=lambda p: p.name)
def test_it_satisfies_ray_launchers_own_schema_and_config_checks(path):
    cluster = load(path)
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(cluster, schema)
    if cluster["provider"]["type"] != "aws":  # AWS's preparation asks AWS for the account's defaults
        validate_config(prepare_config(cluster))


@pytest.mark.parametrize("path", [ON_PREMISES, AWS], ids=lambda p: p.name)
def test_the_head_binds_the_dashboard_to_loopback_only_and_every_node_uses_the_token(path):
    cluster, text = load(path), path.read_text(encoding="utf-8")
    head = " ".join(cluster["head_start_ray_commands"])
    assert "--head" in head and "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in text
    starts = [c for c in cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"] if "ray start" in c]
    # Your token, copied beside (never over) a token the cluster account may have, and named at every start.
    (token,) = [remote for remote, local in cluster["file_mounts"].items() if local == "~/.ray/auth_token"]
    assert token != "~/.ray/auth_token" and any(f"chmod 600 {token}" in c for c in cluster["setup_commands"])
    assert len(starts) == 2 and all(f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={token}" in c for c in starts)
    assert "ray get-auth-token --generate && chmod 600 ~/.ray/auth_token" in text  # where the token comes from


@pytest.mark.parametrize("path", [ON_PREMISES, AWS], ids=lambda p: p.name)
def test_every_node_installs_this_project_without_the_local_environment_or_data(path):
    cluster = load(path)
    assert any("make venv" in c for c in cluster["setup_commands"])
    assert cluster["rsync_exclude"] == [".git"] and cluster["rsync_filter"] == [".gitignore"]
    ignored = (REPO / ".gitignore").read_text().split()
    assert {".venv/", "/data/", "/sweeps_out/", "/demo_out/", "/bench_out/"} <= set(ignored)


@pytest.mark.parametrize("path", [ON_PREMISES, AWS], ids=lambda p: p.name)
def test_the_header_is_the_sequence_that_starts_submits_and_stops(path):
    header = "\n".join(line[1:].strip() for line in path.read_text(encoding="utf-8").splitlines()
                       if line.startswith("#"))
    for command in (f"RAY_UP_enable_autoscaler_v2=0 ray up -y {path.name}", f"ray dashboard {path.name}",
                    "RAY_AUTH_MODE=token ray job submit", "python sweeps/stage2.py --config sweeps/configs/stage2.yaml",
                    f"ray down -y {path.name}"):
        assert command in header, command


def test_on_premises_the_head_runs_no_trial_and_every_worker_machine_is_started():
    cluster = load(ON_PREMISES)
    assert cluster["provider"]["type"] == "local"
    head = " ".join(cluster["head_start_ray_commands"])
    assert "--num-cpus=0" in head and "--num-gpus=0" in head  # the local provider sends no resources of its own
    assert cluster["max_workers"] == len(cluster["provider"]["worker_ips"])


def test_on_aws_the_gpu_workers_boot_a_driver_image_with_a_role_and_no_credentials():
    cluster, text = load(AWS), AWS.read_text(encoding="utf-8")
    types = cluster["available_node_types"]
    assert types[cluster["head_node_type"]]["resources"] == {"CPU": 0}  # trials never land on the head
    gpu_types = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_types and all(t["max_workers"] >= 2 for t in gpu_types)
    # Ray's default role goes to the head only, and cannot pass another: both get theirs from the file
    assert all("IamInstanceProfile" in t["node_config"] for t in types.values())
    assert "iam:PassRole" in text
    assert len({t["node_config"]["ImageId"] for t in types.values()}) == 1  # one image, with the NVIDIA driver
    assert "base-oss-nvidia-driver-gpu" in text
    assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|aws_access_key_id", text, re.IGNORECASE)


def test_ray_up_refuses_an_on_premises_file_without_its_machines_before_contacting_any(tmp_path):
    """An incomplete provider section: Ray's launcher names what is missing and stops (Ray's exit 1; this
    project does not wrap ``ray up``)."""
    cluster = load(ON_PREMISES)
    del cluster["provider"]["worker_ips"]
    bad = tmp_path / "ray_cluster.yaml"
    bad.write_text(yaml.safe_dump(cluster))
    ray_cli = Path(sys.executable).with_name("ray")
    env = {**os.environ, "HOME": str(tmp_path)}
    done = subprocess.run([str(ray_cli), "up", "-y", "--no-config-cache", str(bad)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    assert "Please supply a `head_ip` and list of `worker_ips`" in done.stdout + done.stderr
    assert "ssh" not in (done.stdout + done.stderr).lower()
