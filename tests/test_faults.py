"""Fault injection: what a sweep survives, and what the driver refuses before Ray starts.

Every fault is injected from THIS file, never through a hook in production code:

- a Ray Train worker process SIGKILLed mid-trial (the real loop, 2 Gloo workers): ``killing_train_loop`` wraps
  the real ``train_loop_per_worker`` and makes rank 1 kill itself once, after the first checkpoint;
- a worker node of a 2-node cluster removed mid-sweep (``ray.cluster_utils.Cluster``): the driver's
  ``run_sweep`` with ``node_logging_loop``, a TEST STAND-IN loop (no model: the fault is in Ray's machinery);
- a NaN loss in one trial of a sweep (the real loop): ``nan_injecting_train_loop`` wraps the real loop and
  makes sam3's loss NaN from step 3 on in the trial whose ``seed`` is ``NAN_SEED``;
- a trial that fails on every attempt (out of memory at its setting, say): ``always_failing_loop``, a TEST
  STAND-IN that raises at once: Train's and Tune's retries must not multiply;
- an unwritable storage path (under a regular file; a read-only mount) and a full disk (a tiny tmpfs): the
  driver must exit 2 before Ray starts (mounts need root: skipped, saying so, without it).

Plus the security defaults that go with running a sweep: a local Ray's dashboard (which runs jobs, i.e.
arbitrary code) listens on 127.0.0.1 only, and a secret in the driver's environment (``WANDB_API_KEY``)
reaches no file the sweep or Ray writes. (``tests/test_ray_cluster_yaml.py`` checks the cluster file binds
the dashboard to loopback and opens no port; ``tests/test_wandb_offline.py`` checks the key with W&B on.)

The faults and the figures they give are tabled in RELIABILITY.md.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from unittest import mock

import optuna
import psutil
import pytest
import ray
import yaml
from optuna.trial import TrialState

from common.errors import run_cli
from search_spaces import load_search_spec
from sweeps import ray_compat, stage2
from sweeps.config import parse_sweep_config
from sweeps.optuna_search import RAY_TRIAL_ID_ATTR
from sweeps.stage2 import run_sweep
from sweeps.study_storage import journal_storage
from trainables.checkpoints.trial import METRICS_FILE, MODEL_FILE
from trainables.config import TrialConfig

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # tests/ is not importable on workers

pytestmark = pytest.mark.faults

HEALTH_CHECK_S = 0.5  # RAY_TRAIN_HEALTH_CHECK_INTERVAL_S of every test Ray (ray_compat.worker_env_vars)
FAST = dict(lr_transformer=1e-3, lr_vision=1e-3, lr_language=1e-3, warmup_steps=2, grad_clip=1.0,
            category_chunk_size=14, cpu_threads_per_worker=1, val_max_images=2)
NAN_SEED = 7  # the trial of the NaN sweep whose loss turns NaN
NAN_FROM_STEP = 3  # ... at this optimizer step (after its checkpoint at step 2)


# --- helpers shared by the loops (they run in Ray worker processes) --------------------------------------

def log_event(path: str, **event) -> None:
    """Append one JSON line to the fault log (small O_APPEND writes from several processes stay whole)."""
    with open(path, "a") as f:
        f.write(json.dumps({"t": time.time(), "pid": os.getpid(), **event}) + "\n")


def read_events(path: Path) -> list[dict]:
    """The complete lines of the fault log (a line being written while it is read is left for the next read)."""
    events = []
    for line in Path(path).read_text().splitlines() if Path(path).exists() else []:
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return events


def checkpoint_step(checkpoint) -> int | None:
    """The step saved in a Train checkpoint (``metrics.json`` of a trial checkpoint, or ``state.json``)."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        for name in (METRICS_FILE, "state.json"):
            if (Path(directory) / name).exists():
                return json.loads((Path(directory) / name).read_text())["step"]
    return None


