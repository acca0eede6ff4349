"""bench/selection.py: its val Dice of a subset is CassEvaluator's, its rules pick what they say, and a tiny run
prints the table and replays deterministically (its numbers are only as right as this)."""

from __future__ import annotations

import json
import math

import numpy as np

from bench import selection as sel


def random_predictions(val_json, seed: int = 0):
    """A random thresholded answer to every (image, category) prompt of a COCO val file."""
    from trainables.metrics import PromptPrediction

    doc = json.loads(val_json.read_text(encoding="utf-8"))
    rng = np.random.default_rng(seed)
    out = []
    for image in doc["images"]:
        for category in doc["categories"]:
            masks = rng.random((2, image["height"], image["width"])) < 0.05
            scores = rng.choice([0.2, 0.7], size=2) if rng.random() < 0.5 else np.array([0.1, 0.1])  # half: empty
            out.append(PromptPrediction(image["id"], category["id"], scores, masks))
    return out


def test_subset_dice_is_the_evaluators_val_dice(synthetic_dataset):
    from trainables.metrics import CassEvaluator

    coco = json.loads(synthetic_dataset.val_json.read_text(encoding="utf-8"))
    predictions = random_predictions(synthetic_dataset.val_json)
    evaluator = CassEvaluator(coco)
    evaluator.process(predictions)
    images, _, dice = sel.pair_dice(evaluator.pair_figures())
    assert dice.shape == (len(coco["images"]), 14) and np.isnan(dice).any() and (dice > 0).any()
    assert math.isclose(float(sel.subset_dice(dice)), evaluator.evaluate()["val_dice"], abs_tol=1e-12)
    for subset in ([0, 2], [1], [3, 1, 0]):
        part = CassEvaluator(coco)
        part.process(p for p in predictions if p.image_id in set(images[subset].tolist()))
        assert math.isclose(float(sel.subset_dice(dice, subset)), part.evaluate()["val_dice"], abs_tol=1e-12)
    # vectorised over leading axes (validations, bootstrap draws)
    stacked = np.stack([dice, dice[::-1]])
    assert np.allclose(sel.subset_dice(stacked, [0, 1]), [sel.subset_dice(dice, [0, 1]),
                                                          sel.subset_dice(dice[::-1], [0, 1])])


def values(*rows: list[float]) -> sel.Validations:
    return sel.Validations([np.array(r) for r in rows], [np.zeros(len(r)) for r in rows])


def test_rules_pick_what_they_say():
    v = values([0.5, 0.7, 0.4, 0.5], [0.6, 0.62, 0.64, 0.6])
    assert sel.naive(v) == (0, 1)  # the single high validation
    assert sel.window(2)(v) == (1, 2)  # 0.63 ends at validation 2 of trial 1 (trial 0's best window: 0.6)
    assert sel.last_k(1)(v) == (1, 3) and sel.last_k(3)(v) == (1, 3)
    assert sel.window_best(3)(v) == (1, 2)
    wide = sel.Validations(v.val, [np.array([0.0, 0.2, 0.0, 0.0]), np.zeros(4)])
    assert sel.lcb(1.0)(wide) == (1, 2)


def test_ties_go_to_the_first_trial_and_within_it_the_latest_validation():
    assert sel.naive(values([0.5, 0.7, 0.7], [0.7, 0.1, 0.1])) == (0, 2)


def test_train_keeps_the_two_best_by_val_dice_and_the_latest():
    dice = np.array([0.5, 0.7, 0.4, 0.6, 0.3])
    assert [sel.kept_by_train(dice, i) for i in range(5)] == [False, True, False, True, True]


def test_a_tiny_run_prints_the_table_and_replays_deterministically(tmp_path, capsys):
    args = ["--out", str(tmp_path), "--init", "scratch", "--grid", "lr_transformer=1e-3", "lr_vision=1e-3,1e-4",
            "--steps", "2", "--val-every", "1", "--pool", "4", "--train-images", "8", "--val-images", "2",
            "--trials", "2", "--seeds", "0", "1", "2", "--boot", "5", "--jobs", "1", "--no-append"]
    assert sel.main(args) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| ") and "rule" not in line]
    rules = [line for line in table if line.split(" | ")[0][2:] in sel.RULES]
    assert len(rules) == len(sel.RULES)
    assert all(line.count("|") == 8 and line.endswith("of 3 |") for line in rules)
    assert "0 / 3 / 0" in rules[0]  # naive against itself: three ties

    files = sorted((tmp_path / "curves-scratch-pool4").glob("*.npz"))
    assert len(files) == 2
    with np.load(files[0]) as f:
        assert f["steps"].tolist() == [1, 2] and f["dice"].shape == (2, 4, 14)
        assert np.allclose(sel.subset_dice(f["dice"]), f["val_dice"], equal_nan=True)
    grid = sel.parse_grid(["lr_transformer=1e-3", "lr_vision=1e-3,1e-4"])
    curves = sel.measure_curves(tmp_path, grid, "scratch", lambda: None, 2, 1, 4, 8, 1, 1)  # cached: no training
    first = sel.replay(curves, [0, 1, 2], 2, 2, 5)
    assert sel.replay(curves, [0, 1, 2], 2, 2, 5) == first
    assert sel.main(args) == 0  # the whole run again, from the cache: the same table
    again = capsys.readouterr().out
    assert again[again.index("| rule"):] == out[out.index("| rule"):]
