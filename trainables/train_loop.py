"""``train_loop_per_worker`` for ``ray.train.torch.TorchTrainer``: Ray's side of one trial.

The loop itself is :func:`trainables.trial.run_trial`; this adapter only reads the worker's rank and
device from Ray Train, resumes from ``ray.train.get_checkpoint()`` and reports through
``ray.train.report`` (a barrier every worker calls; rank 0 attaches the checkpoint).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch

from trainables.config import TrialConfig
from trainables.trial import run_trial


def report_to_ray(metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
    """Forward one report to Ray Train, wrapping a checkpoint directory when there is one."""
    checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
    ray.train.report(metrics, checkpoint=checkpoint)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Run one trial on this Ray Train worker. ``config["trial"]`` is a :class:`TrialConfig` as a dict."""
    cfg = TrialConfig.from_dict(config["trial"], source="train_loop_config['trial']")
    context = ray.train.get_context()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        run_trial(cfg, rank=context.get_world_rank(), world_size=context.get_world_size(),
                  device=ray.train.torch.get_device(), report=report_to_ray)
        return
    with checkpoint.as_directory() as resume_dir:
        run_trial(cfg, rank=context.get_world_rank(), world_size=context.get_world_size(),
                  device=ray.train.torch.get_device(), resume_from=Path(resume_dir), report=report_to_ray)
