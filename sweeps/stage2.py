"""Stage 2 sweep driver: Ray Tune + Optuna over SAM3 fine-tuning, one Ray Train run per trial.

    python sweeps/stage2.py --config sweeps/configs/local.yaml [--resume] [--dry-run]
    python -m sweeps.stage2 --config ...
    RAY_AUTH_MODE=token ray job submit --working-dir . -- python sweeps/stage2.py --config ...

(The jobs CLI sends Ray's auth token, on by default for local clusters since Ray 2.59, only with
``RAY_AUTH_MODE=token``.) Each Tune trial is a function that builds and fits a ``TorchTrainer`` (Ray
Train V2); ``TuneReportCallback`` forwards rank 0's reports to Tune. Optuna samples (val_dice, val_ap75)
jointly; ASHA stops trials on val_dice with the reported ``step`` as its clock. This module only composes
Ray objects: the training itself is ``trainables.train_loop.train_loop_per_worker``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script path: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402

import optuna  # noqa: E402

from common.errors import InputError, run_cli  # noqa: E402
from common.outputs import check_apart  # noqa: E402
from common.paths import is_uri  # noqa: E402
from search_spaces import SearchSpec, load_search_spec  # noqa: E402
from sweeps import console, optimizer_state, ray_compat, trial_retries, wandb_summary  # noqa: E402
from sweeps.config import (  # noqa: E402
    METRIC,
    SECOND_OBJECTIVE,
    TIME_ATTR,
    SweepConfig,
    load_sweep_config,
)
from sweeps.optuna_search import ResumableOptunaSearch  # noqa: E402
from sweeps.results import ParetoRow, SweepResults, load_sweep  # noqa: E402
from sweeps.storage_check import check_cluster_storage  # noqa: E402
from sweeps.study_storage import open_storage, shown  # noqa: E402

TrainLoop = Callable[[dict], None]


@dataclass(frozen=True)
class SweepOutcome:
    """A finished driver run: the sweep as :mod:`sweeps.results` reads it, where its study is, and its errors."""

    sweep: SweepResults
    study_storage: str
    study_name: str
    num_trials: int
    errors: dict[str, str]  # trial id -> its error, for trials that failed (not diverged, not stopped)

    @property
    def experiment_dir(self) -> str:
        return str(self.sweep.experiment_dir)

    @property
    def pareto_front(self) -> list[ParetoRow]:
        return self.sweep.pareto


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: validate, optionally generate data, run (or resume) the sweep, print results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a sweep YAML (sweeps/configs/*.yaml)")
    parser.add_argument("--resume", action="store_true", help="resume the interrupted sweep of this config")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the plan; start nothing")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="Ray's own console (Tune's tables, every worker's output) instead of one line per "
                             "validation and per trial end with the rest in the sweep's log files")
    args = parser.parse_args(argv)
    cfg = load_sweep_config(args.config)
    spec = load_search_spec(cfg.search_space)
    check_inputs(cfg, resume=args.resume, source=args.config)
    quiet = not args.verbose
    logs = console.log_folder(cfg.experiment_dir, cfg.name, cfg.study_storage)
    print(describe_plan(cfg, spec, resume=args.resume, logs=logs if quiet else None), flush=True)
    if args.resume:
        from sweeps.resume_account import describe_resume

        print(describe_resume(cfg), flush=True)
    if args.dry_run:
        return 0
    import ray

    if quiet:
        os.environ.setdefault("WANDB_SILENT", "true")  # the W&B summary run's own chatter: into W&B's debug.log
        console.reset_console()
    with console.driver_logs_to(logs) if quiet else contextlib.nullcontext():
        with console.printed_to_log(logging.getLogger(__name__)) if quiet else contextlib.nullcontext():
            prepare_dataset(cfg)
        ray_compat.init_ray(cfg.ray.address, cfg.ray.dashboard_host, ray_env(cfg))
        with console.workers_log_to(logs) if quiet else contextlib.nullcontext():
            try:
                outcome = run_sweep(cfg, spec, resume=args.resume, quiet=quiet)
                wandb_summary.log_sweep_summary(cfg, outcome.sweep)
            finally:
                ray.shutdown()
    print(format_outcome(outcome))
    if outcome.errors and len(outcome.errors) == outcome.num_trials:
        print(f"error: every trial failed ({outcome.num_trials}); see the errors above", file=sys.stderr)
        return 1
    return 0


def ray_env(cfg: SweepConfig) -> dict[str, str]:
    """Environment variables for every Ray process of this sweep."""
    env = ray_compat.worker_env_vars(cfg.ray.health_check_interval_s)
    env["WANDB_MODE"] = cfg.wandb.mode
    return env


def check_inputs(cfg: SweepConfig, *, resume: bool, source: str = "the sweep config") -> None:
    """Refuse missing data/checkpoint files, a fresh start over an existing sweep and what this machine cannot
    run (:mod:`sweeps.preflight`), listing every problem; ``source`` (the config file) heads the message."""
    problems = []
    synthetic = cfg.dataset is not None and cfg.dataset.synthetic is not None
    for name in ("train_json", "val_json", "images_dir", "checkpoint"):
        path = getattr(cfg.trial, name)
        if path and not is_uri(path) and not Path(path).exists() and not (synthetic and name != "checkpoint"):
            problems.append(f"trial.{name}: {path} does not exist")
    local = not is_uri(cfg.storage_path)
    if local and not resume and Path(cfg.experiment_dir).exists() and not only_logs(Path(cfg.experiment_dir)):
        problems.append(f"{cfg.experiment_dir} exists: pass --resume to continue it, or change 'name' "
                        "(a new run would reuse its Optuna study and enqueue points_to_evaluate again)")
    if local and resume and not Path(cfg.experiment_dir).exists():
        problems.append(f"--resume: {cfg.experiment_dir} does not exist")
    elif local and resume and not has_tune_state(Path(cfg.experiment_dir)):
        anew = ("run without --resume" if only_logs(Path(cfg.experiment_dir))
                else "start it anew under another 'name'")
        problems.append(f"--resume: {cfg.experiment_dir} holds no Tune experiment state (experiment_state-*.json): "
                        f"nothing to resume; {anew}")
    if not is_uri(cfg.study_storage) and Path(cfg.study_storage).is_dir():
        problems.append(f"searcher.storage: {cfg.study_storage} is a folder; name the journal file")
    from sweeps import preflight  # storage writable, GPUs present, checkpoint and COCO files loadable

    problems += preflight.problems(cfg)
    try:
        check_apart({"storage_path/name": cfg.experiment_dir if local else None,
                     "searcher.storage": None if is_uri(cfg.study_storage) else cfg.study_storage},
                    {f"trial.{name}": getattr(cfg.trial, name) or None
                     for name in ("train_json", "val_json", "images_dir", "checkpoint")}
                    | {"search_space": cfg.search_space, "the config": source if Path(source).is_file() else None})
    except InputError as err:
        problems += err.problems
    if problems:
        raise InputError(f"{source}: cannot start the sweep", problems)


def has_tune_state(experiment_dir: Path) -> bool:
    """Whether ``experiment_dir`` holds a Tune experiment state, that is, something ``--resume`` can continue."""
    return any(experiment_dir.glob("experiment_state-*.json"))


def only_logs(experiment_dir: Path) -> bool:
    """Whether ``experiment_dir`` holds nothing but the console's log folder (a run that stopped before Tune
    wrote anything: starting anew is safe, and its logs are appended to)."""
    return {p.name for p in experiment_dir.iterdir()} <= {console.LOG_FOLDER}


def prepare_dataset(cfg: SweepConfig) -> None:
    """Generate the synthetic dataset of ``cfg.dataset`` if it is configured and absent."""
    if cfg.dataset is None or cfg.dataset.synthetic is None or cfg.dataset.paths.train_json.exists():
        return
    from data_prep.synthetic import generate_dataset

    s = cfg.dataset.synthetic
    generate_dataset(cfg.dataset.paths.root, n_train=s.train, n_val=s.val, size=s.size, seed=s.seed, n_test=s.test,
                     overwrite=True)  # replaces only an incomplete dataset this project wrote


def describe_plan(cfg: SweepConfig, spec: SearchSpec, *, resume: bool, logs: Path | None = None) -> str:
    """A human-readable plan of the sweep (what ``--dry-run`` prints); ``logs``: the quiet console's log folder."""
    from sweeps import preflight

    t = cfg.trial
    per_worker = f"{'1 GPU' if t.use_gpu else f'{t.cpu_threads_per_worker} CPU'}"
    concurrency = (f"at most {cfg.max_concurrent_trials} at once" if cfg.max_concurrent_trials
                   else "concurrency = the GPUs (or CPUs) the cluster can grow to / what one trial needs")
    data = (f"{cfg.dataset.dir} (generated if absent)" if cfg.dataset and cfg.dataset.synthetic
            else t.train_json or "(none)")
    startup = (f" (random draws until {cfg.searcher.startup_trials} trials have finished)"
               if cfg.searcher.sampler == "tpe" else "")
    lines = [
        f"sweep {cfg.name} ({'resume' if resume else 'new'})",
        f"  experiment dir : {cfg.experiment_dir}",
        f"  optuna         : study {cfg.study_name}, {cfg.searcher.sampler} sampler{startup}, "
        f"seed {cfg.searcher.seed}, study in {shown(cfg.study_storage)}",
        f"  objectives     : {METRIC} max, {SECOND_OBJECTIVE} max",
        f"  trials         : {cfg.num_samples}, {concurrency}",
        f"  per trial      : {t.num_workers} workers x {per_worker}, backend {t.backend}, {t.precision}, "
        f"preset {t.preset}, {t.resolution} px, {t.max_steps} steps, validation every {t.val_every}",
        f"  ASHA           : {cfg.scheduler.metric} max on '{TIME_ATTR}', grace {cfg.scheduler.grace_period}, "
        f"reduction {cfg.scheduler.reduction_factor}, max_t {t.max_steps}",
        f"  failures       : {cfg.failure.max_failures} restarts per trial; keep {cfg.checkpoint.num_to_keep} "
        f"checkpoints by {METRIC}",
        f"  disk           : checkpoints up to {preflight.disk_budget(cfg).describe(cfg)}",
        f"  data           : {data}",
        f"  search space   : {spec.source}",
        *[f"    {name}: {type(domain.get_sampler()).__name__.lstrip('_')} {domain.domain_str}"
          for name, domain in spec.params.items()],
        f"  first points   : {spec.points_to_evaluate or 'none'}",
    ]
    if logs is not None:
        lines.append(f"  logs           : {logs / console.DRIVER_LOG}, {logs / console.WORKERS_LOG} (-v: all on the "
                     "console)")
    return "\n".join(lines)


