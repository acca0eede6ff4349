"""The CASS category table is the single source of truth: 14 unique ids, short names and prompts."""

import pytest

from data_prep import cass


def test_fourteen_categories_with_ids_1_to_14():
    assert cass.NUM_CATEGORIES == 14
    assert [c.id for c in cass.CASS_CATEGORIES] == list(range(1, 15))


def test_short_names_and_prompts_are_unique():
    assert len(set(cass.BY_SHORT_NAME)) == 14
    assert len(set(cass.PROMPTS)) == 14


def test_coco_name_is_the_prompt_and_short_name_is_kept():
    for entry, c in zip(cass.coco_categories(), cass.CASS_CATEGORIES):
        assert entry["id"] == c.id and entry["name"] == c.prompt and entry["short_name"] == c.short_name


def test_lookup_by_id_short_name_or_prompt():
    assert cass.lookup(4).short_name == "pda"
    assert cass.lookup("pda").id == 4
    assert cass.lookup("posterior descending artery").id == 4
    with pytest.raises(KeyError, match="valid short names"):
        cass.lookup("lad")
