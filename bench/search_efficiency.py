"""Search efficiency: the sweep's ASHA + TPE vs random search, on learning curves measured once.

1. **Curves** (the expensive part, cached): every point of the grid (``--grid``, by default :data:`GRID`:
   learning rates of the transformer and of the vision backbone) trains once with the tiny preset on the
   learning benchmark's synthetic set and settings (``bench/learning.py``: ``SETTINGS``, ``DATA``) for
   ``--steps`` steps, validating every ``--val-every``. ``--init scratch`` starts each point from random
   weights; ``--init pretrained`` from a model first trained with ``SETTINGS`` for ``--pretrain-steps`` (N) on
   another synthetic set (``<out>/pretrained-N/model.pt``, cached): Stage 2 starts from Phase 1 weights, not
   from scratch, and a model that already detects something has a nonzero Dice for ASHA to rank from its
   first rung. Rows go to ``<out>/curves-scratch.csv`` or ``<out>/curves-pretrained-N.csv`` as each point
   finishes; a rerun trains only the points missing there.
   ``--jobs`` points train at once (one torch thread each by default).
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

   The table also gives ASHA's **floor**: the fewest trial-steps any stopping rule could need to reach the
   target if it saw random's trials in random's order (TPE's first 10 trials are exactly those, drawn by
   the same seeded sampler): ASHA runs its first trial to the end (it has nothing to compare it with at any
   rung), and at best stops every other trial at its first rung (``--grace``). A floor above 1/3 of R
   means no metric or rung setting can meet the goal for that seed; only a larger search (where random
   needs more trials) or a smaller grace can.

The replay isolates the search algorithm: each grid point has one measured curve, so the training noise
between seeds of a point is not sampled (the table's curves are one draw). Not a timed test: run by hand.

    TORCHDYNAMO_DISABLE=1 .venv/bin/python bench/search_efficiency.py --out bench_out/search [--seeds 0 1 2]
        [--init pretrained --grid lr_transformer=3e-5,1e-4,3e-4,1e-3,3e-3,1e-2 lr_vision=1e-5,1e-4,1e-3]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
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

Grid = dict[str, list[float]]
Point = tuple[float, ...]
Curves = dict[Point, list[dict[str, float]]]

#: The default grid: learning rates spanning 30x around the learning benchmark's 1e-3 (too low learns
#: nothing in the budget, too high is unstable): a search space a user would write for a new model.
GRID: Grid = {"lr_transformer": [1e-4, 3e-4, 1e-3, 3e-3], "lr_vision": [1e-4, 1e-3]}
METRICS = ("val_dice", "val_ap75", "val_presence_auroc")
VALUE_COLUMNS = ("step", *METRICS, "train_loss")
GOAL_RATIO = 1 / 3
#: the pretrained start's synthetic set: the learning benchmark's, drawn with another seed (other images)
PRETRAIN_DATA = {**DATA, "seed": DATA["seed"] + 1}


# ---- 1. curves ---------------------------------------------------------------------------------------------

def parse_grid(items: list[str]) -> Grid:
    """``["name=v1,v2", ...]`` -> ``{name: [v1, v2]}``; each name must be a float field of the trial config."""
    from trainables.config import TrialConfig

    fields = {f.name: f.type for f in dataclasses.fields(TrialConfig)}
    grid: Grid = {}
    for item in items:
        name, sep, values = item.partition("=")
        try:
            if not sep or fields.get(name) not in (float, "float"):
                raise ValueError
            grid[name] = [float(v) for v in values.split(",")]
        except ValueError:
            raise SystemExit(f"--grid {item!r}: expected NAME=V1,V2,... with NAME a float trial setting "
                             "and numbers as values") from None
    return grid


def grid_points(grid: Grid) -> list[Point]:
    """Every combination of ``grid``'s values, in the order of its keys."""
    return list(itertools.product(*grid.values()))


def read_curves(path: Path, names: list[str]) -> Curves:
    """The curves in ``path`` (``names`` then :data:`VALUE_COLUMNS`), by grid point; empty if it is absent.

    A file of another grid (other columns) is refused: its rows cannot be read as this grid's, nor appended to.
    """
    curves: Curves = {}
    if not path.exists():
        return curves
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != [*names, *VALUE_COLUMNS]:
            raise SystemExit(f"{path}: columns {reader.fieldnames} are not this grid's {[*names, *VALUE_COLUMNS]}; "
                             "give another --out (or remove the file to measure its curves again)")
        for row in reader:
            point = tuple(float(row[name]) for name in names)
            curves.setdefault(point, []).append({k: float(row[k]) for k in VALUE_COLUMNS})
    for rows in curves.values():
        rows.sort(key=lambda r: r["step"])
    return curves


