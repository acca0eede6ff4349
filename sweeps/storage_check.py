"""Can every machine of the cluster use the sweep's storage? Checked before any trial starts.

Tune checks only that the driver can write ``storage_path``; a worker machine that cannot (the shared folder
not mounted there, or mounted at another path; no S3 role) fails at its first checkpoint, hours in, or never
fails and keeps its checkpoints where no one else finds them (a local folder of the same name). So the driver
writes a token file into the experiment folder, a zero-CPU task on every node that is up reads it and writes
its answer beside it, and the driver reads the answers back. Nodes an autoscaler adds later cannot be asked
before they exist; they meet the storage when their first trial writes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pyarrow

from common.errors import InputError
from common.paths import open_location

PROBE_PREFIX = ".storage-check-"
TIMEOUT_S = 120.0


def answer_probe(location: str, token_name: str, node: str) -> str | None:
    """On a node: read the driver's token file in ``location`` and write this node's answer beside it;
    None, or what went wrong."""
    try:
        fs, path = open_location(location)
        with fs.open_input_stream(f"{path}/{token_name}") as f:
            token = f.read()
        with fs.open_output_stream(f"{path}/{token_name}.{node}") as f:
            f.write(token)
    except (OSError, pyarrow.ArrowException) as err:
        return f"{type(err).__name__}: {err}"
    return None


def storage_problems(location: str, nodes: list[dict[str, Any]], timeout_s: float = TIMEOUT_S) -> list[str]:
    """What stops the ``nodes`` (``ray.nodes()`` entries) from sharing the folder ``location`` (the experiment
    folder, created if needed) with this driver; the probe files are removed afterwards."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    fs, path = open_location(location)
    created = fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound
    fs.create_dir(path, recursive=True)
    token_name, token = f"{PROBE_PREFIX}{uuid.uuid4().hex}", uuid.uuid4().bytes
    with fs.open_output_stream(f"{path}/{token_name}") as f:
        f.write(token)
    probe = ray.remote(num_cpus=0, max_retries=0)(answer_probe)
    asked = {node["NodeID"]: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        node["NodeID"], soft=False)).remote(location, token_name, node["NodeID"]) for node in nodes}
    problems = []
    try:
        ready, _ = ray.wait(list(asked.values()), num_returns=len(asked), timeout=timeout_s)
        still_up = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        for node in nodes:
            if node["NodeID"] not in still_up:
                continue  # it left the cluster meanwhile (an autoscaler removing a node): nothing to share with it
            where = f"the node at {node['NodeManagerAddress']} ({node['NodeID'][:8]})"
            ref = asked[node["NodeID"]]
            if ref not in ready:
                problems.append(f"storage_path: {where} did not answer within {timeout_s:.0f} s")
                continue
            try:
                failure = ray.get(ref)
            except ray.exceptions.TaskUnschedulableError:
                continue  # the node is going away: no trial will run there
            except Exception as err:  # the probe task itself failed there
                failure = f"the check could not run there: {type(err).__name__}: {str(err).splitlines()[0]}"
            if failure:
                problems.append(f"storage_path: {where} cannot use {location}: {failure}")
                continue
            answer = f"{path}/{token_name}.{node['NodeID']}"
            if fs.get_file_info(answer).type == pyarrow.fs.FileType.NotFound:
                problems.append(f"storage_path: {where} wrote into a {location} of its own, which this driver does "
                                "not see: the folder is not shared")
    finally:  # the check's own files (late probes cancelled first), and the folder if the check created it
        for ref in asked.values():
            ray.cancel(ref, force=True)
        for info in fs.get_file_info(pyarrow.fs.FileSelector(path)):
            if info.base_name.startswith(token_name):
                fs.delete_file(info.path)
        if created and not fs.get_file_info(pyarrow.fs.FileSelector(path)):
            fs.delete_dir(path)
    if problems:
        problems.append("mount the shared folder at the same path on every machine (ray_cluster.yaml's header), "
                        "or set storage_path to an object-store URI every machine's role can write")
    return problems


def check_cluster_storage(experiment_dir: str, say: Callable[[str], None] = print) -> None:
    """Refuse (:class:`InputError`) a storage that a node of the cluster, beyond this one, cannot share."""
    from sweeps.cluster_size import alive_nodes

    nodes = alive_nodes()
    if len(nodes) < 2:
        return  # this machine alone
    problems = storage_problems(experiment_dir, nodes)
    if problems:
        raise InputError(f"storage_path: not every machine of the cluster can use {experiment_dir}", problems)
    say(f"storage_path: all {len(nodes)} nodes up read and write {experiment_dir}")
