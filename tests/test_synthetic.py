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
