"""``train_loop_per_worker`` for ``ray.train.torch.TorchTrainer``: Ray's side of one trial.

The loop itself is :func:`trainables.trial.run_trial`; this adapter only reads the worker's rank and
device from Ray Train, resumes from ``ray.train.get_checkpoint()`` and reports through
``ray.train.report`` (a barrier every worker calls; rank 0 attaches the checkpoint), keeping the optimizer
state in the newest checkpoint only (:class:`RayReporter`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch

from trainables.checkpoints.trial import drop_trainer_state
from trainables.config import TrialConfig
from trainables.progress import ProgressPrinter
from trainables.trial import run_trial


class RayReporter:
    """Forward reports to Ray Train (rank 0 attaches the checkpoint directory it wrote) and, once a new
    checkpoint is persisted, remove the trainer state from the one before: only the newest checkpoint of a
    running trial needs it (a resume starts there), and it is the larger part of a checkpoint."""

    def __init__(self) -> None:
        self.previous = ray.train.get_checkpoint()  # the one this run resumes from, if any

    def __call__(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)
        if checkpoint_dir is None:
            return
        # ``report`` returns once the checkpoint is stored, before Train's controller has registered it: a
        # restart in between would start from the previous one. Wait until it is committed.
        ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
        persisted = ray.train.get_checkpoint()  # what Train made of ``checkpoint`` in the storage
        if self.previous is not None and persisted is not None and self.previous.path != persisted.path:
            drop_trainer_state(self.previous.filesystem, self.previous.path)
        self.previous = persisted


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Run one trial on this Ray Train worker. ``config["trial"]`` is a :class:`TrialConfig` as a dict;
    ``config["label"]`` (optional) names the trial in rank 0's progress lines (:mod:`trainables.progress`);
    ``config["report_resume"]`` (optional): the driver runs this trial again after a restart, so a resume
    reports its checkpoint again first (``run_trial``'s ``report_resume``)."""
    cfg = TrialConfig.from_dict(config["trial"], source="train_loop_config['trial']")
    context = ray.train.get_context()
    checkpoint = ray.train.get_checkpoint()
    rank = context.get_world_rank()
    common = {"rank": rank, "world_size": context.get_world_size(), "device": ray.train.torch.get_device(),
              "report": RayReporter(),
              "progress": ProgressPrinter(config.get("label", "trial"), cfg.max_steps) if rank == 0 else None}
    if checkpoint is None:
        run_trial(cfg, **common)
        return
    with checkpoint.as_directory() as resume_dir:
        run_trial(cfg, resume_from=Path(resume_dir), report_resume=bool(config.get("report_resume")), **common)
