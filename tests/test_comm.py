"""Cutting gradient communication: accumulation, bf16 compression, a cached frozen text encoder.

Specification:
- ``grad_accum_steps=k`` makes one optimizer step of k batches whose gradient is the mean of theirs
  (bit for bit on one thread: the 1/k weight is a power of two here), counts steps, epochs and the LR schedule in
  optimizer steps, resumes exactly, and under DDP all-reduces every trainable gradient once per
  optimizer step however many micro-batches and prompt chunks it has;
- ``grad_compression="bf16"`` all-reduces in bf16 through torch's ``bf16_compress_hook``: the averaged
  gradient is bf16-representable, within bf16 rounding of the fp32 average and not equal to it, and the
  ranks' parameters stay bit-identical while training; it registers where torch has no NCCL (Windows),
  although DDP refuses torch's hook itself there;
- with a frozen text encoder the prompt-embedding cache returns exactly what the text encoder computes, in
  training as in eval mode, runs the encoder once per distinct prompt list, refills after the weights
  change in place, and leaves the training losses and weights bit-identical;
- ``run_trial`` wires all three (2 Gloo ranks).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from common.errors import InputError
from sweeps.ray_compat import free_port
from trainables.checkpoints.files import safe_torch_load
from trainables.checkpoints.trial import MODEL_FILE
from trainables.config import TrialConfig
from trainables.data import build_loader
from trainables.loss import build_loss
from trainables.model import build_model, freeze_text_encoder
from trainables.optim import build_optimizer, build_scheduler, lr_factor
from trainables.prompt_cache import disable_prompt_cache, enable_prompt_cache
from trainables.trial import run_trial, train_step

WORLD = 2
PROMPTS = ["proximal rca", "mid lad", "distal lcx"]


def config(dataset, **overrides) -> TrialConfig:
    values = dict(**dataset.trial_fields(), lr_transformer=1e-3, lr_vision=1e-3, lr_language=1e-3,
                  warmup_steps=2, grad_clip=1.0, category_chunk_size=14, cpu_threads_per_worker=1, num_workers=1)
    values.update(overrides)
    return TrialConfig.from_dict(values)


def frozen_lr(cfg: TrialConfig) -> TrialConfig:
    """The same trial with learning rate 0 and no clipping: a step leaves the weights and the raw gradient."""
    return cfg.replace(lr_transformer=0.0, lr_vision=0.0, lr_language=0.0, grad_clip=0.0, weight_decay=0.0)


def flat_grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel())
                      for p in model.parameters()])


def flat_params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def step_once(model, batches, cfg: TrialConfig, *, distributed: bool = False):
    """One ``train_step`` with a fresh optimizer/scheduler of ``cfg``; returns its loss."""
    target = getattr(model, "module", model)
    optimizer = build_optimizer(target, cfg)
    loss, _ = train_step(model, batches, build_loss(cfg, distributed=distributed), optimizer,
                         build_scheduler(optimizer, cfg), cfg)
    return loss


# --- configuration ---------------------------------------------------------------------------------------

def test_grad_compression_accepts_none_and_bf16_and_rejects_anything_else():
    assert TrialConfig().grad_compression == "none"
    assert TrialConfig.from_dict({"grad_compression": "bf16"}).grad_compression == "bf16"
    with pytest.raises(InputError, match="grad_compression"):
        TrialConfig.from_dict({"grad_compression": "fp16"})


# --- gradient accumulation (one process) -----------------------------------------------------------------

@pytest.fixture
def one_thread():
    """One intra-op thread, as every trial worker runs: float reductions then have a fixed order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_two_accumulated_batches_give_the_mean_of_their_gradients_and_losses(synthetic_dataset, one_thread):
    cfg = frozen_lr(config(synthetic_dataset, grad_accum_steps=2))
    loader = iter(build_loader(cfg, "train"))
    first, second = next(loader), next(loader)
    model = build_model("tiny", seed=0)

    torch.manual_seed(7)
    loss_1 = step_once(model, [first], cfg)
    grad_1 = flat_grads(model)
    loss_2 = step_once(model, [second], cfg)  # the RNG stream continues: the same dropout masks as below
    grad_2 = flat_grads(model)
    torch.manual_seed(7)
    loss_both = step_once(model, [first, second], cfg)
    grad_both = flat_grads(model)

    assert not torch.equal(grad_1, grad_2), "both batches gave the same gradient: the test could not fail"
    # bit for bit: scaling a loss by 1/2 scales its gradient exactly (one thread: a fixed summation order)
    assert torch.equal(grad_both, (grad_1 + grad_2) / 2)
    assert torch.allclose(loss_both, (loss_1 + loss_2) / 2, rtol=1e-6)


