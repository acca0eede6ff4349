"""The 14 CASS coronary artery segments: the single source of truth for ids, names and text prompts.

SAM3's COCO loader uses each category's ``name`` as the text query, so the COCO files this project
writes carry the *prompt* (a noun phrase such as "proximal right coronary artery") in ``name`` and the
short identifier (``proximal_rca``) in ``short_name``. Ids 1-14 follow the Stage 2 seed's order.
Nothing else in the project spells these out: import from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Tree = Literal["right", "left"]


@dataclass(frozen=True)
class CassCategory:
    """One CASS segment: COCO id, short name, SAM3 text prompt and the coronary tree it belongs to."""

    id: int
    short_name: str
    prompt: str
    tree: Tree

    def coco(self) -> dict:
        """The COCO ``categories`` entry: ``name`` is the prompt SAM3 sees."""
        return {
            "id": self.id,
            "name": self.prompt,
            "short_name": self.short_name,
            "supercategory": f"{self.tree}_coronary_tree",
        }


CASS_CATEGORIES: tuple[CassCategory, ...] = (
    CassCategory(1, "proximal_rca", "proximal right coronary artery", "right"),
    CassCategory(2, "mid_rca", "mid right coronary artery", "right"),
    CassCategory(3, "distal_rca", "distal right coronary artery", "right"),
    CassCategory(4, "pda", "posterior descending artery", "right"),
    CassCategory(5, "proximal_lad", "proximal left anterior descending artery", "left"),
    CassCategory(6, "mid_lad", "mid left anterior descending artery", "left"),
    CassCategory(7, "distal_lad", "distal left anterior descending artery", "left"),
    CassCategory(8, "distal_lcx", "distal left circumflex artery", "left"),
    CassCategory(9, "obtuse_marginal_1", "first obtuse marginal artery", "left"),
    CassCategory(10, "obtuse_marginal_2", "second obtuse marginal artery", "left"),
    CassCategory(11, "obtuse_marginal_3", "third obtuse marginal artery", "left"),
    CassCategory(12, "left_main", "left main coronary artery", "left"),
    CassCategory(13, "ramus", "ramus intermedius artery", "left"),
    CassCategory(14, "proximal_lcx", "proximal left circumflex artery", "left"),
)

#: The one category of a Phase 1 (domain adaptation) set: every coronary vessel as binary segmentation, one
#: instance per tree in view, as the Stage 2 notes' Phase 1 trained. Not a CASS category: only the demo's
#: synthetic Phase 1 (``python -m data_prep.synthetic --vessel``) and :mod:`sweeps.demo_phase1` use it.
VESSEL_CATEGORY: dict = {"id": 1, "name": "coronary artery", "short_name": "vessel", "supercategory": "coronary_tree"}

NUM_CATEGORIES = len(CASS_CATEGORIES)
BY_ID: dict[int, CassCategory] = {c.id: c for c in CASS_CATEGORIES}
BY_SHORT_NAME: dict[str, CassCategory] = {c.short_name: c for c in CASS_CATEGORIES}
BY_PROMPT: dict[str, CassCategory] = {c.prompt: c for c in CASS_CATEGORIES}
PROMPTS: tuple[str, ...] = tuple(c.prompt for c in CASS_CATEGORIES)

#: SYNTAX segment number (as ARCADE names its classes) -> CASS short name; SYNTAX segments not listed have no
#: CASS equivalent (and CASS ``obtuse_marginal_3`` has no SYNTAX source).
SYNTAX_TO_CASS: dict[str, str] = {
    "1": "proximal_rca",
    "2": "mid_rca",
    "3": "distal_rca",
    "4": "pda",
    "5": "left_main",
    "6": "proximal_lad",
    "7": "mid_lad",
    "8": "distal_lad",
    "11": "proximal_lcx",
    "13": "distal_lcx",
    "12": "ramus",
    "12a": "obtuse_marginal_1",
    "12b": "obtuse_marginal_2",
}


def coco_categories() -> list[dict]:
    """The COCO ``categories`` list for a CASS dataset, in id order."""
    return [c.coco() for c in CASS_CATEGORIES]


def lookup(key: int | str) -> CassCategory:
    """Find a category by id, short name or prompt; raise ``KeyError`` naming the valid choices."""
    if isinstance(key, int) and key in BY_ID:
        return BY_ID[key]
    if isinstance(key, str):
        if key in BY_SHORT_NAME:
            return BY_SHORT_NAME[key]
        if key in BY_PROMPT:
            return BY_PROMPT[key]
    raise KeyError(f"{key!r} is not a CASS category; valid short names: {', '.join(BY_SHORT_NAME)}")
