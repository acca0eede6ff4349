"""``python -m sweeps.predict``: an exported tiny model on new angiograms (8-bit, 16-bit PNG, a 3-frame XA DICOM),
end to end through the command line, in-process.

The run under test (``run``, once per module) reads a folder holding two validation images of the synthetic
dataset, a 16-bit PNG, a 3-frame DICOM run, a file that is no image, a truncated PNG and a header-only DICOM: the
five good frames are predicted, the two broken files skipped and listed. Its threshold is 0 so every kept query is
written (the untrained model's scores are about 0.4).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from angiograms import cine, png16, ramp, without_pixel_data, write_dicom, xa_dataset
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from common.errors import run_cli
from common.outputs import MARKER
from data_prep.cass import CASS_CATEGORIES, NUM_CATEGORIES, coco_categories
from data_prep.images import read_image
from sweeps import predict
from trainables.checkpoints import exported
from trainables.config import TrialConfig
from trainables.data import CassDataset, build_loader, unlabelled_batch, unlabelled_datapoint, val_transforms
from trainables.inference import MAX_DETS_PER_PROMPT
from trainables.inference import predict as run_model

SCORE_THRESHOLD = 0.45  # the export's trial setting: above every score of the untrained tiny model
GOOD = ["frame16.png", "run1.dcm#frame0", "run1.dcm#frame1", "run1.dcm#frame2"]  # plus the two validation images


def make_export(folder: Path, trial_fields: dict, native: Path | None = None) -> Path:
    """An export folder as sweeps/export.py lays it out: a tiny untrained model at 224 px."""
    folder.mkdir(parents=True)
    if native is None:
        from trainables.checkpoints.native import save_native
        from trainables.model import build_model

        save_native(build_model("tiny", seed=0), folder / "model.pt")
    else:
        shutil.copy(native, folder / "model.pt")
    cfg = TrialConfig(**trial_fields, preset="tiny", resolution=224, score_threshold=SCORE_THRESHOLD)
    (folder / "trial_config.json").write_text(json.dumps(cfg.to_dict()))
    (folder / "metrics.json").write_text(json.dumps({"val_dice": 0.0}))
    exported.write_manifest(folder)
    return folder


def val_images(dataset) -> list[dict]:
    return sorted(json.loads(dataset.val_json.read_text())["images"], key=lambda i: i["id"])


@pytest.fixture(scope="module")
def export_dir(synthetic_dataset, tmp_path_factory):
    torch.set_num_threads(2)
    return make_export(tmp_path_factory.mktemp("predict") / "export", synthetic_dataset.trial_fields())


@pytest.fixture(scope="module")
def angiograms(synthetic_dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("new") / "angiograms"
    folder.mkdir()
    for info in val_images(synthetic_dataset)[:2]:
        shutil.copy(synthetic_dataset.images_dir / info["file_name"], folder / info["file_name"])
    png16(folder / "frame16.png", ramp(48, 80))
    write_dicom(folder / "run1.dcm", xa_dataset(cine(3, 40, 60), window=(2048.0, 4096.0)))
    (folder / "notes.txt").write_text("not an image: not listed")
    (folder / "cut.png").write_bytes((folder / "frame16.png").read_bytes()[:60])  # an interrupted copy
    without_pixel_data(folder / "header_only.dcm")
    return folder


@pytest.fixture(scope="module")
def run(export_dir, angiograms, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "predicted"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = run_cli(predict.main, [str(export_dir), str(angiograms), "--out", str(out), "--threshold", "0",
                                      "--batch-size", "2", "--device", "cpu"])
    assert code == 0, stderr.getvalue()
    return out, stdout.getvalue(), stderr.getvalue()


def load(out: Path) -> tuple[COCO, COCO]:
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        images = COCO(str(out / predict.IMAGES_FILE))
        return images, images.loadRes(str(out / predict.PREDICTIONS_FILE))


def test_loadres_accepts_the_predictions_against_images_json(run, synthetic_dataset):
    out, stdout, _ = run
    images, results = load(out)
    names = sorted(i["file_name"] for i in images.dataset["images"])
    assert names == sorted(GOOD + [i["file_name"] for i in val_images(synthetic_dataset)[:2]])
    assert [c["id"] for c in images.dataset["categories"]] == list(range(1, NUM_CATEGORIES + 1))
    # threshold 0: every kept query of every image and prompt, as many for each
    counts = {(i, c.id): len(results.getAnnIds(imgIds=[i], catIds=[c.id]))
              for i in images.getImgIds() for c in CASS_CATEGORIES}
    assert len(set(counts.values())) == 1 and 1 <= counts[1, 1] <= MAX_DETS_PER_PROMPT
    assert {a["image_id"] for a in results.dataset["annotations"]} == set(images.getImgIds())
    assert all(isinstance(a["segmentation"]["counts"], str) for a in json.loads(
        (out / predict.PREDICTIONS_FILE).read_text()))
    assert "predicted 6 image(s) of 4 file(s)" in stdout


def test_each_mask_has_its_input_frames_size(run, angiograms):
    out, _, _ = run
    images, results = load(out)
    for info in images.dataset["images"]:
        name = info["file_name"].split("#frame")[0]
        height, width = read_image(angiograms / name).pixels.shape[:2]
        assert (info["width"], info["height"]) == (width, height)
        for ann in results.loadAnns(results.getAnnIds(imgIds=[info["id"]])):
            assert results.annToMask(ann).shape == (height, width)


def test_16_bit_and_dicom_frames_are_windowed_as_dataset_conversion_does(run):
    out, _, _ = run
    images = {i["file_name"]: i for i in json.loads((out / predict.IMAGES_FILE).read_text())["images"]}
    assert images["frame16.png"]["windowing"]["method"] == "bit_depth"
    assert images["frame16.png"]["windowing"]["bits"] == 12
    assert [images[f"run1.dcm#frame{k}"]["windowing"]["frame"] for k in range(3)] == [0, 1, 2]
    assert images["run1.dcm#frame0"]["windowing"]["method"] == "window"


def test_one_overlay_per_image_and_a_csv_row_for_each(run):
    out, _, _ = run
    images = json.loads((out / predict.IMAGES_FILE).read_text())["images"]
    with open(out / predict.SEGMENTS_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["file_name"] for r in rows] == [i["file_name"] for i in images]
    assert sorted(p.name for p in (out / predict.OVERLAYS).iterdir()) == sorted(
        Path(r["overlay"]).name for r in rows)
    results = json.loads((out / predict.PREDICTIONS_FILE).read_text())
    for row, info in zip(rows, images):
        overlay = Image.open(out / row["overlay"])
        assert overlay.width > 2 * info["width"] and overlay.height > info["height"]
        assert row["segments"].split(";") == [c.short_name for c in CASS_CATEGORIES]  # threshold 0: all found
        for category in CASS_CATEGORIES:
            best = max(r["score"] for r in results if r["image_id"] == info["id"]
                       and r["category_id"] == category.id)
            assert float(row[category.short_name]) == pytest.approx(best, abs=1e-4)
    assert (out / MARKER).is_file()


def test_the_unreadable_files_are_skipped_and_listed(run, angiograms):
    out, _, stderr = run
    skipped = json.loads((out / predict.SKIPPED_FILE).read_text())
    assert sorted(s["file"] for s in skipped) == ["cut.png", "header_only.dcm"]
    assert "warning: skipped 2 image(s)" in stderr
    assert str(angiograms / "cut.png") in stderr and "holds no pixel data" in stderr
    assert "notes.txt" not in stderr


def test_a_dataset_image_gets_what_validation_predicts_for_it(run, export_dir, synthetic_dataset):
    """Same preprocessing, same inference loop: the CLI's detections on a validation image equal those of
    ``trainables.inference.predict`` over the validation loader."""
    out, _, _ = run
    model, cfg = exported.load_exported(export_dir)
    first = val_images(synthetic_dataset)[0]
    with contextlib.closing(run_model(model, build_loader(cfg, "val"), "cpu")) as batches:
        expected = [p for p in next(batches) if p.image_id == first["id"]]
    assert len(expected) == NUM_CATEGORIES
    images, _ = load(out)
    (image_id,) = [i["id"] for i in images.dataset["images"] if i["file_name"] == first["file_name"]]
    results = [r for r in json.loads((out / predict.PREDICTIONS_FILE).read_text()) if r["image_id"] == image_id]
    for p in expected:
        got = [r for r in results if r["category_id"] == p.category_id]
        np.testing.assert_allclose([r["score"] for r in got], p.scores, rtol=0, atol=1e-5)
        for r, mask in zip(got, p.masks):
            differing = np.count_nonzero(mask_utils.decode(r["segmentation"]).astype(bool) != mask)
            assert differing <= 0.001 * mask.size, (p.category_id, differing)


def test_an_image_without_annotations_is_the_datapoint_validation_makes(synthetic_dataset, tmp_path):
    """unlabelled_datapoint + val_transforms == CassDataset (val) on a COCO file of the same images without
    annotations: same image tensor, queries and metadata."""
    doc = json.loads(synthetic_dataset.val_json.read_text())
    doc["annotations"] = []
    bare = tmp_path / "val_without_annotations.json"
    bare.write_text(json.dumps(doc))
    dataset = CassDataset(bare, synthetic_dataset.images_dir, 224, train=False)
    info = val_images(synthetic_dataset)[0]
    image = Image.open(synthetic_dataset.images_dir / info["file_name"]).convert("RGB")
    ours = val_transforms(224)(unlabelled_datapoint(image, info["id"], coco_categories()), epoch=0)
    theirs = dataset[0]
    assert ours.find_queries == theirs.find_queries
    assert len(ours.images) == len(theirs.images) == 1
    assert torch.equal(ours.images[0].data, theirs.images[0].data)
    assert ours.images[0].size == theirs.images[0].size and ours.images[0].objects == theirs.images[0].objects
    batch = unlabelled_batch([(info["id"], image)], 224, coco_categories())
    assert batch.find_metadatas[0].original_image_id.tolist() == [info["id"]] * NUM_CATEGORIES
    assert batch.find_text_batch == [c.coco()["name"] for c in CASS_CATEGORIES]


@pytest.fixture(scope="module")
def cached_model(export_dir):
    return exported.load_exported(export_dir)


@pytest.fixture
def fast(monkeypatch, cached_model):
    """The export's model built once for the module (the CLI still verifies the export first)."""
    monkeypatch.setattr(exported, "load_exported", lambda directory, device="cpu", verified=False: cached_model)


