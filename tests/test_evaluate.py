"""Turning sam3's output into scored predictions (``trainables.evaluate.predictions_from_output``).

Specification (sam3's own inference post-processing, ``sam3/model/sam3_image_processor.py``):
- a query's score is sigmoid(its logit) x sigmoid(the prompt's presence logit); the ``max_dets`` best are
  kept, best first;
- its mask is the low-resolution mask logits resized bilinearly to the image's original (height, width),
  thresholded at 0, for non-square images too;
- each mask reaches the host column-major (pycocotools' RLE layout), so encoding it needs no copy.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from trainables.evaluate import predictions_from_output

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
