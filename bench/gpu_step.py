"""The full SAM3 training step on one GPU: the trainable vs a bare sam3 loop, precisions, memory, Gloo DDP.

Builds the ``full`` preset (sam3's own architecture, 840.5 M parameters, random init) and, on synthetic
angiograms (one image x 14 CASS prompts per step), measures six things in one run:

1. ``steps``: seconds per optimizer step (median of ``--steps`` after 2 warm-up steps) and peak memory of the
   trial's own ``train_step`` (sam3's native loss and matchers, prompt chunks, divergence vote, clipping,
   fused AdamW) and of a bare sam3 loop (forward, loss, backward, clip, AdamW with torch's default implementation:
   ``sam3/train/trainer.py``'s step)
   on the same model and batch, for fp32 / tf32 / bf16, sam3's activation checkpointing, the minimal one or none,
   text encoder trained or frozen with cached prompt embeddings, at 672 and 1008 px.
2. ``numerics``: loss and gradient relative error of tf32 and bf16 against fp32 (same weights and batch,
   dropout off).
3. ``profile``: where the fastest configuration's step spends its time (torch.profiler, top operators).
4. ``val``: the trial's validation pass on 512-px images, one and several images per forward
   (``val_batch_size``), split into forward, predictions and CPU scoring, its peak memory, and its share of
   trial time at Stage 2's ``val_every`` (per 100 validation images per worker).
5. ``optimizer``: one AdamW step, torch's default ``foreach`` implementation (sam3's trainer) vs the fused one
   the trial uses.
6. ``ddp``: 2 processes x Gloo on the one GPU (the users' 2-GPU Windows set-up, emulated): exposed gradient
   all-reduce per optimizer step (DDP step minus the same step under ``no_sync``) for fp32, a frozen text
   encoder, bf16 compression and 4 accumulated micro-batches, against the single-process compute step.

Beside them it prints reference figures of a bare sam3 loop measured separately before this script existed
(:data:`REFERENCE`: one H200, 2026-11-26, torch 2.11.0, sam3 0.1.4, median of 6 steps after 2).
``--preset tiny`` runs everything on the CPU at 224/336 px as a dry run of the script.

    python bench/gpu_step.py [--parts steps,numerics,profile,val,optimizer,ddp] [--steps 5]
        [--only "672 bf16;1008"] [--val-images 8] [--val-batch-sizes 1,4] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from bench.common import free_port  # noqa: E402

# A bare sam3 loop (build_sam3_image_model, random init, one image x 14 prompts, sam3's native loss, AdamW; no
# Ray, no DDP) measured separately on one H200 on 2026-11-26, median of 6 steps after 2: seconds per step.
# Keys: (resolution, precision, activation checkpointing, text encoder frozen).
REFERENCE = {(672, "fp32", "sam3", False): 1.12, (672, "tf32", "sam3", False): 0.62,
             (672, "tf32", "minimal", False): 0.53, (672, "bf16", "minimal", False): 0.43,
             (672, "bf16", "minimal", True): 0.36, (672, "tf32", "minimal", True): 0.50,
             (1008, "fp32", "sam3", False): 2.18, (1008, "tf32", "sam3", False): 1.49,
             (1008, "bf16", "minimal", True): 0.49}

# (resolution index: 0 = low, 1 = high; precision; activation checkpointing; text frozen + cached; chunk)
# The text encoder cannot be unfrozen again: the frozen configurations come last.
STEP_CONFIGS = [
    (0, "fp32", "sam3", False, 14), (0, "tf32", "sam3", False, 14), (0, "bf16", "sam3", False, 14),
    (0, "bf16", "minimal", False, 14),
    (0, "fp32", "sam3", True, 14), (0, "tf32", "sam3", True, 14), (0, "bf16", "sam3", True, 14),
    (0, "tf32", "minimal", True, 14), (0, "bf16", "minimal", True, 14), (0, "bf16", "none", True, 14),
    (1, "bf16", "sam3", True, 14), (1, "bf16", "sam3", True, 7), (1, "tf32", "sam3", True, 7),
    (1, "bf16", "minimal", True, 14),
]
FASTEST = (0, "bf16", "minimal", True, 14)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def bare_step(model, batch, loss_fn, optimizer, cfg) -> torch.Tensor:
    """sam3's own training step (``trainer.py``: forward, targets, loss, backward, clip, step), no chunks."""
    from sam3.model.utils.misc import copy_data_to_device
    from sam3.train.loss.loss_fns import CORE_LOSS_KEY

    from trainables.data import collate
    from trainables.precision import autocast_context

    optimizer.zero_grad(set_to_none=True)
    data = copy_data_to_device(collate(batch), next(model.parameters()).device, non_blocking=True)
    with autocast_context(cfg.precision):
        stages = model(data)
        targets = [model.back_convert(t) for t in data.find_targets]
        loss = loss_fn(stages, targets)[CORE_LOSS_KEY]
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    return loss.detach()