def default_train_loop() -> TrainLoop:
    """The per-worker training loop (imported late: it pulls in torch and sam3)."""
    from trainables.train_loop import train_loop_per_worker

    return train_loop_per_worker


def make_trial_function(cfg: SweepConfig, train_loop: TrainLoop) -> Callable[[dict], None]:
    """The Tune function trainable: one TorchTrainer run of ``train_loop`` per sampled ``config``."""
    from ray import tune
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from sweeps.resume_account import checkpoint_step

    base = cfg.trial
    train_storage = cfg.train_runs
    checkpoints = CheckpointConfig(num_to_keep=cfg.checkpoint.num_to_keep, checkpoint_score_attribute=METRIC,
                                   checkpoint_score_order="max")
    failures = FailureConfig(max_failures=cfg.failure.max_failures)
    resources = {"CPU": base.cpu_threads_per_worker, **({"GPU": 1} if base.use_gpu else {})}
    session = trial_retries.new_session()

    def sam3_trial(config: dict) -> None:
        trial = base.replace(**config)
        run_name = optimizer_state.train_run_name(cfg.name, tune.get_context().get_trial_id())
        gave_up = trial_retries.GiveUpMarker(train_storage, run_name, session)
        gave_up.raise_if_recorded()  # Tune re-running a trial whose Train run used up its restarts
        trainer = TorchTrainer(
            train_loop,
            train_loop_config={"trial": trial.to_dict(),
                               "label": tune.get_context().get_trial_id(),  # the console's name for it
                               # a Train run with checkpoints already: the driver is running it again
                               "report_resume": checkpoint_step(train_storage, run_name) is not None},
            scaling_config=ScalingConfig(num_workers=trial.num_workers, use_gpu=trial.use_gpu,
                                         resources_per_worker=resources),
            torch_config=TorchConfig(backend=trial.backend),
            # Named after the Tune trial: a restored driver resumes this Train run from its checkpoint.
            run_config=RunConfig(name=run_name, storage_path=train_storage, callbacks=[TuneReportCallback()],
                                 checkpoint_config=checkpoints, failure_config=failures),
        )
        try:
            trainer.fit()
        except TrainingFailedError as error:
            gave_up.record(error)
            raise
        ray_compat.wait_for_tune_report_queue_drained()

    return tune.with_resources(sam3_trial, ray_compat.TRIAL_DRIVER_RESOURCES)


