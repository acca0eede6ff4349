"""Tabular benchmark of the Stage 2 search space: learning curves of a space-filling design over every knob that
``search_spaces/stage2.yaml`` searches, trained from the demo's Phase 1 start, with val *and test* figures.

The table is what a search can be replayed against (issue 19, items 2-3): each configuration is trained with
several training seeds, so a replay can draw a seed per trial and training noise is part of what a searcher
meets; each validation also scores the same checkpoint on the held-out test split, so a searcher's final pick
can be judged on data nothing was chosen on.

- **Design**: ``--configs`` points of a Latin hypercube (``scipy.stats.qmc.LatinHypercube``, seeded by
  ``--design-seed``) over :func:`space`: the knobs and ranges of ``search_spaces/stage2.yaml``, except the two
  learning rates, which take ``search_spaces/local.yaml``'s ranges (SAM3's fine-tuning rates, sized for the
  full model, barely move the tiny one in a CPU budget: BENCHMARKS.md, "Learning"). The design is written to
  ``<out>/design.json`` once; a rerun reads it back (changing ``--configs`` or the seed needs a new ``--out``).
- **Runs**: each (configuration, ``--seeds`` entry) trains the tiny preset with ``sweeps/configs/local.yaml``'s
  trial settings, from the demo's Phase 1 weights (``sweeps/demo_phase1.py``, trained into ``<out>`` on first
  use), on the demo's synthetic set (``local.yaml``'s ``dataset.synthetic``, generated into ``<out>/data``),
  for ``--steps`` steps, validating every ``--val-every``. ``--jobs`` runs train at once, one thread each.
- **Rows**: one per validation: the configuration's values, the seed, the step, val Dice / AP75 / presence
  AUROC (the trial's own validation) and test Dice / AP75 / presence AUROC (that checkpoint on the test split).
  A run's rows are written to ``<out>/runs/c<NN>-s<seed>.csv`` when it ends (staged, then renamed): an
  interrupted benchmark loses only its unfinished runs, and a rerun trains only the runs missing there.
  ``<out>/table.csv`` gathers every finished run's rows.

Not a timed test: run it by hand. About 5 minutes per run on one core (400 steps, 32 val + 32 test images every
50 steps); 48 configurations x 2 seeds take about 4 hours on 2 cores, over as many sittings as needed.

    TORCHDYNAMO_DISABLE=1 .venv/bin/python bench/tabular.py --out bench_out/tabular [--configs 48] [--seeds 0 1]
        [--jobs 2] [--steps 400] [--val-every 50] [--limit N]
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
STAGE2_SPACE = REPO / "search_spaces" / "stage2.yaml"
LOCAL_SPACE = REPO / "search_spaces" / "local.yaml"
LOCAL_CONFIG = REPO / "sweeps" / "configs" / "local.yaml"
#: the knobs whose ranges come from local.yaml's space (the tiny model's learning rates)
TINY_RANGES = ("lr_transformer", "lr_vision")
FIGURES = ("dice", "ap75", "presence_auroc")
COLUMNS = ("config", "seed", "step", *(f"{split}_{f}" for split in ("val", "test") for f in FIGURES), "train_loss")


@functools.cache
def space() -> dict[str, Any]:
    """The design's knobs: stage2.yaml's search space, its learning-rate ranges replaced by local.yaml's (read
    once: the replay maps every trial's values through it)."""
    from search_spaces import load_search_space

    params = dict(load_search_space(STAGE2_SPACE))
    local = load_search_space(LOCAL_SPACE)
    params.update({name: local[name] for name in TINY_RANGES})
    return params


def is_log_scale(domain: Any) -> bool:
    """Whether Tune ``domain`` samples on a log scale (``loguniform``, quantised or not)."""
    from ray.tune.search.sample import LogUniform

    sampler = domain.get_sampler()
    return isinstance(sampler, LogUniform) or isinstance(getattr(sampler, "sampler", None), LogUniform)


def from_unit(domain: Any, u: float) -> Any:
    """The value of Tune ``domain`` at ``u`` in [0, 1): log-uniform, uniform, quantised integer or a choice."""
    from ray.tune.search.sample import Categorical, Float, Integer, Quantized

    if isinstance(domain, Categorical):
        return domain.categories[min(int(u * len(domain.categories)), len(domain.categories) - 1)]
    low, high = domain.lower, domain.upper
    if isinstance(domain, Float):
        if is_log_scale(domain):
            return float(math.exp(math.log(low) + u * (math.log(high) - math.log(low))))
        return float(low + u * (high - low))
    if isinstance(domain, Integer):
        sampler = domain.get_sampler()
        q = sampler.q if isinstance(sampler, Quantized) else 1
        steps = (high - low) // q  # qrandint's upper bound is inclusive
        return int(low + min(int(u * (steps + 1)), steps) * q)
    raise TypeError(f"no unit-cube mapping for {type(domain).__name__}")


