"""Checkpoint selection under validation noise: which rule picks the checkpoint with the best *test* Dice?

The sweep's "best checkpoint" has been the highest val Dice over every validation of every trial. Val Dice
moves +/-0.05-0.1 between consecutive validations of one trial (BENCHMARKS.md), so that pick is partly luck
and its figure biased upward. This bench measures candidate rules against it (issue 18, item 2).

1. **Curves** (the expensive part, cached in ``--out``): every point of the grid (``--grid``, by default
   :data:`GRID`: learning rates) trains once with the tiny preset from the search-efficiency bench's
   pretrained start (``bench/search_efficiency.py``: ``pretrain``, ``train``; the learning bench's
   ``SETTINGS``; here ``--pretrain-steps`` 500 with ``--threads`` threads, cached in
   ``<out>/pretrained-N/model.pt``) for ``--steps`` steps, validating every ``--val-every`` on a **pool** of
   ``--pool`` held-out images (the synthetic set's val split drawn with that many images). At every
   validation it records the thresholded Dice of every (image, category) pair, exactly the pairs ``val_dice``
   averages (:meth:`trainables.metrics.CassEvaluator.pair_figures`; nan where a pair is not scored), and saves
   per point a steps x images x 14 matrix to ``<out>/curves-<start>-pool<P>/<point>.npz``. A rerun trains only
   the points missing there (or shorter than ``--steps``). ``--jobs`` points train at once (one torch thread
   each by default).
2. **Replay** (seconds): per seed, the pool is split at random into val (``--val-images``, the demo's 16) and
   test (the rest), and a sweep is drawn: ``--trials`` grid points at random (every trial runs to the end:
   no early stopping). Each rule picks one (trial, validation) checkpoint from the **val** figures only
   (:func:`subset_dice`: val Dice of a subset of the pool, computed as ``CassEvaluator`` computes
   ``val_dice``); the table gives the pick's **test** Dice, the oracle's (best test Dice of any checkpoint of
   the sweep), the regret (oracle - pick), the pick's optimism (its val Dice - its test Dice), the difference
   to the naive rule with a 95% t interval over seeds, wins / ties / losses against naive, and how often the
   pick is a checkpoint that Train's retention keeps today (``checkpoint.num_to_keep`` = 2 by ``val_dice``,
   plus the latest: ``sweeps/stage2.py``).

Each grid point has one measured curve (the training noise between seeds of a point is not sampled); the
seeds sample the val/test split and the sweep's trials. Not a timed test: run by hand.

    TORCHDYNAMO_DISABLE=1 .venv/bin/python bench/selection.py --out bench_out/selection [--seeds 0 ... 19]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import append_benchmark  # noqa: E402
from bench.learning import DATA  # noqa: E402
from bench.search_efficiency import Grid, Point, dataset, describe, grid_points, parse_grid, pretrain  # noqa: E402
from bench.search_efficiency import train as train_point  # noqa: E402

#: learning rates of the search-efficiency bench's pretrained grid, fewer (8 points, to fit a 2-core machine): its
#: plateau and one damaging ``lr_transformer`` (3e-3)
GRID: Grid = {"lr_transformer": [1e-4, 3e-4, 1e-3, 3e-3], "lr_vision": [1e-5, 1e-4]}
KEEP = 2  # checkpoint.num_to_keep in sweeps/stage2.py's CheckpointConfig (by val_dice), plus the latest


# ---- val Dice of a subset of images ------------------------------------------------------------------------

def pair_dice(figures) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image ids, category ids, [images, categories] thresholded Dice) of ``CassEvaluator.pair_figures()``;
    nan where the pair is not scored (nothing predicted, nothing there), as ``val_dice`` excludes it."""
    images = sorted({f.image_id for f in figures})
    categories = sorted({f.category_id for f in figures})
    row, col = {i: k for k, i in enumerate(images)}, {c: k for k, c in enumerate(categories)}
    dice = np.full((len(images), len(categories)), np.nan)
    for f in figures:
        if f.pred_area + f.gt_area > 0:
            dice[row[f.image_id], col[f.category_id]] = 2.0 * f.intersection / (f.pred_area + f.gt_area)
    return np.array(images), np.array(categories), dice


