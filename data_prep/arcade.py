"""Import the public ARCADE "syntax" dataset (MICCAI 2023) as a COCO CASS dataset.

ARCADE layout: ``ROOT/syntax/{train,val,test}/images/*.png`` and
``ROOT/syntax/{train,val,test}/annotations/{train,val,test}.json`` with SYNTAX segment classes ("1".."16c",
plus e.g. a catheter class). :data:`SYNTAX_TO_CASS` maps 13 of them to CASS categories; every other
class is dropped and counted in the printed summary (CASS ``obtuse_marginal_3`` has no ARCADE source,
so it never occurs). Each ARCADE split becomes the dataset's split of the same name: ``test``, when ARCADE's
folder holds it, becomes the held-out ``annotations/test.json`` that a sweep never reads.

Images are hard-linked into ``OUT/images/<split>/`` (copied where the file system cannot link), so the
dataset reads nothing from outside its folder and ARCADE's files are never written; each ``file_name`` is
``<split>/<ARCADE file name>`` (ARCADE reuses names such as ``1.png`` across splits). ARCADE's images are 8-bit
PNGs, which sam3 reads faithfully; an image of any other depth (a 16-bit PNG, a TIFF) is written instead as an
8-bit ``<split>/<stem>.png`` through :mod:`data_prep.images`. Every image entry records its ``windowing``. An ARCADE
``file_name`` that would leave ARCADE's image folder is refused. Polygons are kept (clipped to the image, those with < 3 points dropped); bbox and
area are recomputed from them with pycocotools. The result is validated before it is moved into place.
ARCADE gives no patient ids, so images carry none (ARCADE's own split is kept as it is; the validator cannot
check it for patients shared between splits).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from pycocotools import mask as mask_utils
from tqdm import tqdm

from common.errors import InputError, run_cli
from common.outputs import check_apart, check_replaceable, staged_folder
from data_prep import cass
from data_prep.coco_io import coco_document, instance_table, write_json_atomic
from data_prep.images import kept_as_is, read_image, write_png
from data_prep.layout import SWEEP_SPLITS, DatasetPaths, image_file
from data_prep.validate import validate_dataset

# ARCADE SYNTAX class name -> CASS short name (its one home is data_prep.cass). Classes not listed are dropped.
SYNTAX_TO_CASS = cass.SYNTAX_TO_CASS


def _load_arcade_split(root: Path, split: str) -> tuple[dict, Path]:
    """The ARCADE COCO dict of ``split`` and its image folder."""
    ann_path = root / "syntax" / split / "annotations" / f"{split}.json"
    images_dir = root / "syntax" / split / "images"
    missing = [str(p) for p in (ann_path, images_dir) if not p.exists()]
    if missing:
        raise InputError(f"--arcade-root {root} is not in ARCADE's syntax layout: missing {missing} "
                         "(expected syntax/<split>/{images/, annotations/<split>.json} for train, val and, when "
                         "syntax/test exists, test)")
    try:
        doc = json.loads(ann_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{ann_path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from err
    bad = [k for k in ("images", "annotations", "categories") if not isinstance(doc.get(k), list)]
    if bad:
        raise InputError(f"{ann_path}: top-level field(s) {bad} missing or not lists")
    return doc, images_dir


def _image_files(doc: dict, images_dir: Path) -> dict[str, Path]:
    """ARCADE ``file_name`` -> its file, each checked to lie inside ``images_dir`` and to exist."""
    files, problems = {}, []
    for img in doc["images"]:
        try:
            path = image_file(images_dir, img.get("file_name"))
        except ValueError as err:
            problems.append(f"image id {img.get('id')}: {err}")
            continue
        if not path.is_file():
            problems.append(f"image id {img.get('id')}: {path} does not exist")
        files[img["file_name"]] = path
    if problems:
        raise InputError(f"{images_dir}: {len(problems)} ARCADE image(s) cannot be imported; nothing was written",
                         problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else []))
    return files


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link to ``source`` at ``target``, or a copy where the file system cannot link."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _import_image(source: Path, images_dir: Path, split: str, file_name: str) -> tuple[str, dict]:
    """Bring one ARCADE image into the dataset's ``images_dir``: linked or copied when sam3 reads it faithfully as
    it is, else written as an 8-bit PNG; return its dataset ``file_name`` and its windowing record."""
    image = read_image(source)
    if kept_as_is(image.windowing):
        name = f"{split}/{file_name}"
        _link_or_copy(source, images_dir / name)
    else:
        name = f"{split}/{Path(file_name).with_suffix('.png').as_posix()}"
        (images_dir / name).parent.mkdir(parents=True, exist_ok=True)
        write_png(image, images_dir / name)
    return name, image.windowing


def _clean_polygons(segmentation: list, width: int, height: int) -> list[list[float]]:
    """ARCADE polygons clipped to the image, dropping those with fewer than 3 points."""
    polygons = []
    for poly in segmentation:
        if len(poly) < 6:
            continue
        xs = [min(max(float(x), 0.0), float(width)) for x in poly[0::2]]
        ys = [min(max(float(y), 0.0), float(height)) for y in poly[1::2]]
        polygons.append([v for xy in zip(xs, ys) for v in xy])
    return polygons


def _convert_split(doc: dict, split: str, imported: dict[str, tuple[str, dict]]) -> tuple[dict, Counter, Counter]:
    """The CASS COCO dict of one split, the CASS instance counts and the dropped-class counts; ``imported``: each
    ARCADE file name's dataset file name and windowing (:func:`_import_image`)."""
    syntax_name = {c["id"]: str(c["name"]) for c in doc["categories"]}
    images = {img["id"]: img for img in doc["images"]}
    kept: Counter[int] = Counter()
    dropped: Counter[str] = Counter()
    annotations = []
    for ann in tqdm(doc["annotations"], desc=f"arcade {split}", unit="ann", leave=False):
        name = syntax_name.get(ann["category_id"], f"<unknown id {ann['category_id']}>")
        img = images.get(ann["image_id"])
        if name not in SYNTAX_TO_CASS or img is None:
            dropped[name if img is not None else f"{name} (unknown image)"] += 1
            continue
        polygons = _clean_polygons(ann.get("segmentation") or [], img["width"], img["height"])
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, img["height"], img["width"])) if polygons else None
        if rle is None or mask_utils.area(rle) == 0:
            dropped[f"{name} (degenerate polygon)"] += 1
            continue
        cid = cass.BY_SHORT_NAME[SYNTAX_TO_CASS[name]].id
        kept[cid] += 1
        annotations.append({
            "id": ann["id"], "image_id": ann["image_id"], "category_id": cid, "segmentation": polygons,
            "bbox": [float(v) for v in mask_utils.toBbox(rle)], "area": int(mask_utils.area(rle)), "iscrowd": 0,
        })
    out_images = [{"id": img["id"], "file_name": imported[img["file_name"]][0], "width": img["width"],
                   "height": img["height"], "windowing": imported[img["file_name"]][1]} for img in doc["images"]]
    return coco_document(out_images, annotations, description=f"ARCADE syntax {split} mapped to CASS"), kept, dropped


