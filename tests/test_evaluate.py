"""Turning sam3's output into scored predictions (``trainables.evaluate.predictions_from_output``).

Specification (sam3's own inference post-processing, ``sam3/model/sam3_image_processor.py``):
- a query's score is sigmoid(its logit) x sigmoid(the prompt's presence logit); the ``max_dets`` best are
  kept, best first;
- its mask is the low-resolution mask logits resized bilinearly to the image's original (height, width),
  thresholded at 0, for non-square images too;
- each mask reaches the host column-major (pycocotools' RLE layout), so encoding it needs no copy;
- validation keeps each prompt's ``MAX_DETS_PER_PROMPT`` best queries, and exactly these reach COCOeval, whose
  ``maxDets`` is that number (``trainables.metrics``' docstring).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainables.inference import predictions_from_output

HEIGHT, WIDTH, LOW_RES, QUERIES = 40, 56, 12, 8


def sam3_output(rows: int, seed: int = 0) -> tuple[dict, SimpleNamespace]:
    generator = torch.Generator().manual_seed(seed)
    out = {"pred_logits": torch.randn(rows, QUERIES, 1, generator=generator),
           "presence_logit_dec": torch.randn(rows, 1, generator=generator),
           "pred_masks": torch.randn(rows, QUERIES, LOW_RES, LOW_RES, generator=generator)}
    metadata = SimpleNamespace(original_size=torch.tensor([[HEIGHT, WIDTH]] * rows),
                               original_image_id=torch.arange(rows) + 1, original_category_id=torch.full((rows,), 3))
    return out, metadata


def test_scores_are_query_times_presence_probability_best_first():
    out, metadata = sam3_output(rows=2)
    predictions = predictions_from_output(out, metadata, max_dets=5)

    for row, p in enumerate(predictions):
        expected = out["pred_logits"][row, :, 0].sigmoid() * out["presence_logit_dec"][row].sigmoid()
        assert np.allclose(p.scores, expected.sort(descending=True).values[:5].numpy())
        assert (p.image_id, p.category_id) == (row + 1, 3)
        assert p.presence == float(out["presence_logit_dec"][row].sigmoid())


def test_masks_are_the_resized_logits_above_zero_at_the_original_size_in_column_major_order():
    out, metadata = sam3_output(rows=2)
    predictions = predictions_from_output(out, metadata, max_dets=QUERIES)

    for row, p in enumerate(predictions):
        order = (out["pred_logits"][row, :, 0]).argsort(descending=True)  # presence scales every query alike
        resized = F.interpolate(out["pred_masks"][row, order][:, None], (HEIGHT, WIDTH), mode="bilinear",
                                align_corners=False)[:, 0].numpy()
        assert p.masks.shape == (QUERIES, HEIGHT, WIDTH) and p.masks.dtype == bool
        undecided = np.abs(resized) < 1e-5  # resizing the transpose rounds differently in the last bits
        assert np.array_equal(p.masks[~undecided], (resized > 0)[~undecided])
        assert all(mask.flags.f_contiguous for mask in p.masks)


@pytest.mark.parametrize("rows_per_resize", [None, 1, 2, 14])
def test_rows_of_different_image_sizes_keep_their_own_size_and_order(rows_per_resize):
    out, metadata = sam3_output(rows=3)
    metadata.original_size = torch.tensor([[HEIGHT, WIDTH], [WIDTH, HEIGHT], [HEIGHT, WIDTH]])
    metadata.original_image_id = torch.tensor([7, 8, 9])

    predictions = predictions_from_output(out, metadata, max_dets=QUERIES, rows_per_resize=rows_per_resize)

    assert [p.image_id for p in predictions] == [7, 8, 9]
    assert [p.masks.shape for p in predictions] == [(QUERIES, HEIGHT, WIDTH), (QUERIES, WIDTH, HEIGHT),
                                                    (QUERIES, HEIGHT, WIDTH)]
    for row, p in enumerate(predictions):
        order = (out["pred_logits"][row, :, 0]).argsort(descending=True)
        resized = F.interpolate(out["pred_masks"][row, order][:, None], p.masks.shape[1:], mode="bilinear",
                                align_corners=False)[:, 0].numpy()
        undecided = np.abs(resized) < 1e-5
        assert np.array_equal(p.masks[~undecided], (resized > 0)[~undecided])
        assert all(mask.flags.f_contiguous for mask in p.masks)


def test_batched_validation_predicts_each_image_as_one_image_batches_do(synthetic_dataset):
    """``val_batch_size`` only groups images into one forward: every (image, prompt) keeps its scores and masks."""
    from sam3.model.utils.misc import copy_data_to_device

    from trainables.config import TrialConfig
    from trainables.data import build_loader
    from trainables.inference import final_output
    from trainables.model import build_model

    model = build_model("tiny", seed=0).eval()
    predictions = {}
    for val_batch_size in (None, 3):
        cfg = TrialConfig(**synthetic_dataset.trial_fields(), val_batch_size=val_batch_size)
        loader = build_loader(cfg, "val")
        assert [len(batch.find_metadatas[0].original_image_id) // 14 for batch in loader] == (
            [1] * 4 if val_batch_size is None else [3, 1])
        with torch.no_grad():
            predictions[val_batch_size] = {
                (p.image_id, p.category_id): p for batch in loader
                for p in predictions_from_output(final_output(model(copy_data_to_device(batch, "cpu"))),
                                                 batch.find_metadatas[0])}
    one, batched = predictions[None], predictions[3]
    assert len(one) == 4 * 14 and one.keys() == batched.keys()
    for key, p in one.items():
        np.testing.assert_allclose(batched[key].scores, p.scores, rtol=1e-4, atol=1e-6)
        assert (batched[key].masks != p.masks).mean() < 1e-3  # a pixel may flip where a logit is ~0


def test_validation_hands_cocoeval_exactly_max_dets_per_prompt_queries_per_prompt(synthetic_dataset, monkeypatch):
    """model -> ``predict`` -> ``CassEvaluator``, from a model with more queries than are kept: every prompt's
    ``MAX_DETS_PER_PROMPT`` best queries, no more, are what COCOeval ranks, and its ``maxDets`` is that number."""
    import sam3.model.decoder

    from trainables import metrics
    from trainables.config import TrialConfig
    from trainables.data import build_loader
    from trainables.evaluate import validate
    from trainables.inference import MAX_DETS_PER_PROMPT
    from trainables.metrics import CassEvaluator
    from trainables.model import build_model

    class MoreQueries(sam3.model.decoder.TransformerDecoder):
        def __init__(self, **kwargs):
            super().__init__(**{**kwargs, "num_queries": 2 * MAX_DETS_PER_PROMPT})

    runs = []

    class RecordedCOCOeval(metrics.COCOeval):
        def evaluate(self):
            super().evaluate()
            runs.append(self)

    monkeypatch.setattr(sam3.model.decoder, "TransformerDecoder", MoreQueries)
    monkeypatch.setattr(metrics, "COCOeval", RecordedCOCOeval)
    model = build_model("tiny", seed=0)
    assert model.transformer.decoder.num_queries == 2 * MAX_DETS_PER_PROMPT
    loader = build_loader(TrialConfig(**synthetic_dataset.trial_fields()), "val")
    evaluator = CassEvaluator(loader.dataset.coco_gt())

    metrics_out = validate(model, loader, evaluator, torch.device("cpu"))

    assert metrics_out["val_num_images"] == 4 and len(runs) == 1
    pairs = evaluator.state().pairs
    assert len(pairs) == 4 * 14 and {len(r.detections) for r in pairs.values()} == {MAX_DETS_PER_PROMPT}
    (coco_eval,) = runs
    assert coco_eval.params.maxDets == [MAX_DETS_PER_PROMPT]
    all_areas = [e for e in coco_eval.evalImgs if e is not None and e["aRng"] == coco_eval.params.areaRng[0]]
    assert len(all_areas) == 4 * 14 and {len(e["dtIds"]) for e in all_areas} == {MAX_DETS_PER_PROMPT}
    assert f":data:`MAX_DETS_PER_PROMPT`, {MAX_DETS_PER_PROMPT}:" in metrics.__doc__  # the number the docs state