def dataset(folder: Path, spec: dict[str, int]) -> dict[str, str]:
    """The trial settings naming a synthetic set generated in ``folder`` (reused when already there)."""
    from data_prep.layout import DatasetPaths
    from data_prep.synthetic import generate_dataset

    paths = DatasetPaths(folder)
    if not (paths.train_json.is_file() and paths.val_json.is_file()):  # generate_dataset refuses an existing folder
        paths = generate_dataset(folder, spec["train"], spec["val"], spec["size"], spec["seed"])
    return paths.trial_fields()


def train(values: dict[str, Any], keep: Path | None = None) -> list[dict]:
    """Train the tiny preset with ``SETTINGS`` + ``values``; one row per validation (runs in a child process).

    ``keep``: where to copy the final checkpoint's weights (native format), if anywhere.
    """
    from trainables.checkpoints.files import atomic_torch_save
    from trainables.checkpoints.trial import read_model_state
    from trainables.config import TrialConfig
    from trainables.trial import run_trial

    cfg = TrialConfig.from_dict({**SETTINGS, "num_workers": 1, "seed": DATA["seed"], **values},
                                source="bench/search_efficiency.py")
    rows: list[dict] = []

    def report(metrics: dict[str, Any], checkpoint: Path | None) -> None:
        rows.append({"step": float(metrics["step"]), "train_loss": float(metrics.get("train_loss", math.nan)),
                     **{k: float(metrics.get(k, math.nan)) for k in METRICS}})
        if keep is not None and checkpoint is not None and metrics["step"] == cfg.max_steps:
            atomic_torch_save(read_model_state(checkpoint), keep)  # whole, were its frozen part shared

    run_trial(cfg, report=report)
    return rows


def pretrain(out: Path, steps: int, threads: int) -> Path:
    """The pretrained start: ``SETTINGS`` trained for ``steps`` on :data:`PRETRAIN_DATA` (cached in ``out``)."""
    weights = out / f"pretrained-{steps}" / "model.pt"
    if not weights.exists():
        print(f"pretraining the start model for {steps} steps on another synthetic set -> {weights}", flush=True)
        rows = train({**dataset(out / "pretrain_data", PRETRAIN_DATA), "max_steps": steps, "val_every": steps,
                      "cpu_threads_per_worker": threads}, keep=weights)
        print(f"  its val Dice on its own set: {rows[-1]['val_dice']:.3f}", flush=True)
    return weights


def measure_curves(out: Path, grid: Grid, start: str, start_weights: Callable[[], Path | None], steps: int,
                   val_every: int, jobs: int, threads: int) -> Curves:
    """Train every grid point missing from its curves file, ``<out>/curves-<start>.csv`` (``jobs`` at once),
    appending as each ends.

    ``start``: ``scratch`` or ``pretrained-N``; ``start_weights``: gives the weights every point starts from
    (None: random ones), called only when some point is missing (pretraining is not needed for cached curves).
    """
    path = out / f"curves-{start}.csv"
    curves = read_curves(path, list(grid))
    missing = [p for p in grid_points(grid) if max((r["step"] for r in curves.get(p, [])), default=0) < steps]
    if not missing:
        return curves
    init = start_weights()
    common = {**dataset(out / "data", DATA), "max_steps": steps, "val_every": val_every,
              "cpu_threads_per_worker": threads, "checkpoint": str(init) if init else None}
    print(f"training {len(missing)} grid point(s) x {steps} steps, {jobs} at once, {threads} thread(s) each "
          f"-> {path}", flush=True)
    start = time.perf_counter()
    write_header = not path.exists()
    with path.open("a", newline="") as f, ProcessPoolExecutor(max_workers=jobs) as pool:
        writer = csv.DictWriter(f, fieldnames=[*grid, *VALUE_COLUMNS])
        if write_header:
            writer.writeheader()
        futures = {pool.submit(train, {**common, **dict(zip(grid, p))}): p for p in missing}
        for done, future in enumerate(as_completed(futures), 1):
            point = futures[future]
            rows = future.result()
            curves[point] = rows
            writer.writerows({**dict(zip(grid, point)), **row} for row in rows)
            f.flush()
            best = max((r["val_dice"] for r in rows), default=math.nan)
            print(f"  [{done}/{len(missing)}] {describe(grid, point)}: best val_dice {best:.3f}, final "
                  f"{rows[-1]['val_dice']:.3f} at step {int(rows[-1]['step'])} ({time.perf_counter() - start:.0f} s)",
                  flush=True)
    return curves


