"""Validation cost: what one validation image costs, part by part, and validation's share of a trial.

1. **Scoring**: first turning sam3's outputs into predictions (``trainables.inference.predictions_from_output``:
   kept queries, masks resized to the image; on ``--device``, the GPU where there is one) with its vectorised
   implementation against the former per-row loop (the baseline), on synthetic outputs of the full model at
   672 px (200 queries, 192x192 mask logits) for ``--size`` px images. Then scoring them
   (``trainables.metrics.CassEvaluator``: RLE encoding, thresholded Dice, presence AUROC, COCOeval segm AP) on
   synthetic predictions of realistic size: ``--size`` px images (512: ARCADE's) with 8 of the
   14 CASS segments present as thin strokes, every prompt answered with the validation pass's
   ``MAX_DETS_PER_PROMPT`` kept queries (the same for every preset: the full model's 200 queries are cut
   to these before scoring; ``--dets 200`` prices keeping them all). Scoring runs on the CPU, in GPU trials
   too. ``process`` (mostly RLE encoding) is timed on row-major masks (the baseline: what the validation
   pass handed over before) and on column-major ones (what it hands over now); ``evaluate`` with
   pycocotools (the baseline) and, if faster-coco-eval is installed (``pip install faster-coco-eval``), with
   its COCOeval in its place. Each variant must give its baseline's metrics (to 1e-9) to count.
2. **Share of a trial**: a tiny-preset trial (``bench.learning.SETTINGS``) in this process on a synthetic set
   (224 px images, ``--val`` of them for validation), validating every ``--val-every`` steps. Its own reports
   give the time of the training steps (``seconds_per_step``) and of each validation (``val_seconds``);
   the validation is split into the model's forward pass, turning outputs into predictions
   (``predictions_from_output``: mask resizing), ``process`` and ``evaluate``. Printed: the share of trial
   time spent validating (goal: <= 5%) and the smallest ``val_every`` that meets it with this validation set
   (validation time grows with the number of validation images over the number of workers; training time
   with ``val_every``). The first window (model build, warm-up) is left out of the steady-state figures.

    TORCHDYNAMO_DISABLE=1 OMP_NUM_THREADS=1 .venv/bin/python bench/eval_cost.py [--parts scoring,trial]
        [--images 8] [--size 512] [--device cuda] [--steps 400] [--val-every 100] [--val 16] [--threads 2]

Prints both tables and appends them to BENCHMARKS-LOG.md with the machine and the date. Not a timed test.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import math
import pickle
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
from pycocotools import mask as mask_utils

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import append_benchmark  # noqa: E402
from data_prep.cass import CASS_CATEGORIES, coco_categories  # noqa: E402
from trainables import inference as inference_module  # noqa: E402
from trainables import metrics as metrics_module  # noqa: E402
from trainables.inference import MAX_DETS_PER_PROMPT  # noqa: E402
from trainables.metrics import CassEvaluator, PromptPrediction  # noqa: E402

GOAL_SHARE = 0.05
PARTS = ("scoring", "trial")


# --- 1. scoring ----------------------------------------------------------------------------------------

def stroke(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A vessel-like band: pixels within 2-4 px of a random segment 60-200 px long."""
    p0 = rng.uniform(0, size, 2)
    angle, length = rng.uniform(0, np.pi), rng.uniform(60, 200)
    d = np.array([np.cos(angle), np.sin(angle)])
    t = np.clip((yy - p0[0]) * d[0] + (xx - p0[1]) * d[1], 0, length)
    return np.hypot(yy - (p0[0] + t * d[0]), xx - (p0[1] + t * d[1])) < rng.uniform(2, 4)