def killing_train_loop(config: dict) -> None:
    """TEST WRAPPER around the real ``train_loop_per_worker``: rank 1 SIGKILLs itself once, after the first
    checkpoint was reported, and every rank logs where it (re)started and what it reported."""
    import trainables.train_loop as real

    fault = config["fault"]
    rank = ray.train.get_context().get_world_rank()
    log_event(fault["log"], event="start", rank=rank, resumed_from=checkpoint_step(ray.train.get_checkpoint()))

    class ReportThenDieOnce(real.RayReporter):
        def __call__(self, metrics: dict, checkpoint_dir) -> None:
            super().__call__(metrics, checkpoint_dir)
            log_event(fault["log"], event="report", rank=rank, step=metrics["step"],
                      checkpoint=checkpoint_dir is not None)
            if rank == 1 and not os.path.exists(fault["marker"]):
                Path(fault["marker"]).write_text(str(os.getpid()))
                time.sleep(4 * HEALTH_CHECK_S)  # a report made < 1 health check before a death can be lost
                log_event(fault["log"], event="kill", rank=rank)
                os.kill(os.getpid(), signal.SIGKILL)

    with mock.patch.object(real, "RayReporter", ReportThenDieOnce):
        real.train_loop_per_worker(config)


def nan_injecting_train_loop(config: dict) -> None:
    """TEST WRAPPER around the real ``train_loop_per_worker``: in the trial whose seed is ``NAN_SEED``, sam3's
    loss turns NaN from optimizer step ``NAN_FROM_STEP`` on (one prompt chunk per step: chunk size 14)."""
    import trainables.train_loop as real
    import trainables.trial as trial_module

    if config["trial"]["seed"] != NAN_SEED:
        real.train_loop_per_worker(config)
        return
    loss_or_nan = trial_module.loss_or_nan
    calls = itertools.count(1)

    def loss_turning_nan(model, chunk, loss_fn):
        loss, parts = loss_or_nan(model, chunk, loss_fn)
        return (loss * float("nan"), parts) if next(calls) >= NAN_FROM_STEP else (loss, parts)

    with mock.patch.object(trial_module, "loss_or_nan", loss_turning_nan):
        real.train_loop_per_worker(config)


def node_logging_loop(config: dict) -> None:
    """TEST STAND-IN for the train loop (no model): one report with a checkpoint per second, resuming from
    the last checkpoint; logs its node, so the test knows which trial a node's removal hits."""
    trial = config["trial"]
    log = os.environ["FAULT_LOG"]
    run = ray.train.get_context().get_experiment_name()
    node = ray.get_runtime_context().get_node_id()
    start = checkpoint_step(ray.train.get_checkpoint()) or 0
    log_event(log, event="start", run=run, node=node, resumed_from=start)
    for step in range(start + 1, trial["max_steps"] + 1):
        time.sleep(1.0)
        dice = trial["lr_transformer"] * 1000 * step / trial["max_steps"]
        metrics = {"val_dice": dice, "val_ap75": dice / 2, "step": step, "diverged": False}
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "state.json").write_text(json.dumps({"step": step}))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        log_event(log, event="report", run=run, node=node, step=step)


def always_failing_loop(config: dict) -> None:
    """TEST STAND-IN for the train loop: logs its start, then fails, every time (a setting that cannot train,
    e.g. out of memory)."""
    log_event(os.environ["FAULT_LOG"], event="start", run=ray.train.get_context().get_experiment_name())
    raise RuntimeError("CUDA out of memory (injected)")


def write_space(path: Path, params: dict, points: list[dict]) -> str:
    path.write_text(yaml.safe_dump({"params": params, "points_to_evaluate": points}))
    return str(path)


def files_containing(roots: list[Path], needle: bytes) -> tuple[int, list[str]]:
    """(number of files searched, those that contain ``needle``) under ``roots``."""
    files = [p for root in roots for p in Path(root).rglob("*") if p.is_file() and not p.is_symlink()]
    return len(files), [str(p) for p in files if needle in p.read_bytes()]


# --- faults under a local Ray --------------------------------------------------------------------------

SECRET = "wandbkeymarker" + secrets.token_hex(16)


