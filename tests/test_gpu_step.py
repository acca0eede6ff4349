"""``bench/gpu_step.py``'s validation and optimizer parts, on its CPU dry run (``--preset tiny``; CI has no GPU).

Specification:
- the validation part times the trial's own validation pass per image, split into forward, predictions and
  CPU scoring, for fp32 and tf32 and each number of images per forward, and states validation's share of
  trial time at Stage 2's ``val_every`` against the trainable step measured in the same run, or says that
  none was;
- the optimizer part times one AdamW step of torch's default implementation (the baseline) and of the
  trial's fused one, and leaves no gradients behind.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from bench import gpu_step

STAGE2 = Path(__file__).resolve().parents[1] / "sweeps" / "configs" / "stage2.yaml"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return gpu_step.Bench("tiny", (224, 336), torch.device("cpu"), tmp_path_factory.mktemp("gpu_step"))


def test_val_part_splits_the_pass_and_states_its_share_against_the_measured_step(bench):
    measured = {(0, "fp32", "sam3", True, 14, "trainable"): 2.0}  # as the steps part records a 2 s step

    rows = gpu_step.part_val(bench, images=2, measured=measured, batch_sizes=(1, 2))

    fp32_one, fp32_two, tf32_one, tf32_two = (row.split(" | ") for row in rows[-4:])
    assert [row[1] for row in (fp32_one, fp32_two, tf32_one, tf32_two)] == ["1", "2", "1", "2"]
    val_every = yaml.safe_load(STAGE2.read_text())["trial"]["val_every"]
    for row in (fp32_one, fp32_two):
        total, forward, predictions, process, evaluate = (float(cell) for cell in row[2:7])
        assert total > 0 and min(forward, predictions, process, evaluate) >= 0  # the timed parts fit in the pass
        share = float(row[8].split("%")[0]) / 100  # per 100 validation images on a worker
        assert share == pytest.approx(100 * total / (100 * total + val_every * 2.0), abs=2e-3)
    assert "no step measured" in tf32_one[8] and "no step measured" in tf32_two[8]


def test_optimizer_part_times_the_default_adamw_against_the_trials_fused_one(bench):
    rows = gpu_step.part_optimizer(bench, steps=2)

    foreach, fused = (row.split(" | ") for row in rows[-2:])
    assert foreach[0].startswith("| foreach") and foreach[2] == "1.00x |"
    assert fused[0].startswith("| fused") and float(fused[1].removesuffix(" ms")) > 0
    assert all(p.grad is None for p in bench.model.parameters())


def test_profile_part_profiles_the_fastest_configuration_the_steps_part_measured():
    measured = {(0, "bf16", "minimal", True, 14, "trainable"): 0.31, (0, "bf16", "none", True, 14, "bare"): 0.20,
                (0, "bf16", "none", True, 14, "trainable"): 0.27, (0, "tf32", "sam3", False, 14, "trainable"): 0.1}

    assert gpu_step.fastest_measured(measured, frozen=True) == (0, "bf16", "none", True, 14)
    assert gpu_step.fastest_measured(measured, frozen=False) == (0, "tf32", "sam3", False, 14)
    assert gpu_step.fastest_measured({}, frozen=True) == gpu_step.FASTEST


def test_kernel_time_counts_device_kernels_once_not_the_annotated_ranges_around_them():
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    events = [SimpleNamespace(device_type=DeviceType.CUDA, is_user_annotation=False, self_device_time_total=30e3),
              SimpleNamespace(device_type=DeviceType.CUDA, is_user_annotation=True, self_device_time_total=25e3),
              SimpleNamespace(device_type=DeviceType.CPU, is_user_annotation=False, self_device_time_total=30e3)]

    assert gpu_step.kernel_seconds(events) == pytest.approx(0.030)  # the kernel, not its range or its aten op


def test_val_batch_sizes_must_be_positive_integers():
    assert gpu_step.positive_ints("1,4,8") == (1, 4, 8)
    for bad in ("", "0,4", "one", "4,"):
        with pytest.raises(Exception, match="expected integers >= 1"):
            gpu_step.positive_ints(bad)
