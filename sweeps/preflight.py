"""Can this sweep run HERE? Checks of the machine and the input files, made by the driver before Ray starts.

:mod:`sweeps.config` checks that a sweep config is well formed; this module checks that it can run on this
machine with these files, so that a sweep that cannot work stops in seconds with exit 2 (raised by
``sweeps.stage2.check_inputs``, ``--dry-run`` included) instead of after Ray has started and every trial
has failed:

- storage: the experiment folder (``storage_path``/``name``) and a separate Optuna journal can be written,
  and the disk holds what the sweep's checkpoints can grow to (:func:`disk_budget`).
  A probe file is written, synced and removed in the nearest existing folder: permission bits prove
  nothing to root, so only a real write finds a read-only mount, a full disk or a path under a file.
  (A disk that fills up DURING the sweep is not foreseen here.)
- GPUs: a local Ray (``ray.address`` null, outside ``ray job submit``) asked for ``use_gpu`` needs
  ``num_workers`` CUDA devices on this machine; NCCL needs ``use_gpu``. A cluster's GPUs are not known
  before joining it (and may be autoscaled), so they are not checked.
- the starting checkpoint (``trial.checkpoint``) opens with ``weights_only`` (no pickled code runs),
  is complete, and has the native ``detector.`` keys; its shapes are checked by each trial against its
  model (building the full model here would cost minutes).
- the COCO files validate (:mod:`data_prep.validate`: JSON, records and image files).

Each problem is one line that names the config field; files the driver already reported missing are not
checked again.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from common.errors import InputError
from common.paths import is_uri, nearest_existing
from sweeps.config import SweepConfig

PROBE_BYTES = 1 << 20  # a write of this size must succeed where the sweep writes
MAX_LISTED = 20  # COCO errors listed here; `python -m data_prep.validate` lists them all


#: Windows' path limit (MAX_PATH) for programs, Ray among them, that do not opt into long paths.
WINDOWS_MAX_PATH = 260
#: Characters a sweep's deepest file adds below ``<storage_path>/<name>`` besides a second copy of the name:
#: ``train_runs/<name>-<trial id>/checkpoint_<date>/trainer_state.pt`` or a W&B offline run's logs
#: (``wandb/offline-run-<date>-<id>/logs/debug-internal.log``; 107 when runs lived in the trial folders), with a
#: margin.
#: tests/test_wandb_offline.py checks that this bounds the deepest path of a real sweep.
DEEPEST_BELOW_EXPERIMENT = 110


def problems(cfg: SweepConfig) -> list[str]:
    """Every reason this sweep cannot run here (empty when it can)."""
    return [*storage_problems(cfg), *disk_problems(cfg), *windows_path_problems(cfg), *gpu_problems(cfg),
            *checkpoint_problems(cfg), *dataset_problems(cfg)]


@dataclass(frozen=True)
class DiskBudget:
    """The most checkpoint bytes a sweep can hold at once, and how that figure is made."""

    models: int  # model files on disk at the peak
    model_bytes: int  # one trial checkpoint's model
    states: int  # trainer-state files on disk at the peak
    state_bytes: int  # one trial checkpoint's optimizer state
    export: int  # the exported model

    @property
    def total(self) -> int:
        return self.models * self.model_bytes + self.states * self.state_bytes + self.export

    def describe(self, cfg: SweepConfig) -> str:
        return (f"{self.total / 1e9:.1f} GB = {self.models} models x {self.model_bytes / 1e9:.2f} GB "
                f"({cfg.num_samples} trials x ({cfg.checkpoint.num_to_keep} kept checkpoints + the latest), + 1 "
                f"being written per running trial) + {self.states} optimizer states x {self.state_bytes / 1e9:.2f} GB (2 per "
                f"running trial: its newest checkpoint's and the one being written) + the export "
                f"{self.export / 1e9:.2f} GB")


def disk_budget(cfg: SweepConfig) -> DiskBudget:
    """Train keeps the ``checkpoint.num_to_keep`` best checkpoints of every trial, finished or stopped, and never
    deletes a trial's latest one (when it is not among the best, a trial keeps ``num_to_keep + 1``); it writes a
    new one before it deletes an old one; only a running trial's newest checkpoint keeps the optimizer state
    (:mod:`sweeps.optimizer_state`); a frozen text encoder stays in the starting checkpoint
    (:mod:`trainables.checkpoints.frozen`); the export writes one whole model."""
    from trainables.checkpoints.trial import estimated_bytes
    from trainables.model import PRESET_SIZES

    t = cfg.trial
    one = estimated_bytes(t.preset, freeze_text_encoder=t.freeze_text_encoder, starting_checkpoint=bool(t.checkpoint))
    running = min(cfg.num_samples, local_concurrency(cfg))
    return DiskBudget(models=cfg.num_samples * (cfg.checkpoint.num_to_keep + 1) + running, model_bytes=one.model,
                      states=2 * running, state_bytes=one.trainer_state, export=PRESET_SIZES[t.preset].native_bytes)


def trial_needs(cfg: SweepConfig) -> tuple[str, int]:
    """The resource a trial is sized by and how much of it one trial takes: its GPUs, else its CPUs."""
    t = cfg.trial
    return ("GPU", t.num_workers) if t.use_gpu else ("CPU", t.num_workers * t.cpu_threads_per_worker)


def trials_that_fit(cfg: SweepConfig, resources: Mapping[str, float]) -> int:
    """How many trials ``resources`` (``{"GPU": n, "CPU": m}``) run at once (at least 1)."""
    kind, per_trial = trial_needs(cfg)
    return max(1, int(resources.get(kind, 0)) // per_trial)


def local_concurrency(cfg: SweepConfig) -> int:
    """How many trials run at once: ``max_concurrent_trials``, else what this machine fits (a cluster's size is
    not known before joining it: then this machine's is the guess)."""
    if cfg.max_concurrent_trials:
        return cfg.max_concurrent_trials
    return trials_that_fit(cfg, {"GPU": cuda_device_count() if cfg.trial.use_gpu else 0,
                                 "CPU": os.cpu_count() or 1})


def disk_problems(cfg: SweepConfig) -> list[str]:
    """A local storage whose free space is smaller than the sweep's checkpoints can grow to."""
    if is_uri(cfg.storage_path):
        return []
    folder = nearest_existing(cfg.experiment_dir)
    if not folder.is_dir():
        return []  # reported by storage_problems
    budget = disk_budget(cfg)
    free = shutil.disk_usage(folder).free
    if budget.total <= free:
        return []
    freeze = ("" if cfg.trial.freeze_text_encoder else
              ", set trial.freeze_text_encoder: true (no optimizer state for the text encoder, and no copy of it in "
            "the checkpoints of a trial that starts from trial.checkpoint)")
    return [f"storage_path: the sweep's checkpoints can reach {budget.describe(cfg)}, but {folder} has "
            f"{free / 1e9:.1f} GB free; lower num_samples or checkpoint.num_to_keep{freeze}, or free space"]


def deepest_path_length(cfg: SweepConfig) -> int:
    """An upper bound on the length of the longest path the sweep writes (trial folders, Train runs, checkpoints,
    W&B runs)."""
    return len(cfg.experiment_dir) + len(cfg.name) + DEEPEST_BELOW_EXPERIMENT


def windows_path_problems(cfg: SweepConfig, *, windows: bool = os.name == "nt") -> list[str]:
    """On Windows, a storage path so long that the sweep's deepest files would pass the 260-character limit."""
    if not windows or is_uri(cfg.storage_path):
        return []
    deepest = deepest_path_length(cfg)
    if deepest < WINDOWS_MAX_PATH:
        return []
    return [f"storage_path: {cfg.storage_path} with name {cfg.name!r}: the sweep's deepest files would be about "
            f"{deepest} characters long, past Windows' limit of {WINDOWS_MAX_PATH} (Ray issue #46607); choose a "
            f"storage_path of at most {WINDOWS_MAX_PATH - 1 - deepest + len(cfg.storage_path)} characters "
            "(E:\\sweeps, say) or a shorter name"]


def storage_problems(cfg: SweepConfig) -> list[str]:
    """The local folders the sweep writes (experiment folder, Optuna journal) that cannot be written, and a
    study database that does not answer."""
    from sweeps.study_storage import check_database, is_database_url

    targets = [("storage_path", cfg.experiment_dir)]
    found = []
    if cfg.searcher.storage and is_database_url(cfg.searcher.storage):
        try:
            check_database(cfg.searcher.storage)
        except InputError as err:
            found.append(str(err))
    elif cfg.searcher.storage and not is_uri(cfg.searcher.storage):
        targets.append(("searcher.storage", str(Path(cfg.searcher.storage).parent)))
    for field, folder in targets:
        problem = None if is_uri(folder) else write_probe(Path(folder))
        if problem:
            found.append(f"{field}: {problem}")
    return found


def write_probe(folder: Path) -> str | None:
    """Why ``folder`` (existing or to be created) cannot be written, or None. Leaves nothing behind."""
    existing = nearest_existing(folder)
    if not existing.is_dir():
        return f"{folder} cannot be created: {existing} is not a folder"
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".sweep-write-probe-") as probe:
            probe.write(b"\0" * PROBE_BYTES)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        return (f"{folder} cannot be written: writing {PROBE_BYTES // 1024} KiB in {existing} failed "
                f"({err.strerror or err})")
    return None


