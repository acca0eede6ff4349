"""Does the sweep's search beat random search on held-out data? Replays searchers against bench/tabular.py's table.

Each searcher runs through the sweep's own Tune configuration (``sweeps.stage2.make_tune_config``: the Optuna
searcher with its seed, ASHA from the sweep config, one trial at a time) over ``search_spaces/stage2.yaml``'s knobs
(learning rates in ``local.yaml``'s ranges, as the table), but its trials do not train: a trial reports the
measured curve of the **nearest design configuration** and a **training seed drawn for that trial**, so the
training noise between seeds is part of what the searcher meets.

Surrogate: the **nearest design configuration** under a distance fitted to the table, not a fitted model of the
curves: it returns only curves that were trained, with their real val/test pairing and their noise, where a fitted
model would smooth exactly the noise the comparison must include. The distance is what makes the landscape a searcher
meets resemble the measured one: 48 points over 10 knobs, of which few matter (the fitted scales are printed and
logged), so a plain Euclidean nearest point is decided mostly by the knobs that do not matter, and a searcher that has
learnt the right learning rates would be handed a random point's curve. Each knob's distance is divided by its
length-scale in a Gaussian process (ARD squared-exponential kernel plus noise, hyperparameters by maximum marginal
likelihood) fitted to each configuration's best val Dice averaged over its seeds (:func:`fit_scales`): a knob the
table says does not matter gets a long scale and barely moves the nearest point.

Budget: ``--samples`` x max_steps trial-steps (random search's ``--samples`` full trials), counted in the order
reports arrive; a method is judged at a third of it and at all of it. Its **pick** is the sweep's selection rule
(``sweeps/results.py``: the report with the highest val Dice, the last of equals) among the reports within the
budget, and its figure is that report's **test Dice** (the same checkpoint on the test split: data nothing was
chosen on). Per searcher seed the gain is the method's figure minus random's; the table gives the median gain,
wins / ties / losses and a two-sided sign test.

Each (method, searcher seed)'s two figures are appended to ``<table>/replays.jsonl`` as they are measured, keyed
by the method's settings, the budget and the table's digest: a rerun replays only what is missing there.

    TORCHDYNAMO_DISABLE=1 .venv/bin/python bench/search_replay.py --table bench_out/tabular [--seeds 0 ... 19]
        [--samples 8] [--methods asha+tpe tpe ...]

Methods (:data:`METHODS`): random search, ASHA + TPE with the ASHA of ``sweeps/configs/local.yaml`` or of
``stage2.yaml`` (its grace period scaled from its ``max_steps`` to the table's), and the variants that change one
thing of it (no ASHA, a random sampler, a baseline trial 0, fewer random draws before TPE models).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
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

from ray.tune.stopper import Stopper  # noqa: E402

from bench.common import append_benchmark  # noqa: E402
from bench.tabular import LOCAL_CONFIG, LOCAL_SPACE, is_log_scale, space  # noqa: E402

Curve = list[dict[str, float]]


@dataclass(frozen=True)
class Method:
    """A searcher setting of the sweep config: its Optuna sampler; the ASHA of which sweep config (``local`` or
    ``stage2``: :func:`asha_settings`), or none; TPE's random draws before it models
    (``searcher.startup_trials``); and whether trial 0 is the search space's baseline point."""

    sampler: str
    asha: str | None
    startup_trials: int = 10
    baseline: bool = False


#: the methods a replay can compare; "random" is the reference every other is compared with
METHODS = {
    "random": Method("random", asha=None),
    "asha+random": Method("random", asha="local"),
    "tpe": Method("tpe", asha=None),  # models only with --samples above its startup_trials
    "asha+tpe": Method("tpe", asha="local"),  # local.yaml's default
    "asha+tpe+baseline": Method("tpe", asha="local", baseline=True),
    "asha+tpe-startup4": Method("tpe", asha="local", startup_trials=4),
    "tpe-startup4": Method("tpe", asha=None, startup_trials=4),
    "stage2-asha+tpe": Method("tpe", asha="stage2"),  # stage2.yaml's default
    "stage2-asha+tpe-startup4": Method("tpe", asha="stage2", startup_trials=4),
}
SWEEP_CONFIGS = {"local": LOCAL_CONFIG, "stage2": LOCAL_CONFIG.with_name("stage2.yaml")}


