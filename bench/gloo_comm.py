"""Gloo gradient all-reduce cost and the options that cut it (issue 8, item 5), on 2 local processes.

Two parts, both with 2 processes over Gloo on loopback (``torch.multiprocessing``), one intra-op thread each:

1. **All-reduce of gradient-sized buffers** in DDP-style 25 MiB buckets (fp32 bytes), every bucket launched
   asynchronously then all waited for, as DDP does: fp32 (``tensor /= world; all_reduce``, what DDP's
   built-in reduction and torch's ``allreduce_hook`` do) against bf16 (torch's own ``bf16_compress_hook``
   called on each bucket) and, as a diagnostic, buckets that already are bf16 ("bf16 wire only": Gloo's
   transfer and bf16 sum without the hook's casts). Sizes: the tiny preset's trainable gradients with and
   without the text encoder (exact), and the full model's (840.5 M / 486.8 M parameters), scaled by ``--scale`` to fit memory; the
   rate (payload bytes / time) is extrapolated linearly to the full size.
2. **The tiny preset's full training step** (``trainables.trial.train_step``, 224 px, synthetic CASS data,
   sam3's native loss) under DDP for: fp32 all-reduce, bf16 compression, ``grad_accum_steps=2`` and a frozen
   text encoder with cached prompt embeddings. Each config also runs the same steps on the unwrapped model
   (no gradient all-reduce; the loss's small collectives remain), alternating step by step with the DDP run
   so that both see the same load on a shared machine: the difference of the medians is the exposed
   communication. A :class:`trainables.comm.CommMeter` sums the buckets' launch-to-completion times.
   The losses of every step are printed: same seed, same data order, per config.

Usage: ``TORCHDYNAMO_DISABLE=1 python bench/gloo_comm.py [--scale 0.125] [--reps 3] [--steps 8] [--out FILE]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from bench.common import free_port  # noqa: E402

WORLD = 2
BUCKET_BYTES = 25 * 2**20  # DDP's default bucket_cap_mb (fp32 gradients: 6,553,600 elements per bucket)
FULL_PARAMS = 840_509_750  # sam3 image model, every parameter trainable (asserted in tests/test_model.py)
FULL_PARAMS_FROZEN_TEXT = 486_800_000  # the same without the language backbone's 353.7 M parameters
# Measured separately on one H200 host on 2026-11-26 (2 processes, Gloo, DDP-style 25 MiB buckets, median of 3
# full passes): seconds per step, GB/s.
REFERENCE = {"fp32 full": (1.59, 2.1), "bf16 full": (0.94, 1.8), "fp32 no text": (0.87, 2.2),
             "bf16 no text": (0.53, 1.8)}



def _init(rank: int, port: int) -> None:
    os.environ["TORCHDYNAMO_DISABLE"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)


# --- part 1: buffers -------------------------------------------------------------------------------------

def allreduce_buckets(buckets: list[torch.Tensor], dtype: str) -> None:
    """All-reduce (average) every bucket the way DDP does: launch all asynchronously, then wait for all."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import bf16_compress_hook

    if dtype == "bf16":
        futures = [bf16_compress_hook(None, (bucket,)) for bucket in buckets]  # torch's hook on a raw tensor
        torch.futures.wait_all(futures)
        return
    if dtype == "bf16 wire only":  # buckets already bf16: Gloo's transfer + bf16 sum without the casts
        works = [dist.all_reduce(bucket, async_op=True) for bucket in buckets]
        for work in works:
            work.wait()
        return
    works = []
    for bucket in buckets:
        bucket.div_(WORLD)
        works.append(dist.all_reduce(bucket, async_op=True))
    for work in works:
        work.wait()


def time_allreduce(numel: int, dtype: str, reps: int) -> float:
    """Median seconds of ``reps`` passes (after one warm-up) all-reducing ``numel`` fp32 gradients."""
    per_bucket = BUCKET_BYTES // 4
    flat = torch.randn(numel, dtype=torch.bfloat16 if dtype == "bf16 wire only" else torch.float32)
    buckets = list(flat.split(per_bucket))
    times = []
    for rep in range(reps + 1):
        dist.barrier()
        start = time.perf_counter()
        allreduce_buckets(buckets, dtype)
        elapsed = torch.tensor([time.perf_counter() - start])
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the slower rank decides
        if rep:
            times.append(float(elapsed))
    del flat, buckets
    return statistics.median(times)


def _buffer_worker(rank: int, port: int, cases: list[tuple[str, int, float]], reps: int, out: str) -> None:
    _init(rank, port)
    try:
        rows = []
        for name, full_numel, scale in cases:
            numel = max(1, int(full_numel * scale))
            for dtype in ("fp32", "bf16", "bf16 wire only"):
                seconds = time_allreduce(numel, dtype, reps)
                rows.append(dict(case=name, dtype=dtype, full_numel=full_numel, numel=numel, scale=scale,
                                 seconds=seconds, bytes=numel * (4 if dtype == "fp32" else 2)))
        if rank == 0:
            torch.save(rows, out)
    finally:
        dist.destroy_process_group()