def import_arcade(arcade_root: Path, out: Path, *, overwrite: bool = False) -> DatasetPaths:
    """Write the CASS dataset folder ``out`` with ARCADE's images linked or copied in (see the module doc)."""
    check_apart({"--out": out}, {"--arcade-root": arcade_root})
    check_replaceable(out, overwrite=overwrite)
    splits = SWEEP_SPLITS + (("test",) if (arcade_root / "syntax" / "test").exists() else ())
    sources = {split: _load_arcade_split(arcade_root, split) for split in splits}
    files = {split: _image_files(doc, images_dir) for split, (doc, images_dir) in sources.items()}
    kept: dict[str, Counter] = {}
    dropped: dict[str, Counter] = {}
    with staged_folder(out, overwrite=overwrite, command="python -m data_prep.arcade") as tmp:
        paths = DatasetPaths(tmp)
        for split, (doc, _) in sources.items():
            (paths.images_dir / split).mkdir(parents=True)
            imported = {file_name: _import_image(source, paths.images_dir, split, file_name) for file_name, source
                        in tqdm(files[split].items(), desc=f"images {split}", unit="img", leave=False)}
            converted, kept[split], dropped[split] = _convert_split(doc, split, imported)
            write_json_atomic(paths.annotations(split), converted)
        validate_dataset(paths).raise_if_errors()
    print(instance_table(kept))
    print("dropped ARCADE classes (no CASS equivalent):")
    for name in sorted(set().union(*dropped.values()), key=str):
        print(f"  {name:<28}" + " ".join(f"{split} {dropped[split][name]:>6}" for split in splits))
    return DatasetPaths(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.arcade", description=__doc__.split("\n")[0])
    parser.add_argument("--arcade-root", type=Path, required=True, help="folder holding ARCADE's syntax/")
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to create")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out if it is a dataset this project wrote")
    args = parser.parse_args(argv)
    paths = import_arcade(args.arcade_root, args.out, overwrite=args.overwrite)
    print(f"wrote {paths.root}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