def cuda_device_count() -> int:
    """CUDA devices this process sees (0 without CUDA)."""
    import torch

    return torch.cuda.device_count()


def gpu_problems(cfg: SweepConfig) -> list[str]:
    """Resources a trial would wait for forever: NCCL without GPUs; on a local Ray, more GPUs or CPUs per trial
    than this machine has (a cluster's size is not known before joining it, so it is not checked)."""
    t = cfg.trial
    found = []
    if t.backend == "nccl" and not t.use_gpu:
        found.append("trial.backend: 'nccl' runs on GPUs only but trial.use_gpu is false; use backend: gloo on CPU")
    local = cfg.ray.address is None and not os.environ.get("RAY_ADDRESS")
    if t.use_gpu and local:
        gpus = cuda_device_count()
        if gpus < t.num_workers:
            found.append(f"trial.use_gpu: a trial needs {t.num_workers} GPU worker(s) but this machine has {gpus} "
                         "GPU(s) and ray.address is null (a local Ray); set use_gpu: false, or join a GPU "
                         "cluster with ray.address")
    cpus = os.cpu_count() or 1
    if local and t.num_workers * t.cpu_threads_per_worker > cpus:
        found.append(f"trial.num_workers x trial.cpu_threads_per_worker: a trial needs {t.num_workers} x "
                     f"{t.cpu_threads_per_worker} CPUs but this machine has {cpus} and ray.address is null (a local "
                     "Ray): the trial would wait for them forever; lower them, or join a cluster with ray.address")
    return found


