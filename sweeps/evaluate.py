"""Evaluate an exported checkpoint on a held-out split, with 95% bootstrap intervals and the Stage 2 targets.

    python -m sweeps.evaluate EXPORT_DIR --split test [--dataset DIR] [--out DIR] [--device cpu|cuda]
        [--bootstrap N] [--seed S] [--overwrite]

``EXPORT_DIR`` is a folder written by :mod:`sweeps.export` (its ``MANIFEST.sha256`` is checked first; the
folder is only read). The dataset is the folder the export's ``trial_config.json`` trained on (its
``val_json`` is ``D/annotations/val.json``, :mod:`data_prep.layout`) unless ``--dataset D`` is given; the split
is read from ``D/annotations/<split>.json`` (``test``: the held-out patients a sweep never reads). The model
predicts every CASS prompt on every image as validation does (:func:`trainables.evaluate.validate`, the
trial's ``score_threshold``) and reports, each with a 95% percentile bootstrap interval
(:mod:`trainables.bootstrap`: patients are resampled when the images record ``patient_id``, else images):

- ``dice_thresholded``: Dice of the union of the queries scoring >= score_threshold, exactly ``val_dice``
  (and ``val_dice/<segment>``) of validation. The deployment figure: what a user of the model gets.
- ``dice_matched``: for each present (image, segment), the Dice of its best-matching predicted mask (any kept
  query, no threshold), averaged per segment, then over segments. What the Stage 2 training notes quote
  during training (the matcher's Dice); it ignores false positives and the threshold, so it reads higher.
- ``ap``, ``ap50``, ``ap75``: pycocotools segm AP as validation computes them (mean and per segment);
- ``presence_auroc``: does the model tell present from absent segments; ``fp_absent_rate``: the fraction of
  absent (image, segment) pairs where the thresholded prediction is not empty.

The Stage 2 targets (:data:`TARGETS`: Dice > 0.75 on the thresholded Dice, AP75 > 0.5) are marked met or not
on the point estimate, and "met with confidence" when the whole interval clears them.

Writes ``evaluation_<split>.json`` and ``evaluation_<split>.csv`` (one row per figure x segment: mean, low,
high) into ``--out`` (default ``<EXPORT_DIR>-evaluation`` beside the export; for one trial of a Pareto export,
``<PARETO_OUT>-evaluation/<trial>``, since every file below a Pareto export is in its manifest), and prints
a table. ``--out`` never overlaps the export or the dataset; it is written whole or not at all; the files of
other splits in it are kept, and a split's earlier files are replaced only with ``--overwrite``
(:mod:`common.outputs`). Bad input (an export that does not verify, a dataset without the split, an unknown
split) exits with status 2 and writes nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script path: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from common.errors import InputError, run_cli  # noqa: E402
from common.outputs import MARKER, check_apart, is_empty_folder, is_our_folder, staged_folder  # noqa: E402
from data_prep.cass import BY_ID  # noqa: E402
from data_prep.layout import SPLITS, DatasetPaths  # noqa: E402
from trainables import bootstrap  # noqa: E402
from trainables.checkpoints.exported import MANIFEST, TRIAL_CONFIG_FILE, verify_export  # noqa: E402
from trainables.metrics import CassEvaluator  # noqa: E402

#: The Stage 2 targets (``../shared/reference/stage2_training_notes.md``, "Target Performance"): figure -> bound
#: the point estimate must exceed. Dice is judged on the thresholded (deployment) Dice.
DICE_TARGET = 0.75
AP75_TARGET = 0.5
TARGETS = {"dice_thresholded": DICE_TARGET, "ap75": AP75_TARGET}
DEFAULT_RESAMPLES = 1000
ESTIMATE_KEYS = ("mean", "low", "high", "defined")  # defined: the resamples the figure exists in
COMMAND = "python -m sweeps.evaluate"

#: figure key -> (label, has per-segment values, description)
FIGURES: dict[str, tuple[str, bool, str]] = {
    "dice_thresholded": ("Dice (thresholded)", True,
                         "deployment figure: union of the queries scoring >= score_threshold vs ground truth, as "
                         "val_dice; absent segments predicted count 0, pairs empty on both sides are left out"),
    "dice_matched": ("Dice (matched)", True,
                     "training-log figure: best single query per present (image, segment), no threshold; "
                     "false positives unseen"),
    "ap": ("AP", True, "COCO segm AP, IoU 0.50:0.95"),
    "ap50": ("AP50", True, "COCO segm AP at IoU 0.50"),
    "ap75": ("AP75", True, "COCO segm AP at IoU 0.75"),
    "presence_auroc": ("presence AUROC", False, "present vs absent (image, segment) pairs by presence score"),
    "fp_absent_rate": ("FP rate on absent", False, "absent (image, segment) pairs with a non-empty thresholded "
                       "prediction"),
}


@dataclass(frozen=True)
class EvaluationResult:
    """What :func:`evaluate_export` wrote: the two files and their content (``result``, as in the JSON)."""

    out: Path
    json_path: Path
    csv_path: Path
    result: dict[str, Any]


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: evaluate, write, print the table."""
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("export_dir", help="a folder written by python -m sweeps.export (one model)")
    parser.add_argument("--split", default="test", help=f"which split to evaluate: one of {', '.join(SPLITS)}")
    parser.add_argument("--dataset", help="the dataset folder (default: the one the export's trial_config.json "
                        "names)")
    parser.add_argument("--out", help="the folder to write evaluation_<split>.json/.csv into (default "
                        "<EXPORT_DIR>-evaluation)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--bootstrap", type=int, default=DEFAULT_RESAMPLES, help="bootstrap resamples (0: none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
    parser.add_argument("--overwrite", action="store_true", help="replace this split's earlier evaluation in --out")
    args = parser.parse_args(argv)
    evaluation = evaluate_export(args.export_dir, args.split, dataset=args.dataset, out=args.out,
                                 device=args.device, bootstrap_resamples=args.bootstrap, seed=args.seed,
                                 overwrite=args.overwrite)
    print(format_table(evaluation.result))
    print(f"wrote {evaluation.json_path} and {evaluation.csv_path}")
    return 0


def evaluate_export(export_dir: str | os.PathLike, split: str = "test", *, dataset: str | os.PathLike | None = None,
                    out: str | os.PathLike | None = None, device: str = "cpu",
                    bootstrap_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                    overwrite: bool = False) -> EvaluationResult:
    """Evaluate the exported model of ``export_dir`` on ``split``; write and return the figures (module doc).

    Every check on the input runs before the model is loaded; an :class:`InputError` leaves nothing written.
    """
    import torch

    from trainables.checkpoints.exported import load_exported
    from trainables.data import build_loader
    from trainables.evaluate import validate

    if split not in SPLITS:
        raise InputError(f"--split {split!r} is not one of {', '.join(SPLITS)}")
    if bootstrap_resamples < 0:
        raise InputError(f"--bootstrap {bootstrap_resamples}: must be >= 0")
    if device not in ("cpu", "cuda"):
        raise InputError(f"--device {device!r} is not cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available here (use --device cpu)")
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise InputError(f"EXPORT_DIR {export_dir}: no such folder (a folder written by python -m sweeps.export)")
    verify_export(export_dir)
    paths = DatasetPaths(Path(dataset)) if dataset is not None else _dataset_of(export_dir)
    if not paths.root.is_dir():
        raise InputError(f"dataset {paths.root}: no such folder (pass --dataset DIR, a folder laid out as "
                         "data_prep/layout.py describes)")
    annotations = paths.annotations(split)
    if not annotations.is_file():
        how = (" (make one with python -m data_prep.create_coco_cass ... --test-fraction F, which holds out a "
               "fraction of the patients, or python -m data_prep.synthetic --test N)") if split == "test" else ""
        raise InputError(f"{annotations}: the dataset {paths.root} has no {split} split{how}")
    anchor = _export_root(export_dir)
    out = Path(out) if out is not None else default_out(export_dir)
    check_apart({"--out": out}, {"EXPORT_DIR": anchor, "--dataset": paths.root})
    json_name, csv_name = f"evaluation_{split}.json", f"evaluation_{split}.csv"
    _check_out(out, json_name, overwrite)

    start = time.monotonic()
    model, cfg = load_exported(export_dir, device, verified=True)  # verify_export ran above
    eval_cfg = cfg.replace(val_json=str(annotations), images_dir=str(paths.images_dir), val_max_images=None)
    loader = build_loader(eval_cfg, "val")
    coco = loader.dataset.coco_gt()
    evaluator = CassEvaluator(coco, score_threshold=cfg.score_threshold)
    metrics = validate(model, loader, evaluator, torch.device(device))
    patients = {i["id"]: i.get("patient_id") for i in coco["images"]}
    result = {
        "split": split, "export_dir": str(export_dir), "dataset": str(paths.root), "annotations": str(annotations),
        "device": device, "score_threshold": cfg.score_threshold, "preset": cfg.preset, "resolution": cfg.resolution,
        **bootstrap_figures(evaluator, patients, bootstrap_resamples, seed),
        "validation_metrics": {k: _json_number(v) for k, v in metrics.items()},
        "seconds": round(time.monotonic() - start, 2),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    with staged_folder(out, overwrite=True, command=COMMAND) as staging:  # _check_out decided what may go
        if out.is_dir():
            for kept in out.iterdir():  # the other splits' evaluations stay
                if kept.is_file() and kept.name not in (json_name, csv_name, MARKER):
                    shutil.copy2(kept, staging / kept.name)
        (staging / json_name).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        write_csv(staging / csv_name, result)
    return EvaluationResult(out, out / json_name, out / csv_name, result)


def bootstrap_figures(evaluator: CassEvaluator, patients: dict[int, str | None], resamples: int,
                      seed: int) -> dict[str, Any]:
    """The figures of a filled ``evaluator`` with their bootstrap intervals, and the targets (JSON-ready).

    ``patients``: image id -> its ``patient_id`` (or None): the resampling units (:mod:`trainables.bootstrap`).
    """
    image_ids = evaluator.evaluated_image_ids()
    categories = evaluator.category_ids
    pairs = bootstrap.PairArrays.from_pairs(evaluator.pair_figures(), image_ids, categories)
    units, kind = bootstrap.unit_indices([patients.get(i) for i in image_ids])
    ap = bootstrap.WeightedSegmAP(evaluator.coco_eval(image_ids))
    if ap.image_ids != image_ids:
        raise AssertionError("COCOeval's image order differs from the evaluator's")
    started = time.monotonic()
    weights = np.vstack([np.ones((1, len(image_ids)), int),
                         bootstrap.resample_weights(units, resamples, seed)])  # row 0: the set itself
    values: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    per_category, overall = bootstrap.weighted_category_means(pairs.dice(), weights)
    values["dice_thresholded"] = overall, per_category
    per_category, overall = bootstrap.weighted_category_means(pairs.matched_dice, weights)
    values["dice_matched"] = overall, per_category
    ap_values = ap.figures(weights)
    for name in ("ap", "ap50", "ap75"):
        values[name] = ap_values[name], ap_values[f"{name}_per_category"]
    values["presence_auroc"] = bootstrap.weighted_auroc(pairs.gt_area > 0, pairs.presence_score, weights), None
    values["fp_absent_rate"] = bootstrap.weighted_fp_absent_rate(pairs, weights), None
    seconds = time.monotonic() - started

    figures = {}
    for name, (overall, per_category) in values.items():
        label, _, description = FIGURES[name]
        entry = {"label": label, "description": description, "all": _estimate(overall, resamples)}
        if per_category is not None:
            entry["per_category"] = {BY_ID[c].short_name: _estimate(per_category[:, k], resamples)
                                     for k, c in enumerate(categories)}
        figures[name] = entry
    targets = []
    for name, bound in TARGETS.items():
        e = figures[name]["all"]
        targets.append({"figure": name, "label": FIGURES[name][0], "target": bound, "mean": e["mean"],
                        "low": e["low"], "high": e["high"], "met": e["mean"] is not None and e["mean"] > bound,
                        "met_with_confidence": e["low"] is not None and e["low"] > bound})
    return {
        "images": len(image_ids),
        "bootstrap": {"resamples": resamples, "seed": seed, "level": bootstrap.LEVEL, "unit": kind,
                      "units": int(units.max()) + 1 if units.size else 0, "seconds": round(seconds, 3)},
        "figures": figures,
        "targets": targets,
    }


def _estimate(values: np.ndarray, resamples: int) -> dict[str, float | int | None]:
    """Row 0 is the point estimate, the rest the resamples: ``{mean, low, high}`` (None: undefined) and how many
    resamples the figure is defined in (a segment absent from a resample has no Dice there; AUROC needs both
    classes): an interval from fewer than all of them says so."""
    low, high = bootstrap.interval(values[1:]) if resamples else (math.nan, math.nan)
    return {"mean": _json_number(values[0]), "low": _json_number(low), "high": _json_number(high),
            "defined": int(np.isfinite(np.asarray(values[1:], dtype=float)).sum())}


def _json_number(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def write_csv(path: Path, result: dict[str, Any]) -> None:
    """One row per figure x category (``all`` for the whole set): figure, category, mean, low, high."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["figure", "category", "mean", "low", "high"])
        for name, entry in result["figures"].items():
            rows = [("all", entry["all"]), *entry.get("per_category", {}).items()]
            for category, e in rows:
                writer.writerow([name, category, *("" if e[k] is None else repr(e[k]) for k in ESTIMATE_KEYS)])


def format_estimate(e: dict[str, float | None], resamples: int | None = None) -> str:
    """``mean [low, high]`` (``n/a`` when undefined; no interval without resamples), and ``(N resamples)`` when
    the interval comes from fewer than the ``resamples`` drawn."""
    if e.get("mean") is None:
        return "n/a"
    interval = "" if e.get("low") is None else f" [{e['low']:.3f}, {e['high']:.3f}]"
    fewer = e.get("defined") is not None and resamples and e["defined"] < resamples and e.get("low") is not None
    return f"{e['mean']:.3f}{interval}" + (f" ({e['defined']} resamples)" if fewer else "")


def format_target(t: dict[str, Any]) -> str:
    """One Stage 2 target: its bound, the estimate and whether it is met."""
    verdict = ("MET" + (" (whole interval above)" if t["met_with_confidence"] else " (interval reaches below)")
               if t["met"] else "NOT MET")
    value = "n/a" if t["mean"] is None else f"{t['mean']:.3f}"
    return f"Stage 2 target {t['label']} > {t['target']}: {value} -> {verdict}"


def format_table(result: dict[str, Any]) -> str:
    """The figures as a text table (mean [low, high]), per segment for those that have one, then the targets."""
    b = result["bootstrap"]

    def cell(e: dict) -> str:
        return format_estimate(e, b["resamples"])

    lines = [f"{result['split']} split of {result['dataset']}: {result['images']} images, {b['units']} "
             f"{b['unit']}s; 95% intervals from {b['resamples']} bootstrap resamples of {b['unit']}s"]
    figures = result["figures"]
    lines.append(f"{'figure':<22}{'all':>26}")
    for name, entry in figures.items():
        lines.append(f"{entry['label']:<22}{cell(entry['all']):>26}   ({entry['description']})")
    segmented = [n for n in figures if "per_category" in figures[n]]
    rows = {category: [cell(figures[n]["per_category"][category]) for n in segmented]
            for category in figures[segmented[0]]["per_category"]}
    # columns as wide as their widest cell: a "(N resamples)" note must not shift the columns after it
    widths = [max([26, len(figures[n]["label"]) + 2] + [len(r[i]) + 2 for r in rows.values()])
              for i, n in enumerate(segmented)]
    lines += ["", f"{'segment':<20}" + "".join(f"{figures[n]['label']:>{w}}" for n, w in zip(segmented, widths))]
    for category, cells in rows.items():
        lines.append(f"{category:<20}" + "".join(f"{c:>{w}}" for c, w in zip(cells, widths)))
    lines.append("")
    lines += [format_target(t) for t in result["targets"]]
    return "\n".join(lines)


def default_out(export_dir: Path) -> Path:
    """``<EXPORT_DIR>-evaluation`` beside the export; for a trial folder of a Pareto export (whose manifest
    covers every file below it), ``<PARETO_OUT>-evaluation/<trial>``."""
    root = _export_root(export_dir)
    base = root.parent / f"{root.name}-evaluation"
    return base / export_dir.resolve().relative_to(root) if root != export_dir.resolve() else base


def _export_root(export_dir: Path) -> Path:
    """The outermost folder holding a manifest that covers ``export_dir`` (itself, or a Pareto export)."""
    root = export_dir.resolve()
    while (root.parent / MANIFEST).is_file() and root.parent != root:
        root = root.parent
    return root


def _dataset_of(export_dir: Path) -> DatasetPaths:
    """The dataset folder the export was trained on: ``val_json``'s ``D/annotations/val.json``."""
    config_file = export_dir / TRIAL_CONFIG_FILE
    try:
        val_json = Path(json.loads(config_file.read_text(encoding="utf-8"))["val_json"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{config_file}: cannot read its val_json ({err}); pass --dataset DIR") from None
    if val_json.parent.name != "annotations":
        raise InputError(f"{config_file}: val_json {val_json} is not in a dataset folder's annotations/ "
                         "(data_prep/layout.py); pass --dataset DIR")
    return DatasetPaths(val_json.parent.parent)


def _check_out(out: Path, json_name: str, overwrite: bool) -> None:
    """``out`` may be absent or empty, or a folder this command wrote that holds nothing but evaluations (its
    other splits stay); it may hold this split's evaluation only with ``overwrite``. Any other folder is refused:
    replacing ``out`` would delete what it holds (another export, a dataset, predictions)."""
    if not (out.exists() or out.is_symlink()) or is_empty_folder(out):
        return
    written_here = is_our_folder(out) and (out / MARKER).read_text(encoding="utf-8").strip() == COMMAND
    foreign = [] if not written_here else [p.name for p in out.iterdir() if p.name != MARKER and not (
        p.is_file() and p.name.startswith("evaluation_") and p.suffix in (".json", ".csv"))]
    if not written_here or foreign:
        raise InputError(f"--out {out} exists and is not a folder of evaluations written by {COMMAND}"
                         + (f" (it holds {', '.join(sorted(foreign)[:5])})" if foreign else "")
                         + "; pick another --out (the evaluation never replaces another folder)")
    if (out / json_name).exists() and not overwrite:
        raise InputError(f"--out {out} already holds {json_name}; pass --overwrite to replace it, or pick another "
                         "--out")


if __name__ == "__main__":
    sys.exit(run_cli(main))
