"""Does the sweep's search beat random search on held-out data? Replays searchers against bench/tabular.py's table.

Each searcher runs through the sweep's own Tune configuration (``sweeps.stage2.make_tune_config``: the Optuna
searcher with its seed, ASHA from the sweep config, one trial at a time) over ``search_spaces/stage2.yaml``'s knobs
(learning rates in ``local.yaml``'s ranges, as the table), but its trials do not train: a trial reports the
measured curve of the **nearest design configuration** and a **training seed drawn for that trial**, so the
training noise between seeds is part of what the searcher meets.

Surrogate: nearest neighbour in the unit cube the design was drawn in (log scale for log-uniform knobs, a choice
as its index), not a fitted model: it returns only curves that were trained, with their real val/test pairing
and their noise, at the price of a piecewise-constant landscape (48 points over 10 knobs); a fitted model would
smooth exactly the noise the comparison must include.

Budget: ``--samples`` x max_steps trial-steps (random search's ``--samples`` full trials), counted in the order
reports arrive; a method is judged at a third of it and at all of it. Its **pick** is the sweep's selection rule
(``sweeps/results.py``: the report with the highest val Dice, the last of equals) among the reports within the
budget, and its figure is that report's **test Dice** (the same checkpoint on the test split: data nothing was
chosen on). Per searcher seed the gain is the method's figure minus random's; the table gives the median gain,
wins / ties / losses and a two-sided sign test.

    TORCHDYNAMO_DISABLE=1 .venv/bin/python bench/search_replay.py --table bench_out/tabular [--seeds 0 ... 19]
        [--samples 8] [--methods asha+tpe tpe ...]

Methods (:data:`METHODS`): random search, the sweep's default ASHA + TPE, and the variants that change one
thing of it (no ASHA, a random sampler, a baseline trial 0, fewer random draws before TPE models).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.tabular import LOCAL_CONFIG, LOCAL_SPACE, is_log_scale, space  # noqa: E402

Curve = list[dict[str, float]]


@dataclass(frozen=True)
class Method:
    """A searcher setting of the sweep config: its Optuna sampler, ASHA or not, TPE's random draws before it
    models (``searcher.startup_trials``), and whether trial 0 is the search space's baseline point."""

    sampler: str
    asha: bool
    startup_trials: int = 10
    baseline: bool = False


#: the methods a replay can compare; "random" is the reference every other is compared with
METHODS = {
    "random": Method("random", asha=False),
    "asha+random": Method("random", asha=True),
    "tpe": Method("tpe", asha=False),  # models only with --samples above its startup_trials
    "asha+tpe": Method("tpe", asha=True),  # the shipped default
    "asha+tpe+baseline": Method("tpe", asha=True, baseline=True),
    "asha+tpe-startup4": Method("tpe", asha=True, startup_trials=4),
}


@dataclass(frozen=True)
class Table:
    """The measured runs: design points, and each (configuration, seed)'s rows by step."""

    points: list[dict[str, Any]]
    curves: dict[tuple[int, int], Curve]

    @property
    def seeds(self) -> list[int]:
        return sorted({seed for _, seed in self.curves})

    @property
    def max_steps(self) -> int:
        return int(min(curve[-1]["step"] for curve in self.curves.values()))


def read_table(folder: Path) -> Table:
    """``design.json`` and ``table.csv`` of a bench/tabular.py folder; only configurations with every seed."""
    points = json.loads((folder / "design.json").read_text(encoding="utf-8"))["points"]
    curves: dict[tuple[int, int], Curve] = {}
    with (folder / "table.csv").open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            key = (int(row["config"]), int(row["seed"]))
            curves.setdefault(key, []).append({k: float(row[k]) for k in
                                               ("step", "val_dice", "val_ap75", "test_dice", "test_ap75")})
    seeds = sorted({s for _, s in curves})
    complete = {c for c in range(len(points)) if all((c, s) in curves for s in seeds)}
    return Table(points, {k: sorted(v, key=lambda r: r["step"]) for k, v in curves.items() if k[0] in complete})


def unit(name: str, value: Any) -> float:
    """Where ``value`` of knob ``name`` lies in [0, 1] of the design's range (log scale where it samples so)."""
    from ray.tune.search.sample import Categorical

    domain = space()[name]
    if isinstance(domain, Categorical):
        return domain.categories.index(value) / max(len(domain.categories) - 1, 1)
    if is_log_scale(domain):
        return (math.log(value) - math.log(domain.lower)) / (math.log(domain.upper) - math.log(domain.lower))
    return (float(value) - domain.lower) / (domain.upper - domain.lower)


def nearest(table: Table, config: dict[str, Any]) -> int:
    """The design configuration nearest to ``config`` (Euclidean in the unit cube) among the complete ones."""
    names = sorted(table.points[0])
    target = [unit(n, config[n]) for n in names]
    complete = sorted({c for c, _ in table.curves})
    return min(complete, key=lambda c: sum((unit(n, table.points[c][n]) - t) ** 2 for n, t in zip(names, target)))


def draw_seed(table: Table, searcher_seed: int, config: dict[str, Any]) -> int:
    """The training seed a trial replays: a deterministic draw from its searcher seed and sampled values."""
    key = json.dumps([searcher_seed, sorted(config.items())], default=str)
    return table.seeds[zlib.crc32(key.encode()) % len(table.seeds)]


def replay_trainable(table: Table, searcher_seed: int) -> Callable[[dict], None]:
    """A Tune function trainable reporting the curve of its nearest configuration and drawn seed."""

    def replay(config: dict) -> None:
        from ray import tune

        params = {n: config[n] for n in table.points[0]}
        c, s = nearest(table, params), draw_seed(table, searcher_seed, params)
        for row in table.curves[c, s]:
            tune.report({**row, "config_id": c, "train_seed": s, "reported_ns": time.time_ns()})

    return replay