def time_interleaved(steps_by_kind: dict, device: torch.device, steps: int) -> dict[str, tuple[float, float]]:
    """Median seconds per call of each kind's step, the kinds alternating call by call (so that drifts in
    clocks or load hit all alike), after 2 warm-up rounds; and each kind's peak GiB (from its first rounds).
    A kind that raises is reported as its exception and left out of later rounds."""
    times: dict[str, list[float]] = {kind: [] for kind in steps_by_kind}
    peaks: dict[str, float] = {}
    results: dict = {}
    for index in range(steps + 2):
        for kind, step in steps_by_kind.items():
            if kind in results:
                continue
            if index == 0:
                reset_peak(device)
            try:
                sync(device)
                start = time.perf_counter()
                loss = step()
                sync(device)
            except Exception as err:  # noqa: BLE001 - a failing configuration is a result to report
                results[kind] = err
                traceback.print_exc(limit=3)
                continue
            if index == 0:
                peaks[kind] = peak_gib(device)
            if index >= 2:
                times[kind].append(time.perf_counter() - start)
            if not torch.isfinite(torch.as_tensor(loss)).all():
                results[kind] = RuntimeError(f"non-finite loss {loss}")
    for kind in steps_by_kind:
        results.setdefault(kind, (statistics.median(times[kind]), peaks[kind]))
    return results


class Bench:
    """One model, converted between the configurations (resolution, checkpointing, frozen text)."""

    def __init__(self, preset: str, resolutions: tuple[int, int], device: torch.device, tmp: Path):
        from trainables.distributed import prepare_for_ddp
        from trainables.model import build_model

        self.preset, self.resolutions, self.device, self.tmp = preset, resolutions, device, tmp
        start = time.perf_counter()
        self.model = prepare_for_ddp(build_model(preset, seed=0)).to(device)
        print(f"{preset} preset built and moved to {device} in {time.perf_counter() - start:.1f} s", flush=True)
        self.frozen = False
        self.data = {}

    def configure(self, resolution: int, precision: str, checkpointing: str, frozen: bool, chunk: int, **extra):
        from data_prep.synthetic import generate_dataset
        from trainables.config import TrialConfig
        from trainables.precision import configure_precision
        from trainables.trial import configure_model

        if resolution not in self.data:
            self.data[resolution] = generate_dataset(self.tmp / f"d{resolution}", n_train=4, n_val=1,
                                                     size=resolution, seed=0)
        data = self.data[resolution]
        cfg = TrialConfig(**data.trial_fields(), preset=self.preset, resolution=resolution,
                          precision=precision, activation_checkpointing=checkpointing, freeze_text_encoder=frozen,
                          category_chunk_size=chunk, grad_clip=0.1, warmup_steps=0, **extra)
        if self.frozen and not frozen:  # the trial never unfreezes, so neither does the bench
            raise ValueError(f"{label(resolution, precision, checkpointing, frozen, chunk)}: list configurations "
                             "with the text encoder trained before the frozen ones")
        configure_model(self.model, cfg)
        self.frozen = frozen
        configure_precision(precision)
        return cfg

    def batch(self, cfg):
        from trainables.data import build_loader

        return next(iter(build_loader(cfg, "train")))


