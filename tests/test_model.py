"""Specification of trainables.model: the tiny and full presets of sam3's native image model.

Also home of two small helpers other model-layer tests import (``make_batch``, ``make_loss``): a
hand-built sam3 ``BatchedDatapoint`` and sam3's native loss, so these tests need no data pipeline.
"""

from __future__ import annotations

import time

import pytest
import torch
from sam3.model.sam3_image import Sam3Image

from common.errors import InputError
from trainables.checkpoints.frozen import frozen_part
from trainables.checkpoints.native import native_state_dict
from trainables.model import PRESET_SIZES, bpe_path, build_model, freeze_text_encoder, param_groups
from trainables.resolution import current_resolution

PROMPTS = ("proximal rca", "mid lad", "distal lcx")


def make_batch(px: int, *, n_images: int = 1, seed: int = 0):
    """A collated sam3 batch: ``n_images`` random images, each asked every prompt in PROMPTS.

    Each image holds one thick horizontal bar per present prompt (the first two prompts are present,
    the last one is absent: a negative query), with its box and mask as targets.
    """
    from sam3.train.data.collator import collate_fn_api
    from sam3.train.data.sam3_image_dataset import Datapoint, FindQueryLoaded, Image, InferenceMetadata, Object

    gen = torch.Generator().manual_seed(seed)
    datapoints = []
    for img_id in range(n_images):
        objects, queries = [], []
        for cat, prompt in enumerate(PROMPTS):
            present = cat < 2
            object_ids = []
            if present:
                top = int(torch.randint(0, px // 2, (1,), generator=gen)) + cat * 8
                h = px // 8
                mask = torch.zeros(px, px, dtype=torch.bool)
                mask[top:top + h, px // 8: px - px // 8] = True
                box = torch.tensor([0.5, (top + h / 2) / px, 0.75, h / px])  # normalised cx, cy, w, h
                object_ids = [len(objects)]
                objects.append(Object(bbox=box, area=float(mask.sum()) / px**2, object_id=len(objects),
                                      segment=mask))
            queries.append(FindQueryLoaded(
                query_text=prompt, image_id=0, object_ids_output=object_ids, is_exhaustive=True,
                query_processing_order=0,
                inference_metadata=InferenceMetadata(coco_image_id=img_id, original_image_id=img_id,
                                                     original_category_id=cat, original_size=(px, px),
                                                     object_id=-1, frame_index=0)))
        image = torch.randn(3, px, px, generator=gen)
        datapoints.append(Datapoint(find_queries=queries, images=[Image(data=image, objects=objects,
                                                                          size=(px, px))]))
    return collate_fn_api(datapoints, dict_key="all", with_seg_masks=True)["all"]


def make_loss(model, normalization: str = "local"):
    """sam3's native loss (fine-tuning weights: boxes 5/2, ce 20, presence 20, masks 200/10, o2m 2.0)."""
    from sam3.train.loss.loss_fns import Boxes, IABCEMdetr, Masks
    from sam3.train.loss.sam3_loss import Sam3LossWrapper
    from sam3.train.matcher import BinaryOneToManyMatcher

    return Sam3LossWrapper(
        loss_fns_find=[
            Boxes(weight_dict={"loss_bbox": 5.0, "loss_giou": 2.0}),
            IABCEMdetr(pos_weight=10.0, weight_dict={"loss_ce": 20.0, "presence_loss": 20.0}, pos_focal=False,
                       alpha=0.25, gamma=2, use_presence=True, pad_n_queries=None),
            Masks(weight_dict={"loss_mask": 200.0, "loss_dice": 10.0}, focal_alpha=0.25, focal_gamma=2.0,
                  compute_aux=False),
        ],
        matcher=model.matcher, o2m_matcher=BinaryOneToManyMatcher(alpha=0.3, threshold=0.4, topk=4),
        o2m_weight=2.0, use_o2m_matcher_on_o2m_aux=False, normalization=normalization)


def training_loss(model, batch, loss_fn) -> torch.Tensor:
    """sam3's native training step up to the loss (sam3/train/trainer.py:492-506); ``model`` may be DDP."""
    stages = model(batch)
    targets = [getattr(model, "module", model).back_convert(t) for t in batch.find_targets]
    return loss_fn(stages, targets)["core_loss"]


def final_outputs(stages) -> dict[str, torch.Tensor]:
    """The tensors of the last step of the last stage of a ``Sam3Image`` training forward."""
    return {k: v for k, v in stages.output[-1][-1].items() if isinstance(v, torch.Tensor)}


# ----------------------------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return build_model("tiny", seed=0)


def non_finite(model: torch.nn.Module) -> list[str]:
    """Names of the parameters and buffers (persistent or not) holding NaN or +-inf."""
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    return [n for n, t in tensors if (t.is_floating_point() or t.is_complex()) and not torch.isfinite(t).all()]


CAUSAL_MASK = "backbone.language_backbone.encoder.attn_mask"


def assert_only_causal_mask_is_not_finite(model: torch.nn.Module) -> None:
    """Every parameter and saved buffer is finite; the text encoder's causal mask is -inf above the diagonal
    by design (an additive attention mask, not saved in checkpoints) and nowhere else."""
    assert non_finite(model) == [CAUSAL_MASK]
    assert CAUSAL_MASK not in model.state_dict()
    mask = model.get_submodule(CAUSAL_MASK.rsplit(".", 1)[0]).attn_mask
    upper = torch.ones_like(mask, dtype=torch.bool).triu(1)
    assert torch.isneginf(mask[upper]).all() and (mask[~upper] == 0).all()


def test_tiny_is_sam3s_native_image_model_in_training_mode_with_its_matcher(tiny):
    from sam3.train.matcher import BinaryHungarianMatcherV2

    assert type(tiny) is Sam3Image
    assert tiny.training
    assert isinstance(tiny.matcher, BinaryHungarianMatcherV2)
    assert current_resolution(tiny) == 224
    assert 3e6 < sum(p.numel() for p in tiny.parameters()) < 6e6


def test_tiny_keeps_the_wiring_of_the_full_model(tiny):
    trunk = tiny.backbone.vision_backbone.trunk
    windows = [b.window_size for b in trunk.blocks]
    assert windows == [8, 0, 8, 0]  # windowed and global blocks
    assert all(b.attn.use_rope and b.attn.rope_interp for b in trunk.blocks)
    decoder = tiny.transformer.decoder
    assert decoder.presence_token is not None and decoder.boxRPB == "log"
    assert tiny.segmentation_head is not None and tiny.geometry_encoder is not None
    assert tiny.backbone.language_backbone.tokenizer is not None


def test_random_init_tiny_has_no_non_finite_tensor(tiny):
    assert_only_causal_mask_is_not_finite(tiny)


def test_seed_makes_the_build_reproducible_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model("tiny", seed=7)
    assert torch.equal(torch.rand(1), before)
    b = build_model("tiny", seed=7)
    c = build_model("tiny", seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_build_at_another_resolution_converts_the_model():
    assert current_resolution(build_model("tiny", 336, seed=0)) == 336


def test_unknown_preset_is_refused():
    with pytest.raises(InputError, match="preset"):
        build_model("huge")


def test_bpe_vocabulary_comes_from_open_clip_package_data():
    assert bpe_path().name == "bpe_simple_vocab_16e6.txt.gz" and bpe_path().stat().st_size == 1356917


@pytest.mark.parametrize("px, budget_s", [(224, 0.6), (336, 1.2)])
def test_tiny_training_step_is_fast_on_one_thread_and_all_gradients_are_finite(px, budget_s):
    torch.set_num_threads(1)
    model = build_model("tiny", px, seed=0)
    loss_fn, batch = make_loss(model), make_batch(px)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        model.zero_grad()
        loss = training_loss(model, batch, loss_fn)
        loss.backward()
        times.append(time.perf_counter() - start)
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert min(times) < budget_s, f"step took {min(times):.2f} s at {px} px"


def test_param_groups_split_by_sam3_submodule_and_keep_biases_and_norms_out_of_decay(tiny):
    groups = param_groups(tiny)
    assert set(groups) == {"vision", "vision_no_decay", "language", "language_no_decay", "transformer",
                           "transformer_no_decay"}
    names = {id(p): n for n, p in tiny.named_parameters()}
    assert all(names[id(p)].startswith("backbone.vision_backbone.") for p in groups["vision"])
    assert all(names[id(p)].startswith("backbone.language_backbone.") for p in groups["language_no_decay"])
    assert all(not names[id(p)].startswith("backbone.") for p in groups["transformer"])
    assert all(p.ndim == 1 for g in groups if g.endswith("_no_decay") for p in groups[g])
    assert all(p.ndim > 1 for g in ("vision", "language", "transformer") for p in groups[g])
    assert sum(len(g) for g in groups.values()) == len(list(tiny.parameters()))


def test_freeze_text_encoder_removes_the_language_backbone_from_the_groups():
    model = build_model("tiny", seed=0)
    frozen = freeze_text_encoder(model)
    assert frozen == sum(p.numel() for p in model.backbone.language_backbone.parameters())
    assert not {"language", "language_no_decay"} & set(param_groups(model))


@pytest.mark.slow
def test_full_preset_is_exactly_sam3s_builder_and_has_no_non_finite_tensor():
    from sam3.model_builder import build_sam3_image_model

    from trainables import sam3_compat

    sam3_compat.apply()  # sam3's builder cannot run on a CPU-only machine without it
    sam3_model = build_sam3_image_model(bpe_path=str(bpe_path()), device="cpu", eval_mode=False,
                                        checkpoint_path=None, load_from_HF=False)
    reference = {k: tuple(v.shape) for k, v in sam3_model.state_dict().items()}
    reference_count = sum(p.numel() for p in sam3_model.parameters())
    del sam3_model
    model = build_model("full", seed=0)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == reference
    assert sum(p.numel() for p in model.parameters()) == reference_count == 840_509_750
    size = PRESET_SIZES["full"]
    assert size.parameters == reference_count
    assert size.text_encoder == sum(p.numel() for p in model.backbone.language_backbone.parameters())
    native = native_state_dict(model)
    assert size.native_bytes == sum(v.numel() * v.element_size() for v in native.values())
    assert size.text_encoder_bytes == sum(v.numel() * v.element_size() for v in frozen_part(native).values())
    assert current_resolution(model) == 1008 and model.training and model.matcher is not None
    assert_only_causal_mask_is_not_finite(model)


def test_the_tiny_presets_recorded_size_is_the_built_models():
    tiny = build_model("tiny", seed=0)
    size = PRESET_SIZES["tiny"]
    assert size.parameters == sum(p.numel() for p in tiny.parameters())
    assert size.text_encoder == sum(p.numel() for p in tiny.backbone.language_backbone.parameters())
    native = native_state_dict(tiny)
    assert size.native_bytes == sum(v.numel() * v.element_size() for v in native.values())
    assert size.text_encoder_bytes == sum(v.numel() * v.element_size() for v in frozen_part(native).values())