def baseline_point() -> dict[str, Any]:
    """The replay's trial 0 for a method with ``baseline``: ``search_spaces/local.yaml``'s baseline (the tiny
    model's learning rates), TrialConfig's defaults for the other knobs of the design."""
    from search_spaces import load_search_spec
    from trainables.config import TrialConfig

    defaults = TrialConfig().to_dict()
    return {name: load_search_spec(LOCAL_SPACE).points_to_evaluate[0].get(name, defaults[name]) for name in space()}


def replay_sweep(table: Table, method: str, seed: int, samples: int, storage: Path) -> list[dict[str, float]]:
    """One sweep of ``method``; its reports in arrival order with the trial-steps spent when each arrived."""
    import yaml
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from search_spaces import SearchSpec
    from sweeps.config import parse_sweep_config
    from sweeps.stage2 import make_tune_config

    local = yaml.safe_load(LOCAL_CONFIG.read_text(encoding="utf-8"))
    m = METHODS[method]
    name = f"{method.replace('+', '_')}-seed{seed}"
    cfg = parse_sweep_config({
        "name": name, "storage_path": str(storage), "search_space": "(bench/tabular.py design space)",
        "num_samples": samples * (4 if m.asha else 1), "max_concurrent_trials": 1,
        "trial": {**local["trial"], "max_steps": table.max_steps},
        "scheduler": local["scheduler"],
        "searcher": {"sampler": m.sampler, "seed": seed, "startup_trials": m.startup_trials},
    }, source="bench/search_replay.py")
    spec = SearchSpec(params=space(), points_to_evaluate=[baseline_point()] if m.baseline else [],
                      source="bench/tabular.py space()")
    tune_config = make_tune_config(cfg, spec)
    if not m.asha:
        tune_config.scheduler = FIFOScheduler()
    results = tune.Tuner(replay_trainable(table, seed), param_space=spec.params, tune_config=tune_config,
                         run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0)).fit()
    reports = []
    for result in results:
        frame = result.metrics_dataframe
        if frame is not None and not frame.empty:
            columns = ["trial_id", "config_id", "train_seed", "step", "val_dice", "test_dice", "reported_ns"]
            reports += frame[columns].to_dict("records")
    reports.sort(key=lambda r: r["reported_ns"])
    last: dict[str, float] = {}
    spent = 0
    for r in reports:
        spent += int(r["step"] - last.get(r["trial_id"], 0))
        last[r["trial_id"]] = r["step"]
        r["spent"] = spent
    return reports


def pick_test_dice(reports: list[dict[str, float]], budget: int) -> float:
    """The test Dice of the sweep's pick within ``budget``: the highest val Dice, the last of equals."""
    within = [r for r in reports if r["spent"] <= budget]
    if not within:
        return math.nan
    best = max(r["val_dice"] for r in within)
    return [r for r in within if r["val_dice"] == best][-1]["test_dice"]


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test p-value (ties dropped): scipy's binomial test of the wins at p = 1/2."""
    from scipy.stats import binomtest

    return float(binomtest(wins, wins + losses, 0.5).pvalue) if wins + losses else 1.0


def compare(gains: list[float]) -> dict[str, float]:
    """Median gain, wins / ties / losses and the sign test of per-seed gains (nan gains dropped)."""
    valid = [g for g in gains if not math.isnan(g)]
    wins, losses = sum(g > 0 for g in valid), sum(g < 0 for g in valid)
    return {"median": statistics.median(valid) if valid else math.nan, "wins": wins,
            "ties": len(valid) - wins - losses, "losses": losses, "p": sign_test(wins, losses)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, required=True, help="a bench/tabular.py --out folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(20)), help="searcher seeds")
    parser.add_argument("--samples", type=int, default=8, help="random search's trials (the budget)")
    parser.add_argument("--methods", nargs="+", default=["asha+tpe"], choices=[m for m in METHODS if m != "random"],
                        help="methods compared with random search (default: the shipped asha+tpe)")
    args = parser.parse_args(argv)
    for name in args.methods:
        m = METHODS[name]
        if m.sampler == "tpe" and not m.asha and args.samples <= m.startup_trials:
            parser.error(f"{name} with --samples {args.samples} never leaves its random draws (until "
                         f"{m.startup_trials} trials have finished): it would be random search")

    import ray

    table = read_table(args.table)
    budget = args.samples * table.max_steps
    budgets = {"1/3": budget // 3, "full": budget}
    print(f"table: {len({c for c, _ in table.curves})} complete configurations x seeds {table.seeds}, "
          f"{table.max_steps} steps; budget {budget} trial-steps ({args.samples} full trials)", flush=True)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    figures: dict[str, dict[str, list[float]]] = {m: {b: [] for b in budgets} for m in ("random", *args.methods)}
    with tempfile.TemporaryDirectory() as storage:
        for seed in args.seeds:
            for method in figures:
                reports = replay_sweep(table, method, seed, args.samples, Path(storage))
                for label, b in budgets.items():
                    figures[method][label].append(pick_test_dice(reports, b))
            print(f"seed {seed}: " + ", ".join(f"{m} {figures[m]['full'][-1]:.3f}" for m in figures), flush=True)
    print("\n| method | budget | median test Dice | median gain over random | wins / ties / losses | sign test p |")
    print("|---|---|---|---|---|---|")
    for method in args.methods:
        for label in budgets:
            gains = [a - r for a, r in zip(figures[method][label], figures["random"][label])]
            c = compare(gains)
            print(f"| {method} | {label} | {statistics.median(figures[method][label]):.4f} | {c['median']:+.4f} | "
                  f"{c['wins']} / {c['ties']} / {c['losses']} | {c['p']:.3g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