def design(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` configurations of a seeded Latin hypercube over :func:`space`."""
    from scipy.stats import qmc

    params = space()
    names = sorted(params)
    cube = qmc.LatinHypercube(d=len(names), seed=seed).random(n)
    return [{name: from_unit(params[name], float(u)) for name, u in zip(names, row)} for row in cube]


def load_design(out: Path, n: int, seed: int) -> list[dict[str, Any]]:
    """``<out>/design.json`` (written on first use); refuses one made with another ``n`` or seed."""
    path = out / "design.json"
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if (saved["configs"], saved["design_seed"]) != (n, seed):
            raise SystemExit(f"{path} holds {saved['configs']} configurations of design seed {saved['design_seed']}, "
                             f"not {n} of seed {seed}: use another --out, or the same arguments to resume")
        return saved["points"]
    points = design(n, seed)
    path.write_text(json.dumps({"configs": n, "design_seed": seed, "points": points}, indent=1) + "\n",
                    encoding="utf-8")
    return points


def trial_settings(out: Path, steps: int, val_every: int) -> dict[str, Any]:
    """Every run's fixed TrialConfig fields: local.yaml's trial block, the demo's data and Phase 1 start."""
    import yaml

    from data_prep.layout import DatasetPaths
    from sweeps import demo_phase1
    from sweeps.demo import make_dataset

    raw = yaml.safe_load(LOCAL_CONFIG.read_text(encoding="utf-8"))
    paths = DatasetPaths(make_dataset(out, raw["dataset"]["synthetic"]))  # the demo's own step: made once, validated
    return {**raw["trial"], **paths.trial_fields(), "test_json": str(paths.test_json),
            "checkpoint": str(demo_phase1.train_phase1(out, settings=demo_phase1.SETTINGS,
                                                       data=demo_phase1.DATA).native),
            "max_steps": steps, "val_every": val_every,
            "num_workers": 1, "cpu_threads_per_worker": 1}


def run(settings: dict[str, Any], point: dict[str, Any], config: int, seed: int) -> list[dict[str, Any]]:
    """Train one configuration with one seed (in a child process); one row per validation."""
    import torch

    from trainables.checkpoints.trial import load_model_weights
    from trainables.config import TrialConfig
    from trainables.evaluate import evaluate_model
    from trainables.model import build_model
    from trainables.resolution import set_resolution
    from trainables.trial import run_trial

    settings = dict(settings)
    test_json = settings.pop("test_json")
    cfg = TrialConfig.from_dict({**settings, **point, "seed": seed}, source="bench/tabular.py")
    test_cfg = cfg.replace(val_json=test_json)
    rows: list[dict[str, Any]] = []

    def report(metrics: dict[str, Any], checkpoint: Path | None) -> None:
        row = {"config": config, "seed": seed, "step": int(metrics["step"]),
               **{f"val_{f}": float(metrics.get(f"val_{f}", math.nan)) for f in FIGURES},
               "train_loss": float(metrics.get("train_loss", math.nan))}
        if metrics.get("diverged"):  # a non-finite loss ends the run: no checkpoint, no test figures
            rows.append({**row, **{f"test_{f}": math.nan for f in FIGURES}})
            return
        model = build_model(cfg.preset, device="cpu", seed=cfg.seed)
        load_model_weights(checkpoint, model)
        set_resolution(model, cfg.resolution)  # before any forward, as the trial does
        with torch.no_grad():
            test = evaluate_model(model, test_cfg)
        rows.append({**row, **{f"test_{f}": float(test[f"val_{f}"]) for f in FIGURES}})

    run_trial(cfg, report=report)
    return rows


def write_run(path: Path, point: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """A finished run's rows (configuration values first), staged beside ``path`` and renamed into place."""
    staged = path.with_name(path.name + ".partial")
    with staged.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[*COLUMNS, *sorted(point)])
        writer.writeheader()
        writer.writerows({**row, **point} for row in rows)
    os.replace(staged, path)


def gather(out: Path) -> Path:
    """``<out>/table.csv``: every finished run's rows, in configuration and seed order."""
    files = sorted((out / "runs").glob("c*-s*.csv"))
    table = out / "table.csv"
    with table.open("w", newline="", encoding="utf-8") as f:
        writer = None
        for path in files:
            with path.open(newline="", encoding="utf-8") as part:
                reader = csv.DictReader(part)
                if writer is None:
                    writer = csv.DictWriter(f, fieldnames=reader.fieldnames)
                    writer.writeheader()
                writer.writerows(reader)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="cache folder (design, Phase 1, data, runs)")
    parser.add_argument("--configs", type=int, default=48, help="configurations in the design (default 48)")
    parser.add_argument("--design-seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds of each configuration")
    parser.add_argument("--steps", type=int, default=400, help="steps per run (local.yaml's max_steps)")
    parser.add_argument("--val-every", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each")
    parser.add_argument("--limit", type=int, default=None, help="train at most N missing runs this sitting")
    args = parser.parse_args(argv)

    out = args.out.resolve()
    (out / "runs").mkdir(parents=True, exist_ok=True)
    points = load_design(out, args.configs, args.design_seed)
    todo = [(c, s) for s in args.seeds for c in range(len(points))
            if not (out / "runs" / f"c{c:02d}-s{s}.csv").is_file()]
    print(f"{len(points)} configurations x {len(args.seeds)} seeds: {len(todo)} run(s) missing in {out / 'runs'}",
          flush=True)
    todo = todo[:args.limit] if args.limit is not None else todo
    if todo:
        settings = trial_settings(out, args.steps, args.val_every)
        start = time.perf_counter()
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = {pool.submit(run, settings, points[c], c, s): (c, s) for c, s in todo}
            for done, future in enumerate(as_completed(futures), 1):
                c, s = futures[future]
                rows = future.result()
                write_run(out / "runs" / f"c{c:02d}-s{s}.csv", points[c], rows)
                best = max(rows, key=lambda r: r["val_dice"])
                print(f"[{done}/{len(todo)}] config {c} seed {s}: best val Dice {best['val_dice']:.3f} at step "
                      f"{best['step']} (test {best['test_dice']:.3f}), last {rows[-1]['val_dice']:.3f} "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
    print(f"wrote {gather(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
