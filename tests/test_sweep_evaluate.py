"""Held-out evaluation of an export (``sweeps/evaluate.py``) and its bootstrap (``trainables/bootstrap.py``).

Specification:
- ``python -m sweeps.evaluate EXPORT_DIR --split test`` runs the exported model on the dataset's test split
  and writes ``evaluation_test.json`` / ``.csv`` beside the export (never into it: its manifest still verifies);
  the thresholded Dice is validation's ``val_dice`` on that split, the matched Dice is labelled as the other one;
- every figure at unit weights is CassEvaluator's figure; integer weights are the same as evaluating a set in
  which each image appears that many times (AP included);
- intervals are percentile intervals over resamples of patients (all images of a drawn patient) when the
  images carry ``patient_id``, else of images; they hold the point estimate and narrow with more images;
- bad input (an export without manifest or with a changed file, a dataset without test.json, an unknown split)
  exits 2 with one message and writes nothing.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from common.errors import run_cli
from data_prep.cass import CASS_CATEGORIES
from sweeps import evaluate
from sweeps.report import evaluation_section
from trainables import bootstrap
from trainables.metrics import CassEvaluator, PromptPrediction

SIZE = 32


# --- a fake evaluator: ground truth and predictions drawn at random, no model --------------------------------


def fake_evaluation(n_images: int, seed: int = 0, patients: int | None = None,
                    score_threshold: float = 0.5) -> tuple[CassEvaluator, dict, dict]:
    """An evaluator filled with plausible predictions (a shifted copy of each present segment's mask among
    random boxes), its COCO dict and image id -> patient id (None without ``patients``)."""
    rng = np.random.default_rng(seed)
    images, annotations, truth = [], [], {}
    for i in range(1, n_images + 1):
        images.append({"id": i, "file_name": f"{i}.png", "height": SIZE, "width": SIZE,
                       **({"patient_id": f"p{(i - 1) % patients}"} if patients else {})})
        for c in CASS_CATEGORIES:
            if rng.random() < 0.5:
                continue
            mask = _box(rng)
            truth[i, c.id] = mask
            rle = mask_utils.encode(np.asfortranarray(mask))
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": c.id, "iscrowd": 0,
                                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                                "area": float(mask.sum()), "bbox": mask_utils.toBbox(rle).tolist()})
    coco = {"images": images, "annotations": annotations,
            "categories": [c.coco() for c in CASS_CATEGORIES]}
    evaluator = CassEvaluator(coco, score_threshold=score_threshold)
    predictions = []
    for i in range(1, n_images + 1):
        for c in CASS_CATEGORIES:
            masks = [_box(rng) for _ in range(4)]
            scores = list(rng.uniform(0, 0.6, 4))
            if (i, c.id) in truth:
                masks.append(np.roll(truth[i, c.id], rng.integers(-1, 2, 2), axis=(0, 1)))
                scores.append(rng.uniform(0.3, 1.0))
            predictions.append(PromptPrediction(i, c.id, np.array(scores), np.stack(masks).astype(bool),
                                                presence=float(rng.uniform(0.3, 1) if (i, c.id) in truth
                                                               else rng.uniform(0, 0.7))))
    evaluator.process(predictions)
    return evaluator, coco, {img["id"]: img.get("patient_id") for img in images}


def _box(rng) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    y, x = rng.integers(0, SIZE - 14, 2)
    h, w = rng.integers(6, 14, 2)
    mask[y:y + h, x:x + w] = 1
    return mask


def unweighted(evaluator: CassEvaluator) -> dict:
    """The bootstrap module's figures at unit weights, keyed like CassEvaluator.evaluate()."""
    image_ids = evaluator.evaluated_image_ids()
    pairs = bootstrap.PairArrays.from_pairs(evaluator.pair_figures(), image_ids, evaluator.category_ids)
    ones = np.ones((1, len(image_ids)), int)
    dice_per, dice = bootstrap.weighted_category_means(pairs.dice(), ones)
    ap = bootstrap.WeightedSegmAP(evaluator.coco_eval(image_ids)).figures(ones)
    figures = {"val_dice": dice[0], "val_ap": ap["ap"][0], "val_ap50": ap["ap50"][0], "val_ap75": ap["ap75"][0],
               "val_presence_auroc": bootstrap.weighted_auroc(pairs.gt_area > 0, pairs.presence_score, ones)[0],
               "val_fp_absent_rate": bootstrap.weighted_fp_absent_rate(pairs, ones)[0]}
    short = {c.id: c.short_name for c in CASS_CATEGORIES}
    for k, c in enumerate(evaluator.category_ids):
        figures[f"val_dice/{short[c]}"] = dice_per[0, k]
        figures[f"val_ap75/{short[c]}"] = ap["ap75_per_category"][0, k]
    return figures