def sam3_optimizer(model, cfg) -> torch.optim.AdamW:
    """The bare loop's optimizer: torch's AdamW with its default implementation (``foreach``), as sam3's trainer
    instantiates it, over the trial's parameter groups (the trial's own is the fused one)."""
    from trainables.optim import build_optimizer

    return torch.optim.AdamW([{"params": g["params"], "lr": g["lr"], "weight_decay": g["weight_decay"]}
                              for g in build_optimizer(model, cfg).param_groups])


def part_optimizer(bench: Bench, steps: int) -> list[str]:
    """One AdamW step over every trainable parameter (random gradients): the default ``foreach``
    implementation (the baseline) vs the fused one the trial uses, alternating, median of ``steps``."""
    from trainables.optim import build_optimizer

    cfg = bench.configure(bench.resolutions[0], "fp32", "sam3", bench.frozen, 14)
    for p in bench.model.parameters():
        p.grad = torch.randn_like(p) if p.requires_grad else None
    optimizers = {"foreach (torch's default, sam3's trainer)": sam3_optimizer(bench.model, cfg),
                  "fused (the trial's)": build_optimizer(bench.model, cfg)}
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for _ in range(steps + 2):
        for name, optimizer in optimizers.items():
            sync(bench.device)
            start = time.perf_counter()
            optimizer.step()
            sync(bench.device)
            times[name].append(time.perf_counter() - start)
    bench.model.zero_grad(set_to_none=True)
    trainable = sum(p.numel() for p in bench.model.parameters() if p.requires_grad)
    baseline = statistics.median(next(iter(times.values()))[2:])
    rows = [f"AdamW step over {trainable / 1e6:.1f} M trainable parameters, median of {steps}:", "",
            "| implementation | step | vs foreach |", "|---|---|---|"]
    for name, measured in times.items():
        median = statistics.median(measured[2:])
        rows.append(f"| {name} | {median * 1e3:.1f} ms | {median / baseline:.2f}x |")
    print("\n".join(rows), flush=True)
    return rows


def label(resolution: int, precision: str, checkpointing: str, frozen: bool, chunk: int) -> str:
    return (f"{resolution} {precision}, {checkpointing} ckpt{', text frozen+cached' if frozen else ''}"
            f"{f', chunk {chunk}' if chunk != 14 else ''}")


def part_steps(bench: Bench, steps: int, only: str | None) -> tuple[list[str], dict]:
    from trainables.loss import build_loss
    from trainables.optim import build_optimizer, build_scheduler
    from trainables.trial import train_step

    rows, measured = [], {}
    for config in STEP_CONFIGS:
        index, precision, checkpointing, frozen, chunk = config
        resolution = bench.resolutions[index]
        name = label(resolution, *config[1:])
        if only and not any(part in name for part in only.split(";")):
            continue
        cfg = bench.configure(resolution, precision, checkpointing, frozen, chunk)
        batch = bench.batch(cfg)
        loss_fn = build_loss(cfg, distributed=False)
        optimizers = {"trainable": build_optimizer(bench.model, cfg), "bare": sam3_optimizer(bench.model, cfg)}
        scheduler = build_scheduler(optimizers["trainable"], cfg)
        results = time_interleaved({
            "trainable": lambda: train_step(bench.model, [batch], loss_fn, optimizers["trainable"], scheduler, cfg)[0],
            "bare": lambda: bare_step(bench.model, batch, loss_fn, optimizers["bare"], cfg),
        }, bench.device, steps)
        del optimizers, scheduler
        bench.model.zero_grad(set_to_none=True)
        cells = []
        for kind in ("trainable", "bare"):
            result = results[kind]
            if isinstance(result, Exception):
                cells.append(f"fails: {type(result).__name__}: {' '.join(str(result).split())[:160]}")
            else:
                measured[(*config, kind)] = result[0]
                cells.append(f"{result[0]:.3f} s, {result[1]:.1f} GiB")
        trainable, bare = measured.get((*config, "trainable")), measured.get((*config, "bare"))
        ratio = f"{bare / trainable:.2f}" if trainable and bare else ""
        ref = REFERENCE.get((resolution, precision, checkpointing, frozen)) if bench.preset == "full" else None
        rows.append(f"| {name} | {cells[0]} | {cells[1]} | {ratio} | {ref or ''} |")
        print(rows[-1], flush=True)
    header = ["| configuration | trainable step (median), peak | bare sam3 loop, same run (alternating) | "
              "bare / trainable | reference bare loop, H200 (s) |", "|---|---|---|---|---|"]
    return header + rows, measured


