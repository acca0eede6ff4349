"""Two CPU processes over Gloo train the tiny preset with sam3's native loss and stay bit-identical."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sweeps.ray_compat import free_port

WORLD = 2
STEPS = 3


def _flat_grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel())
                      for p in model.parameters()])


def _worker(rank: int, port: int, out_dir: str) -> None:
    """One rank: check one synced gradient against the mean of the local ones, then train STEPS steps."""
    os.environ["TORCHDYNAMO_DISABLE"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        from test_model import make_batch, make_loss, training_loss

        from trainables.distributed import prepare_for_ddp, wrap_ddp
        from trainables.model import build_model

        model = prepare_for_ddp(build_model("tiny", seed=0))  # same init on every rank
        ddp = wrap_ddp(model)
        loss_fn = make_loss(model, normalization="global")  # all-reduces the box count across ranks
        batch = make_batch(224, seed=100 + rank)  # different data per rank
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

        torch.manual_seed(rank)
        with ddp.no_sync():
            training_loss(ddp, batch, loss_fn).backward()
        local = _flat_grads(model)
        ddp.zero_grad(set_to_none=True)
        torch.manual_seed(rank)  # same dropout masks as the local pass
        training_loss(ddp, batch, loss_fn).backward()
        synced = _flat_grads(model)
        gathered = [torch.empty_like(local) for _ in range(WORLD)]
        dist.all_gather(gathered, local)

        losses = []
        for step in range(STEPS):
            if step:
                ddp.zero_grad(set_to_none=True)
                loss = training_loss(ddp, batch, loss_fn)
                loss.backward()
                losses.append(float(loss.detach()))
            optimizer.step()
        params = torch.cat([p.detach().flatten() for p in model.parameters()])
        torch.save({"local": gathered, "synced": synced, "params": params, "losses": losses},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_average_gradients_and_stay_bit_identical(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    local = ranks[0]["local"]
    assert not torch.allclose(local[0], local[1]), "ranks saw the same data: the test could not fail"
    expected = (local[0] + local[1]) / WORLD
    for r in ranks:
        assert torch.allclose(r["synced"], expected, rtol=1e-4, atol=1e-6)
    assert torch.equal(ranks[0]["synced"], ranks[1]["synced"])
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])
    assert all(torch.isfinite(torch.tensor(r["losses"])).all() for r in ranks)


def test_prepare_for_ddp_casts_bf16_to_fp32_and_freezes_only_the_semantic_seg_head():
    from trainables.distributed import prepare_for_ddp
    from trainables.model import build_model

    model = build_model("tiny", seed=0).to(torch.bfloat16)
    assert prepare_for_ddp(model) is model
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(b.dtype in (torch.float32, torch.complex64) for b in model.buffers())
    frozen = sorted(n for n, p in model.named_parameters() if not p.requires_grad)
    assert frozen == ["segmentation_head.semantic_seg_head.bias", "segmentation_head.semantic_seg_head.weight"]
