"""One trial: the real SAM3 training loop (tiny preset, synthetic data), in-process and under Ray Train.

Specification:
- ``run_trial`` reports validation metrics and a native checkpoint every ``val_every`` steps, with the time
  split between training steps (``seconds_per_step``) and validation (``val_seconds``); every checkpoint but
  the final one holds the optimizer state a resume needs;
- a run interrupted at a checkpoint and resumed ends bit-identical to an uninterrupted run (same step,
  learning rate, optimizer state and weights);
- a frozen text encoder is not copied into checkpoints but referred to in the starting checkpoint, with its
  digest: a resume reads it back exactly, and refuses a starting checkpoint that moved or changed;
- a non-finite loss stops the trial with ``diverged=True`` and no new checkpoint;
- under Ray, 2 Gloo workers train one trial, report val Dice and AP75 at least twice, write a
  checkpoint, and the training loss falls.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from common.errors import InputError
from trainables.checkpoints.files import safe_torch_load
from trainables.checkpoints.frozen import FROZEN_PREFIX, FrozenSource, frozen_part
from trainables.checkpoints.native import save_native
from trainables.checkpoints.trial import (
    FROZEN_SOURCE_FILE,
    MODEL_FILE,
    STATE_FILE,
    TRAINED_FILE,
    VAL_PAIRS_FILE,
    load_trainer_state,
    read_model_state,
    read_val_pairs,
    save_trial_checkpoint,
)
from trainables.config import TrialConfig
from trainables.model import build_model
from trainables.optim import build_optimizer, build_scheduler
from trainables.trial import run_trial

FAST = dict(lr_transformer=1e-3, lr_vision=1e-3, lr_language=1e-3, warmup_steps=2, grad_clip=1.0,
            category_chunk_size=14, cpu_threads_per_worker=1, num_workers=1)


def trial_config(dataset, **overrides) -> TrialConfig:
    values = dict(**dataset.trial_fields(), **FAST)
    values.update(overrides)
    return TrialConfig.from_dict(values)


def val_dice_of(pairs) -> float:
    """``val_dice`` from per-pair figures, as CassEvaluator computes it (through the bootstrap's one formula)."""
    from trainables.bootstrap import PairArrays, weighted_category_means

    image_ids, category_ids = sorted({p.image_id for p in pairs}), sorted({p.category_id for p in pairs})
    arrays = PairArrays.from_pairs(pairs, image_ids, category_ids)
    return float(weighted_category_means(arrays.dice(), np.ones((1, len(image_ids))))[1][0])


class Recorder:
    """A reporter that keeps every report and copies each checkpoint out of its temporary folder."""

    def __init__(self, root: Path):
        self.root, self.reports, self.checkpoints = root, [], []

    def __call__(self, metrics, checkpoint_dir):
        self.reports.append(dict(metrics))
        if checkpoint_dir is not None:
            kept = self.root / f"checkpoint_{len(self.checkpoints)}"
            shutil.copytree(checkpoint_dir, kept)
            self.checkpoints.append(kept)


def test_a_trial_reports_every_val_every_steps_with_a_resumable_native_checkpoint(synthetic_dataset, tmp_path):
    recorder = Recorder(tmp_path)
    run_trial(trial_config(synthetic_dataset, max_steps=4, val_every=2), report=recorder)

    assert [r["step"] for r in recorder.reports] == [2, 4]
    for report in recorder.reports:
        for key in ("val_dice", "val_ap75", "val_presence_auroc", "train_loss", "train_loss_mask", "lr"):
            assert key in report and math.isfinite(report["train_loss"])
        assert report["diverged"] is False and 0.0 <= report["val_dice"] <= 1.0
    # time split: training steps and validation passes are disjoint parts of the trial's elapsed time
    first, second = recorder.reports
    assert all(r["seconds_per_step"] > 0 and r["val_seconds"] > 0 for r in recorder.reports)
    assert first["elapsed_s"] > 2 * first["seconds_per_step"] + first["val_seconds"]
    assert second["elapsed_s"] - first["elapsed_s"] > 2 * second["seconds_per_step"] + second["val_seconds"]
    assert len(recorder.checkpoints) == 2
    native = safe_torch_load(recorder.checkpoints[-1] / MODEL_FILE)
    assert all(key.startswith("detector.") for key in native)
    for report, checkpoint in zip(recorder.reports, recorder.checkpoints):  # each validation's per-image figures
        pairs = read_val_pairs((checkpoint / VAL_PAIRS_FILE).read_text(), "test")
        assert len(pairs) == 4 * 14 and len({p.image_id for p in pairs}) == 4  # every val image x category
        assert val_dice_of(pairs) == pytest.approx(report["val_dice"], abs=1e-12)
    assert load_trainer_state(recorder.checkpoints[0]).step == 2
    assert not (recorder.checkpoints[-1] / STATE_FILE).exists(), "the final checkpoint has nothing to resume"


class WorkerKilled(Exception):
    """Raised by a reporter to stand for a worker killed right after a checkpoint was persisted."""


def straight_interrupted_and_resumed(cfg: TrialConfig, root: Path) -> tuple[Recorder, Recorder, Recorder]:
    """Run ``cfg`` once uninterrupted; once killed right after its first checkpoint; then resume that one."""
    straight = Recorder(root / "straight")
    run_trial(cfg, report=straight)
    first_half = Recorder(root / "first")

    def report_then_die(metrics, checkpoint_dir):
        first_half(metrics, checkpoint_dir)
        raise WorkerKilled

    with pytest.raises(WorkerKilled):
        run_trial(cfg, report=report_then_die)
    resumed = Recorder(root / "resumed")
    run_trial(cfg, resume_from=first_half.checkpoints[0], report=resumed, report_resume=True)  # a driver re-run
    return straight, first_half, resumed


def test_resuming_from_a_checkpoint_continues_exactly_where_the_run_stopped(synthetic_dataset, tmp_path):
    cfg = trial_config(synthetic_dataset, max_steps=6, val_every=2, schedule="cosine")
    straight, first_half, resumed = straight_interrupted_and_resumed(cfg, tmp_path)

    assert [r["step"] for r in first_half.reports] == [2]
    # the resume checkpoint is reported again first (the driver may have lost its report), with its figures
    assert [r["step"] for r in resumed.reports] == [2, 4, 6]
    assert resumed.reports[0]["val_dice"] == first_half.reports[0]["val_dice"]
    assert (resumed.checkpoints[0] / MODEL_FILE).read_bytes() == (first_half.checkpoints[0] / MODEL_FILE).read_bytes()
    assert resumed.reports[-1]["lr"] == straight.reports[-1]["lr"]
    assert resumed.reports[-1]["train_loss"] == straight.reports[-1]["train_loss"]
    a, b = safe_torch_load(straight.checkpoints[-1] / MODEL_FILE), safe_torch_load(resumed.checkpoints[-1] / MODEL_FILE)
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"resumed weights differ from the uninterrupted run: {differing[:5]}"
    opt_a = safe_torch_load(straight.checkpoints[1] / STATE_FILE)["optimizer"]["state"]  # both at step 4
    opt_b = safe_torch_load(resumed.checkpoints[1] / STATE_FILE)["optimizer"]["state"]
    assert opt_a.keys() == opt_b.keys()
    assert all(torch.equal(opt_a[i]["exp_avg_sq"], opt_b[i]["exp_avg_sq"]) for i in opt_a)


def test_a_non_finite_loss_stops_the_trial_as_diverged_without_a_new_checkpoint(synthetic_dataset, tmp_path):
    recorder = Recorder(tmp_path)
    run_trial(trial_config(synthetic_dataset, max_steps=6, val_every=2, lr_transformer=1e12, lr_vision=1e12,
                           grad_clip=0.0), report=recorder)
    last = recorder.reports[-1]
    assert last["diverged"] is True and last["step"] < 6
    assert last["val_dice"] == 0.0 and last["val_ap75"] == 0.0
    assert len(recorder.checkpoints) == len(recorder.reports) - 1


def test_resuming_a_finished_run_reports_its_final_checkpoint_again_without_training(synthetic_dataset, tmp_path):
    """A driver killed after a trial's last report makes Tune re-run the trial: nothing is left to train,
    and the trial must still report its final result (else Tune sees no objective and stops the sweep)."""
    cfg = trial_config(synthetic_dataset, max_steps=2, val_every=2)
    finished = Recorder(tmp_path / "finished")
    run_trial(cfg, report=finished)
    again = Recorder(tmp_path / "again")
    run_trial(cfg, resume_from=finished.checkpoints[-1], report=again)
    assert again.reports == finished.reports
    assert (again.checkpoints[0] / MODEL_FILE).read_bytes() == (finished.checkpoints[-1] / MODEL_FILE).read_bytes()


def test_a_checkpoint_without_optimizer_state_cannot_resume_a_trial_with_steps_left(synthetic_dataset, tmp_path):
    """A finished trial's final checkpoint keeps no optimizer state: raising max_steps and resuming from it is
    refused, naming the file, instead of training on with a fresh optimizer."""
    finished = Recorder(tmp_path / "finished")
    run_trial(trial_config(synthetic_dataset, max_steps=2, val_every=2), report=finished)
    with pytest.raises(InputError, match=f"{STATE_FILE}: missing, so this checkpoint cannot resume"):
        run_trial(trial_config(synthetic_dataset, max_steps=4, val_every=2), resume_from=finished.checkpoints[-1],
                  report=Recorder(tmp_path / "longer"))


@pytest.fixture()
def starting_checkpoint(tmp_path) -> Path:
    """A native starting checkpoint of the tiny preset (what weight surgery writes)."""
    path = tmp_path / "start" / "stage2_init.pt"
    path.parent.mkdir()
    save_native(build_model("tiny", seed=3), path)
    return path


@pytest.mark.parametrize("freeze,start", [(False, False), (True, False), (False, True), (True, True)])
def test_a_checkpoints_size_on_disk_is_what_the_disk_budget_estimates(synthetic_dataset, tmp_path, freeze, start,
                                                                      starting_checkpoint):
    from trainables.checkpoints.trial import estimated_bytes

    recorder = Recorder(tmp_path / "run")
    run_trial(trial_config(synthetic_dataset, max_steps=2, val_every=1, val_max_images=1, freeze_text_encoder=freeze,
                           checkpoint=str(starting_checkpoint) if start else None), report=recorder)
    resumable, final = recorder.checkpoints
    expected = estimated_bytes("tiny", freeze_text_encoder=freeze, starting_checkpoint=start)
    weights = resumable / (TRAINED_FILE if freeze and start else MODEL_FILE)
    assert weights.stat().st_size == pytest.approx(expected.model, rel=0.05)
    # AdamW keeps state only for parameters that received a gradient: the estimate is an upper bound
    assert 0.9 * expected.trainer_state <= (resumable / STATE_FILE).stat().st_size <= expected.trainer_state
    assert not (final / STATE_FILE).exists()


def test_a_frozen_text_encoder_is_referred_to_in_the_starting_checkpoint_not_copied(synthetic_dataset, tmp_path,
                                                                                     starting_checkpoint):
    recorder = Recorder(tmp_path / "run")
    run_trial(trial_config(synthetic_dataset, max_steps=2, val_every=1, val_max_images=1, freeze_text_encoder=True,
                           checkpoint=str(starting_checkpoint)), report=recorder)
    start = safe_torch_load(starting_checkpoint)
    for checkpoint in recorder.checkpoints:
        assert not (checkpoint / MODEL_FILE).exists()
        trained = safe_torch_load(checkpoint / TRAINED_FILE)
        assert trained and not frozen_part(trained), "no frozen tensor is written"
        record = FrozenSource.read(checkpoint / FROZEN_SOURCE_FILE)
        assert record.checkpoint == str(starting_checkpoint) and record.tensors == len(frozen_part(start))
        whole = read_model_state(checkpoint)
        assert whole.keys() == start.keys()
        assert all(torch.equal(whole[k], start[k]) for k in frozen_part(start))
        assert all(torch.equal(whole[k], trained[k]) for k in trained)
    assert any(not torch.equal(trained[k], start[k]) for k in trained), "the trained part did train"


def test_a_trial_that_trains_its_text_encoder_or_starts_from_random_weights_writes_the_whole_model(
        synthetic_dataset, tmp_path, starting_checkpoint):
    for name, overrides in {"trained text": dict(freeze_text_encoder=False, checkpoint=str(starting_checkpoint)),
                            "random start": dict(freeze_text_encoder=True, checkpoint=None)}.items():
        recorder = Recorder(tmp_path / name)
        run_trial(trial_config(synthetic_dataset, max_steps=1, val_every=1, val_max_images=1, **overrides),
                  report=recorder)
        (checkpoint,) = recorder.checkpoints
        assert (checkpoint / MODEL_FILE).is_file() and not (checkpoint / TRAINED_FILE).exists(), name
        assert frozen_part(safe_torch_load(checkpoint / MODEL_FILE)), name


def test_frozen_tensors_that_changed_are_saved_in_full(synthetic_dataset, tmp_path, starting_checkpoint):
    """The worker shares only what its digest proves equal: a text encoder changed by anything is written."""
    cfg = trial_config(synthetic_dataset, freeze_text_encoder=True, checkpoint=str(starting_checkpoint))
    model = build_model("tiny", seed=3)
    optimizer = build_optimizer(model, cfg)
    source = FrozenSource.of(starting_checkpoint)
    unchanged = save_trial_checkpoint(tmp_path / "same", model, optimizer, build_scheduler(optimizer, cfg), 1, {},
                                      cfg.to_dict(), frozen=source)
    assert (unchanged / TRAINED_FILE).is_file() and not (unchanged / MODEL_FILE).exists()
    with torch.no_grad():
        next(model.backbone.language_backbone.parameters()).view(-1)[0] += 1e-6
    changed = save_trial_checkpoint(tmp_path / "changed", model, optimizer, build_scheduler(optimizer, cfg), 1, {},
                                    cfg.to_dict(), frozen=source)
    assert (changed / MODEL_FILE).is_file() and not (changed / TRAINED_FILE).exists()


def test_resuming_a_checkpoint_that_shares_its_frozen_part_continues_exactly(synthetic_dataset, tmp_path,
                                                                            starting_checkpoint):
    cfg = trial_config(synthetic_dataset, max_steps=4, val_every=2, freeze_text_encoder=True,
                       checkpoint=str(starting_checkpoint))
    straight, first_half, resumed = straight_interrupted_and_resumed(cfg, tmp_path)
    assert (first_half.checkpoints[0] / TRAINED_FILE).is_file()
    a, b = read_model_state(straight.checkpoints[-1]), read_model_state(resumed.checkpoints[-1])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.reports[-1]["train_loss"] == straight.reports[-1]["train_loss"]


def test_a_starting_checkpoint_that_moved_or_changed_is_refused_on_resume(synthetic_dataset, tmp_path,
                                                                         starting_checkpoint):
    cfg = trial_config(synthetic_dataset, max_steps=2, val_every=1, val_max_images=1, freeze_text_encoder=True,
                       checkpoint=str(starting_checkpoint))
    recorder = Recorder(tmp_path / "run")
    run_trial(cfg, report=recorder)
    first = recorder.checkpoints[0]
    moved = starting_checkpoint.with_name("elsewhere.pt")
    starting_checkpoint.rename(moved)
    with pytest.raises(InputError, match=r"starting checkpoint .*stage2_init\.pt, which is not there"):
        run_trial(cfg, resume_from=first, report=Recorder(tmp_path / "resumed"))
    assert read_model_state(first, frozen_from=moved).keys() == safe_torch_load(moved).keys()  # a named copy

    state = safe_torch_load(moved)
    key = next(k for k in state if k.startswith(FROZEN_PREFIX))
    state[key] = state[key] + 1e-6
    torch.save(state, starting_checkpoint)  # a different file under the recorded name
    with pytest.raises(InputError, match="is not the one this checkpoint was trained with"):
        run_trial(cfg, resume_from=first, report=Recorder(tmp_path / "resumed-2"))