def part_numerics(bench: Bench) -> list[str]:
    """Loss and gradient relative error of tf32 and bf16 against fp32: same weights, batch, no dropout."""
    from trainables.data import collate
    from trainables.loss import build_loss, training_step_loss
    from trainables.precision import autocast_context

    saved = {}
    for module in bench.model.modules():  # dropout off, restored afterwards
        if isinstance(module, torch.nn.Dropout) or hasattr(module, "drop_prob"):
            saved[module] = (getattr(module, "p", None), getattr(module, "drop_prob", None))
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
            else:
                module.drop_prob = 0.0
    results, batch = {}, None
    try:
        for precision in ("fp32", "tf32", "bf16"):
            cfg = bench.configure(bench.resolutions[0], precision, "minimal", bench.frozen, 14)
            batch = batch or bench.batch(cfg)  # one batch: the train loader's augmentation is random
            bench.model.zero_grad(set_to_none=True)
            torch.manual_seed(0)  # the same random draws in every run (e.g. sam3's mask-loss point sampling)
            with autocast_context(precision):
                loss, _ = training_step_loss(bench.model, collate(batch), build_loss(cfg, distributed=False))
            loss.backward()
            grads = torch.cat([p.grad.float().flatten() for p in bench.model.parameters() if p.grad is not None])
            results[precision] = (loss.item(), grads.cpu())
            bench.model.zero_grad(set_to_none=True)
    finally:
        for module, (p, drop_prob) in saved.items():
            if p is not None:
                module.p = p
            if drop_prob is not None:
                module.drop_prob = drop_prob
    ref_loss, ref_grads = results["fp32"]
    rows = ["| precision | loss | loss rel. error vs fp32 | gradient rel. error (L2) | gradient cosine |",
            "|---|---|---|---|---|"]
    for precision, (loss, grads) in results.items():
        rel = abs(loss - ref_loss) / abs(ref_loss)
        grad_rel = float((grads - ref_grads).norm() / ref_grads.norm())
        cosine = float(torch.nn.functional.cosine_similarity(grads, ref_grads, dim=0))
        rows.append(f"| {precision} | {loss:.4f} | {rel:.2e} | {grad_rel:.2e} | {cosine:.5f} |")
        print(rows[-1], flush=True)
    return rows


def fastest_measured(measured: dict, frozen: bool) -> tuple:
    """The configuration whose trainable step was fastest in the ``steps`` part, else ``FASTEST``; once the
    text encoder is ``frozen``, only among the frozen ones (it cannot be trained again)."""
    trainable = {key[:-1]: seconds for key, seconds in measured.items()
                 if key[-1] == "trainable" and (key[3] or not frozen)}
    return min(trainable, key=trainable.get) if trainable else FASTEST


def kernel_seconds(events) -> float:
    """GPU kernel time in profiler ``events``, as torch's own table totals it: device events only, without
    the ranges that ``record_function`` annotates on the GPU timeline (they span the kernels inside them)."""
    from torch.autograd import DeviceType

    return sum(e.self_device_time_total for e in events
               if e.device_type == DeviceType.CUDA and not e.is_user_annotation) / 1e6


