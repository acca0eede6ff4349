"""Specification of trainables.sam3_compat: one test per patch around sam3 0.1.4 (CPU without CUDA)."""

from __future__ import annotations

import pytest
import torch

from trainables import sam3_compat

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="the patch only acts without CUDA")
no_accelerator = pytest.mark.skipif(torch.accelerator.is_available(), reason="the patch only acts without one")


@pytest.fixture(autouse=True, scope="module")
def patched():
    sam3_compat.apply()


def test_apply_is_idempotent():
    from sam3.model.geometry_encoders import SequenceGeometryEncoder
    from sam3.model.position_encoding import PositionEmbeddingSine
    from sam3.train.loss import loss_fns

    before = (PositionEmbeddingSine.__init__, SequenceGeometryEncoder._encode_boxes, loss_fns.sigmoid_focal_loss)
    sam3_compat.apply()
    after = (PositionEmbeddingSine.__init__, SequenceGeometryEncoder._encode_boxes, loss_fns.sigmoid_focal_loss)
    assert before == after
    assert all(not hasattr(fn.__wrapped__, "__wrapped__") for fn in after)  # wrapped exactly once


@no_cuda
def test_position_encoding_precompute_runs_on_the_cpu_and_caches_correct_values():
    """position_encoding.py:47 allocates on "cuda" when precompute_resolution is set."""
    from sam3.model.position_encoding import PositionEmbeddingSine
    from sam3.model_builder import _create_position_encoding

    unpatched_init = PositionEmbeddingSine.__init__.__wrapped__
    with pytest.raises((AssertionError, RuntimeError), match="CUDA|NVIDIA"):  # what the patch works around
        unpatched_init(PositionEmbeddingSine.__new__(PositionEmbeddingSine), 256, precompute_resolution=1008)
    cached = _create_position_encoding(precompute_resolution=1008)
    fresh = _create_position_encoding()
    assert set(cached.cache) == {(252, 252), (126, 126), (63, 63), (31, 31)}
    for size, table in cached.cache.items():
        assert table.device.type == "cpu"
        assert torch.equal(table, fresh(torch.zeros((1, 1) + size))[0])


@no_cuda
def test_decoder_boxrpb_cache_is_built_on_the_cpu():
    """decoder.py:281 builds the boxRPB coordinate cache on "cuda" when resolution/stride are given."""
    from sam3.model_builder import _create_transformer_decoder

    decoder = _create_transformer_decoder()
    coords_h, coords_w = decoder.compilable_cord_cache
    assert coords_h.device.type == "cpu" and coords_h.shape == (72,) and decoder.compilable_stored_size == (72, 72)
    assert torch.equal(coords_w, torch.arange(72) / 72)


def test_cuda_redirect_leaves_other_devices_alone():
    with sam3_compat._CudaToCpu():
        assert torch.zeros(2, device="cuda").device.type == "cpu"
        assert torch.zeros(2, device="meta").device.type == "meta"
        assert torch.arange(3).device.type == "cpu"


@no_accelerator
def test_box_prompts_encode_without_pin_memory():
    """geometry_encoders.py:659 calls pin_memory() in every forward, which needs an accelerator."""
    from trainables.model import build_tiny

    geometry = build_tiny(224).geometry_encoder
    args = (torch.tensor([[[0.5, 0.5, 0.2, 0.2]]]), torch.zeros(1, 1, dtype=torch.bool),
            torch.ones(1, 1, dtype=torch.long), torch.randn(1, 64, 16, 16))
    with pytest.raises(RuntimeError):  # what the patch works around
        type(geometry)._encode_boxes.__wrapped__(geometry, *args)
    embed, _ = geometry._encode_boxes(*args)
    assert embed.shape == (1, 1, 64) and torch.isfinite(embed).all()


def test_pin_memory_skip_only_touches_pin_memory():
    x = torch.ones(3)
    with sam3_compat._NoPinMemory():
        assert x.pin_memory() is x
        assert torch.equal(x + 1, torch.full((3,), 2.0))


def test_focal_loss_on_cpu_uses_sam3s_torch_path_with_the_same_value():
    """loss_fns.py:134,153 default to a Triton GPU kernel."""
    from sam3.train.loss import loss_fns

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 10, generator=gen, requires_grad=True)
    targets = (torch.rand(4, 10, generator=gen) > 0.5).float()
    default = loss_fns.sigmoid_focal_loss(logits, targets, 2.0, alpha=0.25, gamma=2)
    torch_path = loss_fns.sigmoid_focal_loss.__wrapped__(logits, targets, 2.0, alpha=0.25, gamma=2, triton=False)
    assert torch.equal(default, torch_path)
    unreduced = loss_fns.sigmoid_focal_loss(logits, targets, 1, alpha=0.5, gamma=0, reduce=False)
    assert unreduced.shape == (4, 10)
    default.backward()
    assert torch.isfinite(logits.grad).all()


def test_empty_text_parameters_are_initialised_like_clip():
    """text_encoder_ve.py:196,218 create positional_embedding and text_projection with torch.empty."""
    from trainables.model import build_tiny

    model = build_tiny(224)
    encoder = model.backbone.language_backbone.encoder
    with torch.no_grad():
        encoder.positional_embedding.fill_(float("nan"))
        encoder.text_projection.fill_(float("inf"))
    names = sam3_compat.init_empty_parameters(model)
    assert names == ["backbone.language_backbone.encoder.positional_embedding",
                     "backbone.language_backbone.encoder.text_projection"]
    assert torch.isfinite(encoder.positional_embedding).all() and torch.isfinite(encoder.text_projection).all()
    assert 0.005 < encoder.positional_embedding.std() < 0.02
    assert 0.5 * 64**-0.5 < encoder.text_projection.std() < 1.5 * 64**-0.5
