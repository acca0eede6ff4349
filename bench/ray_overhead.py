"""Fixed per-trial cost of running each trial as its own Ray Train run inside a Tune sweep.

Runs the real sweep driver (``sweeps.stage2.run_sweep``: Tune + Optuna + one ``TorchTrainer`` per trial
with 2 Gloo workers) on short trials of the tiny preset, then compares each trial's wall time as Tune saw
it (``time_total_s`` of the trial function) with the time spent inside the training loop itself
(``elapsed_s`` of its last report: model build, data, steps, validation). The difference is Ray's fixed
cost per trial: placement group, worker actors (importing torch), Gloo group, teardown. Goal <= 15 s.

    python bench/ray_overhead.py [--trials 3] [--workers 2]

Prints a table and appends it to BENCHMARKS-LOG.md with the machine and the date.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from bench.common import append_benchmark  # noqa: E402


def sweep_config(root: Path, dataset, trials: int, workers: int):
    from sweeps.config import parse_sweep_config

    space = root / "space.yaml"
    space.write_text(yaml.safe_dump({"params": {"lr_transformer": {"type": "loguniform", "low": 1e-4,
                                                                    "high": 1e-3}}}))
    return parse_sweep_config({
        "name": "ray-overhead", "storage_path": str(root / "sweeps"), "search_space": str(space),
        "num_samples": trials, "max_concurrent_trials": 1,
        "trial": {**dataset.trial_fields(), "max_steps": 4, "val_every": 4, "warmup_steps": 1,
                  "num_workers": workers, "cpu_threads_per_worker": 1, "val_max_images": 1},
        "scheduler": {"grace_period": 4, "reduction_factor": 2},
        "checkpoint": {"num_to_keep": 1},
    }, source="bench/ray_overhead.py")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    import ray

    from data_prep.synthetic import generate_dataset
    from search_spaces import load_search_spec
    from sweeps import ray_compat
    from sweeps.stage2 import run_sweep

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dataset = generate_dataset(root / "data", n_train=8, n_val=1, size=224, seed=0)
        cfg = sweep_config(root, dataset, args.trials, args.workers)
        start = time.perf_counter()
        ray_compat.init_ray(None, "127.0.0.1", ray_compat.worker_env_vars(0.5))
        ray_start = time.perf_counter() - start
        try:
            from ray import tune

            run_sweep(cfg, load_search_spec(cfg.search_space))
            results = tune.ExperimentAnalysis(cfg.experiment_dir).trials
            rows = [(t.last_result["time_total_s"], t.last_result["elapsed_s"]) for t in results]
        finally:
            ray.shutdown()
    overheads = [total - inside for total, inside in rows]
    lines = ["| trial | wall (Tune) | inside the loop | fixed Ray cost |", "|---|---|---|---|"]
    lines += [f"| {i + 1} | {total:.1f} s | {inside:.1f} s | {total - inside:.1f} s |"
              for i, (total, inside) in enumerate(rows)]
    lines += [f"| median | | | {statistics.median(overheads):.1f} s (goal <= 15 s) |",
              f"| once per sweep: ray.init | | | {ray_start:.1f} s |"]
    table = "\n".join(lines)
    print(table)
    append_benchmark(f"Ray per-trial overhead: {args.workers} Gloo workers per trial, trials one at a time",
                     " ".join(["python bench/ray_overhead.py", *(argv or sys.argv[1:])]), table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