def part_profile(bench: Bench, config: tuple = FASTEST, steps: int = 3) -> list[str]:
    """Where ``config``'s trainable step spends its time: torch.profiler over ``steps`` steps after one."""
    from torch.profiler import ProfilerActivity, profile

    from trainables.loss import build_loss
    from trainables.optim import build_optimizer, build_scheduler
    from trainables.trial import train_step

    index, precision, checkpointing, frozen, chunk = config
    cfg = bench.configure(bench.resolutions[index], precision, checkpointing, frozen, chunk)
    batch = bench.batch(cfg)
    loss_fn = build_loss(cfg, distributed=False)
    optimizer = build_optimizer(bench.model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    train_step(bench.model, [batch], loss_fn, optimizer, scheduler, cfg)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if bench.device.type == "cuda" else [])
    sync(bench.device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            train_step(bench.model, [batch], loss_fn, optimizer, scheduler, cfg)
        sync(bench.device)
    wall = (time.perf_counter() - start) / steps
    events = prof.key_averages()
    device_total = kernel_seconds(events) / steps
    kernels = (f"; GPU kernel time {device_total:.3f} s/step ({device_total / wall:.0%} of the step)"
               if bench.device.type == "cuda" else "")
    lines = [f"{label(bench.resolutions[index], *config[1:])}: {wall:.3f} s/step under the profiler{kernels}"]
    syncs = {e.key: e.count // steps for e in events
             if e.key in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "aten::_local_scalar_dense",
                          "aten::item", "cudaMemcpyAsync", "cudaLaunchKernel", "cuLaunchKernelEx")}
    lines.append(f"host syncs, copies and kernel launches per step: {syncs}")
    lines.append("top operators by self CPU time:")
    lines.append(events.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=60))
    if bench.device.type == "cuda":
        lines.append("top operators by self GPU time:")
        lines.append(events.table(sort_by="self_device_time_total", row_limit=12, max_name_column_width=60))
    del optimizer
    print("\n".join(lines), flush=True)
    return lines


def part_val(bench: Bench, images: int, measured: dict, batch_sizes: tuple[int, ...] = (1,)) -> list[str]:
    """The trial's validation pass (``trainables.evaluate.validate``) on ``images`` synthetic 512-px angiograms
    at the low resolution, text frozen and cached (Stage 2's set-up), for fp32 and tf32 (the pass runs without
    autocast, so bf16 trials validate as their matmul precision allows) and each ``val_batch_size`` in
    ``batch_sizes``: seconds per image, split into forward, predictions and CPU scoring, the pass's peak
    memory, and the share of trial time at Stage 2's ``val_every`` per 100 validation images on a worker,
    against the trainable step measured in this run (``steps`` part) for the same configuration."""
    import dataclasses

    import yaml

    from bench.eval_cost import PartTimer, timing_validation_parts, validation_parts, validation_share
    from data_prep.synthetic import generate_dataset
    from trainables.data import build_loader
    from trainables.evaluate import validate
    from trainables.metrics import CassEvaluator

    stage2 = Path(__file__).resolve().parents[1] / "sweeps" / "configs" / "stage2.yaml"
    val_every = int(yaml.safe_load(stage2.read_text())["trial"]["val_every"])
    data = generate_dataset(bench.tmp / "val512", n_train=1, n_val=images, size=512, seed=1)
    resolution, rows = bench.resolutions[0], []
    for precision in ("fp32", "tf32"):
        for batch_size in batch_sizes:
            cfg = dataclasses.replace(bench.configure(resolution, precision, "sam3", True, 14),
                                      **data.trial_fields(), val_batch_size=batch_size)
            loader = build_loader(cfg, "val")
            evaluator = CassEvaluator(loader.dataset.coco_gt(), score_threshold=cfg.score_threshold)
            validate(bench.model, loader, evaluator, bench.device)  # warm-up (kernels, allocator)
            timer = PartTimer()
            reset_peak(bench.device)
            with timing_validation_parts(timer):
                sync(bench.device)
                start = time.perf_counter()
                validate(bench.model, loader, evaluator, bench.device)
                sync(bench.device)
            seconds = time.perf_counter() - start
            parts = validation_parts(timer, seconds)  # predictions_from_output's .cpu() waits for the forward
            per_image = {k: v / images for k, v in parts.items()}
            step = measured.get((0, precision, "sam3", True, 14, "trainable"))
            share = "no step measured (run the steps part too)"
            if step:
                share = f"{validation_share(100 * seconds / images, val_every, step):.1%} (step {step:.3f} s)"
            rows.append(f"| {label(resolution, precision, 'sam3', True, 14)} | {batch_size} | {seconds / images:.3f} | "
                        f"{per_image['forward']:.3f} | {per_image['predictions']:.3f} | {per_image['process']:.3f} | "
                        f"{per_image['evaluate']:.3f} | {peak_gib(bench.device):.1f} GiB | {share} |")
            print(rows[-1], flush=True)
    header = [f"Validation pass, {images} synthetic 512x512 images x 14 prompts (seconds per image):", "",
              "| configuration | images per forward | total | forward | predictions | process | evaluate | peak "
              f"(weights included) | share at val_every {val_every}, 100 validation images per worker |",
              "|---|---|---|---|---|---|---|---|---|"]
    return header + rows


