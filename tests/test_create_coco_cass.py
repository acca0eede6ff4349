"""The Medis-style converter: label maps / per-segment masks -> COCO, split by patient, all or nothing."""

import json

import numpy as np
import pytest
from PIL import Image

from common.errors import run_cli
from data_prep import cass
from data_prep.create_coco_cass import main

PATIENTS = ("P1", "P2", "P3")
SIZE = 40


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


@pytest.fixture
def export(tmp_path):
    """3 patients x 2 frames. Label maps: proximal RCA (one bar), mid LAD (two blobs), a 2-px speck
    of distal LAD. Masks: OM1 on every frame, also proximal RCA extended on P1_f0 (union)."""
    root = tmp_path / "export"
    for p in PATIENTS:
        for f in range(2):
            stem = f"{p}_f{f}"
            _png(root / "images" / f"{stem}.png", np.full((SIZE, SIZE), 180))
            labels = np.zeros((SIZE, SIZE))
            labels[2:6, 2:30] = cass.lookup("proximal_rca").id
            labels[10:14, 10:14] = labels[20:24, 20:24] = cass.lookup("mid_lad").id
            labels[35, 35:37] = cass.lookup("distal_lad").id
            _png(root / "labels" / f"{stem}.png", labels)
            om1 = np.zeros((SIZE, SIZE))
            om1[30:34, 2:20] = 255
            _png(root / "masks" / f"{stem}_obtuse_marginal_1.png", om1)
    extra = np.zeros((SIZE, SIZE))
    extra[6:10, 2:30] = 1
    _png(root / "masks" / "P1_f0_proximal_rca.png", extra)
    return root


def _run(export, out, *extra):
    return run_cli(main, ["--images", str(export / "images"), "--label-maps", str(export / "labels"),
                          "--masks", str(export / "masks"), "--out", str(out), "--val-fraction", "0.3",
                          *extra])


def _load(out, splits=("train", "val")):
    return {s: json.loads((out / "annotations" / f"{s}.json").read_text()) for s in splits}


def _patients(docs):
    return {s: {img["patient_id"] for img in d["images"]} for s, d in docs.items()}


def test_no_patient_in_both_splits(export, tmp_path):
    assert _run(export, tmp_path / "d") == 0
    docs = _load(tmp_path / "d")
    patients = {s: {img["patient_id"] for img in d["images"]} for s, d in docs.items()}
    assert patients["train"].isdisjoint(patients["val"])
    assert patients["train"] | patients["val"] == set(PATIENTS) and len(patients["val"]) == 1
    assert sum(len(d["images"]) for d in docs.values()) == 6
    assert all((tmp_path / "d" / "images" / img["file_name"]).is_file() for d in docs.values() for img in d["images"])
    assert not (tmp_path / "d" / "annotations" / "test.json").exists()  # --test-fraction defaults to 0


def test_a_test_fraction_holds_out_a_third_split_of_other_patients(export, tmp_path):
    assert _run(export, tmp_path / "d", "--test-fraction", "0.3") == 0
    patients = _patients(_load(tmp_path / "d", ("train", "val", "test")))
    assert [len(patients[s]) for s in ("train", "val", "test")] == [1, 1, 1]
    assert patients["train"] | patients["val"] | patients["test"] == set(PATIENTS)


def test_adding_a_test_split_keeps_val_and_takes_its_patients_from_train(export, tmp_path):
    assert _run(export, tmp_path / "two", "--seed", "1") == 0
    assert _run(export, tmp_path / "three", "--seed", "1", "--test-fraction", "0.3") == 0
    assert _run(export, tmp_path / "again", "--seed", "1", "--test-fraction", "0.3") == 0
    two, three = _patients(_load(tmp_path / "two")), _patients(_load(tmp_path / "three", ("train", "val", "test")))
    assert three["val"] == two["val"] and three["test"] < two["train"]
    assert _load(tmp_path / "again", ("train", "val", "test")) == _load(tmp_path / "three", ("train", "val", "test"))


