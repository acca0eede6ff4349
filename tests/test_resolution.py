"""Specification of trainables.resolution.set_resolution: converting a built model equals building it there."""

from __future__ import annotations

import warnings

import pytest
import torch
from test_model import final_outputs, make_batch

from common.errors import InputError
from trainables.model import build_model, build_tiny
from trainables.resolution import current_resolution, global_attention_blocks, set_resolution


def rope_tables(model) -> dict[str, torch.Tensor]:
    return {name: attn.freqs_cis for name, attn in global_attention_blocks(model).items()}


def seeded_forward(model, batch) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)  # same dropout masks for both models
    return final_outputs(model(batch))


@pytest.mark.parametrize("px", [224, 336, 448])
def test_tiny_converted_to_px_equals_tiny_built_natively_at_px(px):
    torch.set_num_threads(1)
    converted = build_model("tiny", seed=0)
    set_resolution(converted, px)
    native = build_tiny(px)
    weights = {k: v for k, v in converted.state_dict().items() if not k.endswith("freqs_cis")}
    native.load_state_dict(weights, strict=False)

    tables, expected = rope_tables(converted), rope_tables(native)
    assert tables.keys() == expected.keys() and len(tables) == 2
    for name in tables:
        assert tables[name].shape == (px // 14 * px // 14, 16)
        assert (tables[name] - expected[name]).abs().max() < 1e-6
    batch = make_batch(px)
    with torch.no_grad():
        got, want = seeded_forward(converted, batch), seeded_forward(native, batch)
    assert got.keys() == want.keys() and "pred_masks" in got
    for key in got:
        assert torch.equal(got[key], want[key]), key


def test_a_forward_at_another_size_without_conversion_fails():
    model = build_model("tiny", seed=0)
    with pytest.raises(AssertionError), torch.no_grad():
        model(make_batch(336))


def test_windowed_blocks_and_learned_weights_do_not_change():
    model = build_model("tiny", seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    set_resolution(model, 448)
    after = model.state_dict()
    changed = {k for k in before if before[k].shape != after[k].shape or not torch.equal(before[k], after[k])}
    assert changed == {f"{name}.freqs_cis" for name in global_attention_blocks(model)}
    windowed = [b.attn.input_size for b in model.backbone.vision_backbone.trunk.blocks if b.window_size]
    assert windowed == [(8, 8), (8, 8)]


def test_caches_follow_the_new_grid():
    model = build_model("tiny", seed=0)
    with torch.no_grad():
        model(make_batch(224))
    set_resolution(model, 336)
    decoder = model.transformer.decoder
    assert decoder.compilable_stored_size == (24, 24)
    assert decoder.compilable_cord_cache[0].shape == (24,) and decoder.coord_cache == {}
    assert model.backbone.vision_backbone.position_encoding.cache == {}
    assert current_resolution(model) == 336


def test_back_and_forth_restores_the_native_tables_exactly():
    model = build_model("tiny", seed=0)
    original = {k: v.clone() for k, v in rope_tables(model).items()}
    set_resolution(model, 448)
    set_resolution(model, 224)
    assert all(torch.equal(original[k], v) for k, v in rope_tables(model).items())


@pytest.mark.parametrize("px", [230, 0, -14, 224.0])
def test_a_size_that_is_not_a_multiple_of_the_patch_is_refused(px):
    with pytest.raises(InputError, match="multiple of the patch size 14"):
        set_resolution(build_model("tiny", seed=0), px)


def test_a_size_that_pads_every_window_warns_and_a_window_multiple_does_not():
    model = build_model("tiny", seed=0)
    with pytest.warns(UserWarning, match="multiple of 112"):
        set_resolution(model, 280)
    assert current_resolution(model) == 280
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        set_resolution(model, 336)


@pytest.mark.slow
def test_full_1008_to_672_matches_sams_builder_at_672(monkeypatch):
    """Compare with a trunk made by sam3's own ``_create_vit_backbone`` with ``img_size=672`` (cut to
    8 blocks, enough to include global block 7, to spare 1.5 GB)."""
    from sam3 import model_builder
    from sam3.model.vitdet import ViT

    model = build_model("full", seed=0)
    keys_before = {k: v.shape for k, v in model.state_dict().items()}
    set_resolution(model, 672)
    keys_after = {k: v.shape for k, v in model.state_dict().items()}
    tables = rope_tables(model)
    assert len(tables) == 4
    assert {k for k in keys_before if keys_before[k] != keys_after[k]} == {f"{n}.freqs_cis" for n in tables}
    del model
    monkeypatch.setattr(model_builder, "ViT", lambda **kw: ViT(**{**kw, "img_size": 672, "depth": 8}))
    native = model_builder._create_vit_backbone().blocks[7].attn.freqs_cis
    assert native.shape == (48 * 48, 32)
    for table in tables.values():
        assert (table - native).abs().max() < 1e-6


def test_the_native_resolution_is_remembered_for_checkpoints_even_for_unmarked_models():
    from trainables.resolution import native_resolution

    model = build_tiny(224)  # not built through build_model: nothing recorded yet
    set_resolution(model, 448)
    assert native_resolution(model) == 224 and current_resolution(model) == 448