def subset_dice(dice: np.ndarray, images: np.ndarray | list[int] | None = None) -> np.ndarray:
    """val Dice of the images ``images`` (indices, repeats allowed: a bootstrap draw) of ``dice`` ([..., images,
    categories]), as ``CassEvaluator`` computes ``val_dice``: per category the mean over its scored pairs, then the
    mean over the categories with any; nan when none is scored. Vectorised over the leading axes."""
    part = dice if images is None else dice[..., np.asarray(images), :]
    scored = ~np.isnan(part)
    count = scored.sum(-2)
    total = np.where(scored, part, 0.0).sum(-2)
    per_category = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    has = ~np.isnan(per_category)
    n = has.sum(-1)
    return np.where(n > 0, np.where(has, per_category, 0.0).sum(-1) / np.maximum(n, 1), np.nan)


# ---- 1. curves -----------------------------------------------------------------------------------------------

def train_pairs(values: dict[str, Any]) -> dict[str, np.ndarray]:
    """:func:`bench.search_efficiency.train` recording each validation's per-pair Dice (in a child process).

    The validation pass's evaluator already holds the pairs: ``trainables.trial.validate`` is wrapped for the
    run to read them (no change to the trial loop)."""
    import trainables.trial as trial_module

    recorded: list[np.ndarray] = []
    ids: dict[str, np.ndarray] = {}
    original = trial_module.validate

    def validate_and_record(model, loader, evaluator, device):
        metrics = original(model, loader, evaluator, device)
        ids["image_ids"], ids["category_ids"], dice = pair_dice(evaluator.pair_figures())
        mine, theirs = float(subset_dice(dice)), float(metrics["val_dice"])
        if not (mine == theirs or (math.isnan(mine) and math.isnan(theirs)) or abs(mine - theirs) < 1e-9):
            raise AssertionError(f"subset_dice {mine} != the evaluator's val_dice {theirs}")
        recorded.append(dice)
        return metrics

    trial_module.validate = validate_and_record
    try:
        rows = train_point(values)
    finally:
        trial_module.validate = original
    return {"steps": np.array([r["step"] for r in rows]), "val_dice": np.array([r["val_dice"] for r in rows]),
            "dice": np.stack(recorded), **ids}


@dataclass(frozen=True)
class Curve:
    """One grid point's validations: steps [S] and per-pair Dice [S, images, categories] on the pool."""

    point: Point
    steps: np.ndarray
    dice: np.ndarray


def curve_file(folder: Path, grid: Grid, point: Point) -> Path:
    return folder / (describe(grid, point).replace(", ", "_").replace("=", "-") + ".npz")


def cached_steps(path: Path) -> int:
    """The last step of a cached curve file (0 if there is none)."""
    if not path.exists():
        return 0
    with np.load(path) as f:
        return int(f["steps"].max(initial=0))


def measure_curves(out: Path, grid: Grid, start: str, start_weights: Callable[[], Path | None], steps: int,
                   val_every: int, pool: int, train_images: int, jobs: int, threads: int) -> list[Curve]:
    """Every grid point's :class:`Curve`, training the ones missing from ``<out>/curves-<start>/`` (``jobs`` at
    once; each saved as it ends)."""
    folder = out / f"curves-{start}-pool{pool}"
    folder.mkdir(parents=True, exist_ok=True)
    points = grid_points(grid)
    missing = [p for p in points if cached_steps(curve_file(folder, grid, p)) < steps]
    if missing:
        init = start_weights()
        data = dataset(out / f"data-pool{pool}-train{train_images}", {**DATA, "val": pool, "train": train_images})
        common = {**data, "max_steps": steps, "val_every": val_every, "cpu_threads_per_worker": threads,
                  "checkpoint": str(init) if init else None}
        print(f"training {len(missing)} grid point(s) x {steps} steps, {jobs} at once, {threads} thread(s) each "
              f"-> {folder}", flush=True)
        began = time.perf_counter()
        with ProcessPoolExecutor(max_workers=jobs) as pool_:
            futures = {pool_.submit(train_pairs, {**common, **dict(zip(grid, p))}): p for p in missing}
            for done, future in enumerate(as_completed(futures), 1):
                point = futures[future]
                result = future.result()
                np.savez(curve_file(folder, grid, point), **result)
                print(f"  [{done}/{len(missing)}] {describe(grid, point)}: val Dice on the pool by step "
                      f"{np.round(result['val_dice'], 3).tolist()} ({time.perf_counter() - began:.0f} s)", flush=True)
    curves = []
    for p in points:
        with np.load(curve_file(folder, grid, p)) as f:
            keep = f["steps"] <= steps
            curves.append(Curve(p, f["steps"][keep].astype(int), f["dice"][keep]))
    return curves