# --- part 2: the tiny preset's training step -------------------------------------------------------------

STEP_CONFIGS = {  # name -> (TrialConfig overrides, run the text-encoder cache)
    "fp32 all-reduce": dict(),
    "bf16 compression": dict(grad_compression="bf16"),
    "grad_accum_steps=2": dict(grad_accum_steps=2),
    "frozen text encoder + cache": dict(freeze_text_encoder=True),
    "bf16 + frozen text + accum 2": dict(grad_compression="bf16", freeze_text_encoder=True, grad_accum_steps=2),
}


def _step_worker(rank: int, port: int, paths: dict[str, str], steps: int, warmup: int, out: str) -> None:
    _init(rank, port)
    try:
        from trainables.comm import CommMeter, register_grad_compression
        from trainables.config import TrialConfig
        from trainables.data import build_loader
        from trainables.distributed import prepare_for_ddp, wrap_ddp
        from trainables.loss import build_loss
        from trainables.model import build_model, freeze_text_encoder
        from trainables.optim import build_optimizer, build_scheduler
        from trainables.prompt_cache import enable_prompt_cache
        from trainables.trial import endless_batches, train_step

        def setup(cfg: TrialConfig, wrapped: bool) -> dict:
            model = prepare_for_ddp(build_model("tiny", seed=0))
            if cfg.freeze_text_encoder:
                freeze_text_encoder(model)
                enable_prompt_cache(model)
            meter, train_model = CommMeter(), model
            if wrapped:
                train_model = wrap_ddp(model)
                register_grad_compression(train_model, cfg.grad_compression, meter=meter)
            optimizer = build_optimizer(model, cfg)
            return dict(model=model, train_model=train_model, meter=meter, optimizer=optimizer,
                        scheduler=build_scheduler(optimizer, cfg), loss_fn=build_loss(cfg, distributed=True),
                        batches=endless_batches(build_loader(cfg, "train", rank=rank, world_size=WORLD), 0),
                        rng=torch.manual_seed(rank).get_state(), times=[], comm=[], losses=[])

        rows = []
        for name, overrides in STEP_CONFIGS.items():
            cfg = TrialConfig.from_dict(dict(paths, lr_transformer=1e-3, lr_vision=1e-3, lr_language=1e-3,
                                             warmup_steps=2, grad_clip=1.0, cpu_threads_per_worker=1,
                                             **overrides))
            runs = {wrapped: setup(cfg, wrapped) for wrapped in (True, False)}
            for step in range(warmup + steps):
                for run in runs.values():  # DDP and plain steps alternate: both see the same machine load
                    micro = [next(run["batches"]) for _ in range(cfg.grad_accum_steps)]
                    torch.set_rng_state(run["rng"])  # each run its own dropout stream, as if run alone
                    run["meter"].reset()
                    dist.barrier()
                    start = time.perf_counter()
                    loss, _ = train_step(run["train_model"], micro, run["loss_fn"], run["optimizer"],
                                         run["scheduler"], cfg)
                    elapsed = torch.tensor([time.perf_counter() - start, run["meter"].seconds])
                    run["rng"] = torch.get_rng_state()
                    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
                    run["losses"].append(float(loss))
                    if step >= warmup:
                        run["times"].append(float(elapsed[0]))
                        run["comm"].append(float(elapsed[1]))
            for wrapped, run in runs.items():
                trainable = sum(p.numel() for p in run["model"].parameters() if p.requires_grad)
                rows.append(dict(config=name, ddp=wrapped, accum=cfg.grad_accum_steps, trainable=trainable,
                                 seconds=statistics.median(run["times"]),
                                 comm_seconds=statistics.median(run["comm"]), buckets=run["meter"].calls,
                                 losses=run["losses"]))
        if rank == 0:
            torch.save(rows, out)
    finally:
        dist.destroy_process_group()


# --- driver ----------------------------------------------------------------------------------------------

def tiny_trainable_numel() -> tuple[int, int]:
    """Trainable parameters of the tiny preset under DDP, with and without the text encoder."""
    from trainables.distributed import prepare_for_ddp
    from trainables.model import build_model, freeze_text_encoder

    model = prepare_for_ddp(build_model("tiny", seed=0))
    everything = sum(p.numel() for p in model.parameters() if p.requires_grad)
    freeze_text_encoder(model)
    return everything, sum(p.numel() for p in model.parameters() if p.requires_grad)


