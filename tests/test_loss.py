"""Specification of the loss: sam3's native loss from the trial config, its step, and prompt chunking."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sam3.train.loss.loss_fns import Boxes, IABCEMdetr, Masks
from sam3.train.matcher import BinaryOneToManyMatcher

from trainables.config import TrialConfig
from trainables.data import CassDataset, PromptChunk, collate, iter_prompt_chunks
from trainables.loss import COMPONENT_KEYS, build_loss, training_step_loss
from trainables.model import build_model

torch.set_num_threads(1)

WEIGHTS = dict(loss_bbox=1.5, loss_giou=2.5, loss_ce=3.5, presence_loss=4.5, loss_mask=5.5, loss_dice=6.5)


def without_randomness(model: torch.nn.Module) -> torch.nn.Module:
    """Switch off dropout and drop-path (in training mode) so that two forwards can be compared."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        elif isinstance(module, torch.nn.MultiheadAttention):
            module.dropout = 0.0
        elif hasattr(module, "drop_prob"):
            module.drop_prob = 0.0
    return model


@pytest.fixture(scope="module")
def model():
    return without_randomness(build_model("tiny", seed=0))


@pytest.fixture(scope="module")
def datapoints(synthetic_dataset):
    """Two validation-transformed synthetic images (no augmentation): deterministic inputs."""
    dataset = CassDataset(synthetic_dataset.val_json, synthetic_dataset.images_dir, 224, train=False)
    return [dataset[0], dataset[1]]