def make_searcher(cfg: SweepConfig, spec: SearchSpec) -> ResumableOptunaSearch:
    """Multi-objective Optuna search whose study lives in a JournalStorage file (resumes by study name)."""
    seed, kind = cfg.searcher.seed, cfg.searcher.sampler
    sampler, random_draws = {  # random_draws: how many trials the sampler draws at random (optuna_search.draw_kind)
        "tpe": lambda: (optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.searcher.startup_trials),
                        cfg.searcher.startup_trials),
        "nsga2": lambda: (optuna.samplers.NSGAIISampler(seed=seed), None),  # its generation 0 is not told apart
        "random": lambda: (optuna.samplers.RandomSampler(seed=seed), math.inf),
    }[kind]()
    return ResumableOptunaSearch(
        max_steps=cfg.trial.max_steps, step_key=TIME_ATTR, random_draws=random_draws,
        metric=[METRIC, SECOND_OBJECTIVE], mode=["max", "max"],
        points_to_evaluate=spec.points_to_evaluate or None,
        sampler=sampler,
        study_name=cfg.study_name, storage=open_storage(cfg.study_storage, create=True),
    )


def max_concurrent_trials(cfg: SweepConfig) -> int:
    """How many trials run at once on the connected cluster (:mod:`sweeps.cluster_size`), printed with where
    the figure comes from."""
    import ray

    from sweeps.cluster_size import sweep_concurrency

    gcs_address = ray.get_runtime_context().gcs_address if ray.is_initialized() else None
    concurrency = sweep_concurrency(cfg, gcs_address, say=lambda text: print(text, flush=True))
    print(f"concurrency: {concurrency.trials} trial(s) at once ({concurrency.source})", flush=True)
    return concurrency.trials