def test_every_figure_at_unit_weights_is_what_cass_evaluator_reports():
    evaluator, _, _ = fake_evaluation(12, seed=1)
    expected = evaluator.evaluate()
    assert expected["val_ap75"] > 0.1 and expected["val_dice"] > 0.1  # a meaningful comparison

    for key, value in unweighted(evaluator).items():
        assert value == pytest.approx(expected[key], abs=1e-12, nan_ok=True), key


def test_integer_weights_equal_evaluating_each_image_that_many_times():
    evaluator, coco, _ = fake_evaluation(6, seed=2)
    weights = np.array([0, 1, 2, 3, 1, 0])
    image_ids = evaluator.evaluated_image_ids()
    # the same data with image n repeated weights[n] times, under new ids
    images, annotations, copy_of = [], [], {}
    for n, image in enumerate(coco["images"]):
        for k in range(weights[n]):
            new_id = len(images) + 1
            copy_of[new_id] = image["id"]
            images.append({**image, "id": new_id})
            annotations += [{**a, "id": len(annotations) + j + 1, "image_id": new_id}
                            for j, a in enumerate(a for a in coco["annotations"] if a["image_id"] == image["id"])]
    repeated = CassEvaluator({**coco, "images": images, "annotations": annotations})
    state = evaluator.state().pairs
    for new_id, old_id in copy_of.items():
        for c in evaluator.category_ids:
            record = state[old_id, c]
            repeated.state().pairs[new_id, c] = record
    expected = repeated.evaluate()

    pairs = bootstrap.PairArrays.from_pairs(evaluator.pair_figures(), image_ids, evaluator.category_ids)
    w = weights[None, :]
    _, dice = bootstrap.weighted_category_means(pairs.dice(), w)
    ap = bootstrap.WeightedSegmAP(evaluator.coco_eval(image_ids)).figures(w)
    assert dice[0] == pytest.approx(expected["val_dice"])
    assert ap["ap"][0] == pytest.approx(expected["val_ap"])
    assert ap["ap75"][0] == pytest.approx(expected["val_ap75"])
    assert bootstrap.weighted_auroc(pairs.gt_area > 0, pairs.presence_score, w)[0] == pytest.approx(
        expected["val_presence_auroc"])
    assert bootstrap.weighted_fp_absent_rate(pairs, w)[0] == pytest.approx(expected["val_fp_absent_rate"])


def test_matched_dice_is_the_best_single_query_against_the_ground_truth():
    evaluator, _, _ = fake_evaluation(3, seed=3)
    for p in evaluator.pair_figures():
        record = evaluator.state().pairs[p.image_id, p.category_id]
        gt = evaluator._gt_union.get((p.image_id, p.category_id))
        if gt is None:
            assert np.isnan(p.matched_dice)
            continue
        g = mask_utils.decode(gt).astype(bool)
        best = max(2 * (mask_utils.decode(rle).astype(bool) & g).sum() / (mask_utils.decode(rle).sum() + g.sum())
                   for rle, _ in record.detections)
        assert p.matched_dice == pytest.approx(best)


def test_the_interval_holds_the_estimate_and_narrows_with_more_images():
    widths = []
    for n in (16, 128):
        evaluator, _, patients = fake_evaluation(n, seed=4)
        result = evaluate.bootstrap_figures(evaluator, patients, resamples=200, seed=0)
        for name in ("dice_thresholded", "dice_matched", "ap75", "presence_auroc", "fp_absent_rate"):
            e = result["figures"][name]["all"]
            assert e["low"] <= e["mean"] <= e["high"], (n, name, e)
        e = result["figures"]["dice_thresholded"]["all"]
        widths.append(e["high"] - e["low"])
        assert result["bootstrap"]["unit"] == "image" and result["bootstrap"]["units"] == n
    assert widths[1] < 0.6 * widths[0]