def asha_settings(source: str, max_steps: int) -> dict[str, Any]:
    """The ``scheduler`` block of sweep config ``source`` for trials of ``max_steps``: its grace period scaled
    from the config's ``trial.max_steps`` (stage2.yaml: 750 of 2000 steps becomes 150 of 400; ASHA decides a rung
    at the first report at or past it), its reduction factor and metric as they are."""
    import yaml

    raw = yaml.safe_load(SWEEP_CONFIGS[source].read_text(encoding="utf-8"))
    block = dict(raw["scheduler"])
    block["grace_period"] = max(1, round(block["grace_period"] * max_steps / raw["trial"]["max_steps"]))
    return block


def method_settings(method: str, max_steps: int) -> str:
    """What a cached replay of ``method`` was measured with: its :class:`Method` and, with ASHA, the scheduler
    block read from its sweep config now (so an edited ``stage2.yaml`` is replayed again)."""
    m = METHODS[method]
    return repr(m) + (f" {asha_settings(m.asha, max_steps)!r}" if m.asha else "")


@dataclass(frozen=True)
class Table:
    """The measured runs: design points, each (configuration, seed)'s rows by step, and the surrogate's
    per-knob length-scales (:func:`fit_scales`)."""

    points: list[dict[str, Any]]
    curves: dict[tuple[int, int], Curve]
    scales: dict[str, float]

    @property
    def seeds(self) -> list[int]:
        return sorted({seed for _, seed in self.curves})

    @property
    def max_steps(self) -> int:
        """The trials' length (a diverged run's curve ends sooner, as its trial did)."""
        return int(max(curve[-1]["step"] for curve in self.curves.values()))


def picked(rows: list[dict[str, float]]) -> dict[str, float] | None:
    """The row the sweep's selection rule (``sweeps/results.py``) picks: the highest val Dice, the last of equals,
    among rows that have one (a diverged run's last row has none); None if none has."""
    finite = [r for r in rows if math.isfinite(r["val_dice"])]
    if not finite:
        return None
    best = max(r["val_dice"] for r in finite)
    return [r for r in finite if r["val_dice"] == best][-1]


def best_val_dice(rows: list[dict[str, float]]) -> float:
    """The val Dice of the row :func:`picked` picks; 0 if there is none."""
    row = picked(rows)
    return row["val_dice"] if row else 0.0


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
    complete = sorted(c for c in range(len(points)) if all((c, s) in curves for s in seeds))
    curves = {k: sorted(v, key=lambda r: r["step"]) for k, v in curves.items() if k[0] in complete}
    names = sorted(points[0])
    best = [statistics.fmean(best_val_dice(curves[c, s]) for s in seeds) for c in complete]
    scales = fit_scales([[unit(n, points[c][n]) for n in names] for c in complete], best)
    return Table(points, curves, dict(zip(names, scales)))


def fit_scales(x: list[list[float]], y: list[float]) -> list[float]:
    """Per-column length-scales of a Gaussian process fitted to ``y`` at unit-cube points ``x``: ARD
    squared-exponential kernel plus white noise on standardised ``y``, maximum marginal likelihood (L-BFGS-B,
    three starts). Scales are bounded to [0.05, 1000]: a column at 1000 no longer moves a nearest point. A constant
    ``y`` (nothing to learn) gives every column the same scale."""
    import numpy as np
    from scipy.linalg import cho_solve, cholesky
    from scipy.optimize import minimize

    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n, d = xs.shape
    if n < 3 or np.ptp(ys) == 0:
        return [1.0] * d
    ys = (ys - ys.mean()) / ys.std()
    squared = (xs[:, None, :] - xs[None, :, :]) ** 2  # n x n x d

    def neg_log_likelihood(theta: np.ndarray) -> float:
        scales, signal, noise = np.exp(theta[:d]), np.exp(2 * theta[d]), np.exp(2 * theta[d + 1])
        k = signal * np.exp(-0.5 * (squared / scales**2).sum(-1)) + (noise + 1e-8) * np.eye(n)
        try:
            lower = cholesky(k, lower=True)
        except np.linalg.LinAlgError:
            return 1e10
        return float(0.5 * ys @ cho_solve((lower, True), ys) + np.log(np.diag(lower)).sum())

    bounds = [(math.log(0.05), math.log(1000.0))] * d + [(math.log(0.1), math.log(10.0)), (math.log(1e-3), 0.7)]
    fits = [minimize(neg_log_likelihood, np.array([math.log(s)] * d + [0.0, math.log(0.3)]), method="L-BFGS-B",
                     bounds=bounds) for s in (0.3, 1.0, 3.0)]
    best = min(fits, key=lambda fit: fit.fun)
    return [float(v) for v in np.exp(best.x[:d])]


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
    """The complete design configuration nearest to ``config``: Euclidean in the unit cube, each knob divided by
    its fitted length-scale (:func:`fit_scales`)."""
    target = {n: unit(n, config[n]) for n in table.scales}
    complete = sorted({c for c, _ in table.curves})
    return min(complete, key=lambda c: sum(((unit(n, table.points[c][n]) - t) / table.scales[n]) ** 2
                                           for n, t in target.items()))


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


