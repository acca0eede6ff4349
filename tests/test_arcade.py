"""The ARCADE importer: SYNTAX classes mapped to CASS as listed, others dropped and counted, images linked into the dataset."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from common.errors import run_cli
from data_prep import cass
from data_prep.arcade import SYNTAX_TO_CASS, main
from data_prep.layout import DatasetPaths
from data_prep.validate import validate_dataset

SYNTAX_NAMES = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "9a", "10", "10a", "11", "12", "12a", "13",
                "14", "14a", "15", "16", "16a", "16b", "16c", "12b", "14b", "catheter"]
EXPECTED = {"1": "proximal_rca", "2": "mid_rca", "3": "distal_rca", "4": "pda", "5": "left_main",
            "6": "proximal_lad", "7": "mid_lad", "8": "distal_lad", "11": "proximal_lcx", "13": "distal_lcx",
            "12": "ramus", "12a": "obtuse_marginal_1", "12b": "obtuse_marginal_2"}


def _write_arcade_split(root, split):
    """ARCADE's ``syntax/<split>``: 2 images (the same file names in every split), one triangle of every
    class on image 1 and nothing on image 2."""
    (root / "syntax" / split / "images").mkdir(parents=True)
    for i in (1, 2):
        Image.fromarray(np.full((64, 64), 120, np.uint8)).save(root / "syntax" / split / "images" / f"{i}.png")
    anns = [{"id": k + 1, "image_id": 1, "category_id": k + 1, "segmentation": [[2, 2, 40, 2 + k, 2, 30]],
             "bbox": [2, 2, 38, 28 + k], "area": 500.0, "iscrowd": 0}
            for k in range(len(SYNTAX_NAMES))]
    doc = {"images": [{"id": i, "file_name": f"{i}.png", "width": 64, "height": 64} for i in (1, 2)],
           "annotations": anns,
           "categories": [{"id": k + 1, "name": n, "supercategory": ""} for k, n in enumerate(SYNTAX_NAMES)]}
    (root / "syntax" / split / "annotations").mkdir()
    (root / "syntax" / split / "annotations" / f"{split}.json").write_text(json.dumps(doc))


@pytest.fixture
def arcade_root(tmp_path):
    """ARCADE's syntax layout with train and val only."""
    root = tmp_path / "arcade"
    for split in ("train", "val"):
        _write_arcade_split(root, split)
    return root


def test_mapping_table_is_the_documented_one():
    assert SYNTAX_TO_CASS == EXPECTED
    assert set(SYNTAX_TO_CASS.values()) == set(cass.BY_SHORT_NAME) - {"obtuse_marginal_3"}


def test_classes_mapped_and_dropped_as_listed(arcade_root, tmp_path, capsys):
    out = tmp_path / "d"
    assert run_cli(main, ["--arcade-root", str(arcade_root), "--out", str(out)]) == 0
    for split in ("train", "val"):
        doc = json.loads((out / "annotations" / f"{split}.json").read_text())
        assert doc["categories"] == cass.coco_categories()
        got = {SYNTAX_NAMES[a["id"] - 1]: cass.BY_ID[a["category_id"]].short_name for a in doc["annotations"]}
        assert got == EXPECTED
    printed = capsys.readouterr().out
    for dropped in ("9a", "10", "14b", "16c", "catheter"):
        assert f"  {dropped} " in printed
    assert re.search(r"obtuse_marginal_3 +0 +0", printed)  # no ARCADE source


def test_images_are_linked_inside_the_dataset_folder_and_the_result_validates(arcade_root, tmp_path):
    out = tmp_path / "d"
    assert run_cli(main, ["--arcade-root", str(arcade_root), "--out", str(out)]) == 0
    doc = json.loads((out / "annotations" / "val.json").read_text())
    assert [img["file_name"] for img in doc["images"]] == ["val/1.png", "val/2.png"]
    linked, original = out / "images" / "val" / "1.png", arcade_root / "syntax" / "val" / "images" / "1.png"
    assert not linked.is_symlink() and linked.resolve().is_relative_to(out.resolve())
    assert linked.read_bytes() == original.read_bytes()
    assert validate_dataset(DatasetPaths(out)).errors == []


