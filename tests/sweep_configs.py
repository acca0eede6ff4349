"""The tiny CPU sweep the Ray tests run, written as a YAML file: a test states only what it changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from readme import REPO


def write_tiny_sweep(path: Path, *, name: str, root: Path, **changes: Any) -> Path:
    """Write to ``path`` a sweep of one 2-step trial of the tiny preset on one CPU worker, its synthetic data
    under ``root / "data"`` and its results under ``root / "out"``, with a local Ray. ``changes``: top-level
    keys to replace, or a section's keys to update (``trial={"max_steps": 4}`` keeps the other trial keys)."""
    raw: dict[str, Any] = {
        "name": name,
        "storage_path": str(root / "out"),
        "search_space": str(REPO / "search_spaces" / "local.yaml"),
        "num_samples": 1,
        "max_concurrent_trials": 1,
        "dataset": {"dir": str(root / "data"), "synthetic": {"train": 8, "val": 4, "size": 224, "seed": 0}},
        "trial": {"preset": "tiny", "resolution": 224, "max_steps": 2, "warmup_steps": 1, "val_every": 2,
                  "num_workers": 1, "use_gpu": False, "cpu_threads_per_worker": 1, "backend": "gloo",
                  "precision": "fp32"},
        "scheduler": {"grace_period": 2, "reduction_factor": 2},
        "checkpoint": {"num_to_keep": 1},
        "wandb": {"mode": "disabled"},
        "ray": {"address": None, "dashboard_host": "127.0.0.1", "health_check_interval_s": 0.5},
    }
    for key, value in changes.items():
        raw[key] = {**raw[key], **value} if isinstance(raw.get(key), dict) and isinstance(value, dict) else value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path