class BudgetStopper(Stopper):
    """Ends a replayed sweep once its trials have reported ``budget`` trial-steps (``spent``: each report adds the
    steps its trial made since its previous report): no later report could be picked within the budget."""

    def __init__(self, budget: float) -> None:
        self.budget, self.spent, self._last = budget, 0, {}

    def __call__(self, trial_id: str, result: dict) -> bool:
        self.spent += int(result["step"] - self._last.get(trial_id, 0))
        self._last[trial_id] = result["step"]
        return False

    def stop_all(self) -> bool:
        return self.spent >= self.budget


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
        "scheduler": asha_settings(m.asha or "local", table.max_steps),
        "searcher": {"sampler": m.sampler, "seed": seed, "startup_trials": m.startup_trials},
    }, source="bench/search_replay.py")
    spec = SearchSpec(params=space(), points_to_evaluate=[baseline_point()] if m.baseline else [],
                      source="bench/tabular.py space()")
    tune_config = make_tune_config(cfg, spec)
    if not m.asha:
        tune_config.scheduler = FIFOScheduler()
    tune_config.reuse_actors = True  # a replayed trial holds no state: reuse saves only its actor's start-up
    results = tune.Tuner(replay_trainable(table, seed), param_space=spec.params, tune_config=tune_config,
                         run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0,
                                                   stop=BudgetStopper(samples * table.max_steps))).fit()
    reports = []
    for result in results:
        frame = result.metrics_dataframe
        if frame is not None and not frame.empty:
            columns = ["trial_id", "config_id", "train_seed", "step", "val_dice", "test_dice", "reported_ns"]
            reports += frame[columns].to_dict("records")
    reports.sort(key=lambda r: r["reported_ns"])
    counter = BudgetStopper(math.inf)  # the same count of trial-steps, in arrival order
    for r in reports:
        counter(r["trial_id"], r)
        r["spent"] = counter.spent
    return reports


def pick_test_dice(reports: list[dict[str, float]], budget: int) -> float:
    """The test Dice of the sweep's pick (:func:`picked`) among the reports within ``budget``; nan if none."""
    row = picked([r for r in reports if r["spent"] <= budget])
    return row["test_dice"] if row else math.nan


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


def landscape(table: Table) -> str:
    """What a searcher meets, in one paragraph: the spread of the configurations' best val Dice, the noise
    between training seeds, how well an early validation ranks the configurations (what ASHA's rungs see) and
    how well val Dice ranks them on the test split."""
    from scipy.stats import spearmanr

    configs = sorted({c for c, _ in table.curves})
    picks = {k: picked(curve) or {"val_dice": 0.0, "test_dice": math.nan} for k, curve in table.curves.items()}
    best = {k: row["val_dice"] for k, row in picks.items()}
    mean_best = [statistics.fmean(best[c, s] for s in table.seeds) for c in configs]
    picked_test = [statistics.fmean(picks[c, s]["test_dice"] for s in table.seeds) for c in configs]

    def val_dice_at(step: float) -> list[float]:
        return [statistics.fmean(r["val_dice"] for s in table.seeds for r in table.curves[c, s] if r["step"] == step)
                for c in configs]

    steps = [r["step"] for r in table.curves[configs[0], table.seeds[0]]][:-1]
    early = ", ".join(f"{step:.0f} {spearmanr(val_dice_at(step), mean_best)[0]:.2f}" for step in steps)
    text = (f"Best val Dice of a configuration (mean over its seeds): min {min(mean_best):.3f}, median "
            f"{statistics.median(mean_best):.3f}, max {max(mean_best):.3f}. Spearman with the test Dice of the same "
            f"checkpoints {spearmanr(mean_best, picked_test)[0]:.2f}; of the val Dice at step s with the best: "
            f"{early}.")
    if len(table.seeds) > 1:
        spread = [max(best[c, s] for s in table.seeds) - min(best[c, s] for s in table.seeds) for c in configs]
        text += (f" Between training seeds a configuration's best val Dice differs by {statistics.median(spread):.3f} "
                 f"(median; max {max(spread):.3f}).")
    return text


