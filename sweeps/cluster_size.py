"""How many trials a sweep runs at once on the Ray cluster it joined, and where that figure comes from.

In order:

1. ``max_concurrent_trials`` from the sweep config;
2. what the cluster can **grow to**, where its autoscaler's config declares the resources of every worker node
   type (cloud providers; ``ray_cluster_aws.yaml``): each worker type's ``max_workers`` x its resources, plus
   the running head's, the cluster's ``max_workers`` as a cap;
3. where worker types declare no resources (Ray's ``local`` on-premises provider: Ray learns a machine's GPUs
   when it joins), what the cluster holds once the machines Ray starts without demand (those types'
   ``min_workers``) have joined, waited for up to :data:`JOIN_WAIT_S`;
4. otherwise (no autoscaler: ``ray start`` by hand, a local Ray; or a config that cannot be read) what the
   cluster holds now.

Ray 2.60 has no API that lists node types no node runs yet (no Python code writes its GCS cluster-config
key), so the config is the file the cluster's autoscaler (``autoscaler/_private/monitor.py``) runs with: its
``--autoscaling-config``, read from that process on this machine (a Ray job's driver runs on the head). Only
the monitor of the cluster this driver joined counts (matched by its GCS address); a driver that is not on its
cluster's head finds none and sizes by what is up.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sweeps.config import SweepConfig
from sweeps.preflight import trial_needs, trials_that_fit

#: how long the driver waits for an on-premises cluster's worker machines to join
JOIN_WAIT_S = 600.0


@dataclass(frozen=True)
class Concurrency:
    """``trials`` at once, and ``source``: the sentence that says where the figure comes from."""

    trials: int
    source: str


def is_autoscaler_monitor(argv: list[str]) -> bool:
    """Whether ``argv`` is Ray's autoscaler monitor (``.../autoscaler/.../monitor.py``), not its log monitor."""
    return any(Path(arg).name == "monitor.py" and "autoscaler" in Path(arg).parts for arg in argv)


def autoscaling_config_path(gcs_address: str | None) -> Path | None:
    """The ``--autoscaling-config`` of the autoscaler monitor of the cluster at ``gcs_address``, where that
    monitor runs on this machine; None where it runs elsewhere or has no config (no autoscaler)."""
    import psutil

    if not gcs_address:
        return None
    for proc in psutil.process_iter(["cmdline"]):
        try:
            argv = proc.info["cmdline"] or []
            if not is_autoscaler_monitor(argv) or f"--gcs-address={gcs_address}" not in argv:
                continue
            configs = [arg.split("=", 1)[1] for arg in argv if arg.startswith("--autoscaling-config=")]
            if configs:
                config = Path(configs[0]).expanduser()
                return config if config.is_absolute() else Path(proc.cwd()) / config
        except psutil.Error:
            continue
    return None


