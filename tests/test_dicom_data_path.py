"""From a catheter lab's files to the model's input tensor: DICOM runs and 16-bit frames through the commands a
user runs (create_coco_cass, validate, convert_images) and into the tensor a trial feeds the model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from angiograms import cine, png16, ramp, write_dicom, xa_dataset
from PIL import Image

from common.errors import run_cli
from data_prep import cass, convert_images, create_coco_cass, validate
from data_prep.images import read_image
from data_prep.layout import DatasetPaths
from trainables.data import CassDataset

HEIGHT, WIDTH = 32, 64


def _label_map(path):
    """A proximal RCA bar across the frame."""
    labels = np.zeros((HEIGHT, WIDTH), np.uint8)
    labels[10:16, 4:60] = cass.lookup("proximal_rca").id
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labels).save(path)


@pytest.fixture
def medis_export(tmp_path):
    """Three patients: P1's 3-frame MONOCHROME1 run with a window, labelled on frames 1 and 2
    (``<stem>_frame<k>.png``); P2's 2-frame MONOCHROME2 run without a window, labelled by ``<stem>.png`` (frame
    ``--frame``); P3's frame as a 16-bit PNG."""
    root = tmp_path / "export"
    write_dicom(root / "images" / "P1_run1.dcm", xa_dataset(cine(3), photometric="MONOCHROME1", window=(2048, 3000)))
    write_dicom(root / "images" / "P2_run1.dcm", xa_dataset(cine(2)))
    png16(root / "images" / "P3_f0.png", ramp())
    for stem in ("P1_run1_frame1", "P1_run1_frame2", "P2_run1", "P3_f0"):
        _label_map(root / "labels" / f"{stem}.png")
    return root


def _convert(export, out, *extra):
    return run_cli(create_coco_cass.main, ["--images", str(export / "images"), "--label-maps", str(export / "labels"),
                                           "--out", str(out), *extra])


def _images(out):
    return {img["file_name"]: img for split in ("train", "val")
            for img in json.loads((out / "annotations" / f"{split}.json").read_text())["images"]}


def test_each_labelled_frame_of_a_run_becomes_an_8_bit_image_with_its_windowing(medis_export, tmp_path):
    out = tmp_path / "dataset"
    assert _convert(medis_export, out, "--frame", "1") == 0
    images = _images(out)
    assert sorted(images) == ["P1_run1_frame1.png", "P1_run1_frame2.png", "P2_run1.png", "P3_f0.png"]
    sources = {"P1_run1_frame1.png": ("P1_run1.dcm", 1), "P1_run1_frame2.png": ("P1_run1.dcm", 2),
               "P2_run1.png": ("P2_run1.dcm", 1), "P3_f0.png": ("P3_f0.png", 0)}
    for name, (source, frame) in sources.items():
        expected = read_image(medis_export / "images" / source, frame=frame)
        with Image.open(out / "images" / name) as im:
            assert im.mode == "L" and np.array_equal(np.asarray(im), expected.pixels), name
        assert images[name]["windowing"] == expected.windowing
    assert images["P1_run1_frame2.png"]["windowing"]["method"] == "window"
    assert images["P1_run1_frame2.png"]["windowing"]["inverted"] is True
    assert images["P2_run1.png"]["windowing"]["method"] == "bits_stored"
    assert images["P3_f0.png"]["windowing"]["method"] == "bit_depth"
    assert {img["patient_id"] for img in images.values()} == {"P1", "P2", "P3"}
    paths = DatasetPaths(out)
    assert run_cli(validate.main, [str(paths.train_json), str(paths.val_json), "--images", str(paths.images_dir)]) == 0


