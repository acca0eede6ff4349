"""The synthetic CASS generator: deterministic, well-formed COCO that sam3 reads, learnable content."""

import json
from collections import Counter, defaultdict

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from scipy import ndimage

from data_prep import cass
from data_prep.synthetic import generate_dataset, main
from data_prep.validate import validate_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("syn") / "d", n_train=24, n_val=8, seed=0)


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_json_and_images(tmp_path):
    a = generate_dataset(tmp_path / "a", 6, 2, seed=3)
    b = generate_dataset(tmp_path / "b", 6, 2, seed=3)
    c = generate_dataset(tmp_path / "c", 6, 2, seed=4)
    assert _files(a.root) == _files(b.root)
    assert a.train_json.read_bytes() != c.train_json.read_bytes()


def test_every_image_has_5_to_14_categories_one_instance_each(dataset):
    for split_json in (dataset.train_json, dataset.val_json):
        doc = json.loads(split_json.read_text())
        per_image = defaultdict(list)
        for ann in doc["annotations"]:
            per_image[ann["image_id"]].append(ann["category_id"])
        for img in doc["images"]:
            cats = per_image[img["id"]]
            assert 5 <= len(set(cats)) <= 14
            assert len(cats) == len(set(cats))


def test_masks_are_non_empty_and_lie_on_dark_vessel_pixels(dataset):
    coco = COCO(str(dataset.train_json))
    for img in coco.dataset["images"]:
        pixels = np.array(Image.open(dataset.images_dir / img["file_name"]))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        masks = [coco.annToMask(a).astype(bool) for a in anns]
        assert all(m.sum() > 0 and m.sum() == a["area"] for m, a in zip(masks, anns))
        vessels = np.logical_or.reduce(masks)
        background = ~ndimage.binary_dilation(vessels, iterations=4)
        median = np.median(pixels[background])
        assert (pixels[vessels] < median).mean() > 0.99


def test_bbox_and_area_agree_with_the_rle(dataset):
    doc = json.loads(dataset.train_json.read_text())
    for ann in doc["annotations"]:
        rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
        assert ann["bbox"] == pytest.approx(list(mask_utils.toBbox(rle)))
        assert ann["iscrowd"] == 0


def test_patients_have_several_frames_and_splits_share_none(dataset):
    patients = {}
    for split_json in (dataset.train_json, dataset.val_json):
        doc = json.loads(split_json.read_text())
        patients[split_json.stem] = Counter(img["patient_id"] for img in doc["images"])
    assert not set(patients["train"]) & set(patients["val"])
    assert max(patients["train"].values()) >= 2


def test_the_validator_accepts_it(dataset):
    report = validate_dataset(dataset)
    assert report.errors == []


def test_sam3_coco_loader_yields_the_14_prompts_per_image(dataset):
    from sam3.train.data.coco_json_loaders import COCO_FROM_JSON

    loader = COCO_FROM_JSON(str(dataset.val_json))
    assert len(loader.getDatapointIds()) == 8
    queries, annotations = loader.loadQueriesAndAnnotationsFromDatapoint(0)
    assert [q["query_text"] for q in queries] == list(cass.PROMPTS)
    assert sum(len(q["object_ids_output"]) for q in queries) == len(annotations) >= 5
    assert (dataset.images_dir / loader.loadImagesFromDatapoint(0)[0]["file_name"]).is_file()


def test_each_category_present_in_30_to_90_percent_of_images(tmp_path):
    paths = generate_dataset(tmp_path / "d", n_train=160, n_val=1, seed=1)
    doc = json.loads(paths.train_json.read_text())
    present = Counter(a["category_id"] for a in doc["annotations"])
    rates = {cass.BY_ID[c].short_name: present[c] / len(doc["images"]) for c in cass.BY_ID}
    assert all(0.3 <= r <= 0.9 for r in rates.values()), rates


def test_cli_writes_the_layout(tmp_path):
    assert main(["--out", str(tmp_path / "d"), "--train", "2", "--val", "1", "--size", "96"]) == 0
    img = Image.open(next((tmp_path / "d" / "images").glob("*.png")))
    assert img.size == (96, 96)
    assert (tmp_path / "d" / "annotations" / "val.json").is_file()
    assert not (tmp_path / "d" / "annotations" / "test.json").exists()  # no test split unless asked


def test_a_test_split_has_its_own_patients_and_leaves_train_and_val_byte_identical(tmp_path):
    two = generate_dataset(tmp_path / "two", 6, 2, seed=3)
    three = generate_dataset(tmp_path / "three", 6, 2, seed=3, n_test=5)
    assert (two.splits(), three.splits()) == (("train", "val"), ("train", "val", "test"))
    assert two.train_json.read_bytes() == three.train_json.read_bytes()
    assert two.val_json.read_bytes() == three.val_json.read_bytes()
    test = json.loads(three.test_json.read_text())
    assert len(test["images"]) == 5 and {img["patient_id"] for img in test["images"]} == {"test0000", "test0001"}
    assert validate_dataset(three).errors == []