@pytest.mark.parametrize("fractions, expected", [
    (("--test-fraction", "1"), "--test-fraction must be in [0, 1), got 1.0"),
    (("--test-fraction", "-0.1"), "--test-fraction must be in [0, 1), got -0.1"),
    (("--val-fraction", "0.5", "--test-fraction", "0.5"), "add up to 1 and would leave train no patient"),
    # 3 patients: val round(1.5) = 2, test 1: the fractions add up to 0.9 but train would get none
    (("--val-fraction", "0.5", "--test-fraction", "0.4"), "give val 2 and test 1"),
])
def test_fractions_that_leave_train_without_a_patient_are_refused_and_nothing_is_written(
        fractions, expected, export, tmp_path, capsys):
    assert _run(export, tmp_path / "out" / "d", *fractions) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_one_instance_per_component_small_ones_dropped_sources_merged(export, tmp_path):
    assert _run(export, tmp_path / "d") == 0
    anns = [a for d in _load(tmp_path / "d").values() for a in d["annotations"]]
    per_cat = {c: [a for a in anns if a["category_id"] == cass.lookup(c).id]
               for c in ("proximal_rca", "mid_lad", "distal_lad", "obtuse_marginal_1")}
    assert len(per_cat["mid_lad"]) == 2 * 6
    assert per_cat["distal_lad"] == []  # 2 px < --min-area 10
    assert len(per_cat["obtuse_marginal_1"]) == 6
    assert sorted(a["area"] for a in per_cat["proximal_rca"]) == [4 * 28] * 5 + [8 * 28]


def test_same_seed_same_split_other_seed_can_differ(export, tmp_path):
    val_patients = set()
    for seed in range(4):
        assert _run(export, tmp_path / f"d{seed}", "--seed", str(seed)) == 0
        val_patients.add(_load(tmp_path / f"d{seed}")["val"]["images"][0]["patient_id"])
    assert _run(export, tmp_path / "again", "--seed", "0") == 0
    assert _load(tmp_path / "again") == _load(tmp_path / "d0")
    assert len(val_patients) > 1


def _bad_label(root):
    labels = np.array(Image.open(root / "labels" / "P2_f1.png"))
    labels[0, 0] = 20
    _png(root / "labels" / "P2_f1.png", labels)


INVALID = {
    "label value not a CASS id": (_bad_label, "label values [20]"),
    "label map of another size": (lambda r: _png(r / "labels" / "P3_f0.png", np.zeros((10, 10))), "expected a single"),
    "mask file with unknown short name": (lambda r: _png(r / "masks" / "P1_f0_lad.png", np.zeros((SIZE, SIZE))),
                                          "P1_f0_lad.png"),
    "file name without patient id": (lambda r: _png(r / "images" / "nopatient.png", np.zeros((SIZE, SIZE))),
                                     "finds no patient id"),
}


@pytest.mark.parametrize("case", INVALID)
def test_invalid_input_leaves_no_output(case, export, tmp_path, capsys):
    damage, expected = INVALID[case]
    damage(export)
    out = tmp_path / "out" / "d"
    assert _run(export, out) == 2
    assert expected in capsys.readouterr().err
    assert not out.exists()
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_existing_output_is_refused(export, tmp_path, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    assert _run(export, tmp_path / "d") == 2
    assert "already exists" in capsys.readouterr().err


def test_overwrite_replaces_only_a_dataset_this_project_wrote(export, tmp_path, capsys):
    """--overwrite over someone else's folder is refused; over this command's own output it rebuilds it."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    assert _run(export, tmp_path / "d", "--overwrite") == 2
    assert "is not an output of this project" in capsys.readouterr().err
    assert (tmp_path / "d" / "notes.txt").read_text() == "mine"
    assert _run(export, tmp_path / "ours") == 0
    first = _load(tmp_path / "ours")
    assert _run(export, tmp_path / "ours", "--overwrite") == 0
    assert _load(tmp_path / "ours") == first


def test_label_maps_inside_the_output_are_never_deleted(export, tmp_path, capsys):
    """The issue's case: --out D --overwrite with the label maps inside D deleted the label maps."""
    before = sorted(p.name for p in (export / "labels").iterdir())
    assert _run(export, export, "--overwrite") == 2
    err = capsys.readouterr().err
    assert "would overlap an input" in err and "contains --label-maps" in err
    assert sorted(p.name for p in (export / "labels").iterdir()) == before


def test_a_frame_linked_from_outside_the_input_folder_is_refused_unless_links_are_allowed(export, tmp_path, capsys):
    frame = sorted((export / "images").iterdir())[0]
    elsewhere = tmp_path / "elsewhere.png"
    frame.rename(elsewhere)
    frame.symlink_to(elsewhere)
    assert _run(export, tmp_path / "d") == 2
    assert f"a link to {elsewhere}" in capsys.readouterr().err and not (tmp_path / "d").exists()
    assert _run(export, tmp_path / "d", "--follow-links") == 0