def test_patients_are_resampled_whole_when_the_images_record_them():
    units, kind = bootstrap.unit_indices(["a", "b", "a", None, "b"])
    assert kind == "patient" and len(set(units)) == 3 and units[0] == units[2] and units[1] == units[4]
    weights = bootstrap.resample_weights(units, 50, seed=0)
    assert (weights[:, 0] == weights[:, 2]).all() and (weights[:, 1] == weights[:, 4]).all()
    assert (weights[:, [0, 1, 3]].sum(axis=1) == 3).all()  # as many draws as units
    evaluator, _, patients = fake_evaluation(12, seed=5, patients=3)
    result = evaluate.bootstrap_figures(evaluator, patients, resamples=20, seed=0)
    assert result["bootstrap"]["unit"] == "patient" and result["bootstrap"]["units"] == 3


def test_the_resampling_is_seeded():
    evaluator, _, patients = fake_evaluation(8, seed=6)
    first, again, other = (evaluate.bootstrap_figures(evaluator, patients, 50, seed)["figures"] for seed in (0, 0, 1))
    assert first == again and first != other


# --- the command on a tiny exported model ----------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from data_prep.synthetic import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("eval-data") / "data", n_train=2, n_val=1, n_test=8, size=96,
                            seed=0)


@pytest.fixture(scope="module")
def export_dir(dataset, tmp_path_factory):
    """An export folder as sweeps/export.py writes it: a tiny untrained model, its config and manifest."""
    from trainables.checkpoints.exported import write_manifest
    from trainables.checkpoints.native import save_native
    from trainables.config import TrialConfig
    from trainables.model import build_model

    out = tmp_path_factory.mktemp("eval-export") / "best"
    out.mkdir()
    save_native(build_model("tiny", seed=0), out / "model.pt")
    cfg = TrialConfig(**dataset.trial_fields(), preset="tiny", resolution=112, score_threshold=0.0)
    (out / "trial_config.json").write_text(json.dumps(cfg.to_dict()))
    (out / "metrics.json").write_text(json.dumps({"val_dice": 0.0}))
    write_manifest(out)
    return out


@pytest.fixture(scope="module")
def cli_run(export_dir):
    """``python -m sweeps.evaluate EXPORT_DIR --split test`` with the default --out; (exit, stdout, out folder)."""
    import contextlib
    import io

    before = _listing(export_dir)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = run_cli(evaluate.main, [str(export_dir), "--split", "test", "--bootstrap", "200", "--seed", "3"])
    assert _listing(export_dir) == before, "the export folder changed"
    return code, stdout.getvalue(), export_dir.parent / "best-evaluation"


