"""Specification: the project imports, trains, validates and exports where Triton is not installed (Windows).

sam3 0.1.4 imports ``triton`` at module level (sam3 issue #154). The test blocks it in a fresh interpreter
(``sys.modules["triton"] = None``, what a missing package looks like to ``import``), then runs a tiny trial's
steps and its validation, and reloads the checkpoint both ways the export does. The same script with Triton
left alone must give the same figures: on the CPU the routed paths are the ones sam3 already takes.
What this machine cannot show: a CUDA device without Triton (the routing sends those tensors to the CPU paths).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from trainables.sam3_compat import edt_cpu

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import json, sys, tempfile
from pathlib import Path
if BLOCK:
    sys.modules["triton"] = None  # as on Windows, where no Triton wheel exists
import trainables
from trainables import sam3_compat
from trainables.checkpoints.exported import check_loads
from trainables.config import TrialConfig
from trainables.trial import run_trial

reports = []
with tempfile.TemporaryDirectory() as tmp:
    def report(metrics, checkpoint):
        reports.append(dict(metrics))
        if checkpoint is not None:
            check = check_loads(Path(checkpoint) / "model.pt", "tiny", 224)
            reports[-1]["sam3_loaded"] = check.sam3_loaded
    cfg = TrialConfig.from_dict({**FIELDS, "max_steps": 2, "val_every": 2, "num_workers": 1, "lr_transformer": 1e-3,
                                 "warmup_steps": 1, "cpu_threads_per_worker": 1})
    run_trial(cfg, report=report)
print(json.dumps({"triton": sam3_compat.TRITON_AVAILABLE, "triton_module": repr(sys.modules.get("triton")),
                  **{k: reports[-1][k] for k in ("step", "train_loss", "val_dice", "val_presence_auroc",
                                                 "sam3_loaded")}}))
"""


def run_script(dataset, block: bool) -> dict:
    code = SCRIPT.replace("BLOCK", str(block)).replace("FIELDS", repr(dataset.trial_fields()))
    env = {**os.environ, "TORCHDYNAMO_DISABLE": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_trial_trains_validates_and_exports_without_triton_with_the_same_figures(synthetic_dataset):
    without = run_script(synthetic_dataset, block=True)
    assert without["triton"] is False and without["triton_module"] == "None"  # torch still sees no triton
    assert without["step"] == 2 and without["sam3_loaded"] > 0
    with_triton = run_script(synthetic_dataset, block=False)
    for key in ("train_loss", "val_dice", "val_presence_auroc", "sam3_loaded"):
        assert without[key] == with_triton[key], key


def test_the_distance_transform_without_triton_matches_scipy_and_opencv_semantics():
    masks = torch.zeros(2, 7, 9, dtype=torch.bool)
    masks[0, 1:6, 2:8] = True
    masks[1, 3, 4] = True
    out = edt_cpu(masks)
    assert out.shape == masks.shape and out.dtype == torch.float32
    for image, dist in zip(masks.numpy(), out.numpy()):
        assert np.allclose(dist, ndimage.distance_transform_edt(image))
        assert (dist[~image] == 0).all() and (dist[image] >= 1).all()