def synthetic_validation(n_images: int, size: int, dets: int, seed: int = 0) -> tuple[dict, list[PromptPrediction]]:
    """A COCO ground truth (8 of the 14 segments per image) and one prediction per (image, prompt) with
    ``dets`` stroke masks, two of them scored above 0.5, each mask column-major as the validation pass
    hands them over (``trainables.inference.predictions_from_output``)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    pool = np.stack([stroke(rng, size, yy, xx) for _ in range(64)])  # reused stroke masks
    pool_wh = np.ascontiguousarray(pool.transpose(0, 2, 1))
    images, annotations, predictions = [], [], []
    for image_id in range(1, n_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": size, "width": size})
        for c in rng.choice(CASS_CATEGORIES, 8, replace=False):
            rle = mask_utils.encode(np.asfortranarray(pool[rng.integers(len(pool))].astype(np.uint8)))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": c.id,
                                "segmentation": rle, "area": float(mask_utils.area(rle)), "iscrowd": 0,
                                "bbox": mask_utils.toBbox(rle).tolist()})
        for c in CASS_CATEGORIES:
            scores = rng.uniform(0, 0.3, dets)
            scores[rng.integers(dets, size=2)] = rng.uniform(0.5, 1, 2)
            masks = pool_wh[rng.integers(len(pool), size=dets)].transpose(0, 2, 1)
            predictions.append(PromptPrediction(image_id, c.id, scores, masks, presence=float(scores.max())))
    return {"images": images, "categories": coco_categories(), "annotations": annotations}, predictions


def same_metrics(a: dict[str, float], b: dict[str, float], tol: float = 1e-9) -> bool:
    """Same keys and values (nan equal to nan)."""
    return a.keys() == b.keys() and all(
        (math.isnan(a[k]) and math.isnan(b[k])) or abs(a[k] - b[k]) <= tol for k in a)


def faster_coco_eval() -> type | None:
    """faster-coco-eval's COCOeval (it accepts pycocotools' COCO objects), or None if not installed."""
    try:
        import logging

        from faster_coco_eval import COCOeval_faster
    except ImportError:
        return None
    logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)  # it logs every evaluate() at INFO
    return COCOeval_faster


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    tic = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - tic


QUERIES, MASK_SIDE = 200, 192  # the full model's queries and mask-logit side at 672 px


def predictions_per_row(out: dict, metadata, max_dets: int) -> list[PromptPrediction]:
    """The baseline: how ``predictions_from_output`` worked before, one row (image x prompt) at a time, each
    row waiting for the device twice."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        probs = out["pred_logits"].float().sigmoid().squeeze(-1)
        presence = out["presence_logit_dec"].float().sigmoid().reshape(-1)
        probs = probs * presence[:, None]
        preds = []
        for row in range(probs.shape[0]):
            height, width = (int(v) for v in metadata.original_size[row])
            top = probs[row].topk(min(max_dets, probs.shape[1])).indices
            mask_logits = out["pred_masks"][row, top].float()[:, None].transpose(-1, -2)
            masks_wh = F.interpolate(mask_logits, (width, height), mode="bilinear", align_corners=False)[:, 0] > 0
            preds.append(PromptPrediction(
                image_id=int(metadata.original_image_id[row]), category_id=int(metadata.original_category_id[row]),
                scores=probs[row, top].cpu().numpy(), masks=masks_wh.contiguous().cpu().numpy().transpose(0, 2, 1),
                presence=float(presence[row])))
        return preds


