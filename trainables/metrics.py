"""Validation metrics for CASS segmentation: thresholded Dice, presence AUROC and COCO segm AP.

One evaluator, detectron2-style (``reset`` / ``process`` / ``evaluate``), fed one
:class:`PromptPrediction` per (image, category) prompt. Every category must be prompted on every
evaluated image, absent ones included: a metric that only looks at the best query of a category known
to be present reads 0.9 while the model cannot yet tell which segments are in the image
(seen on an early tiny-preset run: that best query's Dice reached 0.9 in 8 minutes on 2 CPU cores
while presence AUROC stayed at chance, 0.47-0.56). These metrics count what the model says about absent
categories too.

Conventions (the metric keys are stable; they become Ray / W&B keys):

* ``val_dice/<short_name>``, ``val_dice``: for each (image, category) pair, P is the union of the
  category's predicted masks whose score is ``>= score_threshold`` and G the union of its ground-truth
  masks (crowd annotations included); Dice = 2|P∩G| / (|P| + |G|). A pair with P and G both empty
  carries no information and is excluded; a false positive on an absent category scores 0; a missed
  present category scores 0. A category's Dice is the mean over its scored pairs (nan if it has none);
  ``val_dice`` is the mean over the categories with at least one scored pair (nan if none).
* ``val_dice_pooled``: 2 ΣI / (ΣP + ΣG) over all pairs and categories (pixel-weighted; large segments
  count more).
* ``val_presence_auroc``: AUROC over all (image, category) pairs; label = category present in the
  ground truth, score = the prompt's presence probability if given, else its maximum query score (0 with
  no queries). Ties count one half (rank statistic). nan when only one class occurs.
* ``val_ap``, ``val_ap50``, ``val_ap75`` and ``val_ap75/<short_name>``: pycocotools' COCOeval (segm)
  on every kept query as a COCO result, over the evaluated images only. A prompt keeps its
  ``max_dets_per_prompt`` highest-scoring queries (default :data:`MAX_DETS_PER_PROMPT`, 20: the top-k of
  ``trainables.inference``, which makes the predictions of validation, the report's overlays and
  prediction on new images), and COCOeval's ``maxDets``, which caps detections per image *per category*
  (``evaluateImg`` keeps the top ``maxDet`` of one (image, category)), is set to that same number: every
  kept query counts (in validation, Dice, presence and AP see the same queries). A category with no
  ground truth in the evaluated images has no AP (COCOeval's -1): its
  ``val_ap75/<short_name>`` is nan and it is left out of ``val_ap*``: its false positives are invisible
  to AP (those on images without the category still count as ranked false positives when other
  images have it). Dice and ``val_fp_absent_rate`` see every false positive.
* ``val_num_images``: images evaluated. ``val_fp_absent_rate``: fraction of absent pairs whose
  thresholded prediction P is non-empty (exactly the absent pairs that score Dice 0); nan if none.
* Per-category keys exist for all 14 CASS categories; those not in the ground truth's categories are nan.

Distributed use: the caller gathers the small, picklable :meth:`CassEvaluator.state` (per pair: two
pixel counts, a presence score and the kept queries as RLE) and merges them::

    states = [None] * world_size
    torch.distributed.all_gather_object(states, evaluator.state())
    merged = evaluator.empty_copy()  # or merge into ``evaluator`` itself: merging is idempotent
    merged.merge(states)
    metrics = merged.evaluate()  # on rank 0 only, or on every rank so all report the same figures

Merging is keyed by (image, category): a pair seen twice (``DistributedSampler`` pads by repeating
samples) counts once, the last one merged wins, and merging a state into itself changes nothing.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy.stats import rankdata

from common.errors import InputError
from data_prep.cass import BY_ID, CASS_CATEGORIES

RLE = dict  # a COCO run-length encoding: {"size": [H, W], "counts": bytes | str}

MAX_DETS_PER_PROMPT = 20
"""Queries kept per (image, prompt), highest scores first: the one setting behind the inference loop's top-k
(``trainables.inference`` imports it from here; prediction on new images imports it from there), the
evaluator's default ``max_dets_per_prompt`` and so COCOeval's ``maxDets``.

