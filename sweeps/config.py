"""The typed configuration of one sweep, loaded from YAML (``sweeps/configs/*.yaml``).

Schema (every section but ``name``, ``storage_path``, ``search_space`` and ``trial`` is optional)::

    name: stage2-cass                 # the Tune experiment name; also names the Optuna study by default
    storage_path: /data/sweeps        # local path or a pyarrow URI (s3://bucket/prefix, gs://...)
    search_space: search_spaces/stage2.yaml
    num_samples: 34
    max_concurrent_trials: null       # null: GPUs (or CPUs) the cluster can grow to / what one trial needs
    trial: {preset: full, resolution: 672, max_steps: 2000, num_workers: 2, use_gpu: true, ...}
    dataset:                          # optional: fills trial.train_json / val_json / images_dir
      dir: data/cass                  # <dir>/images, <dir>/annotations/{train,val}.json
      synthetic: {train: 8, val: 4, size: 224, seed: 0}   # generate <dir> if it is absent
    scheduler: {grace_period: 750, reduction_factor: 4}  # ASHA on val_dice (max), time = "step"
    searcher: {sampler: tpe, seed: 0, startup_trials: 10, storage: null, study_name: null}
    failure: {max_failures: 2}
    checkpoint: {num_to_keep: 2}      # kept by val_dice (max)
    wandb: {mode: disabled, project: sam3-cass}
    ray: {address: null, dashboard_host: 127.0.0.1, health_check_interval_s: 0.5}

Relative local paths are resolved against the current directory when the file is loaded (run from the
repository root, as ``make`` and ``ray job submit --working-dir .`` do). Unknown keys are refused and
every problem is listed in one :class:`~common.errors.InputError`. Types and numbers follow
:mod:`common.typed_yaml`, the rule every config of the project shares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any, Literal

from common.errors import InputError
from common.paths import is_uri, join
from common.typed_yaml import excerpt, load_yaml, parse_fields
from data_prep.layout import DatasetPaths
from trainables.config import MAX_SEED, TrialConfig

#: The metric ASHA stops on and checkpoints are ranked by; the second objective Optuna sees.
METRIC = "val_dice"
#: validation metrics the trial loop reports that ASHA may stop on (all "higher is better")
ASHA_METRICS = frozenset({"val_dice", "val_dice_pooled", "val_ap", "val_ap50", "val_ap75", "val_presence_auroc"})
SECOND_OBJECTIVE = "val_ap75"
#: The Optuna journal's file name inside the experiment folder (unless ``searcher.storage`` names another file
#: or a database).
JOURNAL_FILE = "optuna_journal.log"
#: The folder inside the experiment folder that holds each trial's Ray Train run and its checkpoints.
TRAIN_RUNS = "train_runs"
#: The step counter ``train_loop_per_worker`` reports; ASHA's time attribute (survives driver restores).
TIME_ATTR = "step"


@dataclass
class SchedulerConfig:
    """ASHA (max) on ``metric`` with ``step`` as time; ``max_t`` is the trial's ``max_steps``.

    ``metric`` is ``val_dice`` unless a sweep has reason to stop on another reported validation metric
    (e.g. trials from random weights, whose thresholded Dice stays 0 for hundreds of steps, so ASHA could
    not rank them by it). Optuna's objectives stay (val_dice, val_ap75) whatever ASHA uses.
    """

    grace_period: int = 100  # steps a trial runs before ASHA may stop it
    reduction_factor: int = 3
    metric: str = "val_dice"


@dataclass
class SearcherConfig:
    """Optuna multi-objective search over (val_dice, val_ap75)."""

    sampler: Literal["tpe", "nsga2", "random"] = "tpe"
    seed: int | None = 0
    startup_trials: int = 10  # tpe: random draws until this many trials have finished (Optuna's n_startup_trials)
    storage: str | None = None  # a journal file or database URL; default <experiment dir>/JOURNAL_FILE
    study_name: str | None = None  # default: the sweep name (a study resumes by name)


@dataclass
class FailureConfig:
    """Ray Train restarts of a trial's workers from its last checkpoint."""

    max_failures: int = 1


@dataclass
class CheckpointConfig:
    """How many of a trial's checkpoints to keep, ranked by ``val_dice`` (max)."""

    num_to_keep: int = 2


