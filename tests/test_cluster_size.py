"""How many trials a sweep runs at once on the cluster it joined, and the sentence that says why."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sweeps import cluster_size
from sweeps.cluster_size import autoscaling_config_path, maximum_resources, sweep_concurrency, wait_for_workers
from sweeps.config import load_sweep_config

REPO = Path(__file__).resolve().parents[1]
STAGE2 = REPO / "sweeps" / "configs" / "stage2.yaml"  # one GPU per trial


def test_the_aws_cluster_grows_to_its_gpu_workers_and_the_head_adds_none():
    cluster = yaml.safe_load((REPO / "ray_cluster_aws.yaml").read_text())
    resources, types = maximum_resources(cluster, head={"CPU": 0})
    assert resources == {"CPU": 64, "GPU": 8}  # the head's 0 CPU + 8 x g5.2xlarge (8 CPU, 1 GPU)
    assert types == "1 x head (0 CPU) + 8 x gpu_worker (8 CPU, 1 GPU)"


def test_the_clusters_max_workers_caps_the_types_with_the_most_gpus_first_and_the_head_is_what_runs():
    cluster = {"head_node_type": "head", "max_workers": 3, "available_node_types": {
        "head": {"resources": {}, "max_workers": 0},  # resources of its own: the running head's count
        "cpu": {"resources": {"CPU": 16}, "max_workers": 4},
        "gpu": {"resources": {"CPU": 8, "GPU": 2}, "max_workers": 2}}}
    resources, types = maximum_resources(cluster, head={"CPU": 4})
    assert resources == {"CPU": 4 + 2 * 8 + 1 * 16, "GPU": 4}
    assert types == "1 x head (4 CPU) + 2 x gpu (8 CPU, 2 GPU) + 1 x cpu (16 CPU)"


def test_on_premises_machines_declare_no_resources_so_the_maximum_is_unknown():
    from ray.autoscaler._private.util import prepare_config

    # as `ray up` hands it to the head: the local provider's one node type, resources left to Ray
    cluster = prepare_config(yaml.safe_load((REPO / "ray_cluster.yaml").read_text()))
    assert maximum_resources(cluster, head={"CPU": 0}) is None


def test_an_explicit_setting_wins_and_says_so(tmp_path):
    cfg = load_sweep_config(STAGE2)
    cfg.max_concurrent_trials = 3
    assert sweep_concurrency(cfg, None) == cluster_size.Concurrency(3, "max_concurrent_trials in the sweep config")


def test_an_autoscaling_cluster_is_sized_by_what_it_can_grow_to_not_by_what_is_up(tmp_path, monkeypatch):
    config = tmp_path / "ray_bootstrap_config.yaml"
    config.write_text(Path(REPO / "ray_cluster_aws.yaml").read_text())
    monkeypatch.setattr(cluster_size, "autoscaling_config_path", lambda gcs: config)
    monkeypatch.setattr(cluster_size, "head_resources", lambda: {"CPU": 0.0, "memory": 8e9})
    monkeypatch.setattr(cluster_size, "alive_resources", lambda: pytest.fail("sized by the nodes up now"))
    concurrency = sweep_concurrency(load_sweep_config(STAGE2), "10.0.0.1:6379")
    assert concurrency.trials == 8
    assert concurrency.source.startswith("8 GPUs at the autoscaler's maximum (1 x head (0 CPU) + 8 x gpu_worker")
    assert str(config) in concurrency.source


def test_without_an_autoscaler_the_cluster_is_what_is_up(monkeypatch):
    monkeypatch.setattr(cluster_size, "autoscaling_config_path", lambda gcs: None)
    monkeypatch.setattr(cluster_size, "alive_resources", lambda: ({"CPU": 32, "GPU": 2}, 1))
    concurrency = sweep_concurrency(load_sweep_config(STAGE2), None)
    assert concurrency == cluster_size.Concurrency(
        2, "2 GPUs in the cluster (no autoscaler config on this machine) / 1 per trial")


def test_on_premises_the_driver_waits_for_the_worker_machines_then_counts_their_gpus(tmp_path, monkeypatch):
    from ray.autoscaler._private.util import prepare_config

    config = tmp_path / "ray_bootstrap_config.yaml"
    config.write_text(yaml.safe_dump(prepare_config(yaml.safe_load((REPO / "ray_cluster.yaml").read_text()))))
    joining = iter([({"CPU": 8}, 1), ({"CPU": 40, "GPU": 2}, 2), ({"CPU": 72, "GPU": 4}, 3)])
    monkeypatch.setattr(cluster_size, "autoscaling_config_path", lambda gcs: config)
    monkeypatch.setattr(cluster_size, "head_resources", lambda: {"CPU": 0})
    monkeypatch.setattr(cluster_size, "alive_resources", lambda: next(joining))
    monkeypatch.setattr(time, "sleep", lambda s: None)
    said = []
    concurrency = sweep_concurrency(load_sweep_config(STAGE2), "10.0.0.1:6379", say=said.append)
    assert concurrency.trials == 4
    assert concurrency.source.startswith("4 GPUs once all of the 2 worker machines had joined")
    assert said == ["waiting for the cluster's worker machines to join: 0 of 2",
                    "waiting for the cluster's worker machines to join: 1 of 2"]


def test_waiting_for_workers_ends_at_its_timeout_with_what_has_joined(monkeypatch):
    monkeypatch.setattr(cluster_size, "alive_resources", lambda: ({"CPU": 8, "GPU": 2}, 2))
    start = time.monotonic()
    assert wait_for_workers(expected=3, timeout_s=0.2, say=lambda s: None, poll_s=0.05) == ({"CPU": 8, "GPU": 2}, 2)
    assert time.monotonic() - start < 5


def test_the_config_is_the_one_this_clusters_autoscaler_monitor_runs_with():
    """Processes whose arguments look like Ray's: the log monitor (same GCS address, no config) started first."""
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    started = [subprocess.Popen([*sleep, "/x/ray/_private/log_monitor.py", "--gcs-address=10.9.8.7:6379"]),
               subprocess.Popen([*sleep, "/x/ray/autoscaler/_private/monitor.py", "--gcs-address=10.9.8.7:6379",
                                 "--autoscaling-config=/cluster/bootstrap.yaml"]),
               subprocess.Popen([*sleep, "/x/ray/autoscaler/_private/monitor.py", "--gcs-address=10.9.8.7:6380"])]
    try:
        deadline = time.monotonic() + 10
        while autoscaling_config_path("10.9.8.7:6379") is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert autoscaling_config_path("10.9.8.7:6379") == Path("/cluster/bootstrap.yaml")
        assert autoscaling_config_path("10.9.8.7:6380") is None  # that cluster's monitor has no config
        assert autoscaling_config_path("10.9.8.7:6381") is None  # no monitor of that cluster on this machine
        assert autoscaling_config_path(None) is None
    finally:
        for proc in started:
            proc.kill()
            proc.wait(timeout=30)