@pytest.mark.slow
class TestOnALocalRay:
    """Faults on one local 2-CPU Ray (started once for the class, with a marker W&B key in its environment)."""

    @pytest.fixture(scope="class")
    def local_ray(self, tmp_path_factory):
        saved = os.environ.get("WANDB_API_KEY")
        os.environ["WANDB_API_KEY"] = SECRET  # inherited by every Ray process, as a user's exported key would be
        log = tmp_path_factory.mktemp("fault-log") / "events.jsonl"
        ray_compat.init_ray(None, "127.0.0.1", {**ray_compat.worker_env_vars(HEALTH_CHECK_S), "FAULT_LOG": str(log)},
                            num_cpus=2)
        session = Path(ray._private.worker._global_node.get_session_dir_path())
        yield session, log
        ray.shutdown()
        if saved is None:
            os.environ.pop("WANDB_API_KEY", None)
        else:
            os.environ["WANDB_API_KEY"] = saved

    @pytest.mark.timeout(300)
    def test_a_killed_train_worker_restarts_from_its_last_checkpoint_and_finishes(self, local_ray,
                                                                                synthetic_dataset, tmp_path):
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer

        cfg = TrialConfig(**synthetic_dataset.trial_fields(), max_steps=4, val_every=2, num_workers=2,
                          **FAST)
        log, marker = tmp_path / "events.jsonl", tmp_path / "killed"
        trainer = TorchTrainer(
            killing_train_loop,
            train_loop_config={"trial": cfg.to_dict(), "fault": {"log": str(log), "marker": str(marker)}},
            scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1}),
            torch_config=TorchConfig(backend="gloo"),
            run_config=RunConfig(name="worker-kill", storage_path=str(tmp_path / "runs"),
                                 checkpoint_config=CheckpointConfig(num_to_keep=None),
                                 failure_config=FailureConfig(max_failures=1)),
        )
        start = time.monotonic()
        result = trainer.fit()
        elapsed = time.monotonic() - start

        events = read_events(log)
        starts = [(e["rank"], e["resumed_from"] or 0) for e in events if e["event"] == "start"]  # 0: from scratch
        (kill,) = [e for e in events if e["event"] == "kill"]
        restart = min(e["t"] for e in events if e["event"] == "start" and e["t"] > kill["t"])
        rank0 = [e["step"] for e in events if e["event"] == "report" and e["rank"] == 0]
        after_kill = [e["step"] for e in events if e["event"] == "report" and e["rank"] == 0 and e["t"] > kill["t"]]
        print(f"worker kill: trial took {elapsed:.0f} s; first restarted worker "
              f"{restart - kill['t']:.1f} s after the kill")

        assert result.error is None
        assert sorted(starts) == [(0, 0), (0, 2), (1, 0), (1, 2)], starts  # both ranks resumed at step 2
        assert kill["pid"] not in {e["pid"] for e in events if e["event"] == "start" and e["t"] > kill["t"]}
        # the driver lived: Tune has step 2's report, and the restarted workers do not report it again
        assert rank0 == [2, 4] and after_kill == [4], f"reports after the restart must go on from step 2: {rank0}"
        assert checkpoint_step(result.checkpoint) == 4
        with result.checkpoint.as_directory() as directory:
            assert (Path(directory) / MODEL_FILE).is_file()

    @pytest.mark.timeout(300)
    def test_a_nan_loss_fails_its_trial_keeps_its_last_good_checkpoint_and_the_sweep_goes_on(
            self, local_ray, synthetic_dataset, tmp_path):
        space = write_space(tmp_path / "space.yaml", {"seed": {"type": "choice", "values": [0, NAN_SEED]}},
                            [{"seed": 0}, {"seed": NAN_SEED}])
        cfg = parse_sweep_config({
            "name": "nan-sweep", "storage_path": str(tmp_path / "out"), "search_space": space,
            "num_samples": 2, "max_concurrent_trials": 2,
            "trial": {**synthetic_dataset.trial_fields(), "max_steps": 4, "val_every": 2,
                      "num_workers": 1, **FAST},
            "scheduler": {"grace_period": 4, "reduction_factor": 2},  # ASHA stops no trial: only the NaN does
            "checkpoint": {"num_to_keep": 1}, "failure": {"max_failures": 1},
        }, source="test")
        start = time.monotonic()
        outcome = run_sweep(cfg, load_search_spec(cfg.search_space), train_loop=nan_injecting_train_loop)
        print(f"NaN sweep: 2 trials (1 worker each, 2 at once) took {time.monotonic() - start:.0f} s")

        from ray.tune import ExperimentAnalysis, ResultGrid

        analysis = ExperimentAnalysis(cfg.experiment_dir)
        trials = {t.config["seed"]: t for t in analysis.trials}
        histories = {r.config["seed"]: r.metrics_dataframe for r in ResultGrid(analysis)}
        study = optuna.load_study(study_name=cfg.study_name, storage=journal_storage(cfg.study_storage))
        states = {t.params["seed"]: t.state for t in study.trials}
        assert outcome.num_trials == 2 and outcome.errors == {}  # diverged is not an error: nothing crashed
        assert states == {0: TrialState.COMPLETE, NAN_SEED: TrialState.FAIL}
        assert all(t.status == "TERMINATED" for t in trials.values())

        healthy, diverged = trials[0].last_result, trials[NAN_SEED].last_result
        assert healthy["step"] == 4 and healthy["diverged"] is False
        assert (diverged["step"], diverged["diverged"]) == (NAN_FROM_STEP, True)
        assert [r.trial_id for r in outcome.pareto_front] == [trials[0].trial_id]

        # The diverged trial's last good checkpoint (step 2) is its Train run's latest, and it is whole.
        saved = histories[NAN_SEED].dropna(subset=["checkpoint_path"])
        assert list(saved["step"]) == [2]
        kept = Path(saved["checkpoint_path"].iloc[-1])
        assert (kept / MODEL_FILE).is_file()
        assert json.loads((kept / METRICS_FILE).read_text())["metrics"]["diverged"] is False
        run_dir = Path(cfg.experiment_dir) / "train_runs" / f"{cfg.name}-{trials[NAN_SEED].trial_id}"
        assert sorted(p.name for p in run_dir.glob("checkpoint_*") if p.is_dir()) == [kept.name]

        # No secret of the driver's environment reached a file of the sweep or of Ray's session (logs).
        searched, leaked = files_containing([Path(cfg.experiment_dir), local_ray[0]], SECRET.encode())
        assert searched > 20 and leaked == []

    @pytest.mark.timeout(300)
    def test_a_killed_trial_driver_is_retried_and_its_train_run_resumes_from_its_checkpoint(self, local_ray,
                                                                                         tmp_path):
        """What losing the node that hosts a trial's Tune actor (and, beside it, its Train controller) does."""
        from ray.tune import ExperimentAnalysis
        from ray.util.state import list_actors

        _, log = local_ray
        lrs = [1e-4]
        space = write_space(tmp_path / "space.yaml", {"lr_transformer": {"type": "choice", "values": lrs}},
                            [{"lr_transformer": lr} for lr in lrs])
        cfg = parse_sweep_config({
            "name": "driver-actor-kill", "storage_path": str(tmp_path / "out"), "search_space": space,
            "num_samples": len(lrs), "max_concurrent_trials": 1,
            "trial": {"max_steps": 6, "val_every": 1, "num_workers": 1, "cpu_threads_per_worker": 1},
            "scheduler": {"grace_period": 6, "reduction_factor": 2}, "checkpoint": {"num_to_keep": 1},
            "failure": {"max_failures": 1},
        }, source="test")
        killed: dict = {}
        gcs = ray.get_runtime_context().gcs_address  # this Ray's, not another one on the same machine

        def running_trial_actor_pids() -> list[int]:
            """Tune's trial actors now running a trial (an idle one left by an earlier sweep is not)."""
            alive = [a for a in list_actors(address=gcs, filters=[("state", "=", "ALIVE")], limit=10_000)
                     if a.class_name.endswith("ImplicitFunc")]  # sometimes "wrap_function.<locals>.ImplicitFunc"
            return [a.pid for a in alive if "ImplicitFunc.train" in " ".join(psutil.Process(a.pid).cmdline())]

        def kill_the_trials_driver_actor_after_its_second_report() -> None:
            deadline = time.monotonic() + 200
            while time.monotonic() < deadline:
                try:
                    hits = [e for e in read_events(log) if e["event"] == "report"
                            and e["run"].startswith(cfg.name + "-") and e["step"] >= 2]
                    pids = running_trial_actor_pids() if hits else []
                    if len(pids) == 1:
                        time.sleep(4 * HEALTH_CHECK_S)  # let the controller register the report first
                        killed.update(run=hits[0]["run"], pid=pids[0], t=time.time(), step=max(
                            e["step"] for e in read_events(log) if e.get("run") == hits[0]["run"] and "step" in e))
                        os.kill(pids[0], signal.SIGKILL)
                        return
                except Exception as err:  # the State API can time out on a busy machine: try again
                    killed["last_error"] = repr(err)
                time.sleep(0.2)

        killer = threading.Thread(target=kill_the_trials_driver_actor_after_its_second_report, daemon=True)
        killer.start()
        outcome = run_sweep(cfg, load_search_spec(cfg.search_space), train_loop=node_logging_loop)
        killer.join(timeout=5)

        assert "pid" in killed, f"no trial actor was killed: {killed}"
        events = [e for e in read_events(log) if e.get("run") == killed["run"]]
        restarts = [e for e in events if e["event"] == "start" and e["t"] > killed["t"]]
        trials = ExperimentAnalysis(cfg.experiment_dir).trials
        print(f"trial driver kill: killed after step {killed['step']}; the retried trial resumed its Train run "
              f"from step {restarts[0]['resumed_from'] if restarts else None}")
        assert outcome.errors == {}, outcome.errors
        assert all(t.status == "TERMINATED" and t.last_result["step"] == 6 for t in trials)
        assert restarts and restarts[0]["resumed_from"] >= 2, "the trial restarted from scratch"
        study = optuna.load_study(study_name=cfg.study_name, storage=journal_storage(cfg.study_storage))
        assert sorted(t.user_attrs[RAY_TRIAL_ID_ATTR] for t in study.trials) == sorted(t.trial_id for t in trials)
        assert all(t.state == TrialState.COMPLETE for t in study.trials), [t.state for t in study.trials]

    @pytest.mark.timeout(300)
    def test_a_trial_that_fails_for_real_runs_max_failures_plus_one_times_and_again_on_resume(self, local_ray,
                                                                                             tmp_path):
        _, log = local_ray
        space = write_space(tmp_path / "space.yaml", {"lr_transformer": {"type": "choice", "values": [1e-4]}},
                            [{"lr_transformer": 1e-4}])
        cfg = parse_sweep_config({
            "name": "gives-up", "storage_path": str(tmp_path / "out"), "search_space": space,
            "num_samples": 1, "max_concurrent_trials": 1,
            "trial": {"max_steps": 2, "val_every": 1, "num_workers": 1, "cpu_threads_per_worker": 1},
            "scheduler": {"grace_period": 2, "reduction_factor": 2}, "checkpoint": {"num_to_keep": 1},
            "failure": {"max_failures": 1},
        }, source="test")

        def attempts() -> int:
            return sum(e["event"] == "start" and e["run"].startswith(cfg.name + "-") for e in read_events(log))

        outcome = run_sweep(cfg, load_search_spec(cfg.search_space), train_loop=always_failing_loop)
        first = attempts()
        resumed = run_sweep(cfg, load_search_spec(cfg.search_space), resume=True, train_loop=always_failing_loop)

        print(f"failing trial: {first} attempts, {attempts() - first} more after --resume; errors {outcome.errors}")
        assert first == 2, "Train's first attempt and its 1 restart; Tune's re-run must not start 2 more"
        [(trial_id, error)] = outcome.errors.items()
        assert "CUDA out of memory (injected)" in error
        assert attempts() - first == 2, "--resume gives the errored trial its full budget again"
        assert list(resumed.errors) == [trial_id]

    def test_a_local_ray_binds_its_dashboard_and_jobs_api_to_loopback_only(self, local_ray):
        url = ray._private.worker.get_dashboard_url()
        host, port = url.rsplit(":", 1)
        assert host == "127.0.0.1"
        listening = {c.laddr.ip for c in psutil.net_connections(kind="tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == int(port)}
        assert listening and listening <= {"127.0.0.1", "::1"}, listening
        with socket.create_connection(("127.0.0.1", int(port)), timeout=5):
            pass
        node_ip = ray.util.get_node_ip_address()
        if node_ip != "127.0.0.1":  # the machine's own address must not answer
            with pytest.raises(OSError):
                socket.create_connection((node_ip, int(port)), timeout=5).close()


def test_the_driver_starts_ray_with_the_configured_loopback_dashboard(tmp_path, monkeypatch):
    calls = []

    class Stop(Exception):
        pass

    def record(address, dashboard_host, env_vars, **kwargs):
        calls.append((address, dashboard_host))
        raise Stop

    monkeypatch.setattr(ray_compat, "init_ray", record)
    monkeypatch.setattr(stage2, "prepare_dataset", lambda cfg: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({"name": "s", "storage_path": str(tmp_path / "out"),
                                      "search_space": "search_spaces/local.yaml", "trial": {"max_steps": 4},
                                      "scheduler": {"grace_period": 2}}))
    with pytest.raises(Stop):
        stage2.main(["--config", str(config)])
    assert calls == [(None, "127.0.0.1")]


# --- a worker node lost mid-sweep ----------------------------------------------------------------------

MAX_STEPS_NODE_LOSS = 6

@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_sweep_survives_losing_a_worker_node_and_loses_no_trial(tmp_path):
    from ray.cluster_utils import Cluster
    from ray.tune import ExperimentAnalysis

    log = tmp_path / "events.jsonl"
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "gcs_server_port": ray_compat.free_port(), "include_dashboard": True,
        "dashboard_host": "127.0.0.1", "dashboard_port": ray_compat.free_port()})
    worker = cluster.add_node(num_cpus=1)
    lrs = [1e-4, 2e-4]  # two trials at once: one Train worker per node
    space = write_space(tmp_path / "space.yaml", {"lr_transformer": {"type": "choice", "values": lrs}},
                        [{"lr_transformer": lr} for lr in lrs])
    cfg = parse_sweep_config({
        "name": "node-loss", "storage_path": str(tmp_path / "out"), "search_space": space,
        "num_samples": len(lrs), "max_concurrent_trials": 2,
        "trial": {"max_steps": MAX_STEPS_NODE_LOSS, "val_every": 1, "num_workers": 1, "cpu_threads_per_worker": 1},
        "scheduler": {"grace_period": MAX_STEPS_NODE_LOSS, "reduction_factor": 2}, "checkpoint": {"num_to_keep": 1},
        "failure": {"max_failures": 1},
    }, source="test")
    removed: dict = {}

    def remove_the_worker_node_once_a_trial_on_it_has_checkpointed() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            hits = [e for e in read_events(log) if e["event"] == "report" and e["node"] == worker.node_id
                    and e["step"] >= 2]
            if hits:
                removed.update(run=hits[0]["run"], step=hits[-1]["step"], t=time.time())
                cluster.remove_node(worker)
                return
            time.sleep(0.2)

    try:
        ray_compat.init_ray(cluster.address, "127.0.0.1",
                            {**ray_compat.worker_env_vars(HEALTH_CHECK_S), "FAULT_LOG": str(log)})
        remover = threading.Thread(target=remove_the_worker_node_once_a_trial_on_it_has_checkpointed, daemon=True)
        remover.start()
        start = time.monotonic()
        outcome = run_sweep(cfg, load_search_spec(cfg.search_space), train_loop=node_logging_loop)
        print(f"node loss: {len(lrs)} trials on 2 nodes, then 1 node, took {time.monotonic() - start:.0f} s")
        remover.join(timeout=5)
    finally:
        ray.shutdown()
        cluster.shutdown()

    assert removed, "no trial ran on the worker node"
    events = read_events(log)
    restarts = [e for e in events if e["event"] == "start" and e["run"] == removed["run"] and e["t"] > removed["t"]]
    assert restarts and restarts[0]["node"] != worker.node_id
    print(f"node loss: trial {removed['run']} had reported step {removed['step']} on the lost node; "
          f"restarted on the head from step {restarts[0]['resumed_from']}")
    # From a checkpoint, never from scratch; the report made within one health check of the loss may be lost.
    assert 1 <= restarts[0]["resumed_from"] <= removed["step"], restarts[0]
    trials = ExperimentAnalysis(cfg.experiment_dir).trials
    print(f"node loss: Tune re-ran {sum(t.num_failures for t in trials)} trial(s) whose own actor was on the lost "
          f"node; Train restarted the workers of the others")
    assert len(trials) == len(lrs) and outcome.errors == {}
    assert all(t.status == "TERMINATED" and t.last_result["step"] == MAX_STEPS_NODE_LOSS for t in trials), \
        {t.trial_id: (t.status, t.last_result.get("step")) for t in trials}
    study = optuna.load_study(study_name=cfg.study_name, storage=journal_storage(cfg.study_storage))
    assert sorted(t.user_attrs[RAY_TRIAL_ID_ATTR] for t in study.trials) == sorted(t.trial_id for t in trials)
    assert all(t.state == TrialState.COMPLETE for t in study.trials), [t.state for t in study.trials]


