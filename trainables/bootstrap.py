"""Percentile bootstrap intervals for the evaluation figures, resampling images or patients.

One job: given what :class:`trainables.metrics.CassEvaluator` recorded per (image, category) pair
(:meth:`~trainables.metrics.CassEvaluator.pair_figures`) and its COCOeval matches
(:meth:`~trainables.metrics.CassEvaluator.coco_eval`), compute every figure for a *weighted* image set, where
an image's weight is how many times a resample drew it, and turn ``B`` resamples into 95% intervals.

* Units: a resample draws units with replacement, as many as there are; a unit is a patient (all its images
  come along, once per draw) when the COCO images carry ``patient_id`` (frames of one patient are correlated,
  so resampling frames would give too narrow intervals), else an image. An image without ``patient_id`` in a
  file that has them is a unit of its own.
* Figures at weights ``w`` are exactly CassEvaluator's at ``w = 1`` (tests check it): a per-category mean over
  scored pairs is ``sum(w d) / sum(w)``; AUROC is the rank statistic with tied scores counting 1/2, each pair
  counted ``w`` times; AP is COCOeval's ``accumulate`` with each image's detections and ground truth counted
  ``w`` times.
* AP: ``COCOeval.evaluate()`` (the costly IoU matching) runs once; :class:`WeightedSegmAP` sorts each
  category's detections by score once and, per resample, accumulates the matches with multiplicity (weighted
  cumulative true/false positives). Weighting a detection by ``w`` gives COCOeval's precision-recall envelope
  for ``w`` copies of it (repeated points only add dominated points to the envelope), so this is COCOeval on
  the resampled image list; only the order among detections with exactly equal scores may differ. Cost,
  measured on the fake evaluations of ``tests/test_sweep_evaluate.py`` (14 categories, up to 5 queries per
  prompt; a 2-core machine shared with other jobs): 4 ms per resample for AP at 8 images and 5 ms at 64 (the
  loop over 14 categories x 10 IoU thresholds dominates), 0.01-0.1 ms for all other figures together, where
  re-running COCOeval (evaluate + accumulate) would cost 50 ms per resample at 8 images and 400 ms at 64. So
  1000 resamples of every figure, AP included, take seconds: AP uses as many resamples as the rest.
* Interval: the 2.5th and 97.5th percentiles of the resampled figure, over the resamples where it is
  defined (a category may be absent from a resample: its Dice there is nan, not 0). The point estimate is the
  figure on the evaluated set itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pycocotools.cocoeval import COCOeval

LEVEL = 0.95


def unit_indices(patient_ids: Sequence[str | None]) -> tuple[np.ndarray, str]:
    """Each image's resampling unit (0..U-1) and what a unit is (``"patient"`` or ``"image"``).

    ``patient_ids``: per image, its COCO ``patient_id`` or None. Images of one patient share a unit; an image
    without one is its own unit. The kind is ``"patient"`` when any image has a patient id.
    """
    keys = [("patient", str(p)) if p is not None else ("image", str(n)) for n, p in enumerate(patient_ids)]
    _, units = np.unique(np.array([f"{a}:{b}" for a, b in keys], dtype=object), return_inverse=True)
    kind = "patient" if any(p is not None for p in patient_ids) else "image"
    return units.astype(int).reshape(-1), kind


def resample_weights(units: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """``[n_resamples, n_images]`` counts: how often each image is drawn when units are drawn with replacement."""
    n_units = int(units.max()) + 1 if units.size else 0
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_units, size=(n_resamples, n_units)) if n_units else np.zeros((n_resamples, 0), int)
    unit_counts = np.stack([np.bincount(d, minlength=n_units) for d in draws]) if n_resamples else \
        np.zeros((0, n_units), int)
    return unit_counts[:, units]


def best_frequency(values: np.ndarray) -> np.ndarray:
    """``values`` [B, T]: T candidates' figure in B resamples -> how often each is the highest (a tie shares the
    resample equally; a resample where no candidate is defined counts for none)."""
    values = np.where(np.isfinite(values), values, -np.inf)
    top = values.max(axis=1, keepdims=True)
    best = (values == top) & np.isfinite(top)
    share = best / np.maximum(best.sum(axis=1, keepdims=True), 1)
    return share.sum(axis=0) / max(len(values), 1)


def interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval of the finite ``values`` (nan, nan if none)."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    if not finite.size:
        return math.nan, math.nan
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class PairArrays:
    """The per-pair figures as ``[n_images, n_categories]`` arrays (rows: images, columns: categories)."""

    gt_area: np.ndarray
    intersection: np.ndarray
    pred_area: np.ndarray
    presence_score: np.ndarray
    matched_dice: np.ndarray  # nan where the category is absent

    @classmethod
    def from_pairs(cls, pairs: Sequence, image_ids: Sequence[int], category_ids: Sequence[int]) -> "PairArrays":
        """From :class:`~trainables.metrics.PairFigures` covering every (image, category) of the two lists."""
        row = {i: n for n, i in enumerate(image_ids)}
        col = {c: n for n, c in enumerate(category_ids)}
        shape = (len(image_ids), len(category_ids))
        arrays = {name: np.full(shape, np.nan) for name in cls.__dataclass_fields__}
        for p in pairs:
            for name in arrays:
                arrays[name][row[p.image_id], col[p.category_id]] = getattr(p, name)
        return cls(**arrays)

    def dice(self) -> np.ndarray:
        """Thresholded Dice per pair; nan where prediction and ground truth are both empty (not scored)."""
        denominator = self.pred_area + self.gt_area
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denominator > 0, 2.0 * self.intersection / denominator, np.nan)


def weighted_category_means(values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per resample: each category's weighted mean over its scored (non-nan) pairs, and the mean of those
    category means (CassEvaluator's ``val_dice``). ``values`` [I, C], ``weights`` [B, I] -> ([B, C], [B])."""
    scored = np.isfinite(values)
    counts = weights @ scored.astype(float)
    sums = weights @ np.where(scored, values, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_category = np.where(counts > 0, sums / counts, np.nan)
    defined = np.isfinite(per_category)
    with np.errstate(invalid="ignore", divide="ignore"):
        overall = np.where(defined.any(axis=1), np.nansum(per_category, axis=1) / defined.sum(axis=1), np.nan)
    return per_category, overall


def weighted_auroc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per resample, the AUROC of ``scores`` for ``labels`` (both [I, C]) with each image's pairs counted
    ``weights`` [B, I] times: the rank statistic, ties counting 1/2 (nan unless both classes occur)."""
    labels, scores = labels.reshape(-1).astype(bool), scores.reshape(-1)
    _, group = np.unique(scores, return_inverse=True)  # tied scores share a group, groups in score order
    n_groups = int(group.max()) + 1 if group.size else 0
    n_categories = labels.size // max(weights.shape[1], 1)
    out = np.full(weights.shape[0], np.nan)
    for b, w in enumerate(weights):
        pair_w = np.repeat(w, n_categories).astype(float)
        pos = np.bincount(group, weights=pair_w * labels, minlength=n_groups)
        neg = np.bincount(group, weights=pair_w * ~labels, minlength=n_groups)
        n_pos, n_neg = pos.sum(), neg.sum()
        if n_pos > 0 and n_neg > 0:
            below = np.cumsum(neg) - neg
            out[b] = float((pos * (below + 0.5 * neg)).sum() / (n_pos * n_neg))
    return out


def weighted_fp_absent_rate(arrays: PairArrays, weights: np.ndarray) -> np.ndarray:
    """Per resample: the fraction of absent pairs whose thresholded prediction is non-empty (nan if none)."""
    absent = arrays.gt_area == 0
    n_absent = weights @ absent.sum(axis=1)
    n_fp = weights @ (absent & (arrays.pred_area > 0)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_absent > 0, n_fp / n_absent, np.nan)


class WeightedSegmAP:
    """COCO segm AP (all areas, the largest ``maxDets``) of an ``evaluate()``d COCOeval, with images weighted.

    :meth:`figures` gives, per resample, AP (IoU 0.50:0.95), AP50 and AP75, each as the mean over categories
    with ground truth and per category, as :meth:`trainables.metrics.CassEvaluator.evaluate` reads them.
    """

    def __init__(self, coco_eval: COCOeval) -> None:
        params = coco_eval.params
        self.image_ids = list(params.imgIds)
        self.category_ids = list(params.catIds)
        self.iou_thresholds = np.asarray(params.iouThrs)
        self.recall_thresholds = np.asarray(params.recThrs)
        self.t50, self.t75 = (int(np.flatnonzero(np.isclose(self.iou_thresholds, t))[0]) for t in (0.5, 0.75))
        max_det = params.maxDets[-1]
        n_areas, n_images = len(params.areaRng), len(self.image_ids)
        area = params.areaRngLbl.index("all")
        self._per_category = []
        for k in range(len(self.category_ids)):
            images, scores, tps, fps = [], [], [], []
            n_gt = np.zeros(n_images)
            for i in range(n_images):
                e = coco_eval.evalImgs[k * n_areas * n_images + area * n_images + i]
                if e is None:
                    continue
                n_gt[i] = np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
                matches = np.asarray(e["dtMatches"])[:, :max_det]
                ignored = np.asarray(e["dtIgnore"])[:, :max_det].astype(bool)
                scores.append(np.asarray(e["dtScores"])[:max_det])
                images.append(np.full(len(scores[-1]), i))
                tps.append((matches != 0) & ~ignored)
                fps.append((matches == 0) & ~ignored)
            if scores:
                order = np.argsort(-np.concatenate(scores), kind="mergesort")  # as COCOeval.accumulate sorts
                entry = (np.concatenate(images)[order], np.concatenate(tps, axis=1)[:, order],
                         np.concatenate(fps, axis=1)[:, order], n_gt)
            else:
                entry = (np.zeros(0, int), np.zeros((len(self.iou_thresholds), 0), bool),
                         np.zeros((len(self.iou_thresholds), 0), bool), n_gt)
            self._per_category.append(entry)

    def precision(self, weights: np.ndarray) -> np.ndarray:
        """``[T, C]``: mean interpolated precision over the recall thresholds per IoU threshold and category
        for one image weighting (nan for a category without ground truth in the weighted set)."""
        out = np.full((len(self.iou_thresholds), len(self.category_ids)), np.nan)
        for k, (images, tps, fps, n_gt) in enumerate(self._per_category):
            n_positive = float(weights @ n_gt)
            if n_positive == 0:
                continue
            w = weights[images].astype(float)
            keep = w > 0
            w = w[keep]
            tp_w, fp_w = tps[:, keep] * w, fps[:, keep] * w
            tp_sum, fp_sum = np.cumsum(tp_w, axis=1), np.cumsum(fp_w, axis=1)
            for t in range(len(self.iou_thresholds)):
                q = np.zeros(len(self.recall_thresholds))
                if tp_sum.shape[1]:
                    recall = tp_sum[t] / n_positive
                    precision = tp_sum[t] / (fp_sum[t] + tp_sum[t] + np.spacing(1))
                    envelope = np.maximum.accumulate(precision[::-1])[::-1]
                    at = np.searchsorted(recall, self.recall_thresholds, side="left")
                    inside = at < len(recall)
                    q[inside] = envelope[at[inside]]
                out[t, k] = q.mean()
        return out

    def figures(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Per resample (``weights`` [B, I]): ``ap``, ``ap50``, ``ap75`` ([B], the mean over the categories with
        ground truth) and ``ap_per_category``, ``ap50_per_category``, ``ap75_per_category`` ([B, C])."""
        per = np.stack([self.precision(w) for w in weights])  # [B, T, C]
        # a category has all IoU thresholds or none (no ground truth: nan), so a plain mean is COCO's
        per_category = {"ap": per.mean(axis=1), "ap50": per[:, self.t50], "ap75": per[:, self.t75]}
        result = {}
        for name, values in per_category.items():
            defined = np.isfinite(values)
            with np.errstate(invalid="ignore", divide="ignore"):
                result[name] = np.where(defined.any(axis=1), np.nansum(values, axis=1) / defined.sum(axis=1),
                                        np.nan)
            result[f"{name}_per_category"] = values
        return result