# ---- 2. replay -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Validations:
    """One replayed sweep as its rules see it: per trial, val Dice by validation [S] and its bootstrap SE over
    val images [S]."""

    val: list[np.ndarray]
    se: list[np.ndarray]


Pick = tuple[int, int]  # (trial index in the sweep, validation index)
Rule = Callable[[Validations], Pick]


def argmax_pick(scores: list[np.ndarray]) -> Pick:
    """The highest score over every (trial, validation): the first trial on ties, within a trial the latest (as
    ``sweeps.results.best_of`` breaks ties); nan scores never win."""
    best, pick = -math.inf, (0, len(scores[0]) - 1)
    for t, s in enumerate(scores):
        for v in range(len(s)):
            if not math.isnan(s[v]) and (s[v] > best or (s[v] == best and t == pick[0])):
                best, pick = float(s[v]), (t, v)
    return pick


def trailing_mean(values: np.ndarray, k: int) -> np.ndarray:
    """Mean of the last ``k`` validations ending at each one (fewer at the start of a trial; nan ones skipped)."""
    out = []
    for v in range(len(values)):
        part = values[max(0, v - k + 1): v + 1]
        part = part[~np.isnan(part)]
        out.append(float(part.mean()) if part.size else math.nan)
    return np.array(out)


def naive(v: Validations) -> Pick:
    return argmax_pick(v.val)


def window(k: int) -> Rule:
    """The checkpoint ending the best window of ``k`` consecutive validations (a trial with fewer: all of them)."""
    def rule(v: Validations) -> Pick:
        scores = []
        for s in v.val:
            means = trailing_mean(s, k)
            scores.append(np.where(np.arange(len(s)) >= min(k, len(s)) - 1, means, np.nan))
        return argmax_pick(scores)
    return rule


def last_k(k: int) -> Rule:
    """The trial with the best mean of its last ``k`` validations; its latest checkpoint."""
    def rule(v: Validations) -> Pick:
        scores = [np.where(np.arange(len(s)) == len(s) - 1, trailing_mean(s, k), np.nan) for s in v.val]
        return argmax_pick(scores)
    return rule


def lcb(z: float) -> Rule:
    """The highest val Dice minus ``z`` bootstrap standard errors over the val images."""
    def rule(v: Validations) -> Pick:
        return argmax_pick([s - z * e for s, e in zip(v.val, v.se)])
    return rule


def window_best(k: int) -> Rule:
    """The trial of the best trailing window of ``k`` validations; its checkpoint with the highest val Dice (a
    checkpoint Train keeps today)."""
    def rule(v: Validations) -> Pick:
        t, _ = window(k)(v)
        return t, argmax_pick([v.val[t]])[1]
    return rule


RULES: dict[str, Rule] = {
    "naive: max val Dice over every validation": naive,
    "window 2: best mean of 2 consecutive validations, its end": window(2),
    "window 3: best mean of 3 consecutive validations, its end": window(3),
    "last 1: trial by its last validation, its last": last_k(1),
    "last 2: trial by mean of its last 2 validations, its last": last_k(2),
    "last 3: trial by mean of its last 3 validations, its last": last_k(3),
    "window 3 trial, its max-val checkpoint": window_best(3),
    "LCB z=1: max (val Dice - 1 bootstrap SE)": lcb(1.0),
    "LCB z=2: max (val Dice - 2 bootstrap SE)": lcb(2.0),
}