def make_scheduler(cfg: SweepConfig):
    """ASHA (max) on ``cfg.scheduler.metric`` with the reported step as its clock and ``max_steps`` as ``max_t``."""
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr=TIME_ATTR, metric=cfg.scheduler.metric, mode="max", max_t=cfg.trial.max_steps,
                         grace_period=cfg.scheduler.grace_period, reduction_factor=cfg.scheduler.reduction_factor)


def make_tune_config(cfg: SweepConfig, spec: SearchSpec, concurrency: int | None = None):
    """The sweep's ``tune.TuneConfig``: Optuna search, ASHA, ``num_samples`` and ``concurrency`` (default
    :func:`max_concurrent_trials`: Ray must be up)."""
    from ray import tune

    return tune.TuneConfig(search_alg=make_searcher(cfg, spec), scheduler=make_scheduler(cfg),
                           num_samples=cfg.num_samples, max_concurrent_trials=concurrency or max_concurrent_trials(cfg),
                           trial_dirname_creator=trial_dirname)


def trial_dirname(trial) -> str:
    """A trial's folder name: its id alone. Tune's default adds every sampled value (up to 130 characters plus
    a date), which puts a trial's W&B files past Windows' 260-character path limit (Ray #46607)."""
    return trial.trial_id


def run_sweep(cfg: SweepConfig, spec: SearchSpec, *, resume: bool = False,
              train_loop: TrainLoop | None = None, quiet: bool = False) -> SweepOutcome:
    """Run (or resume) the sweep on the already-initialised Ray; return it as :mod:`sweeps.results` reads it.
    ``quiet``: no Tune tables; a line per validation and per trial end instead (:mod:`sweeps.console`)."""
    from ray import tune

    verbose = 0 if quiet else 1  # Tune's silent / default
    # How many trials at once (on-premises: once the machines have joined), then whether every machine up
    # shares the storage: both before the study or Tune writes anything into the experiment folder.
    concurrency = None if resume else max_concurrent_trials(cfg)
    check_cluster_storage(cfg.experiment_dir, say=lambda text: print(text, flush=True))
    trainable = make_trial_function(cfg, train_loop or default_train_loop())
    if resume:
        tuner = tune.Tuner.restore(cfg.experiment_dir, trainable, resume_errored=True)
        run_config = ray_compat.restored_run_config(tuner)
        run_config.verbose = verbose  # the pickled one is the first run's (perhaps with -v)
        if quiet and not any(isinstance(c, console.SweepProgress) for c in run_config.callbacks or []):
            run_config.callbacks = [*(run_config.callbacks or []), console.SweepProgress(cfg.trial.max_steps)]
    else:
        callbacks = [*wandb_summary.trial_callbacks(cfg), optimizer_state.DropStateOfEndedTrials(cfg),
                     *([console.SweepProgress(cfg.trial.max_steps)] if quiet else [])]
        tuner = tune.Tuner(
            trainable,
            param_space=spec.params,
            tune_config=make_tune_config(cfg, spec, concurrency),
            # Tune re-runs a trial whose own actor died (its node lost): the re-run's TorchTrainer has the same
            # name, so the Train run resumes from its last checkpoint (Train's FailureConfig covers its workers).
            run_config=tune.RunConfig(name=cfg.name, storage_path=cfg.storage_path, callbacks=callbacks,
                                      failure_config=tune.FailureConfig(max_failures=cfg.failure.max_failures),
                                      verbose=verbose),
        )
    with ray_compat.quiet_tune_output() if quiet else contextlib.nullcontext():
        results = tuner.fit()
    sweep = load_sweep(cfg.experiment_dir, journal=cfg.study_storage, study_name=cfg.study_name)
    return SweepOutcome(sweep=sweep, study_storage=cfg.study_storage, study_name=cfg.study_name,
                        num_trials=len(results), errors=trial_errors(results))