def measure_predictions(n_images: int, size: int, dets: int, device: str) -> list[dict[str, Any]]:
    """Seconds per image of turning synthetic full-model outputs (one image x 14 prompts per batch, on
    ``device``) into predictions: the per-row baseline, then the vectorised ``predictions_from_output``
    resizing 1 and 14 rows at once; each must give the baseline's scores and masks."""
    from types import SimpleNamespace

    import torch

    from trainables.inference import ROWS_PER_RESIZE, predictions_from_output

    generator = torch.Generator().manual_seed(0)
    rows = len(CASS_CATEGORIES)
    batches = [({"pred_logits": torch.randn(rows, QUERIES, 1, generator=generator).to(device),
                 "presence_logit_dec": torch.randn(rows, 1, generator=generator).to(device),
                 "pred_masks": torch.randn(rows, QUERIES, MASK_SIDE, MASK_SIDE, generator=generator).to(device)},
                SimpleNamespace(original_size=torch.tensor([[size, size]] * rows, device=device),
                                original_image_id=torch.full((rows,), image, device=device),
                                original_category_id=torch.arange(1, rows + 1, device=device)))
               for image in range(n_images)]

    def run(fn):
        fn(*batches[0], dets)  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return timed(lambda: [p for out, metadata in batches for p in fn(out, metadata, dets)])

    before, before_s = run(predictions_per_row)
    rows_out = [{"step": "predictions", "variant": f"per row (before), {device}", "seconds": before_s / n_images,
                 "ratio": 1.0, "agrees": "(baseline)", "metrics": None}]
    default = ROWS_PER_RESIZE.get(torch.device(device).type, 1)
    for rows_per_resize in sorted({1, len(CASS_CATEGORIES)}):
        now, now_s = run(functools.partial(predictions_from_output, rows_per_resize=rows_per_resize))
        same = len(before) == len(now) and all(
            a.image_id == b.image_id and a.category_id == b.category_id and np.array_equal(a.scores, b.scores)
            and a.presence == b.presence and np.array_equal(a.masks, b.masks) for a, b in zip(before, now))
        rows_out.append({"step": "predictions", "seconds": now_s / n_images, "ratio": now_s / before_s,
                         "variant": f"vectorised, {rows_per_resize} rows per resize"
                                    f"{' (default here)' if rows_per_resize == default else ''}, {device}",
                         "agrees": "yes" if same else "NO", "metrics": None})
    return rows_out


def measure_scoring(n_images: int, size: int, dets: int) -> list[dict[str, Any]]:
    """Seconds per image of each scoring step, each against its baseline in this run: ``process`` on
    row-major masks (what validation handed over before) and on column-major ones (what it hands over now);
    ``evaluate`` with pycocotools and, if installed, faster-coco-eval. Each row says whether its metrics
    equal the baseline's."""
    gt, predictions = synthetic_validation(n_images, size, dets)
    row_major = [dataclasses.replace(p, masks=np.ascontiguousarray(p.masks)) for p in predictions]
    rows = []
    for layout, given in (("row-major masks", row_major), ("column-major masks", predictions)):
        evaluator = CassEvaluator(gt)
        _, seconds = timed(functools.partial(evaluator.process, given))
        metrics, evaluate_s = timed(evaluator.evaluate)
        rows.append({"step": "process", "variant": layout, "seconds": seconds / n_images, "metrics": metrics})
    # the last evaluate (column-major; the row-major one before it warmed up) is pycocotools' baseline
    rows.append({"step": "evaluate", "variant": "pycocotools", "seconds": evaluate_s / n_images, "metrics": metrics})
    faster = faster_coco_eval()
    if faster is not None:
        with mock.patch.object(metrics_module, "COCOeval", faster):
            metrics, seconds = timed(evaluator.evaluate)
        rows.append({"step": "evaluate", "variant": "faster-coco-eval", "seconds": seconds / n_images,
                     "metrics": metrics})
    baselines = {}
    for row in rows:
        baseline = baselines.setdefault(row["step"], row)
        row["ratio"] = row["seconds"] / baseline["seconds"]
        row["agrees"] = "(baseline)" if row is baseline else (
            "yes" if same_metrics(baseline["metrics"], row["metrics"]) else "NO")
    rows[0]["state_kib"] = len(pickle.dumps(evaluator.state())) / 1024 / n_images
    return rows


