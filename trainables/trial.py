"""One trial's training run, independent of Ray: the loop a reader can follow top to bottom.

``run_trial`` is what every Ray Train worker executes (through :mod:`trainables.train_loop`) and what
the benchmarks run in a bare process. The order of events is fixed by SAM3's resolution state:

build model (native grid) -> load weights (resume checkpoint, else the surgered Phase 1 file) ->
set_resolution -> DDP -> optimizer/scheduler (restored on resume) -> train -> validate every
``val_every`` steps -> report metrics with a checkpoint (resumable, except the final one; a frozen text
encoder is not copied into it but referred to in the starting checkpoint: :mod:`trainables.checkpoints.frozen`;
the validation's per-image figures beside it).

A non-finite loss on any rank stops the trial on every rank with ``diverged=True`` and no checkpoint,
so the last good checkpoint stays the trial's latest.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from common.errors import InputError
from trainables.checkpoints.frozen import FrozenSource
from trainables.checkpoints.native import load_native
from trainables.checkpoints.trial import (
    load_model_weights,
    load_saved_metrics,
    load_trainer_state,
    restore_rng,
    save_trial_checkpoint,
)
from trainables.comm import register_grad_compression
from trainables.config import TrialConfig
from trainables.data import build_loader, iter_prompt_chunks
from trainables.distributed import prepare_for_ddp, wrap_ddp
from trainables.evaluate import validate
from trainables.loss import build_loss, training_step_loss
from trainables.metrics import CassEvaluator
from trainables.model import build_model, configure_activation_checkpointing, freeze_text_encoder
from trainables.optim import build_optimizer, build_scheduler
from trainables.precision import autocast_context, configure_precision
from trainables.prompt_cache import enable_prompt_cache
from trainables.resolution import set_resolution

log = logging.getLogger(__name__)

# report(metrics, checkpoint_dir_or_None): Ray's ``train.report`` in a worker, a list append in tests
Reporter = Callable[[dict[str, Any], "Path | None"], None]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (data order is seeded separately by the sampler)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def endless_batches(loader, start_batch: int) -> Iterator:
    """Batches forever, epoch after epoch, starting after the first ``start_batch`` batches
    (optimizer steps times ``grad_accum_steps``)."""
    per_epoch = len(loader)
    epoch, skip = divmod(start_batch, per_epoch)
    while True:
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        for index, batch in enumerate(loader):
            if index >= skip:
                yield batch
        epoch, skip = epoch + 1, 0


def all_ranks_finite(value: torch.Tensor) -> bool:
    """True when ``value`` is finite on every rank (one small all-reduce under DDP)."""
    bad = torch.tensor([0.0 if torch.isfinite(value).all() else 1.0])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(bad)
    return bool(bad.item() == 0)


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Average scalar training statistics over the workers (one all-reduce), so rank 0 reports all."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(tensor)
    return dict(zip(keys, (tensor / dist.get_world_size()).tolist()))


def loss_or_nan(model: nn.Module, chunk, loss_fn) -> tuple[torch.Tensor, dict[str, float]]:
    """sam3's training-step loss, or NaN when non-finite outputs made its Hungarian matcher give up.

    sam3 matches predictions to targets inside the forward (``sam3/train/matcher.py``, scipy's
    ``linear_sum_assignment``), which raises "matrix contains invalid numeric entries" on NaN/inf costs:
    for the divergence guard that is a non-finite loss like any other.
    """
    try:
        return training_step_loss(model, chunk, loss_fn)
    except ValueError as err:
        if "invalid numeric entries" not in str(err):
            raise
        return torch.tensor(float("nan")), {}


def train_step(model: nn.Module, batches: Sequence[Sequence], loss_fn, optimizer: torch.optim.Optimizer,
               scheduler, cfg: TrialConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """One optimizer step over ``batches`` (``cfg.grad_accum_steps`` micro-batches): forward/backward per
    prompt chunk of each, clip, step. Returns (loss, components), both means over the micro-batches.

    The gradient is the mean of the micro-batches' gradients: each chunk's loss is weighted by its share of
    its micro-batch (so a micro-batch's chunks sum to its unchunked loss) divided by ``len(batches)``. Under
    DDP the gradients are all-reduced once per optimizer step, on the last chunk of the last micro-batch
    (``no_sync`` before it). Every rank votes on its chunk loss being finite before any backward; a
    non-finite loss (or gradient norm) on any rank returns NaN on every rank with the weights untouched, so
    all ranks stop together.
    """
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros(())
    components: dict[str, float] = {}
    nan = torch.tensor(float("nan"))
    ddp = isinstance(model, DistributedDataParallel)
    for batch_index, batch in enumerate(batches):
        last_batch = batch_index == len(batches) - 1
        chunks = list(iter_prompt_chunks(batch, cfg.category_chunk_size))
        for index, (chunk, share) in enumerate(chunks):
            weight = share / len(batches)
            sync = not ddp or (last_batch and index == len(chunks) - 1)
            with (contextlib.nullcontext() if sync else model.no_sync()), autocast_context(cfg.precision):
                loss, parts = loss_or_nan(model, chunk, loss_fn)
                if not all_ranks_finite(loss):
                    return nan, {}
                (loss * weight).backward()
            total = total + loss.detach().float().cpu() * weight
            for key, value in parts.items():
                components[key] = components.get(key, 0.0) + value * weight
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
    if not torch.isfinite(grad_norm):  # identical on every rank: gradients are already all-reduced
        return nan, {}
    optimizer.step()
    scheduler.step()
    return total, components


def diverged_report(step: int) -> dict[str, Any]:
    """What a diverged trial reports: both objectives at 0 (a model with non-finite loss scores nothing)."""
    return {"step": step, "diverged": True, "train_loss": float("nan"), "val_dice": 0.0, "val_ap75": 0.0}


def configure_model(model: nn.Module, cfg: TrialConfig) -> None:
    """Set the trial's resolution, activation checkpointing and text-encoder freezing (+ prompt cache) on a
    loaded model already on its device, before DDP wraps it. Idempotent: a benchmark may call it per setting."""
    set_resolution(model, cfg.resolution)  # after .to(): sam3 keeps the boxRPB cache in a plain attribute
    configure_activation_checkpointing(model, cfg.activation_checkpointing, cfg.precision)
    if cfg.freeze_text_encoder:
        freeze_text_encoder(model)
        enable_prompt_cache(model)  # the 14 prompt embeddings, computed once (frozen, dropout-free encoder)


def frozen_source(cfg: TrialConfig) -> FrozenSource | None:
    """Where a frozen text encoder's tensors already are (the starting checkpoint), so that checkpoints refer to
    them instead of copying them; None (whole checkpoints) when nothing is frozen, or when a resumed trial's
    starting checkpoint is gone (a trial that resumes from a whole checkpoint does not need it)."""
    if not (cfg.freeze_text_encoder and cfg.checkpoint):
        return None
    try:
        return FrozenSource.of(cfg.checkpoint)
    except InputError as err:
        log.warning("checkpoints will hold the whole model: %s", err)
        return None


def run_trial(cfg: TrialConfig, *, rank: int = 0, world_size: int = 1, device: torch.device | None = None,
              resume_from: Path | None = None, report: Reporter,
              progress: Callable[[int, float], None] | None = None, report_resume: bool = False) -> None:
    """Train one trial on this worker, reporting metrics (and a checkpoint) every ``val_every`` steps;
    ``progress`` (rank 0's, e.g. :class:`trainables.progress.ProgressPrinter`) is told every step done and the
    seconds per step since the last validation. ``report_resume``: report the ``resume_from`` checkpoint again
    before training on (a trial a restarted driver runs again: the dead driver may have lost that report)."""
    trial_start = time.perf_counter()  # reports carry elapsed_s: model build, data and loop, not Ray's start-up
    device = device or torch.device("cpu")
    torch.set_num_threads(cfg.cpu_threads_per_worker)
    configure_precision(cfg.precision)
    seed_everything(cfg.seed + rank)

    if resume_from is not None and load_saved_metrics(resume_from)["step"] >= cfg.max_steps:
        # A finished run resumed: its driver died after the last report but before Tune's snapshot
        # recorded the trial as done. Report the final checkpoint's metrics again (no step is left).
        report(load_saved_metrics(resume_from), resume_from if rank == 0 else None)
        return

    # 1. The model: build -> load -> set resolution -> DDP (freqs_cis in a checkpoint is at the native grid).
    # The weights are mapped, not copied (host memory, bench/host_memory.py). A resumed trial copies them on
    # Windows, where Train could not delete a checkpoint folder whose file is mapped.
    model = build_model(cfg.preset, device="cpu", seed=cfg.seed)
    if resume_from is not None:
        load_model_weights(resume_from, model, map_file=os.name != "nt")
    elif cfg.checkpoint:
        load_native(model, Path(cfg.checkpoint), map_file=True)
    model = prepare_for_ddp(model).to(device)
    configure_model(model, cfg)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    frozen = frozen_source(cfg) if rank == 0 else None
    step, state = 0, None
    if resume_from is not None:
        state = load_trainer_state(resume_from)
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        step = state.step
        log.info("resumed at step %d (lr %s)", step, scheduler.get_last_lr())
        if report_resume:
            # Tune may have lost this checkpoint's report (the driver died before its snapshot reached storage):
            # report it again, with the checkpoint, so that the trial's history keeps the point and can pick
            # it; sweeps.results keeps one row per step. After the state is loaded: the report drops the
            # trainer state of the checkpoint it supersedes (trainables/train_loop.py), maybe this very folder.
            report(load_saved_metrics(resume_from), resume_from if rank == 0 else None)
    train_model = model
    if world_size > 1:
        train_model = wrap_ddp(model)
        register_grad_compression(train_model, cfg.grad_compression)

    # 2. Data, loss and the evaluator
    loss_fn = build_loss(cfg, distributed=world_size > 1)
    train_loader = build_loader(cfg, "train", rank=rank, world_size=world_size)
    val_loader = build_loader(cfg, "val", rank=rank, world_size=world_size)
    evaluator = CassEvaluator(val_loader.dataset.coco_gt(), score_threshold=cfg.score_threshold)
    accum = cfg.grad_accum_steps
    batches = endless_batches(train_loader, step * accum)
    if state is not None:
        restore_rng(state.rng)  # last, so nothing built above draws from the restored streams

    # 3. Train, validating and checkpointing every val_every steps
    window: list[float] = []
    window_parts: dict[str, float] = {}
    step_time = time.perf_counter()
    while step < cfg.max_steps:
        micro_batches = [next(batches) for _ in range(accum)]
        loss, components = train_step(train_model, micro_batches, loss_fn, optimizer, scheduler, cfg)
        step += 1
        if not torch.isfinite(loss):  # every rank agreed inside train_step
            report(diverged_report(step), None)
            log.warning("trial diverged at step %d: non-finite loss; last good checkpoint kept", step)
            return
        window.append(float(loss))
        if progress is not None:
            progress(step, (time.perf_counter() - step_time) / len(window))
        for key, value in components.items():
            window_parts[key] = window_parts.get(key, 0.0) + value
        if step % cfg.val_every == 0 or step == cfg.max_steps:
            seconds_per_step = (time.perf_counter() - step_time) / len(window)
            val_start = time.perf_counter()
            metrics = validate(model, val_loader, evaluator, device)
            val_seconds = time.perf_counter() - val_start  # forward, scoring and gather; not the checkpoint
            metrics.update(mean_over_ranks({f"train_{k}": v / len(window) for k, v in window_parts.items()}
                                           | {"train_loss": float(np.mean(window))}))
            metrics.update(step=step, epoch=step * accum / len(train_loader),
                           diverged=False, lr=scheduler.get_last_lr()[0], seconds_per_step=seconds_per_step,
                           val_seconds=val_seconds, elapsed_s=time.perf_counter() - trial_start)
            if device.type == "cuda":  # this worker's peak, for sizing trials to cards (bench/driver_gpu.py)
                metrics["gpu_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            with tempfile.TemporaryDirectory() as tmp:
                checkpoint = None
                if rank == 0:
                    checkpoint = save_trial_checkpoint(Path(tmp), model, optimizer, scheduler, step,
                                                       metrics, cfg.to_dict(), resumable=step < cfg.max_steps,
                                                       frozen=frozen, val_pairs=evaluator.pair_figures())
                report(metrics, checkpoint)
            window.clear()
            window_parts.clear()
            step_time = time.perf_counter()
