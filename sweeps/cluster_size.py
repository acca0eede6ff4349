"""How many trials a sweep runs at once on the Ray cluster it joined, and where that figure comes from.

In order: ``max_concurrent_trials`` from the sweep config; else what the cluster can **grow to**, read from its
autoscaler's config (each worker node type's ``max_workers`` x its declared resources, plus the running head's
resources, the cluster's ``max_workers`` as a cap); else, where the node types declare no resources (Ray's ``local``
on-premises provider: Ray learns a machine's GPUs when it joins), what the cluster holds once its worker
machines have joined (waited for up to :data:`JOIN_WAIT_S`); else (no autoscaler: ``ray start`` by hand, a
local Ray) what the cluster holds now.

Ray 2.60 publishes the autoscaler's node types to no API (its GCS cluster-config key is never written), so the
config is the file the head's autoscaler runs with: the ``--autoscaling-config`` of this cluster's monitor
process on this machine (a Ray job's driver runs on the head), else ``~/ray_bootstrap_config.yaml``, where
``ray up`` puts it.
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

#: where ``ray up`` puts the autoscaler's config on the head (the shipped cluster files start Ray with it)
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
#: how long the driver waits for an on-premises cluster's worker machines to join
JOIN_WAIT_S = 600.0


@dataclass(frozen=True)
class Concurrency:
    """``trials`` at once, and ``source``: the sentence that says where the figure comes from."""

    trials: int
    source: str


def autoscaling_config_path(gcs_address: str | None) -> Path | None:
    """The autoscaler config of the cluster at ``gcs_address``: its monitor's ``--autoscaling-config`` where
    that monitor runs on this machine (None if it has none: no autoscaler), else ``~/ray_bootstrap_config.yaml``
    if there is one, else None."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        argv = proc.info["cmdline"] or []
        if not any(arg.endswith("monitor.py") for arg in argv):
            continue
        if gcs_address and f"--gcs-address={gcs_address}" not in argv:
            continue
        configs = [arg.split("=", 1)[1] for arg in argv if arg.startswith("--autoscaling-config=")]
        return Path(configs[0]).expanduser() if configs else None
    bootstrap = Path(BOOTSTRAP_CONFIG).expanduser()
    return bootstrap if bootstrap.is_file() else None


def maximum_resources(autoscaling: Mapping[str, Any], head: Mapping[str, float]) -> tuple[dict[str, float], str] | None:
    """The resources the cluster of ``autoscaling`` (a Ray cluster config) can grow to, given the running head's
    resources ``head``, and a description; None where a worker node type declares no resources."""
    types = autoscaling.get("available_node_types") or {}
    head_type = autoscaling.get("head_node_type")
    workers = {name: t for name, t in types.items() if name != head_type and t.get("max_workers", 0) > 0}
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
        return sized(alive_resources()[0], "in the cluster (no autoscaler)")
    autoscaling = yaml.safe_load(path.read_text(encoding="utf-8")) or {}  # ray up writes it as JSON: YAML too
    grown = maximum_resources(autoscaling, head_resources())
    if grown is not None:
        resources, types = grown
        return sized(resources, f"at the autoscaler's maximum ({types}; {path})")
    expected = int(autoscaling.get("max_workers", 0))
    resources, nodes = wait_for_workers(expected, join_wait_s, say)
    joined = "all" if nodes - 1 >= expected else f"only {nodes - 1}"
    return sized(resources, f"once {joined} of the {expected} worker machines had joined ({path})")