def describe(grid: Grid, point: Point) -> str:
    return ", ".join(f"{name}={value:g}" for name, value in zip(grid, point))


# ---- 2. replay ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SweepTrace:
    """One replayed sweep: every report as (cumulative trial-steps spent, val_dice), in arrival order, and how
    each trial ended (grid point, last step, last val_dice) in the order the trials first reported."""

    method: str
    seed: int
    trials: int
    reports: list[tuple[int, float]]
    ends: tuple[tuple[Point, int, float], ...] = ()

    @property
    def order(self) -> tuple[Point, ...]:
        """The trials' grid points in the order they started."""
        return tuple(point for point, _, _ in self.ends)

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

    def best_within(self, budget: int) -> float:
        """The best val_dice reported within ``budget`` trial-steps (-inf if none)."""
        return max((dice for spent, dice in self.reports if spent <= budget), default=-math.inf)

    def steps_to_reach(self, target: float, budget: int) -> int | None:
        """Trial-steps spent when val_dice >= ``target`` was first reported within ``budget``; None if never."""
        return next((spent for spent, dice in self.reports if dice >= target and spent <= budget), None)


def sweep_trace(method: str, seed: int, reports: list[dict]) -> SweepTrace:
    """Order a sweep's reports by arrival and charge each trial the steps it ran since its previous report.

    A report may name its trial's grid point (``point``); the trace then records how each trial ended.
    """
    last_step: dict[str, float] = {}
    ends: dict[str, tuple[Point, int, float]] = {}  # insertion order: the order the trials started
    spent, out = 0, []
    for r in sorted(reports, key=lambda r: r["reported_ns"]):
        spent += int(r["step"] - last_step.get(r["trial_id"], 0))
        last_step[r["trial_id"]] = r["step"]
        out.append((spent, r["val_dice"]))
        if "point" in r:
            ends[r["trial_id"]] = (r["point"], int(r["step"]), r["val_dice"])
    return SweepTrace(method, seed, len(last_step), out, tuple(ends.values()))


def trials_summary(trace: SweepTrace, grid: Grid) -> str:
    """How often each (grid point, last step) ended a trial of ``trace``: what was stopped where, what repeated."""
    counts: dict[tuple[Point, int], list[float]] = {}
    for point, step, dice in trace.ends:
        counts.setdefault((point, step), []).append(dice)
    lines = [f"{trace.method}, seed {trace.seed}: {trace.trials} trials (grid point: times x last step, val Dice)"]
    for (point, step), dices in sorted(counts.items(), key=lambda item: (-len(item[1]), item[0])):
        lines.append(f"  {describe(grid, point)}: {len(dices)} x to step {step} ({dices[-1]:.3f})")
    return "\n".join(lines)


def asha_floor(order: tuple[Point, ...], curves: Curves, target: float, max_t: int, grace: int) -> int | None:
    """The fewest trial-steps to a val Dice >= ``target`` for ASHA run one trial at a time over ``order``.

    ASHA cannot stop its first trial (a rung's first result has nothing to be compared with), so it costs
    ``max_t`` unless it reaches the target itself; every later trial costs at least ``grace`` (its first
    rung) unless it is the one that reaches the target. None: no trial in ``order`` reaches it by ``max_t``.
    """
    spent, floor = 0, None
    for i, point in enumerate(order):
        reach = next((int(r["step"]) for r in curves[point] if r["val_dice"] >= target and r["step"] <= max_t), None)
        if reach is not None and (floor is None or spent + reach < floor):
            floor = spent + reach
        spent += max_t if i == 0 else grace
    return floor