def test_accumulation_counts_optimizer_steps_and_resumes_exactly(synthetic_dataset, tmp_path):
    from test_trial import straight_interrupted_and_resumed

    cfg = config(synthetic_dataset, max_steps=4, val_every=2, grad_accum_steps=2, schedule="cosine",
                 warmup_steps=4)
    straight, _, resumed = straight_interrupted_and_resumed(cfg, tmp_path)

    assert [r["step"] for r in straight.reports] == [2, 4]
    assert [r["epoch"] for r in straight.reports] == [0.5, 1.0]  # 8 training images, 2 per optimizer step
    # the schedule counts optimizer steps: still warming up at step 2 (3/4 of the rate), not at batch 4
    expected_lr = [cfg.lr_transformer * lr_factor(cfg)(step) for step in (2, 4)]
    assert [r["lr"] for r in straight.reports] == pytest.approx(expected_lr) and expected_lr[0] < expected_lr[1]
    assert resumed.reports[-1]["train_loss"] == straight.reports[-1]["train_loss"]
    a = safe_torch_load(straight.checkpoints[-1] / MODEL_FILE)
    b = safe_torch_load(resumed.checkpoints[-1] / MODEL_FILE)
    assert not [k for k in a if not torch.equal(a[k], b[k])], "resumed weights differ from the straight run"


# --- prompt-embedding cache ------------------------------------------------------------------------------

def test_cached_prompt_embeddings_equal_the_text_encoders_output_in_train_and_eval_mode():
    model = build_model("tiny", seed=0)
    freeze_text_encoder(model)
    uncached = model.backbone.forward_text(PROMPTS, device="cpu")
    model.eval()
    cache = enable_prompt_cache(model)
    filled_in_eval = model.backbone.forward_text(PROMPTS, device="cpu")
    model.train()
    served_in_train = model.backbone.forward_text(PROMPTS, device="cpu")
    other = model.backbone.forward_text(PROMPTS[:2], device="cpu")

    assert (cache.misses, cache.hits) == (2, 1)
    assert set(served_in_train) == set(uncached) == {"language_features", "language_mask", "language_embeds"}
    for key, value in uncached.items():
        assert torch.equal(filled_in_eval[key], value) and torch.equal(served_in_train[key], value)
    assert other["language_features"].shape[1] == 2
    disable_prompt_cache(model)
    assert model.backbone.forward_text(PROMPTS, device="cpu") is not None and cache.hits == 1


def test_the_prompt_cache_refuses_a_trainable_text_encoder():
    with pytest.raises(ValueError, match="frozen"):
        enable_prompt_cache(build_model("tiny", seed=0))


def test_the_prompt_cache_refills_when_the_text_encoder_weights_change_in_place():
    model = build_model("tiny", seed=0)
    freeze_text_encoder(model)
    cache = enable_prompt_cache(model)
    before = model.backbone.forward_text(PROMPTS, device="cpu")["language_features"]
    language = model.backbone.language_backbone
    language.load_state_dict({k: v + 0.01 for k, v in language.state_dict().items()})
    after = model.backbone.forward_text(PROMPTS, device="cpu")["language_features"]
    disable_prompt_cache(model)
    fresh = model.backbone.forward_text(PROMPTS, device="cpu")["language_features"]
    assert cache.misses == 2 and not torch.equal(before, after) and torch.equal(after, fresh)