def digest(path: Path) -> str:
    """The first 16 hex digits of ``path``'s SHA-256: which table a cached replay was measured on."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


class ReplayCache:
    """The figures of finished replays, one JSON line each in ``path``, for one table digest and budget: a
    line measured on another table, with another budget or with a method's settings since changed
    (:func:`method_settings`, for trials of ``max_steps``) is not read back."""

    def __init__(self, path: Path, *, table_digest: str, samples: int, max_steps: int) -> None:
        self.path, self.key = path, {"table": table_digest, "samples": samples}
        self.settings = {method: method_settings(method, max_steps) for method in METHODS}  # each config read once
        self._figures: dict[tuple[str, int], dict[str, float]] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                record = json.loads(line)
                if all(record.get(k) == v for k, v in self.key.items()) \
                        and record["settings"] == self.settings.get(record["method"]):
                    self._figures[record["method"], record["seed"]] = record["figures"]

    def get(self, method: str, seed: int) -> dict[str, float] | None:
        """The figures of ``method`` with searcher ``seed``, if measured."""
        return self._figures.get((method, seed))

    def put(self, method: str, seed: int, figures: dict[str, float]) -> None:
        """Record (and append to the file) the figures of ``method`` with searcher ``seed``."""
        self._figures[method, seed] = figures
        record = {**self.key, "method": method, "settings": self.settings[method], "seed": seed,
                  "figures": figures}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


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
    scales = ", ".join(f"{n} {v:.2f}" for n, v in sorted(table.scales.items(), key=lambda kv: kv[1]))
    print(f"table: {len({c for c, _ in table.curves})} complete configurations x seeds {table.seeds}, "
          f"{table.max_steps} steps; budget {budget} trial-steps ({args.samples} full trials); surrogate "
          f"length-scales {scales}", flush=True)
    cache = ReplayCache(args.table / "replays.jsonl", table_digest=digest(args.table / "table.csv"),
                        samples=args.samples, max_steps=table.max_steps)
    methods = ("random", *args.methods)
    todo = [(seed, method) for seed in args.seeds for method in methods if cache.get(method, seed) is None]
    print(f"{len(args.seeds) * len(methods) - len(todo)} of {len(args.seeds) * len(methods)} replays cached in "
          f"{cache.path}", flush=True)
    if todo:
        started = not ray.is_initialized()  # a caller's Ray (a test's) is used as it is
        if started:
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        with tempfile.TemporaryDirectory() as storage:
            for seed, method in todo:
                reports = replay_sweep(table, method, seed, args.samples, Path(storage))
                cache.put(method, seed, {label: pick_test_dice(reports, b) for label, b in budgets.items()})
                print(f"seed {seed} {method}: " + ", ".join(f"{label} {v:.3f}" for label, v in
                                                            cache.get(method, seed).items()), flush=True)
        if started:
            ray.shutdown()
    figures = {m: {label: [cache.get(m, seed)[label] for seed in args.seeds] for label in budgets} for m in methods}
    lines = ["| method | budget | median test Dice | median gain over random | wins / ties / losses | sign test p |",
             "|---|---|---|---|---|---|"]
    lines += [f"| random | {label} | {statistics.median(figures['random'][label]):.4f} | | | |" for label in budgets]
    for method in args.methods:
        for label in budgets:
            c = compare([a - r for a, r in zip(figures[method][label], figures["random"][label])])
            lines.append(f"| {method} | {label} | {statistics.median(figures[method][label]):.4f} | "
                         f"{c['median']:+.4f} | {c['wins']} / {c['ties']} / {c['losses']} | {c['p']:.3g} |")
    asha_used = "; ".join(f"{source} grace_period {a['grace_period']}, reduction_factor {a['reduction_factor']}"
                          for source in sorted({METHODS[m].asha for m in args.methods} - {None})
                          for a in [asha_settings(source, table.max_steps)]) or "none"
    table_text = "\n".join(lines) + (
        f"\n\nTable {args.table} (digest {cache.key['table']}): {len({c for c, _ in table.curves})} complete "
        f"configurations x training seeds {table.seeds}, {table.max_steps} steps; budget {budget} trial-steps "
        f"({args.samples} full trials), 1/3 = {budgets['1/3']}; {len(args.seeds)} searcher seeds "
        f"({min(args.seeds)}-{max(args.seeds)}); test Dice of each method's pick, paired with random's by seed. "
        f"ASHA as replayed: {asha_used}. {landscape(table)} Surrogate length-scales: {scales}.")
    print("\n" + table_text)
    append_benchmark(f"Search replay: {args.samples} full trials of budget, {len(args.seeds)} searcher seeds",
                     "python bench/search_replay.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                     table_text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