def worker_types(autoscaling: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The node types that can have worker nodes, with ``max_workers`` filled as Ray fills it (a worker type
    without one: the cluster's; the head type: only where it declares ``max_workers`` of its own)."""
    types = autoscaling.get("available_node_types") or {}
    head_type = autoscaling.get("head_node_type")
    workers = {}
    for name, node_type in types.items():
        default = 0 if name == head_type else autoscaling.get("max_workers", 0)
        node_type = {**node_type, "max_workers": node_type.get("max_workers", default)}
        if node_type["max_workers"] > 0:
            workers[name] = node_type
    return workers


def maximum_resources(autoscaling: Mapping[str, Any], head: Mapping[str, float]) -> tuple[dict[str, float], str] | None:
    """The resources the cluster of ``autoscaling`` (a Ray cluster config) can grow to, given the running head's
    resources ``head``, and a description; None where a worker type declares no resources, or none can run."""
    workers = worker_types(autoscaling)
    if not workers or any(not t.get("resources") for t in workers.values()):
        return None
    cap = autoscaling.get("max_workers", math.inf)
    total: dict[str, float] = {}
    parts = []

    def add(name: str, count: int, resources: Mapping[str, float]) -> None:
        for key, value in resources.items():
            total[key] = total.get(key, 0) + count * value
        shown = ", ".join(f"{resources.get(k, 0):g} {k}" for k in ("CPU", "GPU") if k in resources or k == "CPU")
        parts.append(f"{count} x {name} ({shown})")

    add("head", 1, head)
    # Workers up to the cluster's cap, the types with the most GPUs first (what trials are sized by).
    for name, node_type in sorted(workers.items(), key=lambda item: -item[1]["resources"].get("GPU", 0)):
        count = int(min(node_type["max_workers"], cap))
        cap -= count
        if count:
            add(name, count, node_type["resources"])
    return total, " + ".join(parts)


def machines_started_without_demand(autoscaling: Mapping[str, Any]) -> int:
    """How many worker machines of types without declared resources Ray starts at once (their
    ``min_workers``): those the driver waits for."""
    return sum(int(t.get("min_workers", 0)) for t in worker_types(autoscaling).values() if not t.get("resources"))


def alive_resources() -> tuple[dict[str, float], int]:
    """The summed resources of the cluster's alive nodes, and how many nodes that is."""
    total: dict[str, float] = {}
    nodes = alive_nodes()
    for node in nodes:
        for key, value in node["Resources"].items():
            total[key] = total.get(key, 0) + value
    return total, len(nodes)


def alive_nodes() -> list[dict[str, Any]]:
    """``ray.nodes()``'s alive nodes."""
    import ray

    return [n for n in ray.nodes() if n["Alive"]]


def head_resources() -> dict[str, float]:
    """The running head node's resources (the node that holds Ray's ``node:__internal_head__`` marker)."""
    return next((dict(n["Resources"]) for n in alive_nodes() if "node:__internal_head__" in n["Resources"]), {})


def wait_for_workers(expected: int, timeout_s: float, say: Callable[[str], None],
                     poll_s: float = 5.0) -> tuple[dict[str, float], int]:
    """Wait until ``expected`` worker nodes (besides the head) are alive, or ``timeout_s`` has passed; say how
    many have joined when that changes. Returns :func:`alive_resources`."""
    deadline = time.monotonic() + timeout_s
    said = -1
    while True:
        resources, nodes = alive_resources()
        if nodes - 1 >= expected or time.monotonic() >= deadline:
            return resources, nodes
        if nodes - 1 != said:
            say(f"waiting for the cluster's worker machines to join: {nodes - 1} of {expected}")
            said = nodes - 1
        time.sleep(poll_s)


def sweep_concurrency(cfg: SweepConfig, gcs_address: str | None, say: Callable[[str], None] = print,
                      join_wait_s: float = JOIN_WAIT_S) -> Concurrency:
    """How many trials ``cfg`` runs at once on the cluster Ray is connected to (at ``gcs_address``)."""
    if cfg.max_concurrent_trials:
        return Concurrency(cfg.max_concurrent_trials, "max_concurrent_trials in the sweep config")
    kind, per_trial = trial_needs(cfg)

    def sized(resources: Mapping[str, float], where: str) -> Concurrency:
        return Concurrency(trials_that_fit(cfg, resources),
                           f"{int(resources.get(kind, 0))} {kind}s {where} / {per_trial} per trial")

    path = autoscaling_config_path(gcs_address)
    if path is None:
        return sized(alive_resources()[0], "in the cluster (no autoscaler config on this machine)")
    try:
        autoscaling = yaml.safe_load(path.read_text(encoding="utf-8")) or {}  # JSON from ray up: YAML too
    except (OSError, yaml.YAMLError) as err:
        return sized(alive_resources()[0], f"in the cluster (the autoscaler config {path} unreadable: {err})")
    grown = maximum_resources(autoscaling, head_resources())
    if grown is not None:
        resources, types = grown
        return sized(resources, f"at the autoscaler's maximum ({types}; {path})")
    expected = machines_started_without_demand(autoscaling)
    if not expected:
        return sized(alive_resources()[0], f"in the cluster now (its worker types declare no resources and start "
                                           f"on demand: set max_concurrent_trials; {path})")
    resources, nodes = wait_for_workers(expected, join_wait_s, say)
    joined = "all" if nodes - 1 >= expected else f"only {nodes - 1}"
    return sized(resources, f"once {joined} of the {expected} worker machines had joined ({path})")
