"""Before any trial starts, every node that is up reads and writes the sweep's storage (issue 20)."""

from __future__ import annotations

import pytest

from sweeps.cluster_size import alive_nodes
from sweeps.storage_check import PROBE_PREFIX, answer_probe, storage_problems


def test_a_node_that_finds_the_drivers_token_writes_its_answer_beside_it(tmp_path):
    (tmp_path / ".storage-check-t").write_bytes(b"token")
    assert answer_probe(str(tmp_path), ".storage-check-t", "node1") is None
    assert (tmp_path / ".storage-check-t.node1").read_bytes() == b"token"


def test_a_node_without_the_shared_folder_says_what_it_could_not_read(tmp_path):
    problem = answer_probe(str(tmp_path / "not-mounted-here"), ".storage-check-t", "node1")
    assert problem and "FileNotFoundError" in problem and "not-mounted-here" in problem


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_nodes_that_share_the_folder_pass_leave_nothing_behind_and_a_node_gone_is_skipped(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        nodes = alive_nodes()
        assert len(nodes) == 2
        experiment = tmp_path / "sweeps" / "stage2-cass"
        assert storage_problems(str(experiment), nodes) == []
        assert not experiment.exists()  # created for the check, empty, removed
        experiment.mkdir(parents=True)
        (experiment / "trial_a").mkdir()
        assert storage_problems(str(experiment), nodes) == []
        assert [p.name for p in experiment.iterdir()] == ["trial_a"]  # only the check's own files went
        assert not any(p.name.startswith(PROBE_PREFIX) for p in experiment.iterdir())
        # A node that left the cluster meanwhile (an autoscaler removing it) is not a storage problem.
        gone = {"NodeID": "ab" * 28, "NodeManagerAddress": "10.0.0.9", "Alive": True}
        assert storage_problems(str(experiment), [*nodes, gone]) == []
    finally:
        ray.shutdown()
        cluster.shutdown()