def buffer_table(rows: list[dict]) -> str:
    baseline = next(r for r in rows if r["case"] == "full model" and r["dtype"] == "fp32")
    base_full_s = baseline["seconds"] / baseline["scale"]
    lines = ["| gradients | params (full size) | dtype | measured: elements, time | rate | "
             "time per step at full size | vs fp32 full model |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        rate = r["bytes"] / r["seconds"] / 1e9
        full_s = r["seconds"] / r["scale"]
        lines.append(f"| {r['case']} | {r['full_numel'] / 1e6:,.1f} M | {r['dtype']} | "
                     f"{r['numel'] / 1e6:,.1f} M, {r['seconds'] * 1e3:,.1f} ms | {rate:.2f} GB/s | "
                     f"{full_s:.3f} s | {full_s / base_full_s:.2f}x |")
    return "\n".join(lines)


def step_table(rows: list[dict]) -> str:
    lines = ["| config | trainable | DDP step | images/rank/step | per image | no-all-reduce step | "
             "exposed comm | metered bucket time (buckets) | exposed share |",
             "|---|---|---|---|---|---|---|---|---|"]
    by_name: dict[str, dict[bool, dict]] = {}
    for r in rows:
        by_name.setdefault(r["config"], {})[r["ddp"]] = r
    for name, pair in by_name.items():
        ddp, plain = pair[True], pair[False]
        exposed = ddp["seconds"] - plain["seconds"]
        lines.append(f"| {name} | {ddp['trainable'] / 1e6:.2f} M | {ddp['seconds']:.3f} s | {ddp['accum']} | "
                     f"{ddp['seconds'] / ddp['accum']:.3f} s | {plain['seconds']:.3f} s | {exposed * 1e3:+.0f} ms | "
                     f"{ddp['comm_seconds'] * 1e3:.1f} ms ({ddp['buckets']}) | {exposed / ddp['seconds']:+.1%} |")
    return "\n".join(lines)


def loss_table(rows: list[dict]) -> str:
    ddp_rows = [r for r in rows if r["ddp"]]
    n = len(ddp_rows[0]["losses"])
    lines = ["| config | " + " | ".join(f"step {i + 1}" for i in range(n)) + " |",
             "|---|" + "---|" * n]
    for r in ddp_rows:
        lines.append(f"| {r['config']} | " + " | ".join(f"{x:.2f}" for x in r["losses"]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=0.125, help="fraction of the full model's buffers")
    parser.add_argument("--reps", type=int, default=3, help="timed passes per buffer (median)")
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per config (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps per config")
    parser.add_argument("--skip-steps", action="store_true", help="only the buffer all-reduce")
    parser.add_argument("--out", type=Path, help="also write the tables (markdown) here")
    args = parser.parse_args()
    os.environ["TORCHDYNAMO_DISABLE"] = "1"
    torch.set_num_threads(1)

    tiny_all, tiny_frozen = tiny_trainable_numel()
    cases = [("tiny preset", tiny_all, 1.0), ("tiny preset, text encoder frozen", tiny_frozen, 1.0),
             ("full model", FULL_PARAMS, args.scale), ("full model, text encoder frozen", FULL_PARAMS_FROZEN_TEXT,
                                                         args.scale)]
    machine = (f"{platform.node()}: {os.cpu_count()} CPU cores (shared with other jobs), "
               f"{platform.processor() or platform.machine()}, torch {torch.__version__}, Gloo over loopback, "
               f"2 processes x 1 thread")
    sections = [f"Machine: {machine}"]
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "buffers.pt")
        mp.spawn(_buffer_worker, args=(free_port(), cases, args.reps, out), nprocs=WORLD, join=True)
        buffers = torch.load(out, weights_only=True)
        sections.append(f"### All-reduce of gradient buffers (25 MiB buckets; full-model buffers at scale "
                        f"{args.scale:g}, median of {args.reps})\n\n" + buffer_table(buffers))
        print(sections[-1], flush=True)
        if not args.skip_steps:
            from data_prep.synthetic import generate_dataset

            data = generate_dataset(Path(tmp) / "synthetic", n_train=16, n_val=2, size=224, seed=0)
            paths = data.trial_fields()
            out = str(Path(tmp) / "steps.pt")
            mp.spawn(_step_worker, args=(free_port(), paths, args.steps, args.warmup, out), nprocs=WORLD,
                     join=True)
            steps = torch.load(out, weights_only=True)
            sections.append(f"### Tiny preset training step, 224 px, 2 Gloo ranks (median of {args.steps} steps "
                            f"after {args.warmup})\n\n" + step_table(steps))
            print(sections[-1], flush=True)
            sections.append("### Training loss per optimizer step (DDP runs above; seed 0, same data order)\n\n"
                            + loss_table(steps))
            print(sections[-1], flush=True)
    if args.out:
        args.out.write_text("\n\n".join(sections) + "\n")


if __name__ == "__main__":
    main()