def scoring_table(rows: list[dict[str, Any]], n_images: int, size: int, dets: int) -> str:
    lines = [f"{n_images} images of {size}x{size}, 14 prompts each, {dets} kept queries per prompt "
             f"(gathered state {next(r['state_kib'] for r in rows if 'state_kib' in r):.0f} KiB per image):", "",
             "| step | variant | s/image | vs baseline | same metrics (predictions: same output) | val_ap75 |",
             "|---|---|---|---|---|---|"]
    lines += [f"| `{r['step']}` | {r['variant']} | {r['seconds']:.4f} | {r['ratio']:.2f}x | {r['agrees']} "
              f"| {format(r['metrics']['val_ap75'], '.4f') if r['metrics'] else ''} |" for r in rows]
    if not any(r["variant"] == "faster-coco-eval" for r in rows):
        lines += ["", "faster-coco-eval not installed: not compared (`pip install faster-coco-eval`)."]
    return "\n".join(lines)


# --- 2. share of a trial --------------------------------------------------------------------------------

class PartTimer:
    """Wall seconds spent in named callables, accumulated until :meth:`take` empties them."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def timed(self, name: str, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            tic = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - tic
        return wrapper

    def take(self) -> dict[str, float]:
        seconds, self.seconds = self.seconds, {}
        return seconds


def validation_share(val_seconds: float, val_every: int, step_seconds: float) -> float:
    """Validation's share of trial time: one validation over itself plus ``val_every`` training steps."""
    return val_seconds / (val_seconds + val_every * step_seconds)


def validation_parts(timer: PartTimer, val_seconds: float) -> dict[str, float]:
    """The seconds :func:`timing_validation_parts` timed since the last call, plus ``forward``: the rest of a
    validation pass that took ``val_seconds``."""
    parts = timer.take()
    parts["forward"] = val_seconds - sum(parts.values())
    return parts


@contextlib.contextmanager
def timing_validation_parts(timer: PartTimer) -> Iterator[None]:
    """Time the validation pass's scoring parts (the rest of ``val_seconds`` is the model's forward)."""
    with mock.patch.object(inference_module, "predictions_from_output",
                           timer.timed("predictions", inference_module.predictions_from_output)), \
            mock.patch.object(CassEvaluator, "process", timer.timed("process", CassEvaluator.process)), \
            mock.patch.object(CassEvaluator, "evaluate", timer.timed("evaluate", CassEvaluator.evaluate)):
        yield


def run_timed_trial(args: argparse.Namespace, root: Path) -> list[dict[str, float]]:
    """One tiny-preset trial in this process; each report with its validation split into parts."""
    from bench.learning import SETTINGS
    from data_prep.synthetic import generate_dataset
    from trainables.config import TrialConfig
    from trainables.trial import run_trial

    dataset = generate_dataset(root / "data", n_train=args.train, n_val=args.val, size=224, seed=0)
    cfg = TrialConfig.from_dict({**dataset.trial_fields(), **SETTINGS, "max_steps": args.steps,
                                 "val_every": args.val_every, "cpu_threads_per_worker": args.threads})
    timer, reports = PartTimer(), []

    def report(metrics: dict, _checkpoint) -> None:
        parts = validation_parts(timer, metrics["val_seconds"])
        reports.append({"step": metrics["step"], "seconds_per_step": metrics["seconds_per_step"],
                        "val_seconds": metrics["val_seconds"], "elapsed_s": metrics["elapsed_s"], **parts})

    with timing_validation_parts(timer):
        run_trial(cfg, report=report)
    return reports


def share_summary(reports: list[dict[str, float]], val_every: int, n_val: int) -> dict[str, float]:
    """Steady-state (all windows but the first) medians, validation's share at ``val_every``, the whole
    trial's share, and the smallest ``val_every`` for a share <= :data:`GOAL_SHARE`."""
    steady = reports[1:] or reports
    step_s = statistics.median(r["seconds_per_step"] for r in steady)
    val_s = statistics.median(r["val_seconds"] for r in steady)
    share = validation_share(val_s, val_every, step_s)
    return {
        "seconds_per_step": step_s, "val_seconds": val_s, "val_s_per_image": val_s / n_val,
        "share": share, "trial_share": sum(r["val_seconds"] for r in reports) / reports[-1]["elapsed_s"],
        "min_val_every": math.ceil(val_s * (1 - GOAL_SHARE) / GOAL_SHARE / step_s),
        **{part: statistics.median(r[part] for r in steady) / n_val
           for part in ("forward", "predictions", "process", "evaluate")},
    }


