"""Acceptance: kill the sweep driver mid-sweep, ``--resume`` it, and lose or duplicate nothing (issue 5).

The driver runs exactly as a user runs it (``python sweeps/stage2.py --config CFG``) with the REAL
training loop on the tiny preset (a stand-in cannot be selected from the command line without a test hook
in production code): 4 trials of 1 worker x 4 steps on a synthetic 8/4-image dataset at 224 px, one at a
time. Once the Optuna journal shows a finished trial and the next one running, the test SIGKILLs the
driver's process group and every process the driver had started (its local Ray), then runs
``--resume`` as another machine that mounts the same storage would (another home folder, another temporary
folder for Ray's session: nothing but ``storage_path`` carries over) and checks Tune's results against the
Optuna study:

- the sweep ends with ``num_samples`` trials, none errored;
- each trial finished before the kill is in Tune's results once and in the study once, with the same
  state and values as before the kill;
- the study holds one trial per Tune trial (by the ``ray_trial_id`` user attribute): none duplicated,
  none lost, none left RUNNING; the baseline point was not enqueued a second time, and no configuration
  was sampled twice (a sampler restored from Tune's snapshot replays its random draws).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import psutil
import pytest
from optuna.trial import TrialState
from sweep_configs import write_tiny_sweep

from search_spaces import load_search_spec
from sweeps.config import load_sweep_config
from sweeps.optuna_search import RAY_TRIAL_ID_ATTR
from sweeps.results import load_sweep
from sweeps.study_storage import journal_storage

REPO = Path(__file__).resolve().parents[1]
NUM_SAMPLES = 4


def write_config(tmp_path: Path) -> Path:
    return write_tiny_sweep(tmp_path / "resume.yaml", name="resume-test", root=tmp_path, num_samples=NUM_SAMPLES,
                            trial={"max_steps": 4, "batch_size": 1, "freeze_text_encoder": True},
                            failure={"max_failures": 1})


def driver_env(**machine: str) -> dict[str, str]:
    """The driver's environment: a local Ray of its own; ``machine``: HOME, TMPDIR of another machine."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(TORCHDYNAMO_DISABLE="1", PYTHONUNBUFFERED="1", WANDB_MODE="disabled", **machine)
    return env


def snapshot(cfg) -> dict[int, optuna.trial.FrozenTrial]:
    """The study's trials by number, or {} while the journal does not hold the study yet."""
    if not Path(cfg.study_storage).exists():
        return {}
    try:
        study = optuna.load_study(study_name=cfg.study_name, storage=journal_storage(cfg.study_storage))
    except KeyError:  # the study is not created yet
        return {}
    return {t.number: t for t in study.get_trials(deepcopy=False)}


def kill_driver_and_its_ray(driver: subprocess.Popen) -> None:
    """SIGKILL the driver's process group, then every process it had started that is still alive.

    Ray's worker processes start sessions of their own (another process group), so killing the group
    alone leaves some behind (two Ray helper processes were left orphaned when this was tried). Only the
    driver's descendants are touched: other Ray clusters on this machine are left alone.
    """
    descendants = psutil.Process(driver.pid).children(recursive=True)
    os.killpg(driver.pid, signal.SIGKILL)  # start_new_session=True: the group id is the driver's pid
    driver.wait(timeout=30)
    for proc in descendants:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(descendants, timeout=30)
    assert not alive, f"processes of the killed driver's Ray still alive: {alive}"