def checkpoint_problems(cfg: SweepConfig) -> list[str]:
    """Why ``trial.checkpoint`` cannot be loaded by the trials (unsafe, truncated, not native), if it cannot."""
    path = cfg.trial.checkpoint
    if not path or is_uri(path) or not Path(path).exists():
        return []  # none, remote, or already reported missing
    from trainables.checkpoints.files import safe_torch_load
    from trainables.checkpoints.native import strip_native_prefix

    try:
        strip_native_prefix(safe_torch_load(path, mmap=True), path)
    except InputError as err:
        return [f"trial.checkpoint: {err}"]
    return []


def dataset_problems(cfg: SweepConfig) -> list[str]:
    """The COCO validator's errors for ``trial.train_json`` / ``val_json`` (and their images)."""
    t = cfg.trial
    files = [Path(p) for p in (t.train_json, t.val_json) if p and not is_uri(p) and Path(p).is_file()]
    if not files:
        return []
    from data_prep.validate import summarise, validate_files

    images = Path(t.images_dir) if t.images_dir and Path(t.images_dir).is_dir() else None
    errors = summarise(validate_files(files, images, follow_links=t.follow_image_links,
                                      vessel=t.categories == "vessel").errors)
    if len(errors) > MAX_LISTED:
        errors = errors[:MAX_LISTED] + [f"... and {len(errors) - MAX_LISTED} more COCO error(s): run "
                                        f"`python -m data_prep.validate {' '.join(map(str, files))} --images {images}`"]
    return errors
