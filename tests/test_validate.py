"""The COCO validator: every malformed case is rejected (exit 2, naming the field); good data passes."""

import json
import shutil

import pytest
from PIL import Image

from common.errors import InputError, run_cli
from data_prep.synthetic import generate_dataset
from data_prep.validate import main, validate_coco, validate_dataset


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("valid") / "d", n_train=4, n_val=4, seed=0)


@pytest.fixture
def dataset(pristine, tmp_path):
    """A fresh copy per test, so each can break it."""
    shutil.copytree(pristine.root, tmp_path / "d")
    return type(pristine)(tmp_path / "d")


def _edit(path, change):
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _first_file(doc, ds):
    return ds.images_dir / doc["images"][0]["file_name"]


def _set(record_of, key, value):
    return lambda doc: record_of(doc).__setitem__(key, value)


def _img(doc):
    return doc["images"][0]


def _ann(doc):
    return doc["annotations"][0]


def _cat(doc):
    return doc["categories"][2]


JSON_CASES = {
    "missing top-level annotations": (lambda d: d.pop("annotations"), "['annotations']"),
    "image without width": (lambda d: _img(d).pop("width"), "['width']"),
    "annotation without iscrowd": (lambda d: _ann(d).pop("iscrowd"), "iscrowd"),
    "annotation without segmentation": (lambda d: _ann(d).pop("segmentation"), "['segmentation']"),
    "duplicate image id": (lambda d: d["images"][1].__setitem__("id", _img(d)["id"]), "field 'id' is duplicated"),
    "duplicate annotation id": (lambda d: d["annotations"][1].__setitem__("id", _ann(d)["id"]),
                                "field 'id' is duplicated"),
    "unknown image": (_set(_ann, "image_id", 999), "field 'image_id' 999"),
    "unknown category": (_set(_ann, "category_id", 99), "field 'category_id' 99"),
    "category renamed": (_set(_cat, "name", "rca"), "category id 3 field 'name'"),
    "non-CASS category id": (_set(_cat, "id", 42), "category id 42"),
    "category missing": (lambda d: d["categories"].pop(), "lacks CASS category id(s) [14]"),
    "polygon with 2 points": (_set(_ann, "segmentation", [[1, 1, 5, 5]]), "has 2 point(s)"),
    "polygon out of bounds": (_set(_ann, "segmentation", [[1, 1, 500, 1, 5, 5]]), "leaves the 224x224 image"),
    "empty segmentation": (_set(_ann, "segmentation", []), "field 'segmentation' is empty"),
    "RLE size differs from image": (lambda d: _ann(d)["segmentation"].__setitem__("size", [100, 100]),
                                    "RLE size [100, 100]"),
    "corrupt RLE counts": (lambda d: _ann(d)["segmentation"].__setitem__("counts", "P13700000"), "corrupt"),
    "bbox far from mask": (lambda d: _ann(d)["bbox"].__setitem__(0, _ann(d)["bbox"][0] + 10), "field 'bbox'"),
    "zero area": (_set(_ann, "area", 0), "field 'area' is 0"),
    "image width differs from file": (_set(_img, "width", 200), "224x224 px but the JSON says width 200"),
}


@pytest.mark.parametrize("case", JSON_CASES)
def test_malformed_json_is_rejected_naming_the_field(case, dataset, capsys):
    change, expected = JSON_CASES[case]
    _edit(dataset.train_json, change)
    assert run_cli(main, [str(dataset.train_json), "--images", str(dataset.images_dir)]) == 2
    err = capsys.readouterr().err
    assert expected in err and str(dataset.train_json) in err


def test_invalid_json_reports_line_and_column(dataset, capsys):
    dataset.train_json.write_text('{"images": [\n  {"id": 1,,}\n]}')
    assert run_cli(main, [str(dataset.train_json)]) == 2
    assert "invalid JSON at line 2 column 12" in capsys.readouterr().err


