"""The full preset through the real sweep driver on one GPU, against the bare step of ``bench/gpu_step.py``.

    python bench/driver_gpu.py [--steps 12] [--preset full] [--resolution 672]

1. **Driver**: a one-trial Stage 2 sweep through ``sweeps.stage2.run_sweep`` (Ray Tune + Optuna + one
   ``TorchTrainer`` with one GPU worker), with ``sweeps/configs/stage2.yaml``'s trial settings (fp32, text
   encoder frozen, sam3's activation checkpointing) at ``--resolution``, except ``grad_accum_steps: 1`` (one
   image per optimizer step, as ``gpu_step.py`` measures) and ``--steps`` steps, validating on 2 images halfway
   and at the end. The trial starts from a native checkpoint of the preset (random weights, seed 0), so its frozen text
   encoder is shared with it as in a real sweep. Figures from the trial's last report: ``seconds_per_step``
   (training only, the mean over the second half of the steps: the first steps warm up), ``gpu_peak_gib`` (the worker's ``torch.cuda.max_memory_allocated``), ``elapsed_s`` (model
   build, data, steps, validation) and Tune's wall time of the trial.
2. **Bare step**, in a fresh process on the same machine: ``gpu_step.py --parts steps`` for the same
   configuration (the trial's own ``train_step``), median of ``--steps``.

Prints both and their ratio and appends them to BENCHMARKS-LOG.md. ``--preset tiny`` runs both on the CPU at
224 px: a dry run of this script (``tests/test_driver_gpu_bench.py``) whose figures compare nothing (the bare
step runs with torch's default threads, the trial's worker with one). The full preset needs a CUDA GPU with
about 20 GiB free, and a few minutes (building the model twice, Ray's start).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, append_benchmark  # noqa: E402

STAGE2 = ROOT / "sweeps" / "configs" / "stage2.yaml"


def step_label(resolution: int) -> str:
    """``gpu_step.py``'s label of stage2.yaml's step configuration at ``resolution``."""
    return f"{resolution} fp32, sam3 ckpt, text frozen+cached"


def driver_trial(root: Path, preset: str, resolution: int, steps: int, gpu: bool) -> dict:
    """Run the one-trial sweep in ``root``; return its last report and Tune's wall time of the trial."""
    import ray
    import yaml
    from ray import tune

    from data_prep.synthetic import generate_dataset
    from search_spaces import load_search_spec
    from sweeps import ray_compat
    from sweeps.config import load_sweep_config, parse_sweep_config
    from trainables.checkpoints.native import save_native
    from trainables.model import build_model

    stage2 = load_sweep_config(STAGE2).trial
    dataset = generate_dataset(root / "data", n_train=4, n_val=2, size=min(resolution, 512), seed=0)
    start = root / "start.pt"
    save_native(build_model(preset, seed=0), start)
    space = root / "space.yaml"
    space.write_text(yaml.safe_dump({"params": {"lr_transformer": {"type": "loguniform", "low": 8e-5,
                                                                    "high": 8.0001e-5}}}))
    trial = {**{k: getattr(stage2, k) for k in ("precision", "activation_checkpointing", "freeze_text_encoder",
                                                 "backend", "batch_size", "category_chunk_size",
                                                 "cpu_threads_per_worker")},
             **dataset.trial_fields(), "preset": preset, "checkpoint": str(start), "resolution": resolution,
             "grad_accum_steps": 1, "max_steps": steps, "val_every": steps // 2, "val_max_images": 2,
             "warmup_steps": 0, "num_workers": 1, "use_gpu": gpu}
    if not gpu:
        trial["cpu_threads_per_worker"] = 1
    cfg = parse_sweep_config({"name": "driver-gpu", "storage_path": str(root / "sweeps"), "search_space": str(space),
                              "num_samples": 1, "max_concurrent_trials": 1, "trial": trial,
                              "scheduler": {"grace_period": steps, "reduction_factor": 2},
                              "checkpoint": {"num_to_keep": 1}}, source="bench/driver_gpu.py")
    from sweeps.stage2 import run_sweep

    ray_compat.init_ray(None, "127.0.0.1", ray_compat.worker_env_vars(0.5))
    try:
        run_sweep(cfg, load_search_spec(cfg.search_space))
        (result,) = [t.last_result for t in tune.ExperimentAnalysis(cfg.experiment_dir).trials]
    finally:
        ray.shutdown()
    return dict(result)


def bare_step(preset: str, resolution: int, steps: int) -> tuple[float, float]:
    """``gpu_step.py``'s trainable step for the configuration (seconds, peak GiB), in a fresh process."""
    with tempfile.NamedTemporaryFile(suffix=".md") as out:
        subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_step.py"), "--parts", "steps", "--preset", preset,
                        "--only", step_label(resolution), "--steps", str(steps), "--out", out.name],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        table = Path(out.name).read_text()
    found = re.search(rf"\| {re.escape(step_label(resolution))} \| ([\d.]+) s, ([\d.]+|nan) GiB", table)
    if not found:
        raise SystemExit(f"gpu_step.py printed no row for {step_label(resolution)!r}:\n{table}")
    return float(found.group(1)), float(found.group(2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=("full", "tiny"), default="full", help="tiny: a CPU dry run")
    parser.add_argument("--resolution", type=int, default=None, help="default: 672 (full), 224 (tiny)")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps of the trial and of the bare step")
    args = parser.parse_args(argv)
    if args.steps < 4:
        parser.error("--steps must be at least 4 (the driver's figure is the mean of the second half)")
    import torch

    gpu = args.preset == "full"
    if gpu and not torch.cuda.is_available():
        print("skipped: CUDA is not available on this machine (use --preset tiny for a CPU dry run)")
        return 0
    resolution = args.resolution or (672 if gpu else 224)
    device = torch.cuda.get_device_name(0) if gpu else "CPU"
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        report = driver_trial(Path(tmp), args.preset, resolution, args.steps, gpu)
        driver_wall = time.perf_counter() - started
    seconds, peak = bare_step(args.preset, resolution, args.steps)
    through = float(report["seconds_per_step"])
    driver_peak = float(report.get("gpu_peak_gib", float("nan")))
    table = "\n".join([
        f"{device}, torch {torch.__version__}, {args.preset} preset at {resolution} px, {step_label(resolution)}, "
        f"one image per step; the driver's trial: {args.steps} steps, validating 2 images every {args.steps // 2}",
        "",
        "| run | s/step | peak GPU memory | other |",
        "|---|---|---|---|",
        f"| bare step (`gpu_step.py`, median of {args.steps}) | {seconds:.3f} | {peak:.1f} GiB | |",
        f"| through the driver (mean of its last {args.steps - args.steps // 2} steps) | {through:.3f} "
        f"({through / seconds:.2f}x) | {driver_peak:.1f} GiB | inside the loop {float(report['elapsed_s']):.0f} s, "
        f"Tune's trial {float(report['time_total_s']):.0f} s, whole sweep {driver_wall:.0f} s |",
    ])
    print(table)
    append_benchmark(f"The {args.preset} preset through the sweep driver on one {'GPU' if gpu else 'CPU worker'}",
                     " ".join(["python bench/driver_gpu.py", *(argv if argv is not None else sys.argv[1:])]), table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
