"""Map an existing COCO file's categories onto the 14 CASS categories, so that sam3 and the validator take it.

``python -m data_prep.remap IN.json OUT.json [--map FILE.yaml] [--drop-unmapped] [--overwrite]``

Each category of IN is matched to a CASS category (:mod:`data_prep.cass`) by its ``name``, compared without
regard to case, spaces, underscores or hyphens (``Proximal RCA``, ``proximal-rca`` and ``proximal_rca`` are
one name), as any of:

- the CASS prompt (``proximal right coronary artery``);
- the CASS short name, as the Stage 2 notes name their categories (``proximal_rca``);
- the SYNTAX segment number, as ARCADE names its classes (``"1"``, ``"12a"``; :data:`data_prep.cass.SYNTAX_TO_CASS`).
  A number is read as SYNTAX, never as a CASS id: ``"5"`` is the left main.

``--map FILE.yaml`` decides for the categories it names (the others are still matched by name). The file is one
YAML mapping, source category -> CASS category::

    Prox RCA: proximal_rca                # a source category by its name (matched as above)
    17: mid right coronary artery         # a source category by its id (an unquoted number)
    "OM-1": 9                             # a CASS category by short name, prompt or id 1-14

OUT is IN with ``categories`` replaced by the 14 CASS categories, each annotation's ``category_id`` rewritten,
and ``info`` recording the mapping (``remapped_by``, ``remapped_from``, ``remapped_categories``); images,
annotation ids and every other field are kept. Refused (exit 2, nothing written): a category matching no CASS
category, unless ``--drop-unmapped`` (its annotations are dropped and counted); two source categories onto one
CASS category (both named); a ``--map`` naming an unknown CASS category or a category IN lacks; OUT overlapping
IN or the map; an existing OUT, unless ``--overwrite`` and OUT is an earlier output of this command. OUT is
written beside its place and renamed into it whole. Images are not read: check the result with
``python -m data_prep.validate OUT.json --images DIR``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from common.errors import InputError, run_cli
from common.outputs import check_apart, check_replaceable, staged_file
from common.typed_yaml import excerpt, load_yaml
from data_prep import cass
from data_prep.validate import summarise

COMMAND = "python -m data_prep.remap"


def normalise(name: str) -> str:
    """``name`` as names are compared: lower case, runs of spaces, underscores and hyphens made one space."""
    return " ".join(re.sub(r"[_-]", " ", name).lower().split())


_BY_CASS_NAME: dict[str, cass.CassCategory] = {
    normalise(n): c for c in cass.CASS_CATEGORIES for n in (c.short_name, c.prompt)}
_BY_NAME: dict[str, cass.CassCategory] = {
    **_BY_CASS_NAME, **{normalise(n): cass.BY_SHORT_NAME[s] for n, s in cass.SYNTAX_TO_CASS.items()}}


def match_name(name: str) -> cass.CassCategory | None:
    """The CASS category a source category ``name`` stands for (prompt, short name or SYNTAX number), or None."""
    return _BY_NAME.get(normalise(name))


def is_remap_output(path: Path) -> bool:
    """Whether ``path`` is a COCO file this command wrote (what ``--overwrite`` may replace)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    info = doc.get("info") if isinstance(doc, dict) else None
    return isinstance(info, dict) and info.get("remapped_by") == COMMAND