def replay_trainable(curves: Curves, names: list[str], max_t: int) -> Callable[[dict], None]:
    """A Tune function trainable that reports its grid point's measured curve up to ``max_t``, one validation at
    a time."""

    def replay(config: dict) -> None:
        from ray import tune

        point = tuple(float(config[name]) for name in names)
        for row in curves[point]:
            if row["step"] <= max_t:
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
    spec = parse_search_spec({"params": {k: {"type": "choice", "values": v} for k, v in args.grid.items()}},
                             source="bench/search_efficiency.py --grid")
    tune_config = make_tune_config(cfg, spec)
    if not asha:
        tune_config.scheduler = FIFOScheduler()
    results = tune.Tuner(replay_trainable(curves, list(args.grid), args.steps), param_space=spec.params,
                         tune_config=tune_config,
                         run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0)).fit()
    reports = []
    for result in results:
        frame = result.metrics_dataframe
        if frame is not None and not frame.empty:
            point = tuple(float(result.config[name]) for name in args.grid)
            reports += [{**r, "point": point}
                        for r in frame[["trial_id", "step", "val_dice", "reported_ns"]].to_dict("records")]
    return sweep_trace(method, seed, reports)


def compare(random: SweepTrace, asha: SweepTrace, budget: int, floor: int | None = None) -> dict[str, Any]:
    """The issue's figure for one seed: ASHA + TPE's trial-steps to random's best val Dice, over random's.

    ``floor``: :func:`asha_floor` for random's trials and target, reported as a ratio too. Also each sweep's
    best val Dice within a third of the budget (what the goal's 1/3 would buy).
    """
    target, random_steps = random.best()
    asha_steps = asha.steps_to_reach(target, budget)

    def ratio(steps: int | None) -> float:
        return steps / random_steps if steps is not None and random_steps else math.inf

    return {"seed": random.seed, "method": asha.method, "target": target, "random_steps": random_steps,
            "random_trials": random.trials, "asha_steps": asha_steps, "asha_trials": asha.trials,
            "asha_spent": min(asha.steps_spent, budget), "asha_best": asha.best()[0], "ratio": ratio(asha_steps),
            "floor_ratio": ratio(floor), "random_third": random.best_within(budget // 3),
            "asha_third": asha.best_within(budget // 3)}


def results_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """One row per (ASHA metric, seed) and the median ratio per ASHA metric."""
    lines = [
        "| ASHA stops on | seed | random: best val Dice (target) | random: trial-steps to it | ASHA+TPE: trial-steps "
        "to target | ASHA+TPE: trials started, best val Dice in budget | ratio (goal <= 0.33) | ASHA's floor "
        "(random's trials) / random | best val Dice in 1/3 of the budget: random, ASHA+TPE |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for metric, ratio in median_ratios(rows).items():
        for r in (r for r in rows if asha_metric(r["method"]) == metric):
            reached = f"{r['asha_steps']}" if r["asha_steps"] is not None else "not reached"
            lines.append(f"| {metric} | {r['seed']} | {r['target']:.3f} | {r['random_steps']} | {reached} "
                         f"| {r['asha_trials']}, {r['asha_best']:.3f} | {r['ratio']:.2f} | {r['floor_ratio']:.2f} "
                         f"| {dice(r['random_third'])}, {dice(r['asha_third'])} |")
        better, equal, worse = equal_budget_tally([r for r in rows if asha_metric(r["method"]) == metric])
        lines.append(f"| {metric} | median | | | | | **{ratio:.2f}** | | ASHA+TPE higher in {better}, equal in "
                     f"{equal}, lower in {worse} |")
    lines.append(f"\nBudget per sweep: {args.samples} x {args.steps} = {args.samples * args.steps} trial-steps "
                 f"(random: {args.samples} trials to the end; ASHA + TPE: up to "
                 f"{args.samples * args.asha_samples_factor} trials within the same steps); ASHA grace {args.grace}, "
                 f"reduction {args.reduction}; one trial at a time; start: {args.init}; grid {args.grid}.")
    return "\n".join(lines)


def dice(value: float) -> str:
    """A val Dice for the table; "none" when nothing was reported."""
    return f"{value:.3f}" if math.isfinite(value) else "none"


def equal_budget_tally(rows: list[dict[str, Any]]) -> tuple[int, int, int]:
    """Seeds where ASHA + TPE's best val Dice within 1/3 of the budget is higher than, equal to (to 1e-9, or
    both none) and lower than random's: the equal-budget comparison."""
    def best(value: float) -> float:
        return value if math.isfinite(value) else -math.inf

    higher = equal = lower = 0
    for r in rows:
        asha, random = best(r["asha_third"]), best(r["random_third"])
        if asha > random + 1e-9:
            higher += 1
        elif asha < random - 1e-9:
            lower += 1
        else:
            equal += 1
    return higher, equal, lower


def median_ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The median ratio over seeds, per ASHA metric."""
    by_metric: dict[str, list[float]] = {}
    for r in rows:
        by_metric.setdefault(asha_metric(r["method"]), []).append(r["ratio"])
    return {metric: sorted(ratios)[len(ratios) // 2] for metric, ratios in by_metric.items()}


def curves_table(curves: Curves, grid: Grid, max_t: int) -> str:
    steps = sorted({int(r["step"]) for rows in curves.values() for r in rows if r["step"] <= max_t})
    lines = ["| grid point | " + " | ".join(f"{s}" for s in steps) + " | best |", "|---" * (len(steps) + 2) + "|"]
    for point in grid_points(grid):
        rows = {int(r["step"]): r for r in curves.get(point, []) if r["step"] <= max_t}
        cells = [f"{rows[s]['val_dice']:.2f}/{rows[s]['val_presence_auroc']:.2f}" if s in rows else "" for s in steps]
        best = max((r["val_dice"] for r in rows.values()), default=math.nan)
        lines.append(f"| {describe(grid, point)} | " + " | ".join(cells) + f" | {best:.3f} |")
    return "val Dice / presence AUROC by step:\n\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out/search_efficiency"),
                        help="folder of the curves (curves-scratch.csv, curves-pretrained-N.csv; reused), the data "
                             "and the pretrained start")
    parser.add_argument("--grid", nargs="+", help="the searched grid: NAME=V1,V2,... per float trial setting",
                        default=[f"{name}={','.join(f'{v:g}' for v in values)}" for name, values in GRID.items()])
    parser.add_argument("--init", choices=["scratch", "pretrained"], default="scratch",
                        help="what every trial starts from: random weights, or the pretrained start model")
    parser.add_argument("--pretrain-steps", type=int, default=800, help="training steps of the pretrained start")
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
    parser.add_argument("--show-trials", action="store_true",
                        help="print each sweep's trials: grid point, where it ended, how often it was run")
    parser.add_argument("--no-append", action="store_true", help="do not append the tables to BENCHMARKS-LOG.md")
    args = parser.parse_args(argv)
    args.grid = parse_grid(args.grid)
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    args.out.mkdir(parents=True, exist_ok=True)

    pretrained = args.init == "pretrained"
    curves = measure_curves(
        args.out, args.grid, f"pretrained-{args.pretrain_steps}" if pretrained else "scratch",
        lambda: pretrain(args.out, args.pretrain_steps, args.jobs * args.threads) if pretrained else None,
        args.steps, args.val_every, args.jobs, args.threads)
    print(curves_table(curves, args.grid, args.steps), flush=True)

    import ray

    from sweeps import ray_compat

    ray_compat.init_ray(None, "127.0.0.1", ray_compat.worker_env_vars(0.5))
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="search_efficiency_") as storage:
            for seed in args.seeds:
                random = replay_sweep(curves, "random", seed, args, Path(storage))
                if args.show_trials:
                    print(trials_summary(random, args.grid), flush=True)
                floor = asha_floor(random.order, curves, random.best()[0], args.steps, args.grace)
                for metric in args.asha_metrics:
                    asha = replay_sweep(curves, f"asha+tpe:{metric}", seed, args, Path(storage))
                    if args.show_trials:
                        print(trials_summary(asha, args.grid), flush=True)
                    rows.append(compare(random, asha, budget=args.samples * args.steps, floor=floor))
                    print(f"seed {seed}: {rows[-1]}", flush=True)
    finally:
        ray.shutdown()
    table = results_table(rows, args)
    print(table)
    if not args.no_append:
        append_benchmark("Search efficiency: ASHA + TPE vs random (replayed measured curves)",
                         " ".join(["python bench/search_efficiency.py", *(argv or sys.argv[1:])]),
                         curves_table(curves, args.grid, args.steps) + "\n\n" + table)
    medians = median_ratios(rows)
    for metric, median in medians.items():
        print(("PASS" if median <= GOAL_RATIO else "FAIL") + f": ASHA on {metric} + TPE: median ratio {median:.2f} "
              f"(goal <= {GOAL_RATIO:.2f})")
    return 0 if min(medians.values()) <= GOAL_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