def test_a_16_bit_arcade_image_is_written_in_8_bits_and_the_8_bit_ones_are_still_linked(arcade_root, tmp_path):
    images = arcade_root / "syntax" / "train" / "images"
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint16) * 65, (64, 1))).save(images / "1.png")  # 12-bit ramp
    out = tmp_path / "d"
    assert run_cli(main, ["--arcade-root", str(arcade_root), "--out", str(out)]) == 0
    windowing = {img["file_name"]: img["windowing"] for img in json.loads((out / "annotations" / "train.json")
                                                                          .read_text())["images"]}
    assert windowing["train/1.png"]["method"] == "bit_depth" and windowing["train/2.png"]["method"] == "8bit"
    with Image.open(out / "images" / "train" / "1.png") as im:
        assert im.mode == "L" and np.asarray(im)[0, 0] == 0 and np.asarray(im)[0, -1] == 255
    assert (out / "images" / "train" / "2.png").stat().st_ino == (images / "2.png").stat().st_ino
    assert validate_dataset(DatasetPaths(out)).errors == []


def test_an_arcade_file_name_outside_its_image_folder_is_refused(arcade_root, tmp_path, capsys):
    ann = arcade_root / "syntax" / "val" / "annotations" / "val.json"
    doc = json.loads(ann.read_text())
    (tmp_path / "secret.png").write_bytes((arcade_root / "syntax" / "val" / "images" / "1.png").read_bytes())
    doc["images"][0]["file_name"] = "../../../../secret.png"
    ann.write_text(json.dumps(doc))
    assert run_cli(main, ["--arcade-root", str(arcade_root), "--out", str(tmp_path / "d")]) == 2
    assert "leaves the images folder" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_the_output_may_not_overlap_the_arcade_folder(arcade_root, capsys):
    assert run_cli(main, ["--arcade-root", str(arcade_root), "--out", str(arcade_root / "cass")]) == 2
    assert "lies inside --arcade-root" in capsys.readouterr().err
    assert not (arcade_root / "cass").exists()


def test_not_arcade_layout_is_an_input_error(tmp_path, capsys):
    (tmp_path / "not-arcade").mkdir()
    assert run_cli(main, ["--arcade-root", str(tmp_path / "not-arcade"), "--out", str(tmp_path / "d")]) == 2
    assert "syntax layout" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_arcade_s_test_split_becomes_the_held_out_test_json(arcade_root, tmp_path):
    assert run_cli(main, ["--arcade-root", str(arcade_root), "--out", str(tmp_path / "without")]) == 0
    assert DatasetPaths(tmp_path / "without").splits() == ("train", "val")
    _write_arcade_split(arcade_root, "test")
    out = DatasetPaths(tmp_path / "d")
    assert run_cli(main, ["--arcade-root", str(arcade_root), "--out", str(out.root)]) == 0
    assert out.splits() == ("train", "val", "test")
    doc = json.loads(out.test_json.read_text())
    assert [img["file_name"] for img in doc["images"]] == ["test/1.png", "test/2.png"]
    assert {SYNTAX_NAMES[a["id"] - 1] for a in doc["annotations"]} == set(EXPECTED)
    assert validate_dataset(out).errors == []


def test_a_test_folder_without_its_annotations_is_refused(arcade_root, tmp_path, capsys):
    (arcade_root / "syntax" / "test" / "images").mkdir(parents=True)
    assert run_cli(main, ["--arcade-root", str(arcade_root), "--out", str(tmp_path / "d")]) == 2
    assert str(arcade_root / "syntax" / "test" / "annotations" / "test.json") in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
