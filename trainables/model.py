"""Build sam3's native image model (``Sam3Image``) for training: the ``full`` and ``tiny`` presets.

``full`` is exactly ``sam3.model_builder.build_sam3_image_model(eval_mode=False)`` (840.5 M
parameters, native 1008 px). ``tiny`` wires the same sam3 classes the same way at small widths and
depths (about 4 M parameters, native 224 px) so that tests and CPU smoke runs exercise the real code
paths in well under a second per step.

sam3 submodule names used by this project (prefixes of ``Sam3Image.state_dict()`` keys):

- ``backbone.vision_backbone``   ``Sam3DualViTDetNeck``: ``.trunk`` (ViT: ``blocks.{i}.attn.freqs_cis``
  are RoPE tables; blocks with ``window_size == 0`` attend globally), ``.convs`` (FPN), ``.position_encoding``
- ``backbone.language_backbone`` ``VETextEncoder``: ``.encoder`` (``TextTransformer``), ``.resizer``
- ``transformer.encoder`` (fusion encoder), ``transformer.decoder`` (queries, presence token, boxRPB)
- ``dot_prod_scoring``, ``segmentation_head`` (``.pixel_decoder``, ``.semantic_seg_head``, ...),
  ``geometry_encoder`` (boxes/points prompts)

Models are built at their native resolution, then converted with
:func:`trainables.resolution.set_resolution` when another one is asked for.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from common.errors import InputError
from trainables import sam3_compat
from trainables.resolution import mark_native_resolution, set_resolution

PRESETS = ("full", "tiny")
NATIVE_RESOLUTION = {"full": 1008, "tiny": 224}


@dataclass(frozen=True)
class PresetSize:
    """How big a preset is, without building it (the full model takes a minute and 3.4 GB to build)."""

    parameters: int  # every parameter
    text_encoder: int  # the language backbone's parameters (what freeze_text_encoder freezes)
    native_bytes: int  # the tensor bytes of its native checkpoint (parameters, RoPE tables, buffers)
    text_encoder_bytes: int  # the part of native_bytes that is the language backbone (parameters and buffers)


#: Counted on the built models; tests/test_model.py checks each against a fresh build.
PRESET_SIZES = {"full": PresetSize(840_509_750, 353_724_672, 3_371_476_184, 1_414_898_688),
                "tiny": PresetSize(4_308_190, 3_300_160, 17_314_680, 13_200_640)}

# state_dict prefixes of the three learning-rate groups (SAM3 fine-tunes each at its own rate)
VISION_PREFIX = "backbone.vision_backbone."
LANGUAGE_PREFIX = "backbone.language_backbone."


def bpe_path() -> Path:
    """The CLIP BPE vocabulary sam3's ``SimpleTokenizer`` needs, from open_clip's package data (no hub)."""
    path = Path(str(importlib.resources.files("open_clip") / "bpe_simple_vocab_16e6.txt.gz"))
    if not path.is_file():
        raise FileNotFoundError(f"BPE vocabulary not found at {path}: install open_clip_torch (it ships the file)")
    return path


def build_model(preset: str = "tiny", resolution: int | None = None, *, device: str | torch.device = "cpu",
                seed: int | None = None) -> nn.Module:
    """A randomly initialised sam3 ``Sam3Image`` in training mode, with its Hungarian matcher attached.

    Args:
        preset: ``"full"`` (sam3's own builder) or ``"tiny"``.
        resolution: input size in px (a multiple of 14); ``None`` keeps the preset's native resolution.
        device: where the model lives (the resolution caches are rebuilt there).
        seed: seeds the initialisation without touching the caller's global RNG state.

    Load a checkpoint (``trainables.checkpoints.native.load_native``) after this call; it works at any resolution.
    """
    if preset not in PRESETS:
        raise InputError(f"unknown model preset {preset!r}; choose one of {list(PRESETS)}")
    sam3_compat.apply()
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = _build_full() if preset == "full" else build_tiny(NATIVE_RESOLUTION["tiny"])
        sam3_compat.init_empty_parameters(model)
    mark_native_resolution(model, NATIVE_RESOLUTION[preset])
    model.to(device)
    set_resolution(model, resolution or NATIVE_RESOLUTION[preset])
    return model.train()


def _build_full() -> nn.Module:
    from sam3.model_builder import build_sam3_image_model

    return build_sam3_image_model(bpe_path=str(bpe_path()), device="cpu", eval_mode=False,
                                  checkpoint_path=None, load_from_HF=False)


def build_tiny(img_size: int) -> nn.Module:
    """The tiny preset built natively at ``img_size`` px (the wiring of ``build_sam3_image_model``).

    Constraints found in sam3: GroupNorm(8, d) needs d % 8 == 0, RoPE needs head_dim % 4 == 0, the
    one-to-many matcher needs num_queries >= 4, and the decoder and fusion encoder assert activation
    checkpointing in training.
    """
    from sam3.model.decoder import TransformerDecoder, TransformerDecoderLayer
    from sam3.model.encoder import TransformerEncoderFusion, TransformerEncoderLayer
    from sam3.model.geometry_encoders import SequenceGeometryEncoder
    from sam3.model.maskformer_segmentation import PixelDecoder, UniversalSegmentationHead
    from sam3.model.model_misc import MLP, DotProductScoring, TransformerWrapper
    from sam3.model.model_misc import MultiheadAttentionWrapper as MultiheadAttention
    from sam3.model.necks import Sam3DualViTDetNeck
    from sam3.model.position_encoding import PositionEmbeddingSine
    from sam3.model.text_encoder_ve import VETextEncoder
    from sam3.model.tokenizer_ve import SimpleTokenizer
    from sam3.model.vitdet import ViT
    from sam3.model_builder import _create_sam3_model, _create_vl_backbone

    d, heads, ffn, patch = 64, 4, 128, 14

    def attention(batch_first: bool | None = None, dropout: float = 0.1) -> nn.Module:
        extra = {} if batch_first is None else {"batch_first": batch_first}
        return MultiheadAttention(num_heads=heads, dropout=dropout, embed_dim=d, **extra)

    def encoder_layer(batch_first: bool, pos_at_attn: bool, pos_at_keys: bool) -> TransformerEncoderLayer:
        return TransformerEncoderLayer(
            activation="relu", d_model=d, dim_feedforward=ffn, dropout=0.1, pos_enc_at_attn=pos_at_attn,
            pos_enc_at_cross_attn_keys=pos_at_keys, pos_enc_at_cross_attn_queries=False, pre_norm=True,
            self_attention=attention(batch_first), cross_attention=attention(batch_first))

    def sine(precompute_resolution: int | None = None) -> PositionEmbeddingSine:
        return PositionEmbeddingSine(num_pos_feats=d, normalize=True, scale=None, temperature=10000,
                                     precompute_resolution=precompute_resolution)

    trunk = ViT(
        img_size=img_size, pretrain_img_size=112, patch_size=patch, embed_dim=64, depth=4, num_heads=2,
        mlp_ratio=2.0, norm_layer="LayerNorm", drop_path_rate=0.1, qkv_bias=True, use_abs_pos=True,
        tile_abs_pos=True, global_att_blocks=(1, 3), rel_pos_blocks=(), use_rope=True, use_interp_rope=True,
        window_size=8, pretrain_use_cls_token=True, retain_cls_token=False, ln_pre=True, ln_post=False,
        return_interm_layers=False, bias_patch_embed=False)
    vision = Sam3DualViTDetNeck(position_encoding=sine(img_size), d_model=d,
                                scale_factors=[4.0, 2.0, 1.0, 0.5], trunk=trunk, add_sam2_neck=False)
    text = VETextEncoder(tokenizer=SimpleTokenizer(bpe_path=str(bpe_path())), d_model=d, width=64, heads=2,
                         layers=2, context_length=16)
    encoder = TransformerEncoderFusion(
        layer=encoder_layer(batch_first=True, pos_at_attn=True, pos_at_keys=False), num_layers=1, d_model=d,
        num_feature_levels=1, frozen=False, use_act_checkpoint=True, add_pooled_text_to_img_feat=False,
        pool_text_with_mask=True)
    decoder = TransformerDecoder(
        layer=TransformerDecoderLayer(activation="relu", d_model=d, dim_feedforward=ffn, dropout=0.1,
                                      cross_attention=attention(), n_heads=heads, use_text_cross_attention=True),
        num_layers=2, num_queries=16, return_intermediate=True, box_refine=True, num_o2m_queries=0, dac=True,
        boxRPB="log", d_model=d, frozen=False, interaction_layer=None, dac_use_selfatt_ln=True,
        resolution=img_size, stride=patch, use_act_checkpoint=True, presence_token=True)
    scoring = DotProductScoring(d_model=d, d_proj=d, prompt_mlp=MLP(
        input_dim=d, hidden_dim=ffn, output_dim=d, num_layers=2, dropout=0.1, residual=True,
        out_norm=nn.LayerNorm(d)))
    segmentation_head = UniversalSegmentationHead(
        hidden_dim=d, upsampling_stages=3, aux_masks=False, presence_head=False, dot_product_scorer=None,
        act_ckpt=True, cross_attend_prompt=attention(dropout=0.0),
        pixel_decoder=PixelDecoder(num_upsampling_stages=3, interpolation_mode="nearest", hidden_dim=d))
    geometry_encoder = SequenceGeometryEncoder(
        pos_enc=sine(), encode_boxes_as_points=False, points_direct_project=True, points_pool=True,
        points_pos_enc=True, boxes_direct_project=True, boxes_pool=True, boxes_pos_enc=True, d_model=d,
        num_layers=1, layer=encoder_layer(batch_first=False, pos_at_attn=False, pos_at_keys=True),
        use_act_ckpt=True, add_cls=True, add_post_encode_proj=True)
    return _create_sam3_model(
        _create_vl_backbone(vision, text), TransformerWrapper(encoder=encoder, decoder=decoder, d_model=d),
        geometry_encoder, segmentation_head, scoring, inst_interactive_predictor=None, eval_mode=False)


def param_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters split for SAM3's three learning rates and its weight-decay rule.

    Keys: ``vision``, ``language``, ``transformer`` (fusion encoder, decoder, scoring, heads), each with a
    ``_no_decay`` twin holding biases and normalisation weights (1-d tensors), which SAM3 does not decay.
    Frozen parameters are left out; empty groups are omitted. Accepts a DDP-wrapped model.
    """
    groups: dict[str, list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        name = name.removeprefix("module.")
        group = ("vision" if name.startswith(VISION_PREFIX)
                 else "language" if name.startswith(LANGUAGE_PREFIX) else "transformer")
        groups.setdefault(group if param.ndim > 1 else f"{group}_no_decay", []).append(param)
    return groups


def set_optional_activation_checkpointing(model: nn.Module, enabled: bool) -> None:
    """Switch the activation checkpointing that sam3 lets go: vision trunk, text encoder, geometry encoder,
    the whole segmentation head (``Sam3Image.use_act_checkpoint_seg_head``) and its pixel decoder (sam3's
    builder turns all five on, as does the tiny preset).

    Off trades memory for speed (BENCHMARKS.md, "GPU, runs 3 and 4": step time and peak memory). The
    fusion encoder and decoder keep theirs: sam3 asserts it in training mode (see
    :func:`configure_activation_checkpointing`'s "none").
    """
    model.backbone.vision_backbone.trunk.use_act_checkpoint = enabled
    _set_text_encoder_checkpointing(model, enabled)
    model.geometry_encoder.use_act_ckpt = enabled
    model.use_act_checkpoint_seg_head = enabled
    model.segmentation_head.act_ckpt = enabled


def configure_activation_checkpointing(model: nn.Module, mode: str, precision: str) -> None:
    """A trial's activation checkpointing: ``mode`` "sam3" (everywhere sam3 builds it), "minimal" (only the
    fusion encoder and decoder, which sam3 asserts in training) or "none" (nowhere: the fusion encoder and
    decoder run as in eval, through :func:`trainables.sam3_compat.skip_required_checkpointing`). In bf16 never
    in the text encoder (the sixth workaround of :mod:`trainables.sam3_compat`: sam3's checkpointed text blocks
    fail their recompute under autocast)."""
    set_optional_activation_checkpointing(model, mode == "sam3")
    sam3_compat.skip_required_checkpointing(model.transformer, mode == "none")
    if precision == "bf16":
        _set_text_encoder_checkpointing(model, False)


def _set_text_encoder_checkpointing(model: nn.Module, enabled: bool) -> None:
    for module in model.backbone.language_backbone.modules():
        if hasattr(module, "grad_checkpointing"):  # sam3's text Transformer
            module.grad_checkpointing = enabled


def freeze_text_encoder(model: nn.Module) -> int:
    """Stop training the language backbone (it still runs forward); return how many parameters it froze."""
    language = model.backbone.language_backbone
    language.requires_grad_(False)
    return sum(p.numel() for p in language.parameters())