def gradients(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def chunked_step(model, datapoints, loss_fn, chunk_size) -> tuple[float, dict[str, float], dict[str, torch.Tensor]]:
    """What the train loop does: forward/backward per chunk, weighted; returns (loss, components, grads)."""
    model.zero_grad(set_to_none=True)
    total, components = 0.0, dict.fromkeys(COMPONENT_KEYS, 0.0)
    for chunk, weight in iter_prompt_chunks(datapoints, chunk_size):
        loss, parts = training_step_loss(model, chunk, loss_fn)
        (loss * weight).backward()
        total += loss.item() * weight
        for key, value in parts.items():
            components[key] += value * weight
    return total, components, gradients(model)


# --- construction ------------------------------------------------------------------------------------


def test_the_trial_weights_reach_sams_loss_functions():
    loss_fn = build_loss(TrialConfig().replace(**WEIGHTS), distributed=False)
    by_type = {type(f): f for f in loss_fn.loss_fns_find}
    assert set(by_type) == {Boxes, IABCEMdetr, Masks}
    assert by_type[Boxes].weight_dict == {"loss_bbox": 1.5, "loss_giou": 2.5}
    assert by_type[IABCEMdetr].weight_dict == {"loss_ce": 3.5, "presence_loss": 4.5}
    assert by_type[Masks].weight_dict == {"loss_mask": 5.5, "loss_dice": 6.5}


def test_sam3s_fine_tuning_settings_are_kept():
    loss_fn = build_loss(TrialConfig(), distributed=False)
    ce = next(f for f in loss_fn.loss_fns_find if isinstance(f, IABCEMdetr))
    assert (ce.pos_weight, ce.use_presence, ce.weak_loss) == (10.0, True, False)
    assert ce.pad_n_queries == 16  # the tiny preset's queries: sam3 pads to its own decoder's 200
    assert isinstance(loss_fn.o2m_matcher, BinaryOneToManyMatcher)
    assert (loss_fn.o2m_matcher.alpha, loss_fn.o2m_matcher.threshold, loss_fn.o2m_matcher.topk) == (0.3, 0.4, 4)
    assert loss_fn.o2m_weight == 2.0 and loss_fn.scale_by_find_batch_size
    masks = next(f for f in loss_fn.loss_fns_find if isinstance(f, Masks))
    assert not masks.compute_aux and masks.num_sample_points is None


def test_the_tiny_presets_classification_loss_is_a_mean_over_its_own_queries():
    from trainables.loss import PAD_N_QUERIES

    assert PAD_N_QUERIES["tiny"] == build_model("tiny", seed=0).transformer.decoder.num_queries
    assert PAD_N_QUERIES["full"] == 200  # sam3's fine-tuning config, for its decoder's 200 queries


@pytest.mark.parametrize("distributed, normalization", [(True, "global"), (False, "local")])
def test_instance_normalisation_is_global_only_under_ddp(distributed, normalization):
    assert build_loss(TrialConfig(), distributed=distributed).normalization == normalization


# --- the native step on the tiny model -------------------------------------------------------------------


def test_one_step_gives_a_finite_loss_finite_gradients_and_stable_component_keys(model, datapoints):
    loss_fn = build_loss(TrialConfig(), distributed=False)
    model.zero_grad(set_to_none=True)
    loss, components = training_step_loss(model, collate(datapoints), loss_fn)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert tuple(components) == COMPONENT_KEYS
    assert all(math.isfinite(v) for v in components.values())
    assert components["core_loss"] == pytest.approx(loss.item())
    grads = gradients(model)
    assert len(grads) > 0.9 * sum(1 for p in model.parameters() if p.requires_grad)
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert any(g.abs().sum() > 0 for n, g in grads.items() if n.startswith("segmentation_head."))


def test_changing_loss_mask_scales_only_the_mask_term(model, datapoints):
    """core = sqrt(rows) * sum_k weight_k * term_k: the mask weight moves core by exactly its own terms."""
    batch = collate(datapoints)
    with torch.no_grad():
        stages = model(batch)
    targets = [model.back_convert(t) for t in batch.find_targets]
    low = build_loss(TrialConfig().replace(loss_mask=100.0), distributed=False)(stages, targets)
    high = build_loss(TrialConfig().replace(loss_mask=300.0), distributed=False)(stages, targets)
    for key in low:
        if key != "core_loss":
            assert torch.equal(low[key], high[key]), key
    mask_terms = low["loss_mask"] + low["loss_mask_o2m"]  # the o2m term already carries o2m_weight
    rows = batch.find_targets[0].num_boxes.numel()
    assert high["core_loss"] - low["core_loss"] == pytest.approx((200.0 * mask_terms * math.sqrt(rows)).item(),
                                                                  rel=1e-5)


def test_absent_query_loss_adds_the_absent_prompts_queries_to_loss_ce_and_changes_nothing_else(model, datapoints):
    """sam3 zeroes the query classification loss of absent prompts; ``absent_query_loss`` keeps it."""
    batch = collate(datapoints)
    with torch.no_grad():
        stages = model(batch)
    targets = [model.back_convert(t) for t in batch.find_targets]
    native = build_loss(TrialConfig(), distributed=False)(stages, targets)
    absent = build_loss(TrialConfig().replace(absent_query_loss=True), distributed=False)(stages, targets)
    assert absent["loss_ce"] > native["loss_ce"]  # the synthetic frames show 5-14 of 14 segments
    for key in native:
        if not key.startswith(("loss_ce", "core_loss")):
            assert torch.equal(native[key], absent[key]), key
    without_presence_token = build_loss(TrialConfig(), distributed=False)
    ce_loss = next(f for f in without_presence_token.loss_fns_find if isinstance(f, IABCEMdetr))
    ce_loss.use_presence = False  # sam3's own classification loss as it is without a presence token
    assert absent["loss_ce"] == without_presence_token(stages, targets)["loss_ce"]


# --- prompt chunks -------------------------------------------------------------------------------------------


def test_chunked_and_unchunked_steps_give_the_same_loss_components_and_gradient(model, datapoints):
    loss_fn = build_loss(TrialConfig(), distributed=False)
    whole_loss, whole_parts, whole_grads = chunked_step(model, datapoints, loss_fn, 14)
    chunk_loss, chunk_parts, chunk_grads = chunked_step(model, datapoints, loss_fn, 5)
    assert chunk_loss == pytest.approx(whole_loss, rel=1e-5)
    for key in COMPONENT_KEYS:
        if key != "ce_f1":  # an F1 score does not add up over chunks; the losses and the accuracy do
            assert chunk_parts[key] == pytest.approx(whole_parts[key], rel=1e-5, abs=1e-7), key
    assert chunk_grads.keys() == whole_grads.keys()
    for name, grad in whole_grads.items():
        torch.testing.assert_close(chunk_grads[name], grad, rtol=1e-4, atol=1e-6 * (1 + grad.abs().max().item()),
                                   msg=name)


def test_an_unchunked_step_through_the_chunk_path_is_sams_native_loss(model, datapoints):
    loss_fn = build_loss(TrialConfig(), distributed=False)
    batch = collate(datapoints)
    (chunk, weight), = iter_prompt_chunks(datapoints, 14)
    with torch.no_grad():
        native, _ = training_step_loss(model, batch, loss_fn)
        via_chunk, _ = training_step_loss(model, chunk, loss_fn)
    assert weight == 1.0 and via_chunk.item() == pytest.approx(native.item(), rel=1e-6)


def test_chunks_normalised_on_their_own_would_not_add_up(model, datapoints):
    """Why chunks carry their batch: sam3 divides instance terms by the *forwarded* instance count."""
    loss_fn = build_loss(TrialConfig(), distributed=False)
    with torch.no_grad():
        whole, _ = training_step_loss(model, collate(datapoints), loss_fn)
        naive = sum(training_step_loss(model, chunk.batch, loss_fn)[0].item() * weight
                    for chunk, weight in iter_prompt_chunks(datapoints, 5))
    assert abs(naive - whole.item()) > 1e-3 * abs(whole.item())


# --- global normalisation with two processes ------------------------------------------------------------------


def _chunk_normaliser(rank: int, world_size: int, port: int, boxes: list[int], out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        loss_fn = build_loss(TrialConfig(), distributed=True)
        chunk = PromptChunk(batch=None, rows=7, batch_rows=14, batch_boxes=boxes[rank])
        loss_fn._chunk = chunk
        out[rank] = loss_fn._get_num_boxes({"num_boxes": torch.zeros(7, dtype=torch.long)}).item()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes import sam3: ~15 s
def test_global_normalisation_divides_a_chunk_by_the_worlds_mean_instance_count():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_chunk_normaliser, args=(2, port, [3, 9], out), nprocs=2)
    assert dict(out) == {0: 6.0 * 7 / 14, 1: 6.0 * 7 / 14}  # mean(3, 9) instances x the chunk's row share
