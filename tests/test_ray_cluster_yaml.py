"""ray_cluster.yaml is a valid Ray launcher file with GPU workers and no publicly bound dashboard."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

CLUSTER_FILE = Path(__file__).resolve().parents[1] / "ray_cluster.yaml"


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load(CLUSTER_FILE.read_text())


def test_it_satisfies_ray_launchers_own_schema(cluster):
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(cluster, schema)
    assert cluster["head_node_type"] in cluster["available_node_types"]


def test_gpu_workers_are_declared(cluster):
    gpu_types = [t for t in cluster["available_node_types"].values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_types and all(t["max_workers"] >= 2 for t in gpu_types)  # a trial needs 2 GPU workers


def test_the_head_binds_the_dashboard_to_loopback_only(cluster):
    head = " ".join(cluster["head_start_ray_commands"])
    assert "--head" in head and "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in CLUSTER_FILE.read_text()


def test_every_node_installs_this_project_and_joins_with_token_auth(cluster):
    assert any("make venv" in c for c in cluster["setup_commands"])
    starts = cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    assert ".venv" in cluster["rsync_exclude"]