def read_coco(path: Path) -> dict:
    """The COCO dict in ``path``, checked as far as remapping needs: categories with an int ``id`` and a
    ``name``, annotations with a ``category_id`` naming one of them. Raise :class:`InputError` otherwise."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise InputError(f"IN {path}: cannot read the file ({err.strerror}); check the path") from None
    except UnicodeDecodeError as err:
        raise InputError(f"IN {path}: not UTF-8 text (byte {err.start}: {err.reason}); is it a COCO JSON "
                         "file?") from None
    except json.JSONDecodeError as err:
        raise InputError(f"IN {path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    if not isinstance(doc, dict) or any(not isinstance(doc.get(k), list) for k in ("images", "annotations",
                                                                                    "categories")):
        raise InputError(f"IN {path}: not a COCO file; the top level must be an object whose fields 'images', "
                         "'annotations' and 'categories' are lists")
    problems, ids = [], set()
    for i, cat in enumerate(doc["categories"]):
        if not (isinstance(cat, dict) and _is_int(cat.get("id")) and isinstance(cat.get("name"), (str, int))
                and not isinstance(cat.get("name"), bool)):
            problems.append(f"categories[{i}] needs an int 'id' and a 'name', got {excerpt(cat)}")
        elif cat["id"] in ids:
            problems.append(f"category id {cat['id']} field 'id' is duplicated; ids must be unique")
        else:
            ids.add(cat["id"])
    for i, ann in enumerate(doc["annotations"]):
        ident = f"annotation id {excerpt(ann['id'])}" if isinstance(ann, dict) and "id" in ann else f"annotations[{i}]"
        if not isinstance(ann, dict) or not _is_int(ann.get("category_id")):
            problems.append(f"{ident} field 'category_id' is missing or not an int")
        elif ann["category_id"] not in ids:
            problems.append(f"{ident} field 'category_id' {ann['category_id']} names no category in 'categories'")
    if problems:
        raise InputError(f"IN {path}: cannot be remapped; fix these and rerun", summarise(problems))
    return doc


def load_map(path: Path) -> dict[int | str, cass.CassCategory]:
    """A ``--map`` file: source category id (int) or name (str) -> its CASS category. See the module doc."""
    raw = load_yaml(path, "category map")
    if not isinstance(raw, dict) or not raw:
        raise InputError(f"--map {path}: must be a mapping of source categories (name or id) to CASS categories "
                         "(short name, prompt or id), e.g. `Prox RCA: proximal_rca`")
    problems, out = [], {}
    for key, target in raw.items():
        if isinstance(key, bool) or not isinstance(key, (int, str)):
            problems.append(f"key {excerpt(key)}: name a source category by its name or its id")
            continue
        found = (cass.BY_ID.get(target) if _is_int(target)
                 else _BY_CASS_NAME.get(normalise(target)) if isinstance(target, str) else None)
        if found is None:
            problems.append(f"key {excerpt(key)}: {excerpt(target)} is not a CASS category; use a short name "
                            f"({', '.join(cass.BY_SHORT_NAME)}), a prompt or an id 1-{cass.NUM_CATEGORIES}")
        else:
            out[key] = found
    if problems:
        raise InputError(f"--map {path}: fix these entries", problems)
    return out


def assign(categories: list[dict], explicit: dict[int | str, cass.CassCategory], *, src: Path,
           map_path: Path | None = None) -> dict[int, cass.CassCategory | None]:
    """Source category id -> its CASS category (None: unmapped): ``explicit`` first, else by name. Refuses a map
    key naming no category of ``src``, a category named by two keys, and two categories onto one CASS category."""
    by_key: dict[int, list[int | str]] = {}
    problems = []
    for key in explicit:
        hits = [c["id"] for c in categories
                if (c["id"] == key if isinstance(key, int) else normalise(str(c["name"])) == normalise(key))]
        if not hits:
            problems.append(f"key {excerpt(key)} names no category of IN {src} "
                            f"(its names: {excerpt(sorted({str(c['name']) for c in categories}), 200)})")
        for cid in hits:
            by_key.setdefault(cid, []).append(key)
    problems += [f"category id {cid} is named by keys {excerpt(keys)}; keep one" for cid, keys in by_key.items()
                 if len(keys) > 1]
    if problems:
        raise InputError(f"--map {map_path}: fix these entries", problems)
    mapping = {c["id"]: explicit[by_key[c["id"]][0]] if c["id"] in by_key else match_name(str(c["name"]))
               for c in categories}
    names = {c["id"]: str(c["name"]) for c in categories}
    sources: dict[int, list[int]] = {}
    for cid, target in mapping.items():
        if target is not None:
            sources.setdefault(target.id, []).append(cid)
    collisions = [f"categories {' and '.join(f'id {cid} {names[cid]!r}' for cid in cids)} map onto CASS "
                  f"{cass.BY_ID[target].short_name}" for target, cids in sources.items() if len(cids) > 1]
    if collisions:
        raise InputError(f"IN {src}: two source categories map onto one CASS category (nothing was written); merge "
                         "them in IN, or send one elsewhere with --map FILE.yaml", collisions)
    return mapping


def remap(src: Path, out: Path, *, map_path: Path | None = None, drop_unmapped: bool = False,
          overwrite: bool = False) -> str:
    """Write ``src`` with CASS categories to ``out`` (see the module doc); return the report to print."""
    check_apart({"OUT": out}, {"IN": src, "--map": map_path})
    check_replaceable(out, overwrite=overwrite, is_ours=is_remap_output, option="OUT")
    doc = read_coco(src)
    explicit = load_map(map_path) if map_path is not None else {}
    mapping = assign(doc["categories"], explicit, src=src, map_path=map_path)
    counts = Counter(ann["category_id"] for ann in doc["annotations"])
    names = {c["id"]: str(c["name"]) for c in doc["categories"]}
    unmapped = [cid for cid, target in mapping.items() if target is None]
    if unmapped and not drop_unmapped:
        raise InputError(
            f"IN {src}: source categories match no CASS category by prompt, short name or SYNTAX number (nothing "
            "was written); map them with --map FILE.yaml, or pass --drop-unmapped to drop their annotations",
            [f"category id {cid} {names[cid]!r} ({counts[cid]} annotation(s))" for cid in unmapped])
    info = doc.get("info")
    info = info if isinstance(info, dict) else {} if info is None else {"source_info": info}
    result = {**doc,
              "info": {**info, "remapped_by": COMMAND, "remapped_from": Path(src).name,
                       "remapped_categories": [{"source_id": cid, "source_name": names[cid],
                                                "cass_id": target.id if target else None}
                                               for cid, target in mapping.items()]},
              "annotations": [{**ann, "category_id": mapping[ann["category_id"]].id} for ann in doc["annotations"]
                              if mapping[ann["category_id"]] is not None],
              "categories": cass.coco_categories()}
    try:
        with staged_file(out, overwrite=overwrite, is_ours=is_remap_output, option="OUT") as staged:
            with staged.open("w", encoding="utf-8") as f:
                json.dump(result, f, separators=(",", ":"))
                f.write("\n")
    except OSError as err:
        raise InputError(f"OUT {out}: cannot be written ({err.strerror or err}); nothing written") from None
    return _report(src, out, mapping, names, counts)


def _report(src: Path, out: Path, mapping: dict[int, cass.CassCategory | None], names: dict[int, str],
            counts: Counter) -> str:
    """What was mapped where, with annotation counts."""
    width = max([len(f"{names[cid]} (id {cid})") for cid in mapping] + [len("source category")])
    lines = [f"{src} -> {out}", f"  {'source category':<{width}}    {'CASS category':<17} annotations"]
    for cid, target in mapping.items():
        lines.append(f"  {f'{names[cid]} (id {cid})':<{width}} -> "
                     f"{target.short_name if target else 'dropped':<17} {counts[cid]:>11}")
    dropped = sum(counts[cid] for cid, target in mapping.items() if target is None)
    lines.append(f"kept {sum(counts.values()) - dropped} annotation(s)"
                 + (f"; dropped {dropped} of unmapped categories" if dropped else ""))
    absent = [c.short_name for c in cass.CASS_CATEGORIES if c not in mapping.values()]
    if absent:
        lines.append(f"no source category for: {', '.join(absent)}")
    lines.append(f"next: python -m data_prep.validate {out} --images DIR")
    return "\n".join(lines)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    parser.add_argument("src", type=Path, metavar="IN", help="the existing COCO file (never written)")
    parser.add_argument("out", type=Path, metavar="OUT", help="the COCO file to write, with the CASS categories")
    parser.add_argument("--map", type=Path, dest="map_path", metavar="FILE.yaml",
                        help="YAML mapping source category (name or id) -> CASS category (short name, prompt or id)")
    parser.add_argument("--drop-unmapped", action="store_true",
                        help="drop the annotations of categories that match no CASS category (refused otherwise)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if this command wrote it")
    args = parser.parse_args(argv)
    print(remap(args.src, args.out, map_path=args.map_path, drop_unmapped=args.drop_unmapped,
                overwrite=args.overwrite))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