def test_the_default_threshold_is_the_trials_and_frame_k_picks_one_frame(fast, export_dir, angiograms, tmp_path,
                                                                         capsys):
    out = tmp_path / "out"
    assert run_cli(predict.main, [str(export_dir), str(angiograms / "run1.dcm"), "--out", str(out),
                                  "--frame", "1"]) == 0
    info = json.loads((out / predict.IMAGES_FILE).read_text())
    assert info["info"]["threshold"] == SCORE_THRESHOLD
    assert [i["file_name"] for i in info["images"]] == ["run1.dcm#frame1"]
    assert json.loads((out / predict.PREDICTIONS_FILE).read_text()) == []  # every score is below 0.45
    with open(out / predict.SEGMENTS_FILE, newline="") as f:
        assert [r["segments"] for r in csv.DictReader(f)] == [""]
    assert "0 segment(s) found" in capsys.readouterr().out


def test_overwrite_replaces_an_earlier_prediction_only(fast, export_dir, angiograms, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [str(export_dir), str(angiograms / "frame16.png"), "--out", str(out)]
    assert run_cli(predict.main, argv) == 0
    assert run_cli(predict.main, argv) == 2 and "--overwrite" in capsys.readouterr().err
    assert run_cli(predict.main, [*argv, "--overwrite"]) == 0


def test_the_model_takes_2d_grey_or_rgb_frames_with_pixels():
    assert predict.model_problem(Path("a.png"), 0, np.zeros((4, 5), np.uint8)) is None
    assert predict.model_problem(Path("a.png"), 0, np.zeros((4, 5, 3), np.uint8)) is None
    assert "a volume?" in predict.model_problem(Path("v.tif"), 0, np.zeros((4, 5, 7), np.uint8))
    assert "a volume?" in predict.model_problem(Path("v.tif"), 0, np.zeros((2, 4, 5, 3), np.uint8))
    assert "without pixels" in predict.model_problem(Path("e.png"), 0, np.zeros((0, 5), np.uint8))


# --- bad input: exit 2, one clear message naming the file, nothing written ----------------------------------


def listing(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1) for p in sorted(root.rglob("*"))}


