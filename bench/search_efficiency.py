"""Search efficiency: the sweep's ASHA + TPE vs random search, on learning curves measured once.

1. **Curves** (the expensive part, cached): every point of :data:`GRID` (learning rates of the transformer and
   of the vision backbone) trains once with the tiny preset on the learning benchmark's synthetic set and
   settings (``bench/learning.py``: ``SETTINGS``, ``DATA``) for ``--steps`` steps, validating every
   ``--val-every``. Rows go to ``<out>/curves.csv`` as each point finishes; a rerun trains only the points
   missing there. ``--jobs`` points train at once (one torch thread each by default).
2. **Replay** (seconds per sweep): for each seed, two sweeps over the same grid through the sweep's own Tune
   machinery (``sweeps.stage2.make_tune_config``: the Optuna searcher with its seed, ASHA from the sweep
   config, one trial at a time as on a 2-GPU workstation) whose trials report their point's measured
   curve instead of training:

   - **ASHA + TPE**: the sweep default (``searcher.sampler: tpe``, ASHA with grace ``--grace`` and
     reduction ``--reduction``), once per ``--asha-metrics`` entry (what ASHA stops on: ``val_dice``, the
     sweep default, or ``val_presence_auroc``, the CPU demo's choice while Dice is still 0);
   - **random**: Optuna's ``RandomSampler`` with the same seed, every trial run to ``--steps`` (FIFO).

   Random gets ``--samples`` trials; its target is the best val Dice it reports, reached after R trial-steps.
   ASHA + TPE gets the same step budget (``--samples`` x ``--steps``; it may start more trials within it)
   and needs A trial-steps, counted in the order reports arrive, until a trial reports val Dice >= the target.
   Goal (issue 8): A / R <= 1/3, per seed.

The replay isolates the search algorithm: each grid point has one measured curve, so the training noise
between seeds of a point is not sampled (the table's curves are one draw). Not a timed test: run by hand.

    TORCHDYNAMO_DISABLE=1 .venv/bin/python bench/search_efficiency.py --out bench_out/search [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import append_benchmark  # noqa: E402
from bench.learning import DATA, SETTINGS  # noqa: E402

#: The searched grid: learning rates spanning 30x around the learning benchmark's 1e-3 (too low learns
#: nothing in the budget, too high is unstable): a search space a user would write for a new model.
GRID: dict[str, list[float]] = {"lr_transformer": [1e-4, 3e-4, 1e-3, 3e-3], "lr_vision": [1e-4, 1e-3]}
METRICS = ("val_dice", "val_ap75", "val_presence_auroc")
CURVE_COLUMNS = (*GRID, "step", *METRICS, "train_loss")
GOAL_RATIO = 1 / 3

Point = tuple[float, ...]
Curves = dict[Point, list[dict[str, float]]]


# ---- 1. curves ---------------------------------------------------------------------------------------------

def grid_points() -> list[Point]:
    """Every combination of :data:`GRID`'s values, in the order of its keys."""
    return list(itertools.product(*GRID.values()))


def read_curves(path: Path) -> Curves:
    """The curves in ``path`` (``CURVE_COLUMNS``), by grid point; empty if the file is absent."""
    curves: Curves = {}
    if not path.exists():
        return curves
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            point = tuple(float(row[name]) for name in GRID)
            curves.setdefault(point, []).append({k: float(row[k]) for k in ("step", *METRICS, "train_loss")})
    for rows in curves.values():
        rows.sort(key=lambda r: r["step"])
    return curves


