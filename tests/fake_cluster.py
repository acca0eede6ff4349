"""``ray up`` on this machine: a launcher for Ray's fake multi-node provider (used by ``tests/test_ray_up.py``).

Ray's fake multi-node provider (``ray.autoscaler._private.fake_multi_node``) runs a cluster's worker nodes as
local raylets that the head's autoscaler starts, with the resources their node type declares. In Ray 2.60 it
serves only ``RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=...``: ``ray up`` cannot launch it (its
default-config file is missing from the wheel, and it has no ``create_node`` or command runner). This module
is the piece in between, given to ``ray up`` as an ``external`` provider:

- :class:`ThisMachine` is Ray's own ``LocalNodeProvider`` (the on-premises provider of ``ray_cluster.yaml``)
  whose one machine is this one, reached through :class:`LocalShell` (commands run here, ``file_mounts`` are
  copied) instead of SSH;
- the autoscaling config ``ray up`` hands to the head names :class:`FakeNodes`, Ray's fake provider, so the
  head's autoscaler adds worker nodes of the declared types as trials need them.

Everything else is Ray's ``ray up`` / ``ray down``: bootstrap config, head updater, start commands, teardown.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from typing import Any

import ray._private.parameter
from ray.autoscaler._private.command_runner import _with_environment_variables
from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider
from ray.autoscaler._private.local.node_provider import LocalNodeProvider
from ray.autoscaler.command_runner import CommandRunnerInterface


class LocalShell(CommandRunnerInterface):
    """Runs a node's commands in a shell on this machine; "rsync" is a copy. No port forwarding (the ports
    are this machine's already)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def run(self, cmd: str | None = None, timeout: int = 120, exit_on_fail: bool = False,
            port_forward: Any = None, with_output: bool = False, environment_variables: dict | None = None,
            run_env: str = "auto", ssh_options_override_ssh_key: str = "", shutdown_after_run: bool = False) -> str:
        if not cmd:
            return ""
        if environment_variables:
            cmd = _with_environment_variables(cmd, environment_variables)
        done = subprocess.run(["bash", "-c", cmd], capture_output=with_output, text=True)
        if done.returncode != 0:
            if exit_on_fail:
                raise SystemExit(done.returncode)
            raise subprocess.CalledProcessError(done.returncode, cmd, done.stdout, done.stderr)
        return done.stdout if with_output else ""

    def run_rsync_up(self, source: str, target: str, options: dict | None = None) -> None:
        target = os.path.expanduser(target)
        if os.path.isdir(source):
            shutil.copytree(source, target, dirs_exist_ok=True)
            return
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        if not (os.path.exists(target) and os.path.samefile(source, target)):
            shutil.copyfile(source, target)

    def run_rsync_down(self, source: str, target: str, options: dict | None = None) -> None:
        LocalShell.run_rsync_up(self, os.path.expanduser(source), target, options)

    def remote_shell_command_str(self) -> str:
        return "bash"

    def run_init(self, *, as_head: bool, file_mounts: dict, sync_run_yet: bool) -> bool | None:
        return None


class ThisMachine(LocalNodeProvider):
    """The launcher side of a fake cluster: this machine is the head; the head's autoscaler gets the fake
    multi-node provider, with ``provider.fake_gcs_address`` as the address its worker nodes join."""

    def get_command_runner(self, *args: Any, **kwargs: Any) -> CommandRunnerInterface:
        return LocalShell()

    @staticmethod
    def bootstrap_config(cluster_config: dict) -> dict:
        return cluster_config  # declared node types stay (the on-premises preparation would replace them)

    def prepare_for_head_node(self, cluster_config: dict) -> dict:
        config = dict(cluster_config)
        config["provider"] = {"type": "external", "module": f"{__name__}.FakeNodes", "use_node_id_as_ip": True,
                              "disable_node_updaters": True, "disable_launch_config_check": True,
                              "launch_multiple": True, "gcs_address": self.provider_config["fake_gcs_address"]}
        return config


class FakeNodes(FakeMultiNodeProvider):
    """Ray's fake multi-node provider, each worker node with a runtime-env folder of its own, and with
    ``node_config["resources"]`` where its node type declares none (as Ray's on-premises provider: the machine
    says what it has when it joins).

    Fake nodes share the head's session folder. With one ``runtime_resources`` folder for all, each node that
    sets up a job's ``--working-dir`` deletes and unpacks it again (Ray's working-dir plugin overwrites), pulling
    the folder from under the job's driver, which runs in it (its next ``os.getcwd()`` fails). Real machines
    each have their own folder; so does each fake node here (``RayParams.runtime_env_dir_name``)."""

    def _create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        ray_params = ray._private.parameter.RayParams  # what the parent builds the node's parameters with

        def own_folder(*args: Any, **kwargs: Any) -> Any:
            return ray_params(*args, runtime_env_dir_name=f"runtime_resources_{uuid.uuid4().hex[:8]}", **kwargs)

        ray._private.parameter.RayParams = own_folder
        try:
            super()._create_node_with_resources_and_labels(node_config, tags, count,
                                                           resources or node_config.get("resources", {}), labels)
        finally:
            ray._private.parameter.RayParams = ray_params