def trial_errors(results) -> dict[str, str]:
    """The last line of each errored trial's error, by trial id."""
    errors = {}
    for result in results:
        if result.error is not None:
            trial_id = result.metrics.get("trial_id") or Path(result.path).name
            errors[trial_id] = console.error_summary(result.error)
    return errors


def format_outcome(outcome: SweepOutcome) -> str:
    """The Pareto front as a table, then where every result lives."""
    lines = [f"Pareto front ({len(outcome.pareto_front)} of {outcome.num_trials} trials; {METRIC}, "
             f"{SECOND_OBJECTIVE} both maximised):"]
    for r in outcome.pareto_front:
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.params.items())
        lines.append(f"  {r.trial_id}  {METRIC}={r.val_dice:.4f}  {SECOND_OBJECTIVE}={r.val_ap75:.4f}  {params}")
        lines.append(f"      best checkpoint: {r.checkpoint_path}")
    best = outcome.sweep.best_checkpoint()
    if best is not None:
        lines.append(f"best checkpoint (what `python -m sweeps.export` takes): {best.trial_id} step {best.step}  "
                     f"{METRIC}={best.val_dice:.4f}  {SECOND_OBJECTIVE}={best.val_ap75:.4f}")
        lines.append(f"      {best.checkpoint_path}")
    if outcome.errors:
        lines.append(f"failed trials ({len(outcome.errors)}):")
        lines += [f"  {trial_id}: {error}" for trial_id, error in outcome.errors.items()]
    lines += [f"experiment dir : {outcome.experiment_dir}",
              f"optuna study   : {outcome.study_name} in {shown(outcome.study_storage)}"]
    return "\n".join(lines)


if __name__ == "__main__":
    from sweeps import (
        stage2,  # the importable module, so Ray pickles its functions by reference
    )

    sys.exit(run_cli(stage2.main))