def kept_by_train(values: np.ndarray, index: int, keep: int = KEEP) -> bool:
    """Whether Train still holds validation ``index``'s checkpoint when the trial ends: the ``keep`` best by
    val Dice (later ones win ties, as ``sweeps.results.best_report`` assumes) plus the latest."""
    order = sorted(range(len(values)), key=lambda v: (-(values[v] if not math.isnan(values[v]) else -math.inf), -v))
    return index == len(values) - 1 or index in order[:keep]


def replay_seed(curves: list[Curve], seed: int, val_images: int, trials: int, boot: int) -> list[dict[str, Any]]:
    """One seed: split the pool, draw the sweep, apply every rule; one row per rule."""
    rng = np.random.default_rng(seed)
    n_images = curves[0].dice.shape[1]
    perm = rng.permutation(n_images)
    val_idx, test_idx = np.sort(perm[:val_images]), np.sort(perm[val_images:])
    chosen = np.sort(rng.choice(len(curves), size=min(trials, len(curves)), replace=False))
    sweep = [curves[i] for i in chosen]
    draws = val_idx[rng.integers(0, len(val_idx), size=(boot, len(val_idx)))]  # bootstrap over val images
    val = [subset_dice(c.dice, val_idx) for c in sweep]
    test = [subset_dice(c.dice, test_idx) for c in sweep]
    se = [np.nanstd(np.stack([subset_dice(c.dice, d) for d in draws]), axis=0, ddof=1) for c in sweep]
    oracle = max(float(np.nanmax(t)) for t in test)
    validations = Validations(val, se)
    rows = []
    for name, rule in RULES.items():
        t, v = rule(validations)
        rows.append({"seed": seed, "rule": name, "trial": int(chosen[t]), "step": int(sweep[t].steps[v]),
                     "val": float(val[t][v]), "test": float(test[t][v]), "oracle": oracle,
                     "regret": oracle - float(test[t][v]), "kept": kept_by_train(val[t], v)})
    return rows


def replay(curves: list[Curve], seeds: list[int], val_images: int, trials: int, boot: int) -> list[dict[str, Any]]:
    return [row for seed in seeds for row in replay_seed(curves, seed, val_images, trials, boot)]


def t_interval(x: np.ndarray) -> tuple[float, float]:
    """95% t interval of the mean of ``x`` over seeds."""
    from scipy import stats

    if len(x) < 2:
        return math.nan, math.nan
    half = float(stats.t.ppf(0.975, len(x) - 1) * np.std(x, ddof=1) / math.sqrt(len(x)))
    return float(np.mean(x)) - half, float(np.mean(x)) + half


def results_table(rows: list[dict[str, Any]]) -> str:
    """One line per rule: means over seeds, the difference to naive with its 95% t interval, the tally."""
    seeds = sorted({r["seed"] for r in rows})
    by = {(r["rule"], r["seed"]): r for r in rows}
    naive_name = next(iter(RULES))
    header = ("| rule | test Dice of the pick (mean) | regret vs oracle (mean) | pick's val - test Dice (optimism, "
              "mean) | test Dice - naive's: mean [95% t interval] | vs naive: wins / ties / losses | kept by Train "
              "today (2 best val_dice + latest) |")
    lines = [header, "|---|---|---|---|---|---|---|"]
    for name in RULES:
        mine = [by[name, s] for s in seeds]
        test = np.array([r["test"] for r in mine])
        diff = test - np.array([by[naive_name, s]["test"] for s in seeds])
        low, high = t_interval(diff)
        wins, ties = int((diff > 1e-9).sum()), int((np.abs(diff) <= 1e-9).sum())
        lines.append(f"| {name} | {test.mean():.4f} | {np.mean([r['regret'] for r in mine]):.4f} | "
                     f"{np.mean([r['val'] - r['test'] for r in mine]):+.4f} | {diff.mean():+.4f} [{low:+.4f}, "
                     f"{high:+.4f}] | {wins} / {ties} / {len(seeds) - wins - ties} | "
                     f"{sum(r['kept'] for r in mine)} of {len(seeds)} |")
    oracle = np.mean([by[naive_name, s]["oracle"] for s in seeds])
    lines.append(f"\nOracle (best test Dice of any checkpoint of the sweep), mean over {len(seeds)} seeds: "
                 f"{oracle:.4f}.")
    return "\n".join(lines)