# --- 2 processes x Gloo on one device ----------------------------------------------------------------------

DDP_CONFIGS = [  # (name, frozen + cached text, gradient compression, micro-batches per optimizer step)
    ("fp32 all-reduce, text trained", False, "none", 1),
    ("fp32 all-reduce, text frozen+cached", True, "none", 1),
    ("bf16 compression, text frozen+cached", True, "bf16", 1),
    ("fp32 all-reduce, text frozen+cached, accum 4", True, "none", 4),
]



def _ddp_worker(rank: int, port: int, preset: str, resolution: int, device_type: str, steps: int, tmp: str,
                out: str) -> None:
    os.environ["TORCHDYNAMO_DISABLE"] = "1"
    torch.set_num_threads(2)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        from trainables.comm import CommMeter, register_grad_compression
        from trainables.distributed import wrap_ddp
        from trainables.loss import build_loss
        from trainables.optim import build_optimizer, build_scheduler
        from trainables.trial import train_step

        device = torch.device(device_type)
        bench = Bench(preset, (resolution, resolution), device, Path(tmp) / f"rank{rank}")
        rows = []
        for name, frozen, compression, accum in DDP_CONFIGS:
            cfg = bench.configure(resolution, "fp32", "sam3", frozen, 14, grad_compression=compression,
                                  grad_accum_steps=accum)
            batch = bench.batch(cfg)
            ddp = wrap_ddp(bench.model, device_ids=[0] if device.type == "cuda" else None)
            meter = CommMeter()
            register_grad_compression(ddp, compression, meter=meter)
            optimizer = build_optimizer(bench.model, cfg)
            scheduler = build_scheduler(optimizer, cfg)
            loss_fn = build_loss(cfg, distributed=True)
            times = {"synced": [], "no_sync": []}
            for index in range(steps + 1):
                for mode in times:  # alternate: both see the same load from the other rank
                    dist.barrier()
                    sync(device)
                    start = time.perf_counter()
                    with ddp.no_sync() if mode == "no_sync" else contextlib.nullcontext():
                        train_step(ddp, [batch] * accum, loss_fn, optimizer, scheduler, cfg)
                    sync(device)
                    elapsed = torch.tensor([time.perf_counter() - start])
                    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
                    if index:
                        times[mode].append(float(elapsed))
            trainable = sum(p.numel() for p in bench.model.parameters() if p.requires_grad)
            rows.append(dict(name=name, trainable=trainable, synced=statistics.median(times["synced"]),
                             no_sync=statistics.median(times["no_sync"])))
            del ddp, optimizer, scheduler
            bench.model.zero_grad(set_to_none=True)
        if rank == 0:
            torch.save(rows, out)
    finally:
        dist.destroy_process_group()


