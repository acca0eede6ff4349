"""Shared test set-up: CPU-only, no torch.compile, quiet sam3 import warnings, one synthetic dataset."""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # sam3/torchvision compile paths cost 7-30 s each on CPU
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
warnings.filterwarnings("ignore", message=".*torch.jit.script.*")
warnings.filterwarnings("ignore", message=".*CUDA is not available.*")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory):
    """A small synthetic CASS dataset (8 train / 4 val images at 224 px), generated once per session."""
    from data_prep.synthetic import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("synthetic"), n_train=8, n_val=4, size=224, seed=0)
