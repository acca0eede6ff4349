"""Known-answer tests for trainables/metrics.py on a hand-built 3-image, 32x32 COCO ground truth.

Ground truth (CASS ids 1 proximal_rca, 2 mid_rca, 5 proximal_lad):
image 1: cat 1 = rows 4-11 x cols 4-19 (128 px), cat 2 = rows 16-27 x cols 8-15 (96 px); cat 5 absent
image 2: cat 1 = rows 20-27 x cols 2-17 (128 px), cat 5 = rows 2-13 x cols 18-29 (144 px); cat 2 absent
image 3: cat 5 = rows 10-21 x cols 10-21 (144 px); cats 1, 2 absent
"""

from __future__ import annotations

import contextlib
import copy
import io
import math

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from common.errors import InputError
from data_prep.cass import BY_SHORT_NAME, CASS_CATEGORIES
from trainables.metrics import MAX_DETS_PER_PROMPT, CassEvaluator, PromptPrediction, auroc

SIZE = 32
RCA, MID, LAD = BY_SHORT_NAME["proximal_rca"].id, BY_SHORT_NAME["mid_rca"].id, BY_SHORT_NAME["proximal_lad"].id
CATS = (RCA, MID, LAD)
IMAGES = (1, 2, 3)


def rect(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """Boolean SIZE x SIZE mask, rows r0..r1-1, cols c0..c1-1."""
    m = np.zeros((SIZE, SIZE), dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


GT_MASKS = {
    (1, RCA): rect(4, 12, 4, 20),
    (1, MID): rect(16, 28, 8, 16),
    (2, RCA): rect(20, 28, 2, 18),
    (2, LAD): rect(2, 14, 18, 30),
    (3, LAD): rect(10, 22, 10, 22),
}
ABSENT = [(i, c) for i in IMAGES for c in CATS if (i, c) not in GT_MASKS]


def rle(m: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    r["counts"] = r["counts"].decode("ascii")
    return r


def gt_dict() -> dict:
    anns = [
        {"id": n, "image_id": i, "category_id": c, "segmentation": rle(m), "area": float(m.sum()),
         "bbox": mask_utils.toBbox(rle(m)).tolist(), "iscrowd": 0}
        for n, ((i, c), m) in enumerate(GT_MASKS.items(), start=1)
    ]
    return {
        "images": [{"id": i, "file_name": f"{i}.png", "height": SIZE, "width": SIZE} for i in IMAGES],
        "categories": [c.coco() for c in CASS_CATEGORIES if c.id in CATS],
        "annotations": anns,
    }


Queries = list[tuple[np.ndarray, float]]


def predictions(queries: dict[tuple[int, int], Queries], images=IMAGES, presence=None) -> list[PromptPrediction]:
    """One prediction per (image, category) of ``images``; pairs not in ``queries`` get zero queries."""
    out = []
    for i in images:
        for c in CATS:
            q = queries.get((i, c), [])
            masks = np.array([m for m, _ in q], dtype=bool).reshape(len(q), SIZE, SIZE)
            scores = np.array([s for _, s in q], dtype=float)
            out.append(PromptPrediction(i, c, scores, masks, None if presence is None else presence[i, c]))
    return out


def perfect() -> dict[tuple[int, int], Queries]:
    """Every ground-truth mask at score 0.9; a low-score junk query on every absent pair."""
    q: dict[tuple[int, int], Queries] = {pair: [(m, 0.9)] for pair, m in GT_MASKS.items()}
    for pair in ABSENT:
        q[pair] = [(rect(0, 4, 0, 4), 0.1)]
    return q


def evaluate(preds: list[PromptPrediction], **kwargs) -> dict[str, float]:
    ev = CassEvaluator(gt_dict(), **kwargs)
    ev.process(preds)
    return ev.evaluate()


def coco_direct(preds: list[PromptPrediction], cat_ids=None) -> np.ndarray:
    """COCOeval stats computed straight from pycocotools (loadRes, default params): independent path."""
    gt = COCO()
    gt.dataset = gt_dict()
    results = [
        {"image_id": p.image_id, "category_id": p.category_id, "segmentation": rle(m), "score": float(s)}
        for p in preds for m, s in zip(p.masks, p.scores)
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(results), "segm")
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)


def test_perfect_predictions():
    m = evaluate(predictions(perfect()))
    assert m["val_dice"] == 1.0 and m["val_dice_pooled"] == 1.0
    for name in ("proximal_rca", "mid_rca", "proximal_lad"):
        assert m[f"val_dice/{name}"] == 1.0
        assert m[f"val_ap75/{name}"] == pytest.approx(1.0)
    for key in ("val_ap", "val_ap50", "val_ap75"):
        assert m[key] == pytest.approx(1.0)
    assert m["val_presence_auroc"] == 1.0  # presence=None: max query score 0.9 (present) vs 0.1 (absent)
    assert m["val_fp_absent_rate"] == 0.0
    assert m["val_num_images"] == 3.0


def test_metric_keys_are_stable_floats():
    m = evaluate(predictions(perfect()))
    expected = {"val_dice", "val_dice_pooled", "val_presence_auroc", "val_ap", "val_ap50", "val_ap75",
                "val_num_images", "val_fp_absent_rate"}
    expected |= {f"val_dice/{c.short_name}" for c in CASS_CATEGORIES}
    expected |= {f"val_ap75/{c.short_name}" for c in CASS_CATEGORIES}
    assert set(m) == expected
    assert all(type(v) is float for v in m.values())
    assert math.isnan(m["val_dice/pda"]) and math.isnan(m["val_ap75/pda"])  # not a ground-truth category


def test_empty_predictions():
    m = evaluate(predictions({}))
    assert m["val_dice"] == 0.0
    for name in ("proximal_rca", "mid_rca", "proximal_lad"):
        assert m[f"val_dice/{name}"] == 0.0 and m[f"val_ap75/{name}"] == 0.0
    assert m["val_ap"] == 0.0 and m["val_ap50"] == 0.0 and m["val_ap75"] == 0.0
    assert m["val_presence_auroc"] == 0.5  # all scores tie at 0
    assert m["val_fp_absent_rate"] == 0.0


def test_shifted_mask_dice_and_ap50_vs_ap75():
    q = perfect()
    q[1, RCA] = [(np.roll(GT_MASKS[1, RCA], 3, axis=1), 0.9)]  # 8x16 box shifted 3 columns
    # intersection 8*13: Dice = 2*104/(128+128) = 13/16; IoU = 104/152 = 13/19 ~ 0.684, in (0.5, 0.75)
    preds = predictions(q)
    m = evaluate(preds)
    assert m["val_dice/proximal_rca"] == pytest.approx((13 / 16 + 1.0) / 2)
    assert m["val_dice"] == pytest.approx(((13 / 16 + 1.0) / 2 + 1.0 + 1.0) / 3)
    assert m["val_dice_pooled"] == pytest.approx(2 * (104 + 128 + 96 + 144 + 144) / (2 * (128 + 128 + 96 + 144 + 144)))
    assert m["val_ap50"] == pytest.approx(1.0)
    assert m["val_ap75"] < 1.0 and m["val_ap75/proximal_rca"] < 1.0
    assert m["val_ap75/mid_rca"] == pytest.approx(1.0)
    assert m["val_ap75"] == pytest.approx(coco_direct(preds)[2])


def test_wrong_class_counts_false_positive_and_miss():
    q = {(3, RCA): [(GT_MASKS[3, LAD], 0.9)]}  # image 3's LAD mask predicted as RCA, nothing for LAD
    m = evaluate(predictions(q, images=(3,)))
    assert m["val_dice/proximal_rca"] == 0.0  # false positive on an absent category
    assert m["val_dice/proximal_lad"] == 0.0  # missed present category
    assert math.isnan(m["val_dice/mid_rca"])  # both empty: excluded
    assert m["val_dice"] == 0.0
    assert m["val_fp_absent_rate"] == 0.5  # (3, RCA) of the absent pairs (3, RCA), (3, MID)
    assert math.isnan(m["val_ap75/proximal_rca"])  # no ground truth in image 3: no AP
    assert m["val_ap75/proximal_lad"] == 0.0 and m["val_ap"] == 0.0


def test_right_masks_below_threshold_score_zero_dice_but_full_ap():
    q = {pair: [(m, 0.3)] for pair, m in GT_MASKS.items()}
    m = evaluate(predictions(q), score_threshold=0.5)
    assert m["val_dice"] == 0.0
    assert m["val_ap"] == pytest.approx(1.0) and m["val_ap75"] == pytest.approx(1.0)
    assert evaluate(predictions(q), score_threshold=0.3)["val_dice"] == 1.0  # score >= threshold counts


def test_false_positive_on_absent_category_lowers_dice():
    base = perfect()
    with_fp = perfect()
    with_fp[1, LAD] = [(rect(0, 8, 0, 8), 0.9)]  # LAD is absent from image 1
    clean, dirty = evaluate(predictions(base)), evaluate(predictions(with_fp))
    assert dirty["val_dice/proximal_lad"] == pytest.approx(2 / 3)  # mean of (0, 1, 1) over the scored pairs
    assert dirty["val_dice"] < clean["val_dice"] == 1.0
    assert dirty["val_fp_absent_rate"] == pytest.approx(1 / 4)


def test_presence_auroc_by_hand():
    # 5 present, 4 absent pairs; 15 of the 20 (present, absent) pairs are ordered right -> 0.75
    present_scores = dict(zip(GT_MASKS, [0.9, 0.8, 0.7, 0.3, 0.2]))
    absent_scores = dict(zip(ABSENT, [0.6, 0.5, 0.25, 0.1]))
    m = evaluate(predictions(perfect(), presence={**present_scores, **absent_scores}))
    assert m["val_presence_auroc"] == pytest.approx(0.75)


def test_auroc_ties_and_single_class():
    assert auroc(np.array([True, False]), np.array([0.5, 0.5])) == 0.5
    assert auroc(np.array([True, False, True]), np.array([0.2, 0.1, 0.05])) == 0.5
    assert math.isnan(auroc(np.array([True, True]), np.array([0.1, 0.2])))


def test_merge_of_split_states_equals_single_evaluator():
    q = perfect()
    q[1, RCA] = [(np.roll(GT_MASKS[1, RCA], 3, axis=1), 0.8), (GT_MASKS[1, RCA], 0.4)]
    q[3, MID] = [(rect(0, 6, 0, 6), 0.7)]
    preds = predictions(q)
    whole = evaluate(preds)
    a, b = CassEvaluator(gt_dict()), CassEvaluator(gt_dict())
    a.process([p for p in preds if p.image_id in (1, 2)])
    b.process([p for p in preds if p.image_id == 3] + [preds[0]])  # a duplicate sample counts once
    rank0 = a.empty_copy()
    rank0.merge(copy.deepcopy([a.state(), b.state()]))  # deepcopy: as if pickled by all_gather_object
    merged = rank0.evaluate()
    assert set(merged) == set(whole)
    assert all(same(merged[k], whole[k]) for k in whole), {k: (merged[k], whole[k]) for k in whole}
    a.merge([a.state()])  # merging a state into itself changes nothing
    assert len(a.state().pairs) == 6


def test_merge_refuses_other_threshold():
    other = CassEvaluator(gt_dict(), score_threshold=0.3)
    with pytest.raises(ValueError, match="score_threshold"):
        CassEvaluator(gt_dict()).merge([other.state()])


def test_ap_matches_direct_cocoeval():
    rng = np.random.default_rng(0)
    q = perfect()
    q[1, RCA] = [(np.roll(GT_MASKS[1, RCA], 3, axis=1), 0.95), (GT_MASKS[1, RCA], 0.6)]
    q[2, LAD] = [(np.roll(GT_MASKS[2, LAD], 2, axis=0), 0.7)]
    q[3, LAD] = [(np.roll(GT_MASKS[3, LAD], 1, axis=1), 0.8), (rng.random((SIZE, SIZE)) > 0.5, 0.85)]
    q[1, LAD] = [(rect(0, 8, 0, 8), 0.99)]
    preds = predictions(q)
    m = evaluate(preds)
    stats = coco_direct(preds)
    assert m["val_ap"] == pytest.approx(stats[0])
    assert m["val_ap50"] == pytest.approx(stats[1])
    assert m["val_ap75"] == pytest.approx(stats[2]) and 0 < m["val_ap75"] < 1
    for c in CASS_CATEGORIES:
        if c.id in CATS:
            assert m[f"val_ap75/{c.short_name}"] == pytest.approx(coco_direct(preds, cat_ids=[c.id])[2])


def test_rle_masks_give_the_same_metrics_as_dense():
    dense = predictions(perfect())
    as_rle = [PromptPrediction(p.image_id, p.category_id, p.scores, [rle(m) for m in p.masks]) for p in dense]
    a, b = evaluate(dense), evaluate(as_rle)
    assert all(same(a[k], b[k]) for k in a)


def test_mask_layout_and_dtype_do_not_change_the_metrics():
    dense = predictions(perfect())
    column_major = [PromptPrediction(p.image_id, p.category_id, p.scores,
                                     np.ascontiguousarray(p.masks.transpose(0, 2, 1)).transpose(0, 2, 1))
                    for p in dense]
    as_uint8 = [PromptPrediction(p.image_id, p.category_id, p.scores, p.masks.astype(np.uint8)) for p in dense]
    a = evaluate(dense)
    assert all(same(a[k], b[k]) for b in (evaluate(column_major), evaluate(as_uint8)) for k in a)


def test_max_dets_per_prompt_keeps_the_top_queries_by_default_max_dets_per_prompt():
    k = MAX_DETS_PER_PROMPT
    q = perfect()
    q[1, RCA] = [(rect(0, 2, 0, 2), 0.95)] * k + [(GT_MASKS[1, RCA], 0.9)]  # the right mask is query k + 1
    kept_all = evaluate(predictions(q), max_dets_per_prompt=k + 1)
    kept_k = evaluate(predictions(q))
    assert CassEvaluator(gt_dict()).max_dets_per_prompt == k
    assert kept_all["val_ap75/proximal_rca"] > kept_k["val_ap75/proximal_rca"]
    assert kept_all["val_dice/proximal_rca"] == kept_k["val_dice/proximal_rca"]  # Dice uses all queries >= threshold
    with pytest.raises(ValueError, match="max_dets_per_prompt 0 must be >= 1"):
        CassEvaluator(gt_dict(), max_dets_per_prompt=0)


def test_every_category_must_be_prompted():
    ev = CassEvaluator(gt_dict())
    ev.process([p for p in predictions(perfect()) if p.category_id != MID])
    with pytest.raises(ValueError, match="never predicted"):
        ev.evaluate()


def test_bad_inputs_are_refused():
    ev = CassEvaluator(gt_dict())
    with pytest.raises(ValueError, match="expected"):
        ev.process([PromptPrediction(1, RCA, np.array([0.9]), np.zeros((1, 16, 16), dtype=bool))])
    with pytest.raises(ValueError, match="not in the validation"):
        ev.process([PromptPrediction(99, RCA, np.array([]), np.zeros((0, SIZE, SIZE), dtype=bool))])
    with pytest.raises(ValueError, match="not a ground-truth category"):
        ev.process([PromptPrediction(1, 14, np.array([]), np.zeros((0, SIZE, SIZE), dtype=bool))])
    bad = gt_dict()
    bad["categories"].append({"id": 99, "name": "not a segment"})
    with pytest.raises(InputError, match="not CASS ids"):
        CassEvaluator(bad)


def test_ground_truth_dict_is_not_modified():
    gt = gt_dict()
    before = copy.deepcopy(gt)
    ev = CassEvaluator(gt)
    ev.process(predictions(perfect()))
    ev.evaluate()
    assert gt == before
