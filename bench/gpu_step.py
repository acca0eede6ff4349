"""The full SAM3 training step as this project's trainable runs it, on one GPU (skips without CUDA).

Builds the ``full`` preset (sam3's own architecture, 840.5 M parameters) at 1008, converts it to each
resolution with ``set_resolution``, and times the trial's own ``train_step`` (sam3's native loss with
its matchers, prompt chunks, clipping, AdamW) on synthetic angiograms, one image x 14 CASS prompts per
step: median of ``--steps`` after 2 warm-up steps, peak ``torch.cuda.max_memory_allocated``. The bare
sam3 loop measured on an H200 in ``shared/reference/gpu_step_costs.md`` is the baseline (fp32 1.12 s,
tf32 0.62 s at 672; tf32 1.49 s at 1008, sam3's default activation checkpointing).

    python bench/gpu_step.py [--steps 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REFERENCE = {("672", "fp32"): 1.12, ("672", "tf32"): 0.62, ("1008", "fp32"): 2.18, ("1008", "tf32"): 1.49}


def time_steps(model, batch, loss_fn, cfg, steps: int) -> tuple[float, float]:
    """Median seconds per optimizer step and peak GiB, after two warm-up steps."""
    import torch

    from trainables.optim import build_optimizer, build_scheduler
    from trainables.trial import train_step

    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    torch.cuda.reset_peak_memory_stats()
    times = []
    for index in range(steps + 2):
        torch.cuda.synchronize()
        start = time.perf_counter()
        loss, _ = train_step(model, [batch], loss_fn, optimizer, scheduler, cfg)
        torch.cuda.synchronize()
        if index >= 2:
            times.append(time.perf_counter() - start)
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite loss {loss}")
    del optimizer
    return statistics.median(times), torch.cuda.max_memory_allocated() / 2**30


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("skipped: CUDA is not available on this machine")
        return 0
    from data_prep.synthetic import generate_dataset
    from trainables.config import TrialConfig
    from trainables.data import build_loader
    from trainables.distributed import prepare_for_ddp
    from trainables.loss import build_loss
    from trainables.model import build_model, freeze_text_encoder
    from trainables.precision import configure_precision
    from trainables.prompt_cache import enable_prompt_cache
    from trainables.resolution import set_resolution

    device = torch.device("cuda")
    start = time.perf_counter()
    model = prepare_for_ddp(build_model("full", seed=0)).to(device)
    print(f"full preset built and moved in {time.perf_counter() - start:.1f} s", flush=True)
    rows = []
    runs = [(672, "fp32", False), (672, "tf32", False), (672, "bf16", False), (672, "tf32", True),
            (1008, "tf32", True), (1008, "fp32", True)]
    with tempfile.TemporaryDirectory() as tmp:
        for resolution, precision, frozen in runs:
            data = generate_dataset(Path(tmp) / f"d{resolution}", n_train=2, n_val=1, size=resolution, seed=0)
            cfg = TrialConfig(train_json=str(data.train_json), val_json=str(data.val_json),
                              images_dir=str(data.images_dir), preset="full", resolution=resolution,
                              precision=precision, freeze_text_encoder=frozen, grad_clip=0.1, warmup_steps=0)
            set_resolution(model, resolution)
            if frozen:
                freeze_text_encoder(model)
                enable_prompt_cache(model)
            configure_precision(precision)
            batch = next(iter(build_loader(cfg, "train")))
            loss_fn = build_loss(cfg, distributed=False)
            label = f"{resolution} {precision}{' text frozen+cached' if frozen else ''}"
            try:
                seconds, peak = time_steps(model, batch, loss_fn, cfg, args.steps)
                reference = REFERENCE.get((str(resolution), precision)) if not frozen else None
                ratio = f"{reference / seconds:.2f}x" if reference else ""
                rows.append(f"| {label} | {seconds:.3f} s | {peak:.1f} GiB | {reference or ''} | {ratio} |")
            except Exception as err:  # noqa: BLE001 - a failing configuration is a result to report
                rows.append(f"| {label} | failed: {type(err).__name__}: {str(err).splitlines()[0][:90]} | | | |")
            torch.cuda.empty_cache()
            print(rows[-1], flush=True)
    table = "\n".join([f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}",
                       "| resolution / precision | s/step (median) | peak memory | bare sam3 loop, H200 (s) | speed vs bare |",
                       "|---|---|---|---|---|", *rows])
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