def test_training_with_the_prompt_cache_is_bit_identical_to_training_without(synthetic_dataset, one_thread):
    cfg = config(synthetic_dataset, freeze_text_encoder=True)
    batches = list(build_loader(cfg, "train"))[:3]
    runs = {}
    for cached in (False, True):
        model = build_model("tiny", seed=0)
        freeze_text_encoder(model)
        cache = enable_prompt_cache(model) if cached else None
        optimizer = build_optimizer(model, cfg)
        scheduler, loss_fn = build_scheduler(optimizer, cfg), build_loss(cfg, distributed=False)
        torch.manual_seed(3)
        losses = [float(train_step(model, [b], loss_fn, optimizer, scheduler, cfg)[0]) for b in batches]
        runs[cached] = losses, flat_params(model), cache
    assert runs[True][0] == runs[False][0]
    assert torch.equal(runs[True][1], runs[False][1])
    assert runs[True][2].misses == 1 and runs[True][2].hits == len(batches) - 1


# --- two Gloo ranks --------------------------------------------------------------------------------------


def _comm_worker(rank: int, port: int, paths: dict[str, str], out_dir: str) -> None:
    """One rank: local / fp32-synced / bf16-synced gradients of one batch, hook counts, then bf16 training."""
    os.environ["TORCHDYNAMO_DISABLE"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        from trainables.comm import CommMeter, register_grad_compression
        from trainables.distributed import prepare_for_ddp, wrap_ddp

        cfg = TrialConfig.from_dict(dict(paths, category_chunk_size=14, cpu_threads_per_worker=1, warmup_steps=0,
                                         lr_transformer=1e-3, lr_vision=1e-3, lr_language=1e-3, grad_clip=1.0))
        loader = iter(build_loader(cfg, "train", rank=rank, world_size=WORLD))  # different images per rank
        first, second = next(loader), next(loader)
        local = prepare_for_ddp(build_model("tiny", seed=0))
        meters = {"fp32": CommMeter(), "bf16": CommMeter()}
        ddps = {}
        for mode, name in (("none", "fp32"), ("bf16", "bf16")):
            ddps[name] = wrap_ddp(prepare_for_ddp(build_model("tiny", seed=0)))
            register_grad_compression(ddps[name], mode, meter=meters[name])

        # as on Windows (torch built without NCCL): torch refuses its own bf16 hook by name, ours registers
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import bf16_compress_hook
        real_is_nccl_available, dist.is_nccl_available = dist.is_nccl_available, lambda: False
        try:
            try:
                wrap_ddp(prepare_for_ddp(build_model("tiny", seed=0))).register_comm_hook(None, bf16_compress_hook)
                torch_refuses = False
            except TypeError:
                torch_refuses = True
            register_grad_compression(wrap_ddp(prepare_for_ddp(build_model("tiny", seed=0))), "bf16")
        finally:
            dist.is_nccl_available = real_is_nccl_available

        grads = {}
        for name, model in (("local", local), *ddps.items()):
            torch.manual_seed(100 + rank)  # the same dropout masks in the three passes
            step_once(model, [first], frozen_lr(cfg), distributed=True)
            grads[name] = flat_grads(getattr(model, "module", model))
        gathered = [torch.empty_like(grads["local"]) for _ in range(WORLD)]
        dist.all_gather(gathered, grads["local"])

        # buckets reduced per optimizer step: 1 batch x 1 chunk, 2 batches x 2 chunks, 1 batch x 1 chunk
        meter, counts, elements = meters["fp32"], [], []
        for batches, chunk in (([first], 14), ([first, second], 7), ([first], 14)):
            meter.reset()
            step_once(ddps["fp32"], batches, frozen_lr(cfg).replace(category_chunk_size=chunk), distributed=True)
            counts.append(meter.calls)
            elements.append(meter.elements)
        trainable = sum(p.numel() for p in ddps["fp32"].parameters() if p.requires_grad)

        bf16_model = ddps["bf16"]
        optimizer = build_optimizer(bf16_model.module, cfg)
        scheduler, loss_fn = build_scheduler(optimizer, cfg), build_loss(cfg, distributed=True)
        losses = [float(train_step(bf16_model, [b], loss_fn, optimizer, scheduler, cfg)[0])
                  for b in (first, second, first)]
        torch.save({"gathered": gathered, "fp32": grads["fp32"], "bf16": grads["bf16"], "counts": counts,
                    "elements": elements, "trainable": trainable, "losses": losses,
                    "params": flat_params(bf16_model.module),
                    "torch_refuses_without_nccl": torch_refuses}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_bf16_compression_and_accumulation_under_two_gloo_ranks(synthetic_dataset, tmp_path):
    paths = synthetic_dataset.trial_fields()
    mp.spawn(_comm_worker, args=(free_port(), paths, str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    local = ranks[0]["gathered"]
    exact = (local[0] + local[1]) / WORLD
    fp32, bf16 = ranks[0]["fp32"], ranks[0]["bf16"]
    assert not torch.equal(local[0], local[1]), "ranks saw the same data: the test could not fail"

    # fp32: DDP's mean; bf16: a bf16 number within bf16 rounding of it, and really compressed
    assert torch.allclose(fp32, exact, rtol=1e-4, atol=1e-6)
    assert torch.equal(bf16, bf16.bfloat16().float())
    from trainables.comm import bf16_round_trip_bound
    assert ((bf16 - exact).abs() <= bf16_round_trip_bound(list(local))).all()
    nonzero = fp32 != 0  # most of the token-embedding table gets no gradient at all
    assert (bf16[nonzero] != fp32[nonzero]).float().mean() > 0.5
    for key in ("fp32", "bf16", "params"):
        assert torch.equal(ranks[0][key], ranks[1][key]), f"{key} differs between ranks"
    assert all(torch.isfinite(torch.tensor(r["losses"])).all() for r in ranks)

    assert ranks[0]["torch_refuses_without_nccl"], "registration without NCCL: the check could not fail"

    # one all-reduce of every trainable gradient per optimizer step, with or without accumulation
    counts, elements = ranks[0]["counts"], ranks[0]["elements"]
    assert counts[0] == counts[1] == counts[2] > 0
    assert elements == [ranks[0]["trainable"]] * 3


def _trial_worker(rank: int, port: int, cfg: dict, out_dir: str) -> None:
    os.environ["TORCHDYNAMO_DISABLE"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        reports = []

        def report(metrics, checkpoint_dir):
            reports.append(dict(metrics))
            if checkpoint_dir is not None:
                shutil.copytree(checkpoint_dir, Path(out_dir) / f"checkpoint_rank{rank}_{len(reports)}")

        run_trial(TrialConfig.from_dict(cfg), rank=rank, world_size=WORLD, report=report)
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(reports, default=float))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_a_two_rank_trial_trains_with_bf16_compression_accumulation_and_a_cached_text_encoder(
        synthetic_dataset, tmp_path):
    cfg = config(synthetic_dataset, max_steps=2, val_every=1, grad_accum_steps=2, grad_compression="bf16",
                 freeze_text_encoder=True, category_chunk_size=7).to_dict()
    mp.spawn(_trial_worker, args=(free_port(), cfg, str(tmp_path)), nprocs=WORLD, join=True)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert [r["step"] for r in reports[0]] == [1, 2]
    assert [r["epoch"] for r in reports[0]] == [0.5, 1.0]  # 4 images per rank, 2 per optimizer step
    for key in ("train_loss", "val_dice", "lr"):  # averaged over / broadcast to the ranks
        assert [r[key] for r in reports[0]] == [r[key] for r in reports[1]]
    assert all(not r["diverged"] and r["train_loss"] == r["train_loss"] for r in reports[0])
    assert len(list(tmp_path.glob("checkpoint_rank0_*"))) == 2 and not list(tmp_path.glob("checkpoint_rank1_*"))