# --- storage and GPUs the driver cannot use: exit 2 before Ray starts ------------------------------------

def sweep_config_file(tmp_path: Path, **changes) -> Path:
    raw = {"name": "faulty", "storage_path": str(tmp_path / "out"), "search_space": "search_spaces/local.yaml",
           "num_samples": 2, "trial": {"max_steps": 4, "val_every": 2, "num_workers": 1},
           "scheduler": {"grace_period": 2}}
    for key, value in changes.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run_driver_expecting_refusal(config: Path, capsys, monkeypatch) -> str:
    """``python sweeps/stage2.py --config X`` (no --dry-run) in-process: exit 2, Ray never started."""
    def no_ray(*args, **kwargs):
        raise AssertionError("the driver started Ray")

    monkeypatch.setattr(ray_compat, "init_ray", no_ray)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    capsys.readouterr()
    assert run_cli(stage2.main, ["--config", str(config)]) == 2
    assert not ray.is_initialized()
    err = capsys.readouterr().err
    assert err.startswith(f"error: {config}: cannot start the sweep") and "Traceback" not in err
    return err


@pytest.fixture
def mounted_tmpfs(tmp_path):
    """Mount a tmpfs (``mount -t tmpfs -o OPTIONS``) at a fresh folder; skipped where mounting is not allowed."""
    mounted = []

    def mount(options: str) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True,
                              text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=False)


