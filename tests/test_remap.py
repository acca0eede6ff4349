"""``python -m data_prep.remap``: an existing COCO file's categories mapped onto the 14 CASS categories.

The fixture is what the group has: the synthetic dataset's train file with its categories named as the Stage 2
notes name them (``proximal_rca``, ...), or spelled otherwise (``Proximal RCA``, ``proximal-rca``), or as
ARCADE's SYNTAX numbers. Every refusal exits 2 and leaves the folder as it was.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from common.errors import run_cli
from data_prep import cass, remap, validate

NOTES_NAMES = ["proximal_rca", "mid_rca", "distal_rca", "pda", "proximal_lad", "mid_lad", "distal_lad", "distal_lcx",
               "obtuse_marginal_1", "obtuse_marginal_2", "obtuse_marginal_3", "left_main", "ramus", "proximal_lcx"]
CASS_TO_SYNTAX = {short: number for number, short in cass.SYNTAX_TO_CASS.items()}


def source_coco(dataset, path: Path, name_of: Callable[[cass.CassCategory], str | None],
                id_of: Callable[[cass.CassCategory], int] = lambda c: c.id,
                extra: dict[int, str] | None = None) -> Path:
    """The synthetic train file with category ``c`` named ``name_of(c)`` and numbered ``id_of(c)``; a CASS
    category whose name is None is left out with its annotations. ``extra`` adds categories (id -> name) with
    two annotations each, copies of the first two."""
    doc = json.loads(dataset.train_json.read_text())
    kept = [c for c in cass.CASS_CATEGORIES if name_of(c) is not None]
    doc["categories"] = [{"id": id_of(c), "name": name_of(c), "supercategory": "artery"} for c in kept]
    doc["annotations"] = [{**a, "category_id": id_of(cass.BY_ID[a["category_id"]]), "source_note": "medis"}
                          for a in doc["annotations"] if cass.BY_ID[a["category_id"]] in kept]
    next_id = max(a["id"] for a in doc["annotations"]) + 1
    for cid, name in (extra or {}).items():
        doc["categories"].append({"id": cid, "name": name})
        for a in doc["annotations"][:2]:
            doc["annotations"].append({**a, "id": next_id, "category_id": cid})
            next_id += 1
    doc["licenses"] = [{"id": 1, "name": "internal"}]
    path.write_text(json.dumps(doc))
    return path


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = run_cli(remap.main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def listing(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))}


def short_names_of(doc: dict) -> list[str]:
    return [cass.BY_ID[a["category_id"]].short_name for a in doc["annotations"]]


# --- what it maps ---------------------------------------------------------------------------------------------


def test_the_groups_coco_is_refused_by_the_validator_naming_remap_and_validates_after_remap(
        synthetic_dataset, tmp_path, capsys):
    group = source_coco(synthetic_dataset, tmp_path / "group.json", lambda c: c.short_name)
    images = synthetic_dataset.images_dir
    assert run_cli(validate.main, [str(group), "--images", str(images)]) == 2
    assert "python -m data_prep.remap" in capsys.readouterr().err

    code, out, err = run([group, tmp_path / "cass.json"], capsys)

    assert code == 0, err
    assert run_cli(validate.main, [str(tmp_path / "cass.json"), "--images", str(images)]) == 0
    original = json.loads(synthetic_dataset.train_json.read_text())
    remapped = json.loads((tmp_path / "cass.json").read_text())
    assert remapped["categories"] == cass.coco_categories()
    assert [a["category_id"] for a in remapped["annotations"]] == [a["category_id"] for a in original["annotations"]]
    assert "proximal_rca (id 1)" in out and "kept 61 annotation(s)" in out


@pytest.mark.parametrize("name", ["proximal_rca", "Proximal RCA", "proximal-rca", "PROXIMAL_RCA", " proximal  rca ",
                                  "proximal right coronary artery", "Proximal_Right-Coronary artery", "1"])
def test_a_name_matches_by_prompt_or_short_name_or_syntax_number_ignoring_case_spaces_underscores_hyphens(name):
    assert remap.match_name(name) is cass.BY_SHORT_NAME["proximal_rca"]


@pytest.mark.parametrize("name", ["prox rca", "proximalrca", "catheter", "9", "15", "", "rca"])
def test_a_name_that_is_none_of_those_matches_nothing(name):
    assert remap.match_name(name) is None


def test_variant_spellings_and_other_ids_are_rewritten_to_cass_ids(synthetic_dataset, tmp_path, capsys):
    spell = {"proximal_rca": "Proximal RCA", "mid_rca": "mid-rca", "pda": "PDA", "left_main": "Left Main",
             "proximal_lad": "proximal left anterior descending artery"}
    source = source_coco(synthetic_dataset, tmp_path / "in.json", lambda c: spell.get(c.short_name, c.short_name),
                         id_of=lambda c: 100 - c.id)  # ids 86-99, in reverse

    code, _, err = run([source, tmp_path / "out.json"], capsys)

    assert code == 0, err
    original = json.loads(synthetic_dataset.train_json.read_text())
    assert short_names_of(json.loads((tmp_path / "out.json").read_text())) == short_names_of(original)


def test_syntax_numbers_map_as_the_arcade_importer_maps_them(synthetic_dataset, tmp_path, capsys):
    source = source_coco(synthetic_dataset, tmp_path / "arcade.json", lambda c: CASS_TO_SYNTAX.get(c.short_name),
                         id_of=lambda c: c.id + 20)

    code, out, err = run([source, tmp_path / "out.json"], capsys)

    assert code == 0, err
    remapped = json.loads((tmp_path / "out.json").read_text())
    by_name = {c["id"]: c["name"] for c in json.loads(source.read_text())["categories"]}
    source_names = [by_name[a["category_id"]] for a in json.loads(source.read_text())["annotations"]]
    assert short_names_of(remapped) == [cass.SYNTAX_TO_CASS[n] for n in source_names]
    assert "'5' (id 32)" not in out and "5 (id 32)" in out  # SYNTAX 5 is the left main (CASS id 12), not CASS 5
    assert remapped["annotations"][0]["category_id"] == 1
    assert "no source category for: obtuse_marginal_3" in out  # SYNTAX has no third obtuse marginal


def test_images_annotation_ids_and_other_fields_are_kept_and_info_records_the_mapping(
        synthetic_dataset, tmp_path, capsys):
    source = source_coco(synthetic_dataset, tmp_path / "in.json", lambda c: c.short_name, id_of=lambda c: c.id + 40)

    assert run([source, tmp_path / "out.json"], capsys)[0] == 0

    before, after = json.loads(source.read_text()), json.loads((tmp_path / "out.json").read_text())
    assert after["images"] == before["images"] and after["licenses"] == before["licenses"]
    assert [{**a, "category_id": 0} for a in after["annotations"]] == \
        [{**a, "category_id": 0} for a in before["annotations"]]
    assert after["info"]["description"] == before["info"]["description"]
    assert after["info"]["remapped_by"] == "python -m data_prep.remap"
    assert after["info"]["remapped_from"] == "in.json"
    assert {"source_id": 41, "source_name": "proximal_rca", "cass_id": 1} in after["info"]["remapped_categories"]


# --- --map FILE.yaml ------------------------------------------------------------------------------------------


def test_a_map_file_names_source_categories_by_name_or_id_and_cass_ones_by_short_name_prompt_or_id(
        synthetic_dataset, tmp_path, capsys):
    own = {"proximal_rca": "Prox RCA", "mid_rca": "RCA 2", "pda": "PD", "ramus": "RI"}
    source = source_coco(synthetic_dataset, tmp_path / "in.json", lambda c: own.get(c.short_name, c.short_name))
    mapping = tmp_path / "map.yaml"
    mapping.write_text("Prox-RCA: proximal_rca\n"              # name, matched ignoring case and hyphens
                       "2: mid right coronary artery\n"        # id of "RCA 2"; a CASS prompt
                       "PD: 4\n"                               # a CASS id
                       "RI: Ramus\n")

    code, _, err = run([source, tmp_path / "out.json", "--map", mapping], capsys)

    assert code == 0, err
    original = json.loads(synthetic_dataset.train_json.read_text())
    assert short_names_of(json.loads((tmp_path / "out.json").read_text())) == short_names_of(original)


def test_the_map_decides_over_a_name_match(synthetic_dataset, tmp_path, capsys):
    # SYNTAX 3 is the distal RCA; this site used "3" for the third obtuse marginal
    source = source_coco(synthetic_dataset, tmp_path / "in.json",
                         lambda c: "3" if c.short_name == "obtuse_marginal_3" else c.short_name)
    assert run([source, tmp_path / "out.json"], capsys)[0] == 2  # "3" and distal_rca onto one
    (tmp_path / "map.yaml").write_text('"3": obtuse_marginal_3\n')

    code, out, err = run([source, tmp_path / "out.json", "--map", tmp_path / "map.yaml"], capsys)

    assert code == 0, err
    assert "3 (id 11)" in out and "obtuse_marginal_3" in out.split("3 (id 11)")[1].splitlines()[0]


@pytest.mark.parametrize("text, fragments", [
    ("Prox RCA: [proximal_rca\n", ["not valid YAML"]),
    ("- proximal_rca\n- mid_rca\n", ["must be a mapping"]),
    ("", ["must be a mapping"]),
    ("catheter: proximal_rca\n", ["key 'catheter' names no category of IN"]),
    ("proximal_rca: proximal_rcx\n", ["'proximal_rcx' is not a CASS category", "proximal_lcx"]),
    ("proximal_rca: 15\n", ["15 is not a CASS category", "id 1-14"]),
    ("proximal_rca: '5'\n", ["'5' is not a CASS category"]),  # a SYNTAX number names a source, never a target
    ("proximal_rca: null\n", ["None is not a CASS category"]),
    ("1: proximal_rca\nProximal RCA: proximal_rca\n", ["category id 1 is named by keys", "keep one"]),
    ("a: x\na: y\n", ["given twice"]),
])
def test_a_bad_map_file_is_refused_naming_it_and_the_entry(synthetic_dataset, tmp_path, capsys, text, fragments):
    source = source_coco(synthetic_dataset, tmp_path / "in.json", lambda c: c.short_name)
    (tmp_path / "map.yaml").write_text(text)
    before = listing(tmp_path)

    code, _, err = run([source, tmp_path / "out.json", "--map", tmp_path / "map.yaml"], capsys)

    assert code == 2 and str(tmp_path / "map.yaml") in err
    assert all(f in err for f in fragments), err
    assert listing(tmp_path) == before


# --- refusals -------------------------------------------------------------------------------------------------


def test_an_unmapped_category_is_refused_listing_it_with_its_annotation_count(synthetic_dataset, tmp_path, capsys):
    source = source_coco(synthetic_dataset, tmp_path / "in.json", lambda c: c.short_name, extra={99: "catheter"})
    before = listing(tmp_path)

    code, _, err = run([source, tmp_path / "out.json"], capsys)

    assert code == 2
    assert "category id 99 'catheter' (2 annotation(s))" in err and "--drop-unmapped" in err and "--map" in err
    assert listing(tmp_path) == before


def test_drop_unmapped_drops_their_annotations_and_says_how_many(synthetic_dataset, tmp_path, capsys):
    source = source_coco(synthetic_dataset, tmp_path / "in.json", lambda c: c.short_name,
                         extra={99: "catheter", 98: "stenosis"})

    code, out, err = run([source, tmp_path / "out.json", "--drop-unmapped"], capsys)

    assert code == 0, err
    assert "kept 61 annotation(s); dropped 4 of unmapped categories" in out
    assert "catheter (id 99)" in out and "dropped" in out.split("catheter (id 99)")[1].splitlines()[0]
    remapped = json.loads((tmp_path / "out.json").read_text())
    assert len(remapped["annotations"]) == 61
    assert run_cli(validate.main, [str(tmp_path / "out.json"), "--images", str(synthetic_dataset.images_dir)]) == 0


def test_two_source_categories_onto_one_cass_category_are_refused_naming_both(synthetic_dataset, tmp_path, capsys):
    source = source_coco(synthetic_dataset, tmp_path / "in.json", lambda c: c.short_name, extra={77: "Proximal RCA"})
    before = listing(tmp_path)

    code, _, err = run([source, tmp_path / "out.json", "--drop-unmapped"], capsys)

    assert code == 2
    assert "id 1 'proximal_rca' and id 77 'Proximal RCA' map onto CASS proximal_rca" in err
    assert listing(tmp_path) == before


def test_a_map_sending_a_second_category_onto_a_matched_one_is_refused(synthetic_dataset, tmp_path, capsys):
    source = source_coco(synthetic_dataset, tmp_path / "in.json", lambda c: c.short_name, extra={77: "RCA prox"})
    (tmp_path / "map.yaml").write_text("RCA prox: 1\n")

    code, _, err = run([source, tmp_path / "out.json", "--map", tmp_path / "map.yaml"], capsys)

    assert code == 2 and "id 1 'proximal_rca' and id 77 'RCA prox'" in err
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("content, fragment", [
    (b"{\"images\": [", "invalid JSON at line 1"),
    (b"\xff\xfe binary", "not UTF-8"),
    (b"[]", "not a COCO file"),
    (b'{"images": [], "annotations": [], "categories": [{"name": "pda"}]}', "categories[0] needs an int 'id'"),
    (b'{"images": [], "annotations": [{"id": 5, "category_id": 3}], "categories": [{"id": 1, "name": "pda"}]}',
     "annotation id 5 field 'category_id' 3 names no category"),
])
def test_a_broken_input_file_is_refused_naming_it(tmp_path, capsys, content, fragment):
    (tmp_path / "in.json").write_bytes(content)

    code, _, err = run([tmp_path / "in.json", tmp_path / "out.json"], capsys)

    assert code == 2 and f"IN {tmp_path / 'in.json'}" in err and fragment in err, err
    assert not (tmp_path / "out.json").exists()


# --- where it writes ------------------------------------------------------------------------------------------


def test_out_is_in_is_refused_even_with_overwrite(synthetic_dataset, tmp_path, capsys):
    source = source_coco(synthetic_dataset, tmp_path / "in.json", lambda c: c.short_name)
    content = source.read_bytes()

    code, _, err = run([source, source, "--overwrite"], capsys)

    assert code == 2 and "OUT" in err and "is the same path as IN" in err
    assert source.read_bytes() == content


def test_out_over_the_map_file_is_refused(synthetic_dataset, tmp_path, capsys):
    source = source_coco(synthetic_dataset, tmp_path / "in.json", lambda c: c.short_name)
    (tmp_path / "map.yaml").write_text("pda: pda\n")

    code, _, err = run([source, tmp_path / "map.yaml", "--map", tmp_path / "map.yaml", "--overwrite"], capsys)

    assert code == 2 and "is the same path as --map" in err
    assert (tmp_path / "map.yaml").read_text() == "pda: pda\n"


def test_overwrite_replaces_only_an_earlier_output_of_remap(synthetic_dataset, tmp_path, capsys):
    source = source_coco(synthetic_dataset, tmp_path / "in.json", lambda c: c.short_name)
    out = tmp_path / "out.json"
    assert run([source, out], capsys)[0] == 0

    code, _, err = run([source, out], capsys)
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert run([source, out, "--overwrite"], capsys)[0] == 0

    other = tmp_path / "their.json"
    other.write_bytes(synthetic_dataset.train_json.read_bytes())  # a valid CASS file, but not remap's
    code, _, err = run([source, other, "--overwrite"], capsys)
    assert code == 2 and "not an output of this project" in err
    assert other.read_bytes() == synthetic_dataset.train_json.read_bytes()


def test_a_failed_write_leaves_no_out_and_no_staging_file(synthetic_dataset, tmp_path, capsys, monkeypatch):
    source = source_coco(synthetic_dataset, tmp_path / "in.json", lambda c: c.short_name)
    before = listing(tmp_path)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", disk_full)
    code, _, err = run([source, tmp_path / "sub" / "out.json"], capsys)

    assert code == 2 and "No space left on device" in err and "nothing written" in err
    assert listing(tmp_path) == before  # no OUT, no hidden staging file, no "sub" folder
