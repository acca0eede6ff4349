"""Every workaround for a Ray trap in one place, each with the reason in its docstring.

Each function here is tested in ``tests/test_sweep_driver.py`` (the console's in ``tests/test_console.py``);
delete one when the Ray release it works around is no longer supported.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator

import ray

logger = logging.getLogger(__name__)

#: Resources of a Tune trial's driver function (it only waits on its TorchTrainer). Ray rejects
#: ``{"cpu": 0}`` alone ("empty head bundle"); a small memory request makes the bundle non-empty.
TRIAL_DRIVER_RESOURCES = {"cpu": 0, "memory": 256 * 1024**2}


def worker_env_vars(health_check_interval_s: float) -> dict[str, str]:
    """Environment every Ray process needs; pass it as ``runtime_env`` (env set after ``ray.init`` is lost).

    - ``TORCHDYNAMO_DISABLE=1``: sam3/torchvision compile paths cost 7-30 s each on CPU workers.
    - ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``: the 2 s default dominates trial teardown (6.5 s -> 2 s at 0.5).
    - ``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S=600``: workers importing torch + sam3 on a busy 2-core
      machine can take longer than the default, which leaves the trial RUNNING with no workers.
    - ``USE_LIBUV=0`` on Windows: its torch wheels lack libuv, which Gloo's TCPStore uses by default.
    """
    env = {"TORCHDYNAMO_DISABLE": "1", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": str(health_check_interval_s),
           "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "600"}
    if sys.platform == "win32":
        env["USE_LIBUV"] = "0"
    return env


def init_ray(address: str | None, dashboard_host: str, env_vars: dict[str, str], *,
             num_cpus: int | None = None) -> None:
    """Start a local Ray (``address`` None) or join a cluster, with ``env_vars`` for every process.

    A local Ray gets its dashboard, bound to ``dashboard_host`` (127.0.0.1): ASHA + Train needs Ray's
    State API, without which placement groups of early-stopped trials are never freed and the next trial
    waits forever for its workers. A cluster's head (``ray start --head``) already runs one.

    A local Ray also gets a GCS port of its own, named in every process's ``RAY_ADDRESS``: Train's
    placement-group cleaner connects through the State API, which refuses to guess ("Found multiple
    active Ray instances") when another Ray runs on the same machine; the groups of finished trials then
    leak and the sweep hangs waiting for CPUs (reproduced on a shared 2-core machine).

    ``address`` None inside a Ray job (``ray job submit``) joins the job's cluster, named by the
    ``RAY_ADDRESS`` the job sets, instead of starting a second Ray beside it (``address="local"`` below
    would ignore it); a joined GCS address is passed on to every process as ``RAY_ADDRESS`` for the same
    reason as above.
    """
    address = address or os.environ.get("RAY_ADDRESS") or None  # inside `ray job submit`: the job's cluster
    if address is not None:
        if address != "auto" and "://" not in address:  # a GCS host:port: the State API's too (see below)
            env_vars = {"RAY_ADDRESS": address, **env_vars}
        ray.init(address=address, runtime_env={"env_vars": env_vars})
        return
    port = free_port()
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    try:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host=dashboard_host,
                 runtime_env={"env_vars": {**env_vars, "RAY_ADDRESS": f"{ray.util.get_node_ip_address()}:{port}"}})
    finally:
        del os.environ["RAY_GCS_SERVER_PORT"]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def wait_for_tune_report_queue_drained(timeout_s: float = 120.0, poll_s: float = 0.1) -> bool:
    """Block until Tune has collected the last result that ``TuneReportCallback`` queued; call after ``fit()``.

    ``TuneReportCallback`` hands results to Tune through a one-slot queue that Tune polls only while the
    trial function runs: if ``fit()`` returns first (a slow Tune callback, e.g. W&B), the trial stays
    RUNNING forever. The queue is a private attribute of the Tune session (Ray 2.60). Returns False (and
    logs) if it is still full after ``timeout_s``.
    """
    from ray.train._internal.session import get_session

    session = get_session()
    queue = getattr(session, "_inter_actor_queue", None) if session is not None else None
    deadline = time.monotonic() + timeout_s
    while queue is not None and not queue.empty():
        if time.monotonic() > deadline:
            logger.warning("Tune did not collect the last Train result within %.0f s", timeout_s)
            return False
        time.sleep(poll_s)
    return True


RAY_CONSOLE_PRINTER = "ray_print_logs"  # the name ray.init gives its worker-output handler


@contextlib.contextmanager
def route_worker_output(handler: Callable[[dict], None]) -> Iterator[None]:
    """Send what Ray's processes print to ``handler`` instead of the driver's console, until the block ends.

    Ray has no public switch for where worker output goes: ``log_to_driver=False`` drops it (it stays in the
    session's temporary folder), ``True`` prints it all. ``ray.init`` registers its printer on
    ``global_worker_stdstream_dispatcher`` under the name ``ray_print_logs``; this swaps it for ``handler``,
    which gets Ray's batches (``lines``, ``pid``, ``actor_name``/``task_name``, ``is_err``), and puts Ray's
    printer back afterwards if Ray is still up. The messages the cluster pushes to the driver ("N PYTHON worker
    processes have been started...", a worker died) bypass the dispatcher: Ray's listener thread calls the
    module's ``print_to_stdstream`` by name, so that name is pointed at ``handler`` meanwhile. Call it after
    ``ray.init``.
    """
    from ray._private import worker as ray_worker
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    printers = [pair for pair in dispatcher.handlers if pair[0] == RAY_CONSOLE_PRINTER]
    print_to_stdstream = ray_worker.print_to_stdstream
    dispatcher.remove_handler(RAY_CONSOLE_PRINTER)
    dispatcher.add_handler("sweep_worker_output", handler)
    ray_worker.print_to_stdstream = lambda data, ignore_prefix=False: handler(data)
    try:
        yield
    finally:
        ray_worker.print_to_stdstream = print_to_stdstream
        dispatcher.remove_handler("sweep_worker_output")
        if ray.is_initialized() and ray_worker.global_worker.connected:
            for pair in printers:
                dispatcher.add_handler(*pair)


@contextlib.contextmanager
def quiet_tune_output() -> Iterator[None]:
    """Tune without console output of its own while the block runs, through Ray's own switches.

    - ``RAY_AIR_NEW_OUTPUT=0``: Tune's new output engine prints its experiment header (a configuration table,
      "View detailed results here", a TensorBoard command) at every verbosity, 0 included
      (``TuneTerminalReporter.experiment_started``); the legacy one prints nothing at ``verbose=0``.
    - ``TUNE_PRINT_ALL_TRIAL_ERRORS=0``: no traceback logged per failed attempt of a trial (the trial's
      ``error.txt`` keeps it).

    Tune reads both when ``fit`` starts.
    """
    switches = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_PRINT_ALL_TRIAL_ERRORS": "0"}
    before = {name: os.environ.get(name) for name in switches}
    os.environ.update(switches)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def restored_run_config(tuner):
    """The ``RunConfig`` of a restored ``Tuner``, to adjust before ``fit``: ``Tuner.restore`` takes the pickled
    one whole and has no parameter for its verbosity or callbacks."""
    return tuner._local_tuner.get_run_config()