def test_a_storage_path_under_a_regular_file_is_refused_before_ray_starts(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "results.txt"
    blocker.write_text("a file, not a folder")
    err = run_driver_expecting_refusal(sweep_config_file(tmp_path, storage_path=str(blocker / "sweeps")),
                                       capsys, monkeypatch)
    assert f"storage_path: {blocker}/sweeps/faulty cannot be created: {blocker} is not a folder" in err


def test_a_read_only_storage_is_refused_before_ray_starts(tmp_path, capsys, monkeypatch, mounted_tmpfs):
    read_only = mounted_tmpfs("ro,size=1m")
    err = run_driver_expecting_refusal(sweep_config_file(tmp_path, storage_path=str(read_only / "sweeps")),
                                       capsys, monkeypatch)
    assert f"storage_path: {read_only}/sweeps/faulty cannot be written" in err and "Read-only file system" in err


def test_a_full_disk_is_refused_before_ray_starts_and_nothing_is_left_on_it(tmp_path, capsys, monkeypatch,
                                                                              mounted_tmpfs):
    disk = mounted_tmpfs("size=256k")
    with open(disk / "filler", "wb", buffering=0) as filler, pytest.raises(OSError):  # fill it to the last byte
        while True:
            filler.write(b"\0" * 65536)
    err = run_driver_expecting_refusal(sweep_config_file(tmp_path, storage_path=str(disk / "sweeps")),
                                       capsys, monkeypatch)
    assert f"storage_path: {disk}/sweeps/faulty cannot be written" in err and "No space left on device" in err
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]


def test_gpus_requested_on_a_machine_without_them_are_refused_before_ray_starts(tmp_path, capsys, monkeypatch):
    err = run_driver_expecting_refusal(sweep_config_file(tmp_path, trial={"use_gpu": True, "num_workers": 2}),
                                       capsys, monkeypatch)
    assert "trial.use_gpu: a trial needs 2 GPU worker(s) but this machine has 0 GPU(s)" in err


def test_gpus_present_or_a_cluster_to_join_pass_the_gpu_check(tmp_path, monkeypatch):
    from sweeps import preflight
    from sweeps.config import load_sweep_config

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = load_sweep_config(sweep_config_file(tmp_path, trial={"use_gpu": True, "num_workers": 2}))
    monkeypatch.setattr(preflight, "cuda_device_count", lambda: 2)
    assert preflight.gpu_problems(cfg) == []
    monkeypatch.setattr(preflight, "cuda_device_count", lambda: 0)
    cfg.ray.address = "auto"  # a cluster's GPUs are not known before joining it
    assert preflight.gpu_problems(cfg) == []