@dataclass
class SyntheticConfig:
    """Arguments of ``data_prep.synthetic.generate_dataset`` (used when ``dataset.dir`` is absent)."""

    train: int = 8
    val: int = 4
    test: int = 0  # held-out images (annotations/test.json, for python -m sweeps.evaluate); 0: none
    size: int = 224
    seed: int = 0


@dataclass
class DatasetConfig:
    """A COCO CASS dataset folder (``data_prep.layout``), optionally generated synthetically."""

    dir: str
    synthetic: SyntheticConfig | None = None

    @property
    def paths(self) -> DatasetPaths:
        return DatasetPaths(Path(self.dir))


@dataclass
class WandbConfig:
    """Weights & Biases logging of every trial (offline runs are grouped by the sweep name)."""

    mode: Literal["offline", "online", "disabled"] = "disabled"
    project: str = "sam3-cass"


@dataclass
class RayConfig:
    """How the driver joins Ray: ``address: null`` starts a local Ray, ``auto`` joins a running cluster."""

    address: str | None = None
    dashboard_host: str = "127.0.0.1"
    health_check_interval_s: float = 0.5


@dataclass
class SweepConfig:
    """One sweep: what to search, how trials are run, scheduled, stored and logged."""

    name: str
    storage_path: str
    search_space: str
    trial: TrialConfig
    num_samples: int = 8
    max_concurrent_trials: int | None = None
    dataset: DatasetConfig | None = None
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    searcher: SearcherConfig = field(default_factory=SearcherConfig)
    failure: FailureConfig = field(default_factory=FailureConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    @property
    def experiment_dir(self) -> str:
        """Where Tune writes this sweep (``<storage_path>/<name>``, a path or URI)."""
        return join(self.storage_path, self.name)

    @property
    def study_storage(self) -> str:
        """Where the Optuna study lives (:mod:`sweeps.study_storage`): ``searcher.storage`` (a journal file on a
        local or shared folder, or a database URL), else the journal in the experiment folder."""
        from sweeps.study_storage import is_database_url

        if is_uri(self.storage_path) and not self.searcher.storage:
            raise InputError(f"searcher.storage: set a journal file on a local or shared folder when storage_path is "
                             f"a URI ({self.storage_path}): a journal cannot live on object storage")
        if is_uri(self.storage_path) and is_database_url(self.searcher.storage or ""):
            raise InputError("searcher.storage: with storage_path on object storage, name a journal file on this "
                             "machine's disk: its folder also holds the sweep's logs and W&B runs, which a "
                             "database URL leaves without a local home")
        return self.searcher.storage or default_journal(self.experiment_dir)

    @property
    def study_name(self) -> str:
        """The Optuna study (``searcher.study_name``, default the sweep's name: a study resumes by name)."""
        return self.searcher.study_name or self.name

    @property
    def train_runs(self) -> str:
        """Where each trial's Ray Train run (and its checkpoints) is written: ``<experiment dir>/train_runs``."""
        return join(self.experiment_dir, TRAIN_RUNS)


def default_journal(experiment_dir: str) -> str:
    """The Optuna journal a sweep writes unless ``searcher.storage`` says otherwise."""
    return str(Path(experiment_dir) / JOURNAL_FILE)


def load_sweep_config(path: str | Path) -> SweepConfig:
    """Read, type-check and validate a sweep YAML file; raise :class:`InputError` listing every problem."""
    raw = load_yaml(path, "sweep config")
    return parse_sweep_config(raw, source=str(path))


def parse_sweep_config(raw: Any, *, source: str) -> SweepConfig:
    """Build a :class:`SweepConfig` from a parsed mapping; ``source`` names it in error messages."""
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise InputError(f"{source}: a sweep config must be a mapping, got {type(raw).__name__}")
    values = parse_fields(SweepConfig, raw, "", problems, skip={"trial"})
    trial_raw = raw.get("trial", {})
    if not isinstance(trial_raw, dict):
        problems.append(f"trial: expected a mapping of TrialConfig fields, got {excerpt(trial_raw)}")
        trial_raw = {}
    dataset = values.get("dataset")
    if dataset is not None:
        clash = sorted({"train_json", "val_json", "images_dir"} & set(trial_raw))
        if clash:
            problems.append(f"trial: {clash} come from dataset.dir; set them in one place only")
        paths = DatasetPaths(Path(dataset.dir).absolute())
        dataset.dir = str(paths.root)
        trial_raw = {**trial_raw, **paths.trial_fields()}
    try:
        values["trial"] = TrialConfig.from_dict(trial_raw, source="trial", prefix="trial.")
    except InputError as err:
        problems += err.problems
    if problems:
        raise InputError(f"{source}: invalid sweep config", problems)
    cfg = SweepConfig(**values)
    if not is_uri(cfg.storage_path):
        cfg.storage_path = str(Path(cfg.storage_path).absolute())
    # Ray Train's workers run in their trial's folder: the files they read get absolute paths here
    relative = {name: str(Path(value).absolute()) for name in ("checkpoint", "train_json", "val_json", "images_dir")
                if (value := getattr(cfg.trial, name)) and not is_uri(value) and not PureWindowsPath(value).drive
                and not Path(value).is_absolute()}
    if relative:
        cfg.trial = cfg.trial.replace(**relative)
    _check_ranges(cfg, problems)
    if problems:
        raise InputError(f"{source}: invalid sweep config", problems)
    return cfg


def _check_ranges(cfg: SweepConfig, problems: list[str]) -> None:
    synthetic = cfg.dataset is not None and cfg.dataset.synthetic is not None
    positive = {"num_samples": cfg.num_samples, "scheduler.grace_period": cfg.scheduler.grace_period,
                "checkpoint.num_to_keep": cfg.checkpoint.num_to_keep}
    if cfg.max_concurrent_trials is not None:
        positive["max_concurrent_trials"] = cfg.max_concurrent_trials
    problems += [f"{k}: {v!r} must be >= 1" for k, v in positive.items() if v < 1]
    if cfg.scheduler.reduction_factor < 2:
        problems.append(f"scheduler.reduction_factor: {cfg.scheduler.reduction_factor!r} must be >= 2")
    if cfg.scheduler.grace_period > cfg.trial.max_steps:
        problems.append(f"scheduler.grace_period: {cfg.scheduler.grace_period} exceeds trial.max_steps "
                        f"{cfg.trial.max_steps} (ASHA could never stop a trial)")
    if cfg.scheduler.metric not in ASHA_METRICS:
        problems.append(f"scheduler.metric: {excerpt(cfg.scheduler.metric)} is not one of {sorted(ASHA_METRICS)}")
    if cfg.trial.categories != "cass":
        problems.append(f"trial.categories: {excerpt(cfg.trial.categories)} is the demo's Phase 1 task "
                        "(sweeps/demo_phase1.py trains it in one process); a Stage 2 sweep trains, scores and "
                        "exports the 14 CASS categories: remove the setting or set it to cass")
    if cfg.searcher.startup_trials < 0:
        problems.append(f"searcher.startup_trials: {cfg.searcher.startup_trials!r} must be >= 0")
    if cfg.failure.max_failures < -1:
        problems.append(f"failure.max_failures: {cfg.failure.max_failures!r} must be >= -1 (-1: retry forever)")
    for where, seed in (("searcher.seed", cfg.searcher.seed),
                        ("dataset.synthetic.seed", cfg.dataset.synthetic.seed if synthetic else None)):
        if seed is not None and not 0 <= seed <= MAX_SEED:
            problems.append(f"{where}: {seed!r} must lie in [0, {MAX_SEED}]")
    if synthetic and (cfg.dataset.synthetic.train < 1 or cfg.dataset.synthetic.val < 1
                      or cfg.dataset.synthetic.size < 64):
        s = cfg.dataset.synthetic
        problems.append(f"dataset.synthetic: needs train >= 1, val >= 1, size >= 64; got {s.train}, {s.val}, {s.size}")
    if not cfg.ray.health_check_interval_s > 0:
        problems.append(f"ray.health_check_interval_s: {cfg.ray.health_check_interval_s!r} must be > 0")
    if cfg.ray.dashboard_host not in ("127.0.0.1", "localhost"):
        problems.append(f"ray.dashboard_host: {excerpt(cfg.ray.dashboard_host)}: bind the dashboard to 127.0.0.1 "
                        "and reach it through an SSH tunnel (it runs arbitrary jobs)")
    if cfg.name.strip() in ("", ".", "..") or any(c in cfg.name for c in '/\\:'):
        problems.append(f"name: {excerpt(cfg.name)} must be a plain folder name (no '/', '\\', ':', not '.' or '..'): "
                        "the experiment folder is <storage_path>/<name>")