FILE_CASES = {
    "missing image file": (lambda p: p.unlink(), "does not exist"),
    "corrupt image file": (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\nnot really"), "cannot be read as an image"),
    "truncated image file": (lambda p: p.write_bytes(p.read_bytes()[:200]), "cannot be read as an image"),
    "image size differs": (lambda p: Image.new("L", (100, 100)).save(p), "is 100x100 px"),
}


@pytest.mark.parametrize("case", FILE_CASES)
def test_bad_image_files_are_rejected(case, dataset, capsys):
    damage, expected = FILE_CASES[case]
    doc = json.loads(dataset.train_json.read_text())
    damage(_first_file(doc, dataset))
    assert run_cli(main, [str(dataset.train_json), "--images", str(dataset.images_dir)]) == 2
    err = capsys.readouterr().err
    assert expected in err and f"image id {doc['images'][0]['id']} field 'file_name'" in err


def test_all_errors_are_listed_not_just_the_first(dataset):
    def break_two(doc):
        _ann(doc)["area"] = 0
        doc["annotations"][1].pop("iscrowd")

    _edit(dataset.train_json, break_two)
    with pytest.raises(InputError) as info:
        validate_coco(dataset.train_json, dataset.images_dir).raise_if_errors()
    assert len(info.value.problems) == 2


def test_absent_category_is_a_warning_and_exit_0(dataset, capsys):
    _edit(dataset.train_json, lambda d: d.__setitem__(
        "annotations", [a for a in d["annotations"] if a["category_id"] != 4]))
    assert run_cli(main, [str(dataset.train_json), "--images", str(dataset.images_dir)]) == 0
    assert "warning:" in capsys.readouterr().out


def test_patient_in_train_and_val_is_rejected(dataset):
    val = json.loads(dataset.val_json.read_text())
    _edit(dataset.train_json, lambda d: _img(d).__setitem__("patient_id", val["images"][0]["patient_id"]))
    errors = validate_dataset(dataset).errors
    assert len(errors) == 1 and "patient_id" in errors[0]


@pytest.fixture(scope="module")
def three_way(tmp_path_factory):
    """Train, val and test, one patient each (4 frames)."""
    return generate_dataset(tmp_path_factory.mktemp("three") / "d", n_train=4, n_val=4, n_test=4, seed=0)


@pytest.mark.parametrize("first, second", [("train", "val"), ("train", "test"), ("val", "test")])
def test_a_patient_in_any_two_splits_is_rejected_naming_the_patient_and_both_files(first, second, three_way,
                                                                                     tmp_path):
    shutil.copytree(three_way.root, tmp_path / "d")
    dataset = type(three_way)(tmp_path / "d")
    assert validate_dataset(dataset).errors == []
    patient = json.loads(dataset.annotations(first).read_text())["images"][0]["patient_id"]
    _edit(dataset.annotations(second), _set(_img, "patient_id", patient))
    errors = validate_dataset(dataset).errors
    assert len(errors) == 1
    assert f"patient_id '{patient}'" in errors[0]
    assert f"{dataset.annotations(first)} and {dataset.annotations(second)}" in errors[0]


def test_synthetic_set_passes(dataset, capsys):
    args = [str(dataset.train_json), str(dataset.val_json), "--images", str(dataset.images_dir)]
    assert run_cli(main, args) == 0
    assert "ok:" in capsys.readouterr().out
    assert validate_dataset(dataset).errors == []


def test_a_defect_shared_by_many_annotations_is_reported_once(dataset):
    """One line per defect, naming how many more records share it: not one line per annotation."""
    _edit(dataset.train_json, lambda doc: [ann.pop("iscrowd") for ann in doc["annotations"]])
    count = len(json.loads(dataset.train_json.read_text())["annotations"])
    with pytest.raises(InputError) as info:
        validate_coco(dataset.train_json, dataset.images_dir).raise_if_errors()
    (line,) = info.value.problems
    assert "iscrowd" in line and f"(and {count - 1} more record(s) with the same defect: annotation id" in line
    assert len(str(info.value)) < 600


def test_a_file_name_is_read_only_from_inside_the_images_folder(dataset, tmp_path):
    outside = tmp_path / "elsewhere.png"
    first = json.loads(dataset.train_json.read_text())["images"][0]["file_name"]
    shutil.copy(dataset.images_dir / first, outside)
    (dataset.images_dir / first).unlink()
    (dataset.images_dir / first).symlink_to(outside)
    assert "outside the images folder" in " ".join(validate_coco(dataset.train_json, dataset.images_dir).errors)
    assert validate_coco(dataset.train_json, dataset.images_dir, follow_links=True).errors == []
    for name in ("../elsewhere.png", str(outside), "C:\\angio\\f.png", "sub/../../x.png"):
        _edit(dataset.train_json, _set(lambda d: d["images"][0], "file_name", name))
        errors = validate_coco(dataset.train_json, dataset.images_dir, check_images=False).errors
        assert any("leaves the images folder" in e for e in errors), name