The top 20, not all of the full model's 200 queries: a CASS segment occurs at most once per image, so past a
prompt's best few queries the rest are duplicates or background, which sam3's one-to-one matching trains
towards a score of 0. Keeping all 200 makes scoring
an image an order of magnitude slower and its gathered state ten times larger, and AP was no higher with them
on the model measured (BENCHMARKS.md, "Validation cost", queries kept). sam3's own processor
(``sam3/model/sam3_image_processor.py``) keeps every query above its confidence threshold; thresholding these
20 differs from it only where more than 20 queries of one prompt pass the threshold.
"""


@dataclass(frozen=True)
class PromptPrediction:
    """The model's answer to one (image, category) prompt, at the image's original size.

    ``scores``: [Q] final per-query probabilities in [0, 1]. ``masks``: [Q, H, W] boolean numpy array or Q
    compressed COCO RLEs (``pycocotools.mask.encode`` output). ``presence``: the prompt's presence
    probability, if the model has one.
    """

    image_id: int
    category_id: int
    scores: np.ndarray
    masks: np.ndarray | Sequence[RLE]
    presence: float | None = None


@dataclass(frozen=True)
class PairRecord:
    """What evaluation needs from one (image, category) prompt: small enough to gather across ranks."""

    intersection: int  # |P ∩ G| in pixels, P = union of masks scored >= threshold
    pred_area: int  # |P|
    presence_score: float  # presence probability, else max query score
    detections: tuple[tuple[RLE, float], ...]  # kept queries (mask, score), highest score first


@dataclass(frozen=True)
class PairFigures:
    """One (image, category) pair's figures (:meth:`CassEvaluator.pair_figures`), e.g. for a bootstrap."""

    image_id: int
    category_id: int
    gt_area: int  # |G|; 0: the category is absent from the image
    intersection: int  # |P ∩ G|, P the thresholded prediction (as for ``val_dice``)
    pred_area: int  # |P|
    presence_score: float
    matched_dice: float  # best single-query Dice, no threshold; nan when absent


@dataclass
class EvaluatorState:
    """A :class:`CassEvaluator`'s accumulated records; gather these and :meth:`~CassEvaluator.merge`."""

    score_threshold: float
    max_dets_per_prompt: int
    pairs: dict[tuple[int, int], PairRecord] = field(default_factory=dict)