def train_point(point: Point, data: dict[str, str], steps: int, val_every: int, threads: int) -> list[dict]:
    """Train the tiny preset at ``point`` for ``steps`` steps; one row per validation (runs in a child process)."""
    from trainables.config import TrialConfig
    from trainables.trial import run_trial

    values = {**SETTINGS, **data, **dict(zip(GRID, point)), "max_steps": steps, "val_every": val_every,
              "cpu_threads_per_worker": threads, "num_workers": 1, "seed": DATA["seed"]}
    rows: list[dict] = []

    def report(metrics: dict[str, Any], _checkpoint: Path | None) -> None:
        rows.append({"step": float(metrics["step"]), "train_loss": float(metrics.get("train_loss", math.nan)),
                     **{k: float(metrics.get(k, math.nan)) for k in METRICS}})

    run_trial(TrialConfig.from_dict(values, source="bench/search_efficiency.py"), report=report)
    return rows


def measure_curves(out: Path, steps: int, val_every: int, jobs: int, threads: int) -> Curves:
    """Train every grid point missing from ``<out>/curves.csv`` (``jobs`` at once), appending as each ends."""
    from data_prep.synthetic import generate_dataset

    path = out / "curves.csv"
    curves = read_curves(path)
    missing = [p for p in grid_points() if max((r["step"] for r in curves.get(p, [])), default=0) < steps]
    if not missing:
        return curves
    paths = generate_dataset(out / "data", DATA["train"], DATA["val"], DATA["size"], DATA["seed"])
    data = {"train_json": str(paths.train_json), "val_json": str(paths.val_json), "images_dir": str(paths.images_dir)}
    print(f"training {len(missing)} grid point(s) x {steps} steps, {jobs} at once, {threads} thread(s) each "
          f"-> {path}", flush=True)
    start = time.perf_counter()
    write_header = not path.exists()
    with path.open("a", newline="") as f, ProcessPoolExecutor(max_workers=jobs) as pool:
        writer = csv.DictWriter(f, fieldnames=CURVE_COLUMNS)
        if write_header:
            writer.writeheader()
        futures = {pool.submit(train_point, p, data, steps, val_every, threads): p for p in missing}
        for done, future in enumerate(as_completed(futures), 1):
            point = futures[future]
            rows = future.result()
            curves[point] = rows
            writer.writerows({**dict(zip(GRID, point)), **row} for row in rows)
            f.flush()
            best = max((r["val_dice"] for r in rows), default=math.nan)
            print(f"  [{done}/{len(missing)}] {describe(point)}: best val_dice {best:.3f}, final "
                  f"{rows[-1]['val_dice']:.3f} at step {int(rows[-1]['step'])} ({time.perf_counter() - start:.0f} s)",
                  flush=True)
    return curves


def describe(point: Point) -> str:
    return ", ".join(f"{name}={value:g}" for name, value in zip(GRID, point))


# ---- 2. replay ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SweepTrace:
    """One replayed sweep: every report as (cumulative trial-steps spent, val_dice), in arrival order."""

    method: str
    seed: int
    trials: int
    reports: list[tuple[int, float]]

    @property
    def steps_spent(self) -> int:
        return self.reports[-1][0] if self.reports else 0

    def best(self) -> tuple[float, int]:
        """The best val_dice and the trial-steps spent when it was first reported."""
        best, at = -math.inf, 0
        for spent, dice in self.reports:
            if dice > best:
                best, at = dice, spent
        return best, at

    def steps_to_reach(self, target: float, budget: int) -> int | None:
        """Trial-steps spent when val_dice >= ``target`` was first reported within ``budget``; None if never."""
        return next((spent for spent, dice in self.reports if dice >= target and spent <= budget), None)


def sweep_trace(method: str, seed: int, reports: list[dict]) -> SweepTrace:
    """Order a sweep's reports by arrival and charge each trial the steps it ran since its previous report."""
    last_step: dict[str, float] = {}
    spent, out = 0, []
    for r in sorted(reports, key=lambda r: r["reported_ns"]):
        spent += int(r["step"] - last_step.get(r["trial_id"], 0))
        last_step[r["trial_id"]] = r["step"]
        out.append((spent, r["val_dice"]))
    return SweepTrace(method, seed, len(last_step), out)