def test_per_segment_masks_name_a_runs_frame_the_same_way(tmp_path, capsys):
    export = tmp_path / "export"
    write_dicom(export / "images" / "P1_run1.dcm", xa_dataset(cine(3)))
    write_dicom(export / "images" / "P2_run1.dcm", xa_dataset(cine(3)))
    for stem in ("P1_run1_frame2", "P2_run1_frame0"):
        _label_map(export / "masks" / f"{stem}_mid_lad.png")
    argv = ["--images", str(export / "images"), "--masks", str(export / "masks"), "--val-fraction", "0"]
    assert run_cli(create_coco_cass.main, [*argv, "--out", str(tmp_path / "d")]) == 0
    images = _images(tmp_path / "d")
    assert {name: img["windowing"]["frame"] for name, img in images.items()} == {"P1_run1_frame2.png": 2,
                                                                                "P2_run1_frame0.png": 0}

    _label_map(export / "masks" / "P3_run1_frame0_mid_lad.png")  # no run P3_run1
    assert run_cli(create_coco_cass.main, [*argv, "--out", str(tmp_path / "d2")]) == 2
    assert "P3_run1_frame0_mid_lad.png: matches no <image stem>[_frame<k>]_<CASS short name>.png" in \
        capsys.readouterr().err


def test_a_12_bit_ramp_reaches_the_models_input_tensor_with_its_range_and_order(tmp_path):
    """The whole data path: a 12-bit DICOM frame -> create_coco_cass -> sam3's loader and transforms -> tensor."""
    export = tmp_path / "export"
    write_dicom(export / "images" / "P9_run1.dcm", xa_dataset(np.stack([ramp()[::-1], ramp()])))
    _label_map(export / "labels" / "P9_run1_frame1.png")
    out = tmp_path / "dataset"
    assert _convert(export, out, "--val-fraction", "0") == 0

    paths = DatasetPaths(out)
    tensor = CassDataset(paths.train_json, paths.images_dir, 56, train=False)[0].images[0].data

    assert tensor.shape == (3, 56, 56)
    assert tensor.min() == pytest.approx(-1.0, abs=0.02) and tensor.max() == pytest.approx(1.0, abs=0.02)
    assert bool((tensor.diff(dim=2) >= 0).all()), "a left-to-right ramp stays ordered left to right"
    assert len(tensor[0, 0].unique()) > 40, "the levels stay apart"
    assert (tensor >= 0.99).float().mean() < 0.05, "not saturated (a 16-bit file read by sam3 is ~94% white)"


def test_validate_refuses_a_16_bit_image_and_its_advice_fixes_it(tmp_path, capsys):
    """The validator names the converter; running it and pointing file_name at its PNG makes the dataset pass."""
    dataset = tmp_path / "dataset"
    shutil.copytree(_a_dataset(tmp_path), dataset)
    paths = DatasetPaths(dataset)
    doc = json.loads(paths.train_json.read_text())
    first = paths.images_dir / doc["images"][0]["file_name"]
    sixteen = png16(paths.images_dir / "frame16.png", np.asarray(Image.open(first)).astype(np.uint16) * 16)
    first.unlink()
    doc["images"][0]["file_name"] = sixteen.name
    paths.train_json.write_text(json.dumps(doc))
    argv = [str(paths.train_json), "--images", str(paths.images_dir)]

    assert run_cli(validate.main, argv) == 2
    err = capsys.readouterr().err
    assert f"file {sixteen} is a 16-bit image (PIL mode I;16)" in err
    assert f"python -m data_prep.convert_images {sixteen} --out" in err

    assert run_cli(convert_images.main, [str(sixteen), "--out", str(tmp_path / "converted")]) == 0
    shutil.move(tmp_path / "converted" / "frame16.png", sixteen)  # same name: file_name stays as it is
    assert run_cli(validate.main, argv) == 0


def _a_dataset(tmp_path):
    """A small valid dataset of 8-bit frames (2 patients, all in train)."""
    export = tmp_path / "small-export"
    (export / "images").mkdir(parents=True)
    for patient in ("P1", "P2"):
        Image.fromarray((ramp() // 16).astype(np.uint8)).save(export / "images" / f"{patient}_f0.png")
        _label_map(export / "labels" / f"{patient}_f0.png")
    assert _convert(export, tmp_path / "small", "--val-fraction", "0") == 0
    return tmp_path / "small"