def test_a_head_type_that_also_runs_workers_counts_them():
    cluster = {"head_node_type": "node", "max_workers": 4, "available_node_types": {
        "node": {"resources": {"CPU": 8, "GPU": 1}, "max_workers": 3}}}
    resources, types = maximum_resources(cluster, head={"CPU": 8, "GPU": 1})
    assert resources == {"CPU": 32, "GPU": 4} and types == "1 x head (8 CPU, 1 GPU) + 3 x node (8 CPU, 1 GPU)"


def test_worker_types_that_declare_no_resources_and_start_on_demand_are_not_waited_for(tmp_path, monkeypatch):
    config = tmp_path / "bootstrap.yaml"
    config.write_text(yaml.safe_dump({"head_node_type": "head", "max_workers": 4, "available_node_types": {
        "head": {"resources": {}, "max_workers": 0}, "gpu": {"resources": {}, "min_workers": 0, "max_workers": 4}}}))
    monkeypatch.setattr(cluster_size, "autoscaling_config_path", lambda gcs: config)
    monkeypatch.setattr(cluster_size, "head_resources", lambda: {"CPU": 0})
    monkeypatch.setattr(cluster_size, "alive_resources", lambda: ({"CPU": 8, "GPU": 1}, 2))
    monkeypatch.setattr(cluster_size, "wait_for_workers", lambda *a, **k: pytest.fail("waited for no machine"))
    concurrency = sweep_concurrency(load_sweep_config(STAGE2), "10.0.0.1:6379")
    assert concurrency.trials == 1 and "start on demand: set max_concurrent_trials" in concurrency.source


def test_an_unreadable_autoscaler_config_sizes_by_what_is_up_and_says_why(tmp_path, monkeypatch):
    config = tmp_path / "bootstrap.yaml"
    config.write_text("available_node_types: [unclosed")
    monkeypatch.setattr(cluster_size, "autoscaling_config_path", lambda gcs: config)
    monkeypatch.setattr(cluster_size, "alive_resources", lambda: ({"CPU": 8, "GPU": 2}, 2))
    concurrency = sweep_concurrency(load_sweep_config(STAGE2), "10.0.0.1:6379")
    assert concurrency.trials == 2 and f"the autoscaler config {config} unreadable" in concurrency.source