def tune_trials(experiment_dir: str) -> dict:
    """Tune's trials of the experiment (read from its saved state, no Ray needed), by trial id."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(experiment_dir)
    ids = [t.trial_id for t in analysis.trials]
    assert len(ids) == len(set(ids)), f"a Tune trial appears twice: {ids}"
    return {t.trial_id: t for t in analysis.trials}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_killed_sweep_resumes_keeping_every_finished_trial_once(tmp_path):
    config_file = write_config(tmp_path)
    cfg = load_sweep_config(config_file)
    baseline = load_search_spec(cfg.search_space).points_to_evaluate[0]
    command = [sys.executable, "sweeps/stage2.py", "--config", str(config_file)]
    start = time.monotonic()

    # 1. Start the sweep; wait for a finished trial and the next one running; kill the driver and its Ray.
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen(command, cwd=REPO, env=driver_env(), stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 420
        while True:
            trials = snapshot(cfg)
            finished = [t for t in trials.values() if t.state.is_finished()]
            running = [t for t in trials.values() if t.state == TrialState.RUNNING]
            if finished and running:
                break
            assert driver.poll() is None, f"the driver exited early:\n{(tmp_path / 'driver.log').read_text()}"
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.5)
    finally:
        if driver.poll() is None:
            kill_driver_and_its_ray(driver)
        log.close()
    before = {t.number: t for t in finished}
    print(f"killed after {time.monotonic() - start:.0f} s with "
          f"{[(t.number, t.state.name, t.user_attrs.get(RAY_TRIAL_ID_ATTR)) for t in trials.values()]}")

    # 2. Resume to the end, as another machine: its own home and temporary folders (Ray's sessions live in
    # TMPDIR/ray: a short path, for Ray's socket names).
    (tmp_path / "machine2").mkdir()
    machine2_tmp = tempfile.mkdtemp(prefix="m2-", dir="/tmp" if os.name == "posix" else None)
    try:
        resumed = subprocess.run([*command, "--resume"], cwd=REPO, capture_output=True, text=True, timeout=600,
                                 env=driver_env(HOME=str(tmp_path / "machine2"), TMPDIR=machine2_tmp))
    finally:
        shutil.rmtree(machine2_tmp, ignore_errors=True)
    (tmp_path / "resume.log").write_text(resumed.stdout + resumed.stderr)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-5000:]
    print(f"sweep with kill + resume took {time.monotonic() - start:.0f} s")

    # 2b. The resume said what it found: every trial the killed run had started, finished ones as kept.
    account = resumed.stdout[resumed.stdout.index("resume of "):].split("\n\n")[0]
    print(account)
    kept = next(line for line in account.splitlines() if line.startswith("  kept (finished)"))
    for old in before.values():  # finished in the study; Tune's snapshot may not have seen the last of them
        ray_id = old.user_attrs[RAY_TRIAL_ID_ATTR]
        assert ray_id in kept or ray_id in account, account
        if old.state == TrialState.COMPLETE:  # ran to the end: kept, or reported again, never trained again
            assert ray_id in kept or f"{ray_id} (it had finished" in account, account
    for t in trials.values():
        assert t.user_attrs.get(RAY_TRIAL_ID_ATTR, "(none)") in account or f"#{t.number}" in account, account
    # A continued trial's history keeps the step it continued from (its resume checkpoint is reported again),
    # once.
    histories = {t.trial_id: t.history for t in load_sweep(cfg.experiment_dir).trials}
    for ray_id, step in re.findall(r"(\w{8}) from step (\d+)", account):
        assert int(step) in histories[ray_id]["step"].tolist(), (ray_id, step, histories[ray_id]["step"].tolist())
    assert all(h["step"].is_unique for h in histories.values())

    # 3. Tune: num_samples trials, each once, none errored.
    tune = tune_trials(cfg.experiment_dir)
    assert len(tune) == NUM_SAMPLES, sorted(tune)
    assert all(t.status == "TERMINATED" for t in tune.values()), {i: t.status for i, t in tune.items()}

    # 4. Optuna: one finished trial per Tune trial; no duplicate, none lost, none left RUNNING.
    study = snapshot(cfg)
    ray_ids = [t.user_attrs.get(RAY_TRIAL_ID_ATTR) for t in study.values()]
    assert len(ray_ids) == len(set(ray_ids)), f"an Optuna trial is duplicated: {ray_ids}"
    assert set(ray_ids) == set(tune), f"study {sorted(ray_ids)} != Tune {sorted(tune)}"
    assert all(t.state.is_finished() for t in study.values()), {t.number: t.state.name for t in study.values()}
    assert sum(t.params == baseline for t in study.values()) == 1, "the baseline point was enqueued again"
    params = [tuple(sorted(t.params.items())) for t in study.values()]
    assert len(params) == len(set(params)), f"a configuration was sampled twice: {params}"

    # 5. Every trial finished before the kill: unchanged in the study, once in Tune with the same values.
    for number, old in before.items():
        new = study[number]
        assert (new.state, new.values, new.params) == (old.state, old.values, old.params)
        result = tune[old.user_attrs[RAY_TRIAL_ID_ATTR]].last_result
        if old.state == TrialState.COMPLETE:
            assert [result["val_dice"], result["val_ap75"]] == pytest.approx(old.values)
            assert result["step"] == cfg.trial.max_steps
