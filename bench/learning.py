"""Learning benchmark: does the tiny SAM3 preset learn the synthetic CASS set within a time budget?

Trains the ``tiny`` preset (sam3's own model, matcher and loss, random initialisation) in this process,
without Ray, on a freshly generated synthetic set (:func:`data_prep.synthetic.generate_dataset`),
validating every ``--val-every`` steps on the whole validation split. Prints one row per validation
(elapsed seconds, step, thresholded val mean Dice, presence AUROC, AP75, ...) and the verdict against
the issue's goals: within ``--minutes`` (default 10) on 2 CPU cores, ``val_dice >= 0.5`` and
``val_presence_auroc >= 0.9``. Writes ``learning.csv`` and ``learning.png`` (the curves) to ``--out``.

The settings (:data:`SETTINGS`) are the best found in the learning study (BENCHMARKS.md, "Learning"); they
double as the local sweep's trial defaults. Elapsed time counts model build, training and validation
(not data generation); training stops at the last validation that fits the budget. Timings depend on
the machine's load: the report prints the load average and the process's CPU seconds per step too.
Not a timed test: run it by hand on an idle machine.

    TORCHDYNAMO_DISABLE=1 .venv/bin/python bench/learning.py [--minutes 10] [--out DIR] [--set key=value ...]
                                                             [--phase1 DIR]

``--phase1 DIR`` starts from the demo's Phase 1 weights instead of random ones (binary vessel segmentation on
other patients, then weight surgery: ``sweeps/demo_phase1.py``), as ``make demo``'s Stage 2 sweep does.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep.synthetic import generate_dataset  # noqa: E402
from trainables.config import TrialConfig  # noqa: E402

GOAL_DICE = 0.5
GOAL_AUROC = 0.9

# The best settings of the learning study (BENCHMARKS.md, "Learning", runs s8 and c1-c4): presence learned at
# 112 px with 4 images per step (AUROC 0.91 by ~350 s) and never at 224 px with 1-2. Every other TrialConfig
# field keeps its default. max_steps is set huge (the budget stops training), so keep a schedule that does not
# depend on it.
SETTINGS: dict[str, Any] = {
    "preset": "tiny",
    "resolution": 112,
    "batch_size": 4,
    "absent_query_loss": True,  # presence passed 0.9 at step 600 with it, 700 without (s3 vs s7)
    "lr_transformer": 1e-3,
    "lr_vision": 1e-3,
    "lr_language": 0.0,
    "freeze_text_encoder": True,  # cached prompt embeddings; learned like training it at 1e-3 (r3 vs r2)
    "warmup_steps": 20,
    "schedule": "constant",  # a cosine decay over the budget slowed presence (s4)
    "activation_checkpointing": "none",  # same math, more steps in the budget (s3 -> s8 minimal -> c3 none)
}
DATA = {"train": 256, "val": 16, "size": 224, "seed": 0}
COLUMNS = ("elapsed_s", "step", "val_dice", "val_presence_auroc", "val_ap75", "val_ap50", "val_fp_absent_rate",
           "train_loss", "train_presence_loss", "seconds_per_step", "cpu_s")


class _TimeUp(Exception):
    """Raised from the report callback when the next validation would end past the budget."""


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _parse_overrides(pairs: list[str]) -> dict[str, Any]:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        overrides[key] = yaml.safe_load(value)
    return overrides


def _fmt(value: float, spec: str = ".3f") -> str:
    return "nan" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def linear_probe_auroc(train_json: Path, val_json: Path, images_dir: Path, side: int = 28,
                       ridge: float = 100.0) -> float:
    """Presence AUROC of a ridge regression on ``side`` x ``side`` grey pixels, one per category: how visible
    absence is in the data (a ceiling-free sanity check: no augmentation, no deep model, ~1 s)."""
    import numpy as np
    from PIL import Image

    from data_prep.cass import CASS_CATEGORIES
    from trainables.metrics import auroc

    def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
        doc = json.loads(path.read_text(encoding="utf-8"))
        present = {(a["image_id"], a["category_id"]) for a in doc["annotations"]}
        pixels = [np.asarray(Image.open(images_dir / im["file_name"]).convert("L").resize((side, side)),
                             dtype=np.float64).ravel() / 255 for im in doc["images"]]
        labels = [[(im["id"], c.id) in present for c in CASS_CATEGORIES] for im in doc["images"]]
        return np.array(pixels), np.array(labels, dtype=float)

    x_train, y_train = load(train_json)
    x_val, y_val = load(val_json)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    weights = np.linalg.solve(x_train.T @ x_train + ridge * np.eye(x_train.shape[1]),
                              x_train.T @ (y_train - y_train.mean(0)))
    scores = x_val @ weights + y_train.mean(0)
    return auroc(y_val.ravel() > 0.5, scores.ravel())


def train(cfg: TrialConfig, budget_s: float) -> list[dict[str, float]]:
    """Run the trial until the last validation that fits ``budget_s``; return one row per validation."""
    from trainables.trial import run_trial

    rows: list[dict[str, float]] = []
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    last = {"t": start}
    print(f"{'elapsed s':>9} {'step':>5} {'val_dice':>8} {'auroc':>6} {'ap75':>6} {'fp_abs':>6} "
          f"{'train_loss':>10} {'presence':>8} {'s/step':>6}", flush=True)

    def report(metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        now = time.perf_counter()
        row = {"elapsed_s": now - start, "cpu_s": _cpu_seconds() - cpu_start,
               **{k: float(metrics.get(k, math.nan)) for k in COLUMNS if k not in ("elapsed_s", "cpu_s")}}
        rows.append(row)
        print(f"{row['elapsed_s']:9.1f} {int(row['step']):5d} {_fmt(row['val_dice']):>8} "
              f"{_fmt(row['val_presence_auroc']):>6} {_fmt(row['val_ap75']):>6} {_fmt(row['val_fp_absent_rate'], '.2f'):>6} "
              f"{row['train_loss']:10.2f} {row['train_presence_loss']:8.3f} {row['seconds_per_step']:6.2f}", flush=True)
        segment = now - last["t"]
        last["t"] = now
        if metrics.get("diverged") or row["elapsed_s"] + segment > budget_s:
            raise _TimeUp

    try:
        run_trial(cfg, report=report)
    except _TimeUp:
        pass
    return rows


def verdict(rows: list[dict[str, float]], budget_s: float) -> tuple[bool, str]:
    """Whether some validation within the budget met both goals, and a one-line summary."""
    inside = [r for r in rows if r["elapsed_s"] <= budget_s]
    if not inside:
        return False, "no validation finished within the budget"
    hit = next((r for r in inside if r["val_dice"] >= GOAL_DICE and r["val_presence_auroc"] >= GOAL_AUROC), None)
    best_dice = max(inside, key=lambda r: -1 if math.isnan(r["val_dice"]) else r["val_dice"])
    best_auroc = max(inside, key=lambda r: -1 if math.isnan(r["val_presence_auroc"]) else r["val_presence_auroc"])
    final = inside[-1]
    summary = (f"final (step {int(final['step'])}, {final['elapsed_s']:.0f} s): val_dice {_fmt(final['val_dice'])}, "
               f"presence AUROC {_fmt(final['val_presence_auroc'])}, AP75 {_fmt(final['val_ap75'])}; best val_dice "
               f"{_fmt(best_dice['val_dice'])} (step {int(best_dice['step'])}), best AUROC "
               f"{_fmt(best_auroc['val_presence_auroc'])} (step {int(best_auroc['step'])}); ")
    if hit:
        return True, summary + (f"goals (val_dice >= {GOAL_DICE}, AUROC >= {GOAL_AUROC}) MET at step "
                                f"{int(hit['step'])}, {hit['elapsed_s']:.0f} s")
    return False, summary + f"goals (val_dice >= {GOAL_DICE}, AUROC >= {GOAL_AUROC}) NOT met within {budget_s:.0f} s"


def write_outputs(rows: list[dict[str, float]], out: Path, title: str) -> None:
    with (out / "learning.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, x_key, x_label in ((axes[0], "elapsed_s", "elapsed seconds (build + train + validation)"),
                               (axes[1], "step", "optimizer step")):
        x = [r[x_key] for r in rows]
        for key, label in (("val_dice", "val Dice (thresholded)"), ("val_presence_auroc", "presence AUROC"),
                           ("val_ap75", "AP75")):
            ax.plot(x, [r[key] for r in rows], marker="o", label=label)
        ax.axhline(GOAL_DICE, color="C0", ls=":", lw=1)
        ax.axhline(GOAL_AUROC, color="C1", ls=":", lw=1)
        ax.set_xlabel(x_label)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "learning.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="time budget (default 10)")
    parser.add_argument("--out", type=Path, default=None, help="folder for learning.csv/.png (default: a temp dir)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--train", type=int, default=DATA["train"], help="synthetic training images")
    parser.add_argument("--val", type=int, default=DATA["val"], help="synthetic validation images")
    parser.add_argument("--val-every", type=int, default=100, help="steps between validations")
    parser.add_argument("--seed", type=int, default=0, help="data and trial seed")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override a TrialConfig field")
    parser.add_argument("--phase1", type=Path, default=None, metavar="DIR",
                        help="start from the demo's Phase 1 weights (sweeps/demo_phase1.py), trained into DIR on "
                             "first use and reused after; default: random init")
    args = parser.parse_args(argv)

    out = args.out or Path(tempfile.mkdtemp(prefix="learning_"))
    out.mkdir(parents=True, exist_ok=True)
    budget_s = args.minutes * 60
    started = time.perf_counter()
    paths = generate_dataset(out / "data", args.train, args.val, DATA["size"], args.seed)
    data_s = time.perf_counter() - started
    if args.phase1 is not None:
        from sweeps.demo import make_surgered_checkpoint

        args.set = [f"checkpoint={make_surgered_checkpoint(args.phase1)}", *args.set]
    values = {**SETTINGS, **paths.trial_fields(), "val_every": args.val_every, "max_steps": 1_000_000,
              "cpu_threads_per_worker": args.threads, "num_workers": 1, "seed": args.seed,
              **_parse_overrides(args.set)}
    cfg = TrialConfig.from_dict(values, source="bench/learning.py")
    probe = linear_probe_auroc(paths.train_json, paths.val_json, paths.images_dir)
    shown = {k: v for k, v in cfg.to_dict().items() if k not in ("train_json", "val_json", "images_dir")}
    print(f"data: {args.train} train / {args.val} val synthetic images at {DATA['size']} px in {data_s:.1f} s -> {out}")
    print(f"settings: {json.dumps(shown)}")
    print(f"data check: a ridge probe on 28x28 pixels (no deep model) reaches presence AUROC {probe:.3f} on val")
    print(f"budget {budget_s:.0f} s, {args.threads} threads, load average at start {os.getloadavg()[0]:.2f}", flush=True)

    rows = train(cfg, budget_s)
    ok, summary = verdict(rows, budget_s)
    if rows:
        steps, cpu = rows[-1]["step"], rows[-1]["cpu_s"]
        print(f"{int(steps)} steps, {rows[-1]['elapsed_s'] / steps:.2f} s/step wall incl. validation, "
              f"{cpu / steps:.2f} CPU-s/step; load average at end {os.getloadavg()[0]:.2f}")
        write_outputs(rows, out, f"tiny SAM3 preset, synthetic CASS ({args.train} train / {args.val} val), "
                                 f"{args.threads} threads")
        print(f"wrote {out / 'learning.csv'} and {out / 'learning.png'}")
    print(("PASS: " if ok else "FAIL: ") + summary)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
