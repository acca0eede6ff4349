"""One trial under Ray Train: 2 Gloo float32 workers on CPU run the real loop (tiny preset, synthetic data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray
from ray.train import CheckpointConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from test_trial import val_dice_of

from sweeps import ray_compat
from trainables.checkpoints.trial import METRICS_FILE, MODEL_FILE, STATE_FILE, VAL_PAIRS_FILE, read_val_pairs
from trainables.config import TrialConfig
from trainables.train_loop import train_loop_per_worker

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_two_cpus():
    ray_compat.init_ray(None, "127.0.0.1", ray_compat.worker_env_vars(0.5), num_cpus=2)
    yield
    ray.shutdown()


def test_two_gloo_workers_train_one_trial_report_dice_and_ap75_and_checkpoint(ray_two_cpus, synthetic_dataset,
                                                                            tmp_path):
    cfg = TrialConfig(**synthetic_dataset.trial_fields(), max_steps=12, val_every=4, warmup_steps=2,
                      lr_transformer=1e-3, lr_vision=1e-3, lr_language=1e-3, grad_clip=1.0, num_workers=2)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"trial": cfg.to_dict()},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name="one-trial", storage_path=str(tmp_path),
                             checkpoint_config=CheckpointConfig(num_to_keep=None)),
    )
    result = trainer.fit()

    history = result.metrics_dataframe
    assert list(history["step"]) == [4, 8, 12]
    assert history["val_dice"].notna().all() and history["val_ap75"].notna().all()
    assert (history["diverged"] == False).all()  # noqa: E712 (pandas column)
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0], "training loss did not fall"
    assert result.checkpoint is not None
    # Each report wrote the optimizer state; once the next checkpoint was persisted the worker removed it from
    # the one before, and the final one was written without it: a finished trial keeps none.
    run_folder = Path(result.checkpoint.path).parent
    persisted = sorted(c for c in run_folder.glob("checkpoint_*") if c.is_dir())
    assert len(persisted) == 3
    for checkpoint in persisted:
        assert (checkpoint / MODEL_FILE).is_file() and not (checkpoint / STATE_FILE).exists(), checkpoint.name
    # Each worker validated half of the 4 images; rank 0's checkpoint keeps the figures of all of them
    metrics = json.loads((persisted[-1] / METRICS_FILE).read_text())["metrics"]
    pairs = read_val_pairs((persisted[-1] / VAL_PAIRS_FILE).read_text(), "test")
    assert sorted({p.image_id for p in pairs}) == sorted(i["id"] for i in json.loads(
        synthetic_dataset.val_json.read_text())["images"]) and len(pairs) == 4 * 14
    assert val_dice_of(pairs) == pytest.approx(metrics["val_dice"], abs=1e-12)
