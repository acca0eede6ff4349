"""Two GPUs (here: two CPU workers), two ways: one trial on both through Gloo, or two one-worker trials at once.

    python bench/trial_layouts.py [--trials 2] [--steps 40] [--resolution 224]

Runs the real sweep driver (``sweeps.stage2.run_sweep``) twice on the same machine, same tiny-preset trials:

- ``one trial x 2 workers``: ``trial.num_workers: 2`` (DDP over Gloo, one all-reduce per step), trials one
  after another;
- ``2 trials x 1 worker``: ``trial.num_workers: 1`` with ``grad_accum_steps: 2`` (the same 2 images per
  optimizer step), ``max_concurrent_trials`` derived by the driver (what the machine fits: 2), no all-reduce.

and prints, for each, the sweep's wall time (``ray.init`` excluded), trial-steps per hour (optimizer steps of
all trials together, each of 2 images) and images per hour, with the ratio of the second
layout to the first. Appends the table to BENCHMARKS-LOG.md with the machine and the date. On the CPU, a
worker is 1 thread; on a GPU machine the same layouts use one GPU per worker (``--gpu``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from bench.common import append_benchmark  # noqa: E402

#: Both train 2 images per optimizer step: two workers with one image each, or one worker accumulating two.
LAYOUTS = {"one trial x 2 workers": {"num_workers": 2, "grad_accum_steps": 1, "max_concurrent_trials": 1},
           "2 trials x 1 worker": {"num_workers": 1, "grad_accum_steps": 2, "max_concurrent_trials": None}}


def sweep_config(root: Path, dataset, name: str, layout: dict, args: argparse.Namespace):
    from sweeps.config import parse_sweep_config

    space = root / "space.yaml"
    space.write_text(yaml.safe_dump({"params": {"lr_transformer": {"type": "loguniform", "low": 1e-4,
                                                                    "high": 1e-3}}}))
    return parse_sweep_config({
        "name": name, "storage_path": str(root / "sweeps"), "search_space": str(space),
        "num_samples": args.trials, "max_concurrent_trials": layout["max_concurrent_trials"],
        "trial": {**dataset.trial_fields(), "max_steps": args.steps, "val_every": args.steps, "warmup_steps": 1,
                  "resolution": args.resolution, "num_workers": layout["num_workers"], "use_gpu": args.gpu,
                  "grad_accum_steps": layout["grad_accum_steps"],
                  "cpu_threads_per_worker": 1, "val_max_images": 1},
        "scheduler": {"grace_period": args.steps, "reduction_factor": 2},
        "checkpoint": {"num_to_keep": 1},
    }, source="bench/trial_layouts.py")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=2, help="trials per layout")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per trial")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker")
    args = parser.parse_args(argv)
    import ray

    from data_prep.synthetic import generate_dataset
    from search_spaces import load_search_spec
    from sweeps import ray_compat
    from sweeps.stage2 import run_sweep

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dataset = generate_dataset(root / "data", n_train=16, n_val=1, size=args.resolution, seed=0)
        ray_compat.init_ray(None, "127.0.0.1", ray_compat.worker_env_vars(0.5))
        try:
            for index, (label, layout) in enumerate(LAYOUTS.items()):
                cfg = sweep_config(root, dataset, f"layout-{index}", layout, args)
                start = time.perf_counter()
                outcome = run_sweep(cfg, load_search_spec(cfg.search_space))
                wall = time.perf_counter() - start
                steps = sum(t.steps for t in outcome.sweep.trials)
                rows.append((label, wall, steps, steps * layout["num_workers"] * layout["grad_accum_steps"]))
        finally:
            ray.shutdown()
    lines = ["| layout | sweep wall time | trial-steps | trial-steps per hour | images per hour |",
             "|---|---|---|---|---|"]
    lines += [f"| {label} | {wall:.1f} s | {steps} | {3600 * steps / wall:.0f} | {3600 * images / wall:.0f} |"
              for label, wall, steps, images in rows]
    (_, wall_a, steps_a, images_a), (_, wall_b, steps_b, images_b) = rows
    lines.append(f"| ratio (2 trials x 1 / one trial x 2) | | | {(steps_b / wall_b) / (steps_a / wall_a):.2f}x "
                 f"| {(images_b / wall_b) / (images_a / wall_a):.2f}x |")
    table = "\n".join(lines)
    print(table)
    append_benchmark(f"Trial layouts: one trial x 2 workers vs 2 trials x 1 worker ({args.steps} steps, "
                     f"{args.resolution} px, {'GPU' if args.gpu else 'CPU, 1 thread'} per worker)",
                     " ".join(["python bench/trial_layouts.py", *(argv or sys.argv[1:])]), table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