class CassEvaluator:
    """Accumulates prompt predictions over validation images and computes the metrics above.

    ``coco_gt``: the validation COCO (a dict, deep-copied, or a ``COCO``, used as is: COCOeval rewrites
    its annotations' segmentations as RLE). Its category ids must be CASS ids (``data_prep.cass``).
    ``max_dets_per_prompt``: queries kept per prompt for AP, highest scores first, and COCOeval's ``maxDets``
    (default :data:`MAX_DETS_PER_PROMPT`, what the validation pass keeps).
    """

    def __init__(self, coco_gt: dict | COCO, score_threshold: float = 0.5,
                 max_dets_per_prompt: int = MAX_DETS_PER_PROMPT) -> None:
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold {score_threshold!r} must lie in [0, 1]")
        if max_dets_per_prompt < 1:
            raise ValueError(f"max_dets_per_prompt {max_dets_per_prompt!r} must be >= 1")
        self.coco_gt = coco_gt if isinstance(coco_gt, COCO) else _coco_from_dict(copy.deepcopy(coco_gt))
        self.score_threshold = float(score_threshold)
        self.max_dets_per_prompt = int(max_dets_per_prompt)
        self.category_ids: list[int] = sorted(self.coco_gt.getCatIds())
        unknown = [c for c in self.category_ids if c not in BY_ID]
        if unknown:
            raise InputError(f"ground truth has category ids {unknown} that are not CASS ids 1-{len(BY_ID)}")
        self._image_sizes = {i["id"]: (int(i["height"]), int(i["width"])) for i in self.coco_gt.dataset["images"]}
        self._gt_union: dict[tuple[int, int], RLE] = {}
        for (image_id, category_id), anns in _group_annotations(self.coco_gt).items():
            self._gt_union[image_id, category_id] = mask_utils.merge([self.coco_gt.annToRLE(a) for a in anns])
        self._gt_area = {pair: int(mask_utils.area(rle)) for pair, rle in self._gt_union.items()}
        self.reset()

    # --- accumulation -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every processed prediction."""
        self._state = EvaluatorState(self.score_threshold, self.max_dets_per_prompt)

    def process(self, predictions: Iterable[PromptPrediction]) -> None:
        """Record predictions; each replaces any earlier one for the same (image, category)."""
        for p in predictions:
            self._state.pairs[int(p.image_id), int(p.category_id)] = self._record(p)

    def empty_copy(self) -> "CassEvaluator":
        """A new evaluator with nothing processed, sharing this one's ground truth (no re-indexing)."""
        other = copy.copy(self)
        other.reset()
        return other

    def state(self) -> EvaluatorState:
        """The accumulated records (picklable, for ``torch.distributed.all_gather_object``)."""
        return self._state

    def merge(self, states: Iterable[EvaluatorState]) -> None:
        """Add other evaluators' states (same threshold and cap) to this one; a repeated pair counts once."""
        for s in states:
            if (s.score_threshold, s.max_dets_per_prompt) != (self.score_threshold, self.max_dets_per_prompt):
                raise ValueError(
                    f"cannot merge a state made with score_threshold={s.score_threshold}, max_dets_per_prompt="
                    f"{s.max_dets_per_prompt} into one with {self.score_threshold}, {self.max_dets_per_prompt}"
                )
            self._state.pairs.update(s.pairs)

    # --- metrics -------------------------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """All metrics over the processed images (see the module docstring for the conventions).

        Raises ``ValueError`` if some processed image misses a prompt for one of the ground truth's
        categories: every category must be asked on every image, absent ones included.
        """
        image_ids = self.evaluated_image_ids()
        metrics = {"val_num_images": float(len(image_ids))}
        metrics.update(self._dice_presence_metrics(image_ids))
        metrics.update(self._ap_metrics(image_ids))
        return metrics

    def _dice_presence_metrics(self, image_ids: list[int]) -> dict[str, float]:
        per_category: dict[int, list[float]] = {c: [] for c in self.category_ids}
        labels, presence_scores = [], []
        absent = absent_fp = intersection_sum = area_sum = 0
        for image_id in image_ids:
            for category_id in self.category_ids:
                record = self._state.pairs[image_id, category_id]
                gt_area = self._gt_area.get((image_id, category_id), 0)
                labels.append(gt_area > 0)
                presence_scores.append(record.presence_score)
                if gt_area == 0:
                    absent += 1
                    absent_fp += record.pred_area > 0
                if record.pred_area + gt_area > 0:
                    per_category[category_id].append(2.0 * record.intersection / (record.pred_area + gt_area))
                intersection_sum += record.intersection
                area_sum += record.pred_area + gt_area
        category_dice = {c: float(np.mean(v)) if v else math.nan for c, v in per_category.items()}
        scored = [d for d in category_dice.values() if not math.isnan(d)]
        metrics = {
            "val_dice": float(np.mean(scored)) if scored else math.nan,
            "val_dice_pooled": 2.0 * intersection_sum / area_sum if area_sum else math.nan,
            "val_presence_auroc": auroc(np.array(labels, dtype=bool), np.array(presence_scores, dtype=float)),
            "val_fp_absent_rate": absent_fp / absent if absent else math.nan,
        }
        for c in CASS_CATEGORIES:
            metrics[f"val_dice/{c.short_name}"] = category_dice.get(c.id, math.nan)
        return metrics

    def _ap_metrics(self, image_ids: list[int]) -> dict[str, float]:
        coco_eval = self.coco_eval(image_ids)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco_eval.accumulate()
        # COCOeval.summarize() hard-codes maxDets=100 for the overall AP, so read the means it would
        # print from eval["precision"]: [IoU thresholds, recall points, categories, area ranges, maxDets],
        # averaging the entries > -1 (-1: category without ground truth).
        params = coco_eval.params
        precision = coco_eval.eval["precision"][:, :, :, params.areaRngLbl.index("all"), -1]
        t50, t75 = (int(np.flatnonzero(np.isclose(params.iouThrs, t))[0]) for t in (0.5, 0.75))
        metrics = {
            "val_ap": _mean_valid(precision),
            "val_ap50": _mean_valid(precision[t50]),
            "val_ap75": _mean_valid(precision[t75]),
        }
        per_category = {c: _mean_valid(precision[t75, :, k]) for k, c in enumerate(params.catIds)}
        for c in CASS_CATEGORIES:
            metrics[f"val_ap75/{c.short_name}"] = per_category.get(c.id, math.nan)
        return metrics

    def evaluated_image_ids(self) -> list[int]:
        """The processed images, sorted; ``ValueError`` if one misses a prompt for a ground-truth category."""
        pairs = self._state.pairs
        image_ids = sorted({image_id for image_id, _ in pairs})
        missing = [(i, c) for i in image_ids for c in self.category_ids if (i, c) not in pairs]
        if missing:
            raise ValueError(
                f"{len(missing)} (image, category) prompts were never predicted, e.g. {missing[:5]}; "
                "prompt every category on every validation image, absent ones included"
            )
        return image_ids

    def coco_eval(self, image_ids: list[int]) -> COCOeval:
        """pycocotools' segm COCOeval of the kept queries over ``image_ids``, ``evaluate()``d (not accumulated):
        the per-(image, category) matches behind ``val_ap*``, e.g. for a bootstrap over images."""
        results = [
            {"image_id": image_id, "category_id": category_id, "segmentation": rle, "score": score}
            for (image_id, category_id), record in self._state.pairs.items()
            for rle, score in record.detections
        ]
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco_eval = COCOeval(self.coco_gt, _coco_results(self.coco_gt, results), iouType="segm")
            coco_eval.params.imgIds = image_ids
            coco_eval.params.catIds = self.category_ids
            coco_eval.params.maxDets = [self.max_dets_per_prompt]  # the kept queries, all of them
            coco_eval.evaluate()
        return coco_eval

    def pair_figures(self) -> list[PairFigures]:
        """Per (image, category) pair of the evaluated images (image-major, categories in id order): what the
        metrics are computed from, plus the matched Dice (the best Dice of any single kept query against the
        ground truth; nan for an absent category, 0 for a present one without queries)."""
        figures = []
        for image_id in self.evaluated_image_ids():
            for category_id in self.category_ids:
                record = self._state.pairs[image_id, category_id]
                gt = self._gt_union.get((image_id, category_id))
                gt_area = self._gt_area.get((image_id, category_id), 0)
                matched = math.nan
                if gt_area > 0:
                    best_iou = 0.0
                    if record.detections:
                        best_iou = float(np.max(mask_utils.iou([rle for rle, _ in record.detections], [gt], [0])))
                    matched = 2.0 * best_iou / (1.0 + best_iou)  # Dice = 2 IoU / (1 + IoU), monotone in IoU
                figures.append(PairFigures(image_id, category_id, gt_area, record.intersection, record.pred_area,
                                           record.presence_score, matched))
        return figures

    # --- one prompt ----------------------------------------------------------------------------------

    def _record(self, p: PromptPrediction) -> PairRecord:
        if p.image_id not in self._image_sizes:
            raise ValueError(f"image_id {p.image_id} is not in the validation ground truth")
        if p.category_id not in self.category_ids:
            raise ValueError(f"category_id {p.category_id} is not a ground-truth category {self.category_ids}")
        height, width = self._image_sizes[p.image_id]
        scores = np.asarray(p.scores, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(scores)):
            raise ValueError(f"image {p.image_id}, category {p.category_id}: scores must be finite")
        if len(p.masks) != scores.size:
            raise ValueError(
                f"image {p.image_id}, category {p.category_id}: {len(p.masks)} masks for {scores.size} scores"
            )
        top = np.argsort(-scores, kind="stable")[: self.max_dets_per_prompt]
        above = np.flatnonzero(scores >= self.score_threshold)
        needed = np.union1d(top, above).astype(int)
        rles = dict(zip(needed.tolist(), _encode(p.masks, needed, height, width, p.image_id)))

        gt = self._gt_union.get((p.image_id, p.category_id))
        intersection = pred_area = 0
        if above.size:
            union = mask_utils.merge([rles[i] for i in above.tolist()])
            pred_area = int(mask_utils.area(union))
            if gt is not None:
                intersection = int(mask_utils.area(mask_utils.merge([union, gt], intersect=True)))
        if p.presence is not None:
            presence_score = float(p.presence)
        else:
            presence_score = float(scores.max()) if scores.size else 0.0
        detections = tuple((rles[i], float(scores[i])) for i in top.tolist())
        return PairRecord(intersection, pred_area, presence_score, detections)


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank statistic (ties count 1/2); nan unless both classes occur."""
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _mean_valid(precision: np.ndarray) -> float:
    """Mean of the precision entries > -1, as COCOeval.summarize computes it; nan if there are none."""
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else math.nan