def test_cli_writes_a_test_split_when_asked(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "d"), "--train", "1", "--val", "1", "--test", "1", "--size", "64"]) == 0
    assert str(tmp_path / "d" / "annotations" / "test.json") in capsys.readouterr().out
    assert (tmp_path / "d" / "annotations" / "test.json").is_file()


# --- the Phase 1 (domain adaptation) variant: binary vessel segmentation --------------------------------------

@pytest.fixture(scope="module")
def vessel_set(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("syn") / "v", n_train=40, n_val=8, seed=100, vessel=True)


def test_a_vessel_set_has_one_category_and_one_instance_per_tree_in_view(vessel_set):
    doc = json.loads(vessel_set.train_json.read_text())
    assert doc["categories"] == [cass.VESSEL_CATEGORY]
    per_image = Counter(a["image_id"] for a in doc["annotations"])
    assert set(per_image.values()) <= {1, 2}  # right and/or left tree
    assert {a["category_id"] for a in doc["annotations"]} == {cass.VESSEL_CATEGORY["id"]}


def test_a_vessel_instance_is_the_union_of_its_trees_cass_segments(tmp_path, vessel_set):
    """Same seed, same frames: each CASS segment lies inside the vessel instance of its tree, and the vessel
    pixels are exactly the segments' pixels (no vessel is labelled that CASS does not draw)."""
    cass_set = generate_dataset(tmp_path / "c", n_train=40, n_val=8, seed=100)
    vessel = COCO(str(vessel_set.train_json))
    segments = COCO(str(cass_set.train_json))
    checked = 0
    for image_id in segments.getImgIds():
        seg_union = [segments.annToMask(a) for a in segments.loadAnns(segments.getAnnIds(imgIds=image_id))]
        vessel_union = [vessel.annToMask(a) for a in vessel.loadAnns(vessel.getAnnIds(imgIds=image_id))]
        if not seg_union or not vessel_union:  # a pre-contrast frame of the vessel set draws nothing
            continue
        np.testing.assert_array_equal(np.max(seg_union, axis=0), np.max(vessel_union, axis=0))
        checked += 1
    assert checked >= 20


def test_a_vessel_set_holds_frames_before_the_contrast_arrives(vessel_set):
    """About PRE_CONTRAST of the frames show no vessel (only the catheter): Phase 1 learns "no vessel" too."""
    doc = json.loads(vessel_set.train_json.read_text())
    empty = {i["id"] for i in doc["images"]} - {a["image_id"] for a in doc["annotations"]}
    assert 0.05 <= len(empty) / len(doc["images"]) <= 0.4
    for image in doc["images"]:
        if image["id"] in empty:  # the frame is bright: no dark vessel was drawn
            pixels = np.asarray(Image.open(vessel_set.images_dir / image["file_name"]), dtype=float)
            assert (pixels < 100).mean() < 0.01


def test_the_validator_accepts_a_vessel_set_only_as_one(vessel_set, dataset):
    assert validate_dataset(vessel_set, vessel=True).ok
    as_cass = validate_dataset(vessel_set, check_images=False)
    assert any("lacks CASS category id(s)" in e for e in as_cass.errors)
    as_vessel = validate_dataset(dataset, check_images=False, vessel=True)
    assert any("is not a Phase 1 vessel category" in e and "coronary artery" in e for e in as_vessel.errors)


def test_the_vessel_variant_leaves_the_cass_set_unchanged(tmp_path, dataset):
    again = generate_dataset(tmp_path / "d", n_train=24, n_val=8, seed=0, vessel=False)
    assert _files(again.root) == _files(dataset.root)


def test_the_clis_write_and_check_a_vessel_set(tmp_path, capsys):
    from data_prep import validate

    out = tmp_path / "v"
    assert main(["--out", str(out), "--train", "4", "--val", "2", "--size", "96", "--seed", "100", "--vessel"]) == 0
    assert json.loads((out / "annotations" / "train.json").read_text())["categories"] == [cass.VESSEL_CATEGORY]
    files = [str(out / "annotations" / f"{split}.json") for split in ("train", "val")]
    assert validate.main([*files, "--images", str(out / "images"), "--vessel"]) == 0
    with pytest.raises(Exception, match="validate it with --vessel"):  # checked as CASS: says which flag
        validate.main([*files, "--images", str(out / "images")])