def refused(argv: list[str], root: Path, capsys, *fragments: str) -> str:
    before = listing(root)
    capsys.readouterr()
    code = run_cli(predict.main, argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    missing = [f for f in fragments if f not in err]
    assert not missing, f"the message lacks {missing}:\n{err}"
    assert listing(root) == before, "the command wrote (or left) files"
    return err


@pytest.fixture
def workspace(tmp_path, export_dir, angiograms):
    shutil.copytree(export_dir, tmp_path / "export")
    shutil.copytree(angiograms, tmp_path / "in")
    return tmp_path


def test_an_export_without_its_manifest_is_refused(workspace, capsys):
    (workspace / "export" / exported.MANIFEST).unlink()
    refused([str(workspace / "export"), str(workspace / "in"), "--out", str(workspace / "out")], workspace, capsys,
            str(workspace / "export"), "no MANIFEST.sha256")


def test_an_export_with_a_changed_file_is_refused(workspace, capsys):
    config = workspace / "export" / "trial_config.json"
    config.write_text(config.read_text().replace(f'"score_threshold": {SCORE_THRESHOLD}', '"score_threshold": 0.1'))
    refused([str(workspace / "export"), str(workspace / "in"), "--out", str(workspace / "out")], workspace, capsys,
            "trial_config.json: sha256 differs from the manifest")


def test_a_pareto_export_root_names_its_model_folders(workspace, capsys):
    root = workspace / "pareto"
    shutil.copytree(workspace / "export", root / "trial_a")
    exported.write_manifest(root)
    refused([str(root), str(workspace / "in"), "--out", str(workspace / "out")], workspace, capsys,
            "no model.pt", str(root / "trial_a"))


def test_a_folder_without_images_says_what_it_found(workspace, capsys):
    folder = workspace / "in"
    for p in folder.iterdir():
        if p.name not in ("notes.txt",):
            p.unlink()
    report = write_dicom(folder / "dose_report.dcm", xa_dataset(cine(1)[0]))
    ds = pydicom.dcmread(report)
    del ds.Rows
    ds.save_as(report)
    (folder / "patient2").mkdir()
    err = refused([str(workspace / "export"), str(folder), "--out", str(workspace / "out")], workspace, capsys,
                  str(folder), "no image", "notes.txt", "dose_report.dcm (DICOM without an image)", "patient2/",
                  "subfolders are not searched")
    assert err.count("\n  - ") == 1


def test_a_folder_of_only_broken_images_is_refused_naming_each(fast, workspace, capsys):
    folder = workspace / "in"
    for p in folder.iterdir():
        if p.name not in ("cut.png", "header_only.dcm"):
            p.unlink()
    refused([str(workspace / "export"), str(folder), "--out", str(workspace / "out")], workspace, capsys,
            "none of its 2 image file(s) can be read", str(folder / "cut.png"), str(folder / "header_only.dcm"))


def test_an_image_of_zero_rows_is_refused_by_name(fast, workspace, capsys):
    ds = xa_dataset(cine(1)[0])
    ds.Rows, ds.PixelData = 0, b""
    empty = write_dicom(workspace / "empty.dcm", ds)
    refused([str(workspace / "export"), str(empty), "--out", str(workspace / "out")], workspace, capsys,
            str(empty), "Rows")


def test_an_output_inside_the_input_or_the_export_is_refused(workspace, capsys):
    argv = [str(workspace / "export"), str(workspace / "in")]
    refused([*argv, "--out", str(workspace / "in" / "predicted"), "--overwrite"], workspace, capsys,
            "lies inside INPUT")
    refused([*argv, "--out", str(workspace / "export"), "--overwrite"], workspace, capsys,
            "is the same path as EXPORT_DIR")


def test_overwrite_refuses_a_folder_it_did_not_write(workspace, capsys):
    (workspace / "photos").mkdir()
    (workspace / "photos" / "holiday.jpg").write_bytes(b"not ours")
    refused([str(workspace / "export"), str(workspace / "in"), "--out", str(workspace / "photos"), "--overwrite"],
            workspace, capsys, "not an output of this project")


@pytest.mark.parametrize("option, fragment", [(["--threshold", "1.5"], "--threshold 1.5"),
                                              (["--batch-size", "0"], "--batch-size 0"),
                                              (["--frame", "-1"], "--frame -1"),
                                              (["--bits", "4"], "--bits 4")])
def test_option_values_out_of_range_are_refused(workspace, capsys, option, fragment):
    refused([str(workspace / "export"), str(workspace / "in"), "--out", str(workspace / "out"), *option],
            workspace, capsys, fragment)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_device_cuda_without_a_gpu_is_refused(workspace, capsys):
    refused([str(workspace / "export"), str(workspace / "in"), "--out", str(workspace / "out"), "--device", "cuda"],
            workspace, capsys, "--device cuda", "--device cpu")


def test_the_report_shows_the_predictions_overlays_and_segments_found(run, tmp_path):
    from sweeps.report import predictions_section

    out, _, _ = run
    rows = (out / predict.SEGMENTS_FILE).read_text().splitlines()[1:]
    section = predictions_section(out, tmp_path, max_images=2)
    assert section.note is None and len(section.images) == 2
    assert all((tmp_path / name).is_file() and name.endswith(".png") for name in section.images)
    assert section.html.count("<tr>") == len(rows) + 1  # a header, then every predicted image
    missing = predictions_section(tmp_path / "nowhere", tmp_path, max_images=2)
    assert missing.images == [] and "run python -m sweeps.predict" in missing.note


def test_overlay_files_are_named_after_their_image_and_frame():
    taken: set[str] = set()
    assert predict._overlay_name("run1.dcm#frame3", 1, taken) == "run1_frame3.png"
    assert predict._overlay_name("a.png", 2, taken) == "a.png"
    assert predict._overlay_name("a.tif", 3, taken) == "a_3.png"  # the name a.png is taken


def test_overlay_names_never_collide_even_case_blind_as_on_windows():
    taken: set[str] = set()
    names = [predict._overlay_name(f, i, taken) for i, f in enumerate(["x_3.png", "x.png", "x.tif", "A.png", "a.tif"],
                                                                      start=1)]
    assert len({n.casefold() for n in names}) == len(names), names
