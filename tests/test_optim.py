"""AdamW groups and the learning-rate schedule built from a TrialConfig."""

from __future__ import annotations

import pytest
import torch

from trainables.config import TrialConfig
from trainables.model import build_model
from trainables.optim import build_optimizer, lr_factor


@pytest.mark.parametrize("schedule", ["inverse_sqrt", "cosine", "constant"])
def test_warm_up_rises_linearly_to_the_base_rate(schedule):
    factor = lr_factor(TrialConfig(schedule=schedule, warmup_steps=4, max_steps=20))
    assert [factor(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])


def test_inverse_sqrt_decays_after_warm_up_like_sam3s_scheduler():
    factor = lr_factor(TrialConfig(schedule="inverse_sqrt", warmup_steps=4, max_steps=20))
    assert factor(7) == pytest.approx((8 / 4) ** -0.5)
    assert factor(19) < factor(10) < 1.0


@pytest.mark.parametrize("schedule", ["inverse_sqrt", "cosine", "constant"])
def test_a_warm_up_as_long_as_the_run_is_valid_at_every_step(schedule):
    factor = lr_factor(TrialConfig(schedule=schedule, warmup_steps=20, max_steps=20))
    assert all(0.0 <= factor(s) <= 1.0 for s in range(20))


def test_cosine_ends_near_zero():
    factor = lr_factor(TrialConfig(schedule="cosine", warmup_steps=0, max_steps=100))
    assert factor(0) == pytest.approx(1.0) and factor(99) < 1e-3


def test_three_learning_rates_and_no_decay_on_biases_and_norms():
    cfg = TrialConfig(lr_vision=1e-5, lr_language=2e-6, lr_transformer=3e-4, weight_decay=0.1)
    optimizer = build_optimizer(build_model("tiny", seed=0), cfg)
    by_name = {g["name"]: g for g in optimizer.param_groups}
    assert set(by_name) == {"vision", "vision_no_decay", "language", "language_no_decay",
                            "transformer", "transformer_no_decay"}
    assert by_name["vision"]["lr"] == 1e-5 and by_name["language"]["lr"] == 2e-6
    assert by_name["transformer_no_decay"]["lr"] == 3e-4
    assert by_name["transformer"]["weight_decay"] == 0.1 and by_name["vision_no_decay"]["weight_decay"] == 0.0
    assert all(p.ndim <= 1 for p in by_name["transformer_no_decay"]["params"])



def test_the_optimizer_is_torchs_fused_adamw_and_steps_like_the_default_one():
    cfg = TrialConfig(lr_vision=1e-3, lr_language=1e-3, lr_transformer=1e-3, weight_decay=0.1)
    fused_model, default_model = build_model("tiny", seed=0), build_model("tiny", seed=0)
    fused = build_optimizer(fused_model, cfg)
    default = torch.optim.AdamW([{"params": g["params"], "lr": g["lr"], "weight_decay": g["weight_decay"]}
                                 for g in build_optimizer(default_model, cfg).param_groups])  # same groups
    assert fused.defaults["fused"] and not default.defaults["fused"]
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        for a, b in zip(fused_model.parameters(), default_model.parameters()):
            a.grad = torch.randn(a.shape, generator=generator)
            b.grad = a.grad.clone()
        fused.step()
        default.step()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(fused_model.parameters(), default_model.parameters()))