def curves_table(curves: list[Curve], grid: Grid) -> str:
    """Each point's val Dice on the whole pool by step (what a pool-sized validation set would report)."""
    steps = curves[0].steps.tolist()
    lines = ["| grid point | " + " | ".join(str(s) for s in steps) + " |", "|---" * (len(steps) + 1) + "|"]
    for c in curves:
        lines.append(f"| {describe(grid, c.point)} | " + " | ".join(f"{d:.3f}" for d in subset_dice(c.dice)) + " |")
    return "val Dice on the whole pool by step:\n\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out/selection"),
                        help="folder of the curves (reused), the data and the pretrained start")
    parser.add_argument("--grid", nargs="+", help="the grid: NAME=V1,V2,... per float trial setting",
                        default=[f"{name}={','.join(f'{v:g}' for v in values)}" for name, values in GRID.items()])
    parser.add_argument("--init", choices=["scratch", "pretrained"], default="pretrained",
                        help="what every point starts from: random weights, or the pretrained start model")
    parser.add_argument("--pretrain-steps", type=int, default=500, help="training steps of the pretrained start")
    parser.add_argument("--steps", type=int, default=200, help="steps of a trial")
    parser.add_argument("--val-every", type=int, default=25, help="steps between validations")
    parser.add_argument("--pool", type=int, default=48, help="held-out images split into val and test per seed")
    parser.add_argument("--train-images", type=int, default=DATA["train"], help="training images")
    parser.add_argument("--jobs", type=int, default=2, help="grid points trained at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per point")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(20)), help="replay seeds")
    parser.add_argument("--val-images", type=int, default=16, help="val images per seed (the rest: test)")
    parser.add_argument("--trials", type=int, default=6, help="grid points per replayed sweep")
    parser.add_argument("--boot", type=int, default=200, help="bootstrap draws for the LCB rules' SE")
    parser.add_argument("--no-append", action="store_true", help="do not append the tables to BENCHMARKS-LOG.md")
    args = parser.parse_args(argv)
    grid = parse_grid(args.grid)
    if not 0 < args.val_images < args.pool:
        raise SystemExit(f"--val-images {args.val_images} must be between 1 and --pool - 1 ({args.pool - 1})")
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    args.out.mkdir(parents=True, exist_ok=True)

    pretrained = args.init == "pretrained"
    curves = measure_curves(
        args.out, grid, f"pretrained-{args.pretrain_steps}" if pretrained else "scratch",
        lambda: pretrain(args.out, args.pretrain_steps, args.threads) if pretrained else None,
        args.steps, args.val_every, args.pool, args.train_images, args.jobs, args.threads)
    print(curves_table(curves, grid), flush=True)
    rows = replay(curves, args.seeds, args.val_images, args.trials, args.boot)
    table = results_table(rows) + (
        f"\n\n{len(args.seeds)} seeds; each: the pool of {args.pool} held-out images split into {args.val_images} "
        f"val / {args.pool - args.val_images} test, a sweep of {min(args.trials, len(curves))} of the "
        f"{len(curves)} grid points (each to step {args.steps}, validated every {args.val_every}); start: "
        f"{args.init}; grid {grid}; LCB SE from {args.boot} bootstrap draws of the val images.")
    print(table)
    if not args.no_append:
        append_benchmark("Checkpoint selection under validation noise (replayed per-pair curves)",
                         " ".join(["python bench/selection.py", *(argv if argv is not None else sys.argv[1:])]),
                         curves_table(curves, grid) + "\n\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
