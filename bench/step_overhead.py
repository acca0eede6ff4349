"""Steady-state step time of the trial loop inside a Ray Train worker vs the same loop in a bare process.

Same data, model, seed and loop (``trainables.trial.run_trial``); the Ray run has one worker
(``TorchTrainer``, Gloo process group of 1) so the only difference is Ray's machinery around the loop.
Each run reports ``seconds_per_step`` every ``--val-every`` steps; the first window (warm-up, lazy
initialisation) is dropped and the median of the others is compared. Goal: ratio bare/Ray >= 0.97.
Also measured, before the Ray run: the share of the machine's CPU that Ray's own processes use while idle
(a loop using every core cannot run faster than 1 minus that share inside Ray).

    python bench/step_overhead.py                               # CPU, tiny preset, 224 px
    python bench/step_overhead.py --preset full --resolution 672 --gpu   # on a GPU machine

Prints a table and appends it to BENCHMARKS-LOG.md with the machine and the date.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import append_benchmark  # noqa: E402


def trial_config(args, dataset):
    from trainables.config import TrialConfig

    return TrialConfig(**dataset.trial_fields(), preset=args.preset, resolution=args.resolution,
                       max_steps=args.steps, val_every=args.val_every, warmup_steps=2, num_workers=1,
                       lr_transformer=1e-4, lr_vision=1e-4, lr_language=1e-4, use_gpu=args.gpu,
                       cpu_threads_per_worker=args.threads, val_max_images=2)


def steady_seconds(reports: list[dict]) -> float:
    """Median ``seconds_per_step`` of all windows but the first."""
    return statistics.median(r["seconds_per_step"] for r in reports[1:])


def run_bare(cfg) -> list[dict]:
    import torch

    from trainables.trial import run_trial

    reports: list[dict] = []
    device = torch.device("cuda" if cfg.use_gpu else "cpu")
    run_trial(cfg, device=device, report=lambda metrics, _checkpoint: reports.append(metrics))
    return reports


def run_in_ray(cfg, storage: str) -> tuple[list[dict], float]:
    """The Ray run's reports and the CPU share of Ray's idle processes, measured before it."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from sweeps import ray_compat
    from trainables.train_loop import train_loop_per_worker

    ray_compat.init_ray(None, "127.0.0.1", ray_compat.worker_env_vars(0.5))
    try:
        idle_share = daemons_cpu_share()
        trainer = TorchTrainer(
            train_loop_per_worker, train_loop_config={"trial": cfg.to_dict()},
            scaling_config=ScalingConfig(num_workers=1, use_gpu=cfg.use_gpu,
                                         resources_per_worker={"CPU": cfg.cpu_threads_per_worker}),
            torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
            run_config=RunConfig(name="step-overhead", storage_path=storage))
        history = trainer.fit().metrics_dataframe
    finally:
        ray.shutdown()
    return history.to_dict("records"), idle_share


def daemons_cpu_share(seconds: float = 20.0) -> float:
    """The share of this machine's CPU that the local Ray's own processes (GCS, raylet, dashboard, agents,
    idle workers: the driver's descendants) use over ``seconds`` while nothing runs on it."""
    import psutil

    def cpu_seconds(processes) -> dict[int, float]:
        out = {}
        for process in processes:
            try:
                times = process.cpu_times()
                out[process.pid] = times.user + times.system
            except psutil.Error:
                pass
        return out

    time.sleep(5)  # let start-up settle
    processes = psutil.Process().children(recursive=True)
    before, start = cpu_seconds(processes), time.perf_counter()
    time.sleep(seconds)
    after, elapsed = cpu_seconds(processes), time.perf_counter() - start
    used = sum(after[pid] - before[pid] for pid in after if pid in before)
    return used / (elapsed * (os.cpu_count() or 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", choices=["tiny", "full"])
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--val-every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of the loop (both runs)")
    parser.add_argument("--gpu", action="store_true", help="run the loop on CUDA (skips cleanly without it)")
    args = parser.parse_args(argv)
    import torch

    if args.gpu and not torch.cuda.is_available():
        print("skipped: --gpu given but CUDA is not available on this machine")
        return 0
    from data_prep.synthetic import generate_dataset

    with tempfile.TemporaryDirectory() as tmp:
        dataset = generate_dataset(Path(tmp) / "data", n_train=16, n_val=2, size=args.resolution, seed=0)
        cfg = trial_config(args, dataset)
        start = time.perf_counter()
        bare = steady_seconds(run_bare(cfg))
        bare_wall = time.perf_counter() - start
        start = time.perf_counter()
        ray_reports, idle_share = run_in_ray(cfg, str(Path(tmp) / "ray"))
        ray_run = steady_seconds(ray_reports)
        ray_wall = time.perf_counter() - start
    ratio = bare / ray_run
    table = "\n".join([
        f"| run | s/step (median, steady state) | wall for {args.steps} steps incl. start-up |",
        "|---|---|---|",
        f"| bare process | {bare:.3f} | {bare_wall:.1f} s |",
        f"| Ray Train worker (1 worker, {'NCCL' if args.gpu else 'Gloo'}) | {ray_run:.3f} | {ray_wall:.1f} s |",
        f"| ratio bare / Ray (goal >= 0.97) | {ratio:.3f} | |",
        f"| Ray's own processes while idle (before the run) | {idle_share:.1%} of the machine's "
        f"{os.cpu_count()} CPUs | |",
    ])
    print(table)
    append_benchmark(f"Step overhead: {args.preset} preset, {args.resolution} px, "
                     f"{'GPU' if args.gpu else f'CPU {args.threads} threads'}",
                     " ".join(["python bench/step_overhead.py", *(argv or sys.argv[1:])]), table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