def part_ddp(preset: str, resolution: int, device: torch.device, steps: int, single: dict, tmp: Path) -> list[str]:
    out = str(tmp / "ddp.pt")
    mp.spawn(_ddp_worker, args=(free_port(), preset, resolution, device.type, steps, str(tmp), out), nprocs=2,
             join=True)
    rows = torch.load(out, weights_only=True)
    compute = {False: single.get((0, "fp32", "sam3", False, 14, "trainable")),
               True: single.get((0, "fp32", "sam3", True, 14, "trainable"))}
    lines = [f"2 ranks x Gloo on one {device.type} device, {resolution} px fp32, sam3 checkpointing, median of "
             f"{steps} steps after 1; exposed all-reduce = DDP step - the same step under no_sync (both ranks "
             f"share the device, so their compute is slower than one process's)",
             "| configuration | trainable params | DDP step | no_sync step | exposed all-reduce | single-process "
             "compute step | all-reduce / compute, as run | with accum 4 |", "|---|---|---|---|---|---|---|---|"]
    for row, (_, frozen, _, accum) in zip(rows, DDP_CONFIGS):
        exposed = row["synced"] - row["no_sync"]
        base = compute[frozen]  # one micro-batch; an optimizer step computes `accum` of them
        share1 = f"{exposed / (accum * base):.0%}" if base else ""
        share4 = ("(as run)" if accum == 4 else f"{exposed / (4 * base):.0%} (derived)") if base else ""
        lines.append(f"| {row['name']} | {row['trainable'] / 1e6:.1f} M | {row['synced']:.3f} s | "
                     f"{row['no_sync']:.3f} s | {exposed:.3f} s | {base or float('nan'):.3f} s | {share1} | {share4} |")
    print("\n".join(lines), flush=True)
    return lines


def positive_ints(text: str) -> tuple[int, ...]:
    """``--val-batch-sizes``: ','-separated integers >= 1."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers >= 1 separated by ',', e.g. 1,4")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="steps,numerics,profile,val,optimizer,ddp")
    parser.add_argument("--val-images", type=int, default=8, help="val part: validation images")
    parser.add_argument("--val-batch-sizes", type=positive_ints, default=(1, 4),
                        help="val part: images per validation forward, ','-separated")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--ddp-steps", type=int, default=3)
    parser.add_argument("--only", default=None, help="steps part: only configurations whose label contains one "
                                                      "of these ';'-separated strings")
    parser.add_argument("--preset", choices=("full", "tiny"), default="full",
                        help="tiny: a CPU dry run of this script at 224/336 px")
    parser.add_argument("--out", type=Path, default=None, help="also write the tables here")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    if args.preset == "full" and not torch.cuda.is_available():
        print("skipped: CUDA is not available on this machine (use --preset tiny for a CPU dry run)")
        return 0
    device = torch.device("cuda" if args.preset == "full" else "cpu")
    resolutions = (672, 1008) if args.preset == "full" else (224, 336)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU"
    sections = [f"{name}, torch {torch.__version__}, {args.preset} preset, {time.strftime('%Y-%m-%d')}"]
    print(sections[0], flush=True)
    measured: dict = {}

    def add(lines: list[str]) -> None:  # each part's table reaches --out as soon as it is measured
        sections.append("\n".join(lines))
        if args.out:
            args.out.write_text("\n\n".join(sections) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(args.preset, resolutions, device, Path(tmp))
        if "steps" in parts:
            rows, measured = part_steps(bench, args.steps, args.only)
            add(rows)
        if "numerics" in parts:
            add(part_numerics(bench))
        if "profile" in parts:
            add(part_profile(bench, fastest_measured(measured, bench.frozen)))
        if "val" in parts:
            add(part_val(bench, args.val_images, measured, args.val_batch_sizes))
        if "optimizer" in parts:
            add(part_optimizer(bench, args.steps))
        del bench
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if "ddp" in parts:
            add(part_ddp(args.preset, resolutions[0], device, args.ddp_steps, measured, Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