def trial_table(reports: list[dict[str, float]], summary: dict[str, float], args: argparse.Namespace,
                batch_size: int) -> str:
    lines = ["| step | s/step (training) | validation s | forward | predictions | process | evaluate "
             "| share at this val_every |", "|---|---|---|---|---|---|---|---|"]
    for r in reports:
        share = validation_share(r["val_seconds"], args.val_every, r["seconds_per_step"])
        lines.append(f"| {r['step']} | {r['seconds_per_step']:.3f} | {r['val_seconds']:.3f} | {r['forward']:.3f} "
                     f"| {r['predictions']:.3f} | {r['process']:.3f} | {r['evaluate']:.3f} | {share:.1%} |")
    s = summary
    lines += ["",
              f"Steady state (windows after the first, medians): {s['seconds_per_step']:.3f} s per training step "
              f"(batch {batch_size}), {s['val_seconds']:.3f} s per validation of {args.val} images = "
              f"{s['val_s_per_image']:.4f} s/image (forward {s['forward']:.4f}, predictions {s['predictions']:.4f}, "
              f"process {s['process']:.4f}, evaluate {s['evaluate']:.4f}).",
              f"Validation share of trial time: **{s['share']:.1%}** at val_every {args.val_every} (goal <= "
              f"{GOAL_SHARE:.0%}: {'met' if s['share'] <= GOAL_SHARE else 'not met'}); {s['trial_share']:.1%} of "
              f"this whole trial (model build included). With {args.val} validation images, val_every >= "
              f"{s['min_val_every']} keeps it <= {GOAL_SHARE:.0%}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--images", type=int, default=8, help="scoring: validation images")
    parser.add_argument("--size", type=int, default=512, help="scoring: image side in px")
    parser.add_argument("--dets", type=int, default=MAX_DETS_PER_PROMPT,
                        help="scoring: kept queries per prompt (200: all of the full model's)")
    parser.add_argument("--device", default=None, help="scoring: where predictions are made (default: cuda if "
                                                       "available, else cpu)")
    parser.add_argument("--steps", type=int, default=400, help="trial: training steps")
    parser.add_argument("--val-every", type=int, default=100,
                        help="trial: steps between validations (100: the learning benchmark's)")
    parser.add_argument("--val", type=int, default=16, help="trial: validation images")
    parser.add_argument("--train", type=int, default=32, help="trial: training images")
    parser.add_argument("--threads", type=int, default=2, help="trial: torch threads")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        parser.error(f"--parts: unknown {unknown or 'none given'}; choose from {', '.join(PARTS)}")
    if args.steps < args.val_every:
        parser.error(f"--steps {args.steps} is below --val-every {args.val_every}: the trial would validate once")
    command = " ".join(["python bench/eval_cost.py", *(sys.argv[1:] if argv is None else argv)])

    if "scoring" in parts:
        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        rows = measure_predictions(args.images, args.size, args.dets, device) + measure_scoring(
            args.images, args.size, args.dets)
        table = scoring_table(rows, args.images, args.size, args.dets)
        print(table, flush=True)
        append_benchmark("Validation cost: scoring per image", command, table)
    if "trial" in parts:
        from bench.learning import SETTINGS

        with tempfile.TemporaryDirectory() as tmp:
            reports = run_timed_trial(args, Path(tmp))
        table = trial_table(reports, share_summary(reports, args.val_every, args.val), args, SETTINGS["batch_size"])
        print(table, flush=True)
        append_benchmark(f"Validation cost: share of a tiny-preset trial ({SETTINGS['resolution']} px, batch "
                         f"{SETTINGS['batch_size']}, {args.threads} threads)", command, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
