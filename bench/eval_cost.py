"""Validation cost of trainables.metrics.CassEvaluator per image, on synthetic data of realistic size.

Each image is 512x512 (ARCADE's size) with 8 of the 14 CASS segments present as thin polyline masks;
the model answers all 14 prompts with Q queries (16: the tiny preset, 200: SAM3's query count), each
query a thin stroke, a few scored above the threshold. Prints seconds per image for ``process``
(RLE-encoding, thresholded Dice counts) and ``evaluate`` (Dice, AUROC, COCOeval segm AP), and the
pickled state size per image (what ``all_gather_object`` moves). Run with OMP_NUM_THREADS=1.

    .venv/bin/python bench/eval_cost.py [--images 8] [--queries 16 200] [--size 512]
"""

from __future__ import annotations

import argparse
import pickle
import time

import numpy as np
from pycocotools import mask as mask_utils

from data_prep.cass import CASS_CATEGORIES, coco_categories
from trainables.metrics import CassEvaluator, PromptPrediction


def stroke(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A vessel-like band: pixels within 2-4 px of a random segment 60-200 px long."""
    p0 = rng.uniform(0, size, 2)
    angle, length = rng.uniform(0, np.pi), rng.uniform(60, 200)
    d = np.array([np.cos(angle), np.sin(angle)])
    t = np.clip((yy - p0[0]) * d[0] + (xx - p0[1]) * d[1], 0, length)
    return np.hypot(yy - (p0[0] + t * d[0]), xx - (p0[1] + t * d[1])) < rng.uniform(2, 4)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--queries", type=int, nargs="+", default=[16, 200])
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: args.size, : args.size].astype(np.float32)
    pool = np.stack([stroke(rng, args.size, yy, xx) for _ in range(64)])  # reused stroke masks

    images, annotations = [], []
    for image_id in range(1, args.images + 1):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": args.size, "width": args.size})
        for c in rng.choice(CASS_CATEGORIES, 8, replace=False):
            rle = mask_utils.encode(np.asfortranarray(pool[rng.integers(len(pool))].astype(np.uint8)))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": c.id,
                                "segmentation": rle, "area": float(mask_utils.area(rle)), "iscrowd": 0,
                                "bbox": mask_utils.toBbox(rle).tolist()})
    gt = {"images": images, "categories": coco_categories(), "annotations": annotations}

    for q in args.queries:
        evaluator = CassEvaluator(gt, max_dets_per_prompt=max(q, 100))
        process_s = 0.0
        for image_id in range(1, args.images + 1):
            for c in CASS_CATEGORIES:
                scores = rng.uniform(0, 0.3, q)
                scores[rng.integers(q, size=2)] = rng.uniform(0.5, 1, 2)
                prediction = PromptPrediction(image_id, c.id, scores, pool[rng.integers(len(pool), size=q)])
                tic = time.perf_counter()
                evaluator.process([prediction])
                process_s += time.perf_counter() - tic
        tic = time.perf_counter()
        metrics = evaluator.evaluate()
        evaluate_s = time.perf_counter() - tic
        state_kib = len(pickle.dumps(evaluator.state())) / 1024 / args.images
        print(f"Q={q:4d}  {args.size}x{args.size}  14 prompts/image  {args.images} images: "
              f"process {process_s / args.images:.3f} s/image, evaluate {evaluate_s / args.images:.3f} s/image, "
              f"state {state_kib:.0f} KiB/image "
              f"(val_dice {metrics['val_dice']:.3f}, val_ap75 {metrics['val_ap75']:.3f})")


if __name__ == "__main__":
    main()