def _listing(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_command_writes_json_and_csv_beside_the_export_and_prints_which_dice_is_which(cli_run, export_dir):
    from trainables.checkpoints.exported import verify_export

    code, printed, out = cli_run
    assert code == 0, printed
    verify_export(export_dir)
    result = json.loads((out / "evaluation_test.json").read_text())
    assert result["split"] == "test" and result["images"] == 8
    assert result["bootstrap"] == {**result["bootstrap"], "resamples": 200, "seed": 3, "unit": "patient", "units": 2}
    assert set(result["figures"]) == set(evaluate.FIGURES)
    assert {t["figure"]: t["target"] for t in result["targets"]} == {"dice_thresholded": 0.75, "ap75": 0.5}
    assert not any(t["met"] for t in result["targets"])  # an untrained model
    for label in ("Dice (thresholded)", "Dice (matched)", "deployment", "training-log", "AP75",
                  "presence AUROC", "Stage 2 target Dice (thresholded) > 0.75", "NOT MET"):
        assert label in printed
    with open(out / "evaluation_test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    segmented = [n for n, (_, per, _) in evaluate.FIGURES.items() if per]
    assert len(rows) == len(evaluate.FIGURES) + 14 * len(segmented)
    row = next(r for r in rows if r["figure"] == "dice_thresholded" and r["category"] == "all")
    e = result["figures"]["dice_thresholded"]["all"]
    assert [float(row[k]) for k in ("mean", "low", "high")] == [e["mean"], e["low"], e["high"]]
    assert e["low"] <= e["mean"] <= e["high"]


def test_the_thresholded_dice_is_validations_val_dice_on_the_same_split(cli_run, export_dir, dataset):
    from trainables.checkpoints.exported import load_exported
    from trainables.evaluate import evaluate_model

    result = json.loads((cli_run[2] / "evaluation_test.json").read_text())
    model, cfg = load_exported(export_dir)
    metrics = evaluate_model(model, cfg.replace(val_json=str(dataset.test_json)))
    figures = result["figures"]
    assert figures["dice_thresholded"]["all"]["mean"] == pytest.approx(metrics["val_dice"], abs=1e-12)
    for c in CASS_CATEGORIES:
        value = figures["dice_thresholded"]["per_category"][c.short_name]["mean"]
        assert value == pytest.approx(metrics[f"val_dice/{c.short_name}"], nan_ok=True) if value is not None \
            else np.isnan(metrics[f"val_dice/{c.short_name}"])
    assert figures["ap75"]["all"]["mean"] == pytest.approx(metrics["val_ap75"])
    assert figures["presence_auroc"]["all"]["mean"] == pytest.approx(metrics["val_presence_auroc"])


def test_another_split_joins_the_folder_and_a_rerun_needs_overwrite(cli_run, export_dir, capsys):
    out = cli_run[2]
    test_json = (out / "evaluation_test.json").read_bytes()
    assert run_cli(evaluate.main, [str(export_dir), "--split", "val", "--bootstrap", "10"]) == 0
    assert (out / "evaluation_test.json").read_bytes() == test_json and (out / "evaluation_val.json").is_file()
    capsys.readouterr()
    assert run_cli(evaluate.main, [str(export_dir), "--split", "val", "--bootstrap", "10"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert run_cli(evaluate.main, [str(export_dir), "--split", "val", "--bootstrap", "10", "--overwrite"]) == 0
    assert (out / "evaluation_test.json").read_bytes() == test_json


def test_the_report_section_shows_intervals_and_targets(cli_run):
    section = evaluation_section(cli_run[2])
    assert section.note is None
    assert "Dice (thresholded)" in section.html and "Dice (matched)" in section.html
    assert "Stage 2 target AP75 &gt; 0.5" in section.html and "NOT MET" in section.html
    assert "proximal_rca" in section.html and "[" in section.html
    assert evaluation_section(cli_run[2].parent).note  # a folder without evaluation files: a note


def test_the_default_out_of_a_pareto_trial_lies_outside_the_pareto_folder(tmp_path):
    pareto = tmp_path / "front"
    (pareto / "trial_1").mkdir(parents=True)
    (pareto / "MANIFEST.sha256").write_text("")
    (pareto / "trial_1" / "MANIFEST.sha256").write_text("")
    assert evaluate.default_out(pareto / "trial_1") == (tmp_path / "front-evaluation" / "trial_1").resolve()
    assert evaluate.default_out(pareto) == (tmp_path / "front-evaluation").resolve()


# --- bad input ----------------------------------------------------------------------------------------------


def _workspace_copy(tmp_path: Path, export_dir: Path, dataset) -> tuple[Path, Path]:
    """Copies of the export and its dataset, the export's config pointing at the copied dataset."""
    from trainables.checkpoints.exported import write_manifest

    data = Path(shutil.copytree(dataset.root, tmp_path / "data"))
    export = Path(shutil.copytree(export_dir, tmp_path / "best"))
    cfg = json.loads((export / "trial_config.json").read_text())
    cfg.update(train_json=str(data / "annotations" / "train.json"), val_json=str(data / "annotations" / "val.json"),
               images_dir=str(data / "images"))
    (export / "trial_config.json").write_text(json.dumps(cfg))
    write_manifest(export)
    return export, data


@pytest.mark.parametrize("case", ["no manifest", "changed file", "no test split", "unknown split"])
def test_bad_input_exits_2_naming_the_problem_and_writes_nothing(case, tmp_path, export_dir, dataset, capsys):
    export, data = _workspace_copy(tmp_path, export_dir, dataset)
    argv = [str(export), "--bootstrap", "5"]
    if case == "no manifest":
        (export / "MANIFEST.sha256").unlink()
        fragments = ["MANIFEST.sha256", "not an export folder"]
    elif case == "changed file":
        (export / "metrics.json").write_text(json.dumps({"val_dice": 0.9}))
        fragments = ["metrics.json", "sha256 differs"]
    elif case == "no test split":
        (data / "annotations" / "test.json").unlink()
        fragments = [str(data / "annotations" / "test.json"), "--test-fraction"]
    else:
        argv += ["--split", "holdout"]
        fragments = ["'holdout'", "train, val, test"]
    before = {str(p) for p in tmp_path.rglob("*")}
    capsys.readouterr()

    code = run_cli(evaluate.main, argv)

    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert all(f in err for f in fragments), err
    assert {str(p) for p in tmp_path.rglob("*")} == before


def test_an_out_that_the_project_did_not_write_is_refused(tmp_path, export_dir, dataset, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("not ours")
    assert run_cli(evaluate.main, [str(export_dir), "--out", str(foreign), "--bootstrap", "5"]) == 2
    assert "not a folder of evaluations" in capsys.readouterr().err
    assert [p.name for p in foreign.iterdir()] == ["thesis.tex"]
    # another output of this project (a dataset: its images and annotations) is never replaced either
    from data_prep.synthetic import generate_dataset

    other = generate_dataset(tmp_path / "other_dataset", n_train=1, n_val=1, size=64, seed=1).root
    before = _listing(other)
    for extra in ([], ["--overwrite"]):
        assert run_cli(evaluate.main, [str(export_dir), "--out", str(other), "--bootstrap", "5", *extra]) == 2
        assert "not a folder of evaluations written by python -m sweeps.evaluate" in capsys.readouterr().err
    assert _listing(other) == before
    assert run_cli(evaluate.main, [str(export_dir), "--out", str(export_dir / "eval"), "--bootstrap", "5"]) == 2
    assert "lies inside EXPORT_DIR" in capsys.readouterr().err


def test_the_report_shows_the_evaluation_when_given_its_folder(cli_run, tmp_path, monkeypatch):
    from sweeps import report
    from sweeps.results import SweepResults

    monkeypatch.setattr(report, "load_sweep", lambda *a, **k: SweepResults("s", tmp_path, trials=[], study=None,
                                                                         pareto=[], notes=[]))
    page = report.build_report(tmp_path / "experiment", tmp_path / "page", overlay_images=0,
                               evaluation_dir=cli_run[2])
    text = page.read_text()
    assert "Held-out evaluation of the exported checkpoint" in text and "Dice (matched)" in text
    without = report.build_report(tmp_path / "experiment", tmp_path / "page2", overlay_images=0).read_text()
    assert "Held-out evaluation" not in without


def test_the_demo_adds_a_test_split_to_an_earlier_dataset_without_one(tmp_path):
    from data_prep.layout import DatasetPaths
    from data_prep.synthetic import generate_dataset
    from sweeps.demo import DATA_DIR, make_dataset

    synthetic = {"train": 2, "val": 1, "size": 96, "seed": 0}
    generate_dataset(tmp_path / DATA_DIR, n_train=2, n_val=1, size=96, seed=0)  # an earlier demo's data
    train = DatasetPaths(tmp_path / DATA_DIR).train_json.read_bytes()
    make_dataset(tmp_path, {**synthetic, "test": 4})
    paths = DatasetPaths(tmp_path / DATA_DIR)
    assert len(json.loads(paths.test_json.read_text())["images"]) == 4
    assert paths.train_json.read_bytes() == train


def test_an_interval_from_fewer_resamples_than_drawn_says_how_many():
    """A segment absent from some resamples has no figure there: its interval rests on fewer, and says so."""
    partial = evaluate._estimate(np.array([0.5, 0.4, np.nan, 0.6, np.nan]), 4)
    assert partial["defined"] == 2 and evaluate.format_estimate(partial, 4).endswith("(2 resamples)")
    full = evaluate._estimate(np.array([0.5, 0.4, 0.45, 0.6, 0.55]), 4)
    assert full["defined"] == 4 and "resamples" not in evaluate.format_estimate(full, 4)


def test_the_segment_table_keeps_its_columns_aligned_when_a_cell_names_its_resamples():
    full = {"mean": 0.5, "low": 0.4, "high": 0.6, "defined": 10}
    partial = {"mean": 0.0, "low": 0.0, "high": 0.0, "defined": 7}
    figure = {"description": "d", "all": full}
    result = {"split": "test", "dataset": "D", "images": 4, "targets": [],
              "bootstrap": {"units": 2, "unit": "patient", "resamples": 10},
              "figures": {"a": {**figure, "label": "A", "per_category": {"ramus": partial, "pda": full}},
                          "b": {**figure, "label": "B", "per_category": {"ramus": full, "pda": partial}}}}
    lines = evaluate.format_table(result).splitlines()
    header, ramus, pda = (next(line for line in lines if line.startswith(name)) for name in ("segment", "ramus", "pda"))
    assert "(7 resamples)" in ramus and "(7 resamples)" in pda
    assert len(header) == len(ramus) == len(pda)  # every column right-aligned at the same place
    assert header.index("A") + 1 == ramus.index("(7 resamples)") + len("(7 resamples)")