def replay_trainable(curves: Curves) -> Callable[[dict], None]:
    """A Tune function trainable that reports its grid point's measured curve, one validation at a time."""

    def replay(config: dict) -> None:
        from ray import tune

        point = tuple(float(config[name]) for name in GRID)
        for row in curves[point]:
            tune.report({**row, "reported_ns": time.time_ns()})

    return replay


def asha_metric(method: str) -> str | None:
    """What an "asha+tpe:<metric>" sweep's ASHA stops on; None for "random"."""
    _, sep, metric = method.partition(":")
    return metric if sep else None


def replay_sweep(curves: Curves, method: str, seed: int, args: argparse.Namespace, storage: Path) -> SweepTrace:
    """Run one sweep of ``method`` ("random" or "asha+tpe:<metric ASHA stops on>") whose trials replay ``curves``."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from search_spaces import parse_search_spec
    from sweeps.config import parse_sweep_config
    from sweeps.stage2 import make_tune_config

    metric = asha_metric(method)
    asha = metric is not None
    name = f"{method.replace('+', '_').replace(':', '-')}-seed{seed}"
    cfg = parse_sweep_config({
        "name": name, "storage_path": str(storage), "search_space": "(bench grid)",
        "num_samples": args.samples * (args.asha_samples_factor if asha else 1), "max_concurrent_trials": 1,
        "trial": {**SETTINGS, "max_steps": args.steps, "val_every": args.val_every},
        "scheduler": {"grace_period": args.grace, "reduction_factor": args.reduction,
                      "metric": metric or "val_dice"},
        "searcher": {"sampler": "tpe" if asha else "random", "seed": seed},
    }, source="bench/search_efficiency.py")
    spec = parse_search_spec({"params": {k: {"type": "choice", "values": v} for k, v in GRID.items()}},
                             source="bench/search_efficiency.py GRID")
    tune_config = make_tune_config(cfg, spec)
    if not asha:
        tune_config.scheduler = FIFOScheduler()
    results = tune.Tuner(replay_trainable(curves), param_space=spec.params, tune_config=tune_config,
                         run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0)).fit()
    reports = []
    for result in results:
        frame = result.metrics_dataframe
        if frame is not None and not frame.empty:
            reports += frame[["trial_id", "step", "val_dice", "reported_ns"]].to_dict("records")
    return sweep_trace(method, seed, reports)


def compare(random: SweepTrace, asha: SweepTrace, budget: int) -> dict[str, Any]:
    """The issue's figure for one seed: ASHA + TPE's trial-steps to random's best val Dice, over random's."""
    target, random_steps = random.best()
    asha_steps = asha.steps_to_reach(target, budget)
    ratio = asha_steps / random_steps if asha_steps is not None and random_steps else math.inf
    return {"seed": random.seed, "method": asha.method, "target": target, "random_steps": random_steps,
            "random_trials": random.trials, "asha_steps": asha_steps, "asha_trials": asha.trials,
            "asha_spent": min(asha.steps_spent, budget), "asha_best": asha.best()[0], "ratio": ratio}


def results_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """One row per (ASHA metric, seed) and the median ratio per ASHA metric."""
    lines = [
        "| ASHA stops on | seed | random: best val Dice (target) | random: trial-steps to it | ASHA+TPE: trial-steps "
        "to target | ASHA+TPE: trials started, best val Dice in budget | ratio (goal <= 0.33) |",
        "|---|---|---|---|---|---|---|",
    ]
    for metric, ratio in median_ratios(rows).items():
        for r in (r for r in rows if asha_metric(r["method"]) == metric):
            reached = f"{r['asha_steps']}" if r["asha_steps"] is not None else "not reached"
            lines.append(f"| {metric} | {r['seed']} | {r['target']:.3f} | {r['random_steps']} | {reached} "
                         f"| {r['asha_trials']}, {r['asha_best']:.3f} | {r['ratio']:.2f} |")
        lines.append(f"| {metric} | median | | | | | **{ratio:.2f}** |")
    lines.append(f"\nBudget per sweep: {args.samples} x {args.steps} = {args.samples * args.steps} trial-steps "
                 f"(random: {args.samples} trials to the end; ASHA + TPE: up to "
                 f"{args.samples * args.asha_samples_factor} trials within the same steps); ASHA grace {args.grace}, "
                 f"reduction {args.reduction}; one trial at a time; grid {GRID}.")
    return "\n".join(lines)


def median_ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The median ratio over seeds, per ASHA metric."""
    by_metric: dict[str, list[float]] = {}
    for r in rows:
        by_metric.setdefault(asha_metric(r["method"]), []).append(r["ratio"])
    return {metric: sorted(ratios)[len(ratios) // 2] for metric, ratios in by_metric.items()}


def curves_table(curves: Curves) -> str:
    steps = sorted({int(r["step"]) for rows in curves.values() for r in rows})
    lines = ["| grid point | " + " | ".join(f"{s}" for s in steps) + " | best |", "|---" * (len(steps) + 2) + "|"]
    for point in grid_points():
        rows = {int(r["step"]): r for r in curves.get(point, [])}
        cells = [f"{rows[s]['val_dice']:.2f}/{rows[s]['val_presence_auroc']:.2f}" if s in rows else "" for s in steps]
        best = max((r["val_dice"] for r in rows.values()), default=math.nan)
        lines.append(f"| {describe(point)} | " + " | ".join(cells) + f" | {best:.3f} |")
    return "val Dice / presence AUROC by step:\n\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out/search_efficiency"),
                        help="folder of curves.csv (reused) and the measured data")
    parser.add_argument("--steps", type=int, default=800, help="steps of a full trial (max_t)")
    parser.add_argument("--val-every", type=int, default=100, help="steps between validations")
    parser.add_argument("--jobs", type=int, default=2, help="grid points trained at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per point")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="searcher seeds")
    parser.add_argument("--samples", type=int, default=8, help="random search's trials")
    parser.add_argument("--asha-samples-factor", type=int, default=3,
                        help="ASHA + TPE may start this many times more trials within the same step budget")
    parser.add_argument("--asha-metrics", nargs="+", default=["val_dice", "val_presence_auroc"],
                        help="what ASHA stops on: one ASHA + TPE sweep per metric and seed")
    parser.add_argument("--grace", type=int, default=100, help="ASHA grace period (steps)")
    parser.add_argument("--reduction", type=int, default=3, help="ASHA reduction factor")
    parser.add_argument("--no-append", action="store_true", help="do not append the tables to BENCHMARKS.md")
    args = parser.parse_args(argv)
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    args.out.mkdir(parents=True, exist_ok=True)

    curves = measure_curves(args.out, args.steps, args.val_every, args.jobs, args.threads)
    print(curves_table(curves), flush=True)

    import ray

    from sweeps import ray_compat

    ray_compat.init_ray(None, "127.0.0.1", ray_compat.worker_env_vars(0.5))
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="search_efficiency_") as storage:
            for seed in args.seeds:
                random = replay_sweep(curves, "random", seed, args, Path(storage))
                for metric in args.asha_metrics:
                    asha = replay_sweep(curves, f"asha+tpe:{metric}", seed, args, Path(storage))
                    rows.append(compare(random, asha, budget=args.samples * args.steps))
                    print(f"seed {seed}: {rows[-1]}", flush=True)
    finally:
        ray.shutdown()
    table = results_table(rows, args)
    print(table)
    if not args.no_append:
        append_benchmark("Search efficiency: ASHA + TPE vs random (replayed measured curves)",
                         " ".join(["python bench/search_efficiency.py", *(argv or sys.argv[1:])]),
                         curves_table(curves) + "\n\n" + table)
    medians = median_ratios(rows)
    for metric, median in medians.items():
        print(("PASS" if median <= GOAL_RATIO else "FAIL") + f": ASHA on {metric} + TPE: median ratio {median:.2f} "
              f"(goal <= {GOAL_RATIO:.2f})")
    return 0 if min(medians.values()) <= GOAL_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