def _encode(
    masks: np.ndarray | Sequence[RLE], indices: np.ndarray, height: int, width: int, image_id: int
) -> list[RLE]:
    """The masks at ``indices`` as compressed RLEs, checking they have the image's original size."""
    if isinstance(masks, np.ndarray):
        if masks.ndim != 3 or masks.shape[1:] != (height, width):
            raise ValueError(f"image {image_id}: masks of shape {masks.shape}, expected [Q, {height}, {width}]")
        if masks.dtype == bool:
            masks = masks.view(np.uint8)  # same bytes, no copy
        # one mask at a time: transposing a [Q, H, W] stack to Fortran order at once is ~2x slower; a mask
        # already column-major (trainables.evaluate's) is encoded in place
        return [mask_utils.encode(np.asfortranarray(masks[i], dtype=np.uint8)) for i in indices.tolist()]
    rles = [masks[i] for i in indices.tolist()]
    for rle in rles:
        if list(rle["size"]) != [height, width]:
            raise ValueError(f"image {image_id}: RLE of size {rle['size']}, expected [{height}, {width}]")
    return rles


def _coco_from_dict(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _coco_results(coco_gt: COCO, results: list[dict]) -> COCO:
    """``coco_gt.loadRes(results)`` for segm results, without its failure on an empty list.

    Mirrors loadRes' segm branch: ids from 1 (COCOeval reads id 0 as "unmatched"), area and bbox from
    the mask, not crowd.
    """
    annotations = [
        {**r, "id": n, "area": float(mask_utils.area(r["segmentation"])),
         "bbox": mask_utils.toBbox(r["segmentation"]).tolist(), "iscrowd": 0}
        for n, r in enumerate(results, start=1)
    ]
    return _coco_from_dict({
        "images": coco_gt.dataset["images"],
        "categories": coco_gt.dataset["categories"],
        "annotations": annotations,
    })


def _group_annotations(coco: COCO) -> dict[tuple[int, int], list[dict]]:
    groups: dict[tuple[int, int], list[dict]] = {}
    for ann in coco.dataset.get("annotations", []):
        groups.setdefault((ann["image_id"], ann["category_id"]), []).append(ann)
    return groups
