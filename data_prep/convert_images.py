"""Convert angiograms of any depth (16-bit PNG/TIFF, DICOM, ...) to 8-bit PNGs that sam3's loader reads faithfully.

``python -m data_prep.convert_images INPUT... --out DIR [--frame N | --all-frames] [--bits B] [--overwrite]``

Each INPUT is an image or DICOM file, or a folder whose image files (not its subfolders) are converted.
The frame of each file (``--frame``, counted from 0; ``--all-frames``: every frame) is mapped to 8 bits as
:mod:`data_prep.images` describes (the DICOM's VOI LUT or window, else its BitsStored range; a 16-bit PNG's
bit depth, or ``--bits``) and written as ``DIR/<stem>.png``, or ``DIR/<stem>_frame<k>.png`` for frame ``k``
of a multi-frame file: the name :mod:`data_prep.create_coco_cass` pairs with a label map of that frame.
``DIR/windowing.json`` records, per PNG, how its values were mapped.

``--out`` may not overlap an input. It is written whole or not at all: one unreadable frame (no pixel data,
no decoder for its compression, a frame index out of range, an unknown image mode) stops the command with
every problem listed, exit status 2, and nothing written.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from common.errors import InputError, run_cli
from common.outputs import check_apart, check_replaceable, staged_folder
from data_prep.images import check_bits, frame_count, is_image_file, read_image, write_png

WINDOWING_FILE = "windowing.json"


def input_files(inputs: Sequence[Path]) -> list[Path]:
    """The files that ``inputs`` name: files as given, folders as their image files (sorted)."""
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if is_image_file(p))
            if not found:
                raise InputError(f"INPUT {item}: the folder holds no image or DICOM file")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise InputError(f"INPUT {item}: no such file or folder")
    return files


def frame_name(path: Path, frame: int, frames: int) -> str:
    """The PNG that frame ``frame`` of ``path`` (which holds ``frames``) becomes: ``<stem>.png`` for a single
    frame, ``<stem>_frame<k>.png`` for a frame of a multi-frame file."""
    return f"{path.stem}.png" if frames == 1 else f"{path.stem}_frame{frame}.png"


def _jobs(files: list[Path], frame: int, all_frames: bool) -> list[tuple[Path, int, str]]:
    """(file, frame, PNG name) to write; every unreadable file and clashing name is refused at once."""
    jobs, problems = [], []
    for path in files:
        try:
            frames = frame_count(path)
        except InputError as err:
            problems.append(str(err))
            continue
        for k in range(frames) if all_frames else [frame]:
            jobs.append((path, k, frame_name(path, k, frames)))
    sources: dict[str, list[str]] = {}
    for path, _, name in jobs:
        sources.setdefault(name, []).append(str(path))
    problems += [f"{name}: {' and '.join(paths)} would both be written to this name; rename one of them"
                 for name, paths in sources.items() if len(paths) > 1]
    if problems:
        raise InputError(f"cannot convert: {len(problems)} problem(s); nothing was written", problems)
    return jobs


def convert_images(inputs: Sequence[Path], out: Path, *, frame: int = 0, all_frames: bool = False,
                   bits: int | None = None, overwrite: bool = False) -> dict[str, dict]:
    """Write the 8-bit PNGs of ``inputs`` and ``windowing.json`` into the folder ``out`` (see the module doc);
    return the windowing record of each PNG, by name."""
    check_apart({"--out": out}, {f"INPUT {i + 1}": p for i, p in enumerate(inputs)})
    check_replaceable(out, overwrite=overwrite)
    check_bits(bits)
    jobs = _jobs(input_files(inputs), frame, all_frames)
    records: dict[str, dict] = {}
    problems: list[str] = []
    with staged_folder(out, overwrite=overwrite, command="python -m data_prep.convert_images") as tmp:
        for path, k, name in tqdm(jobs, desc="converting", unit="frame", leave=False):
            try:
                image = read_image(path, frame=k, bits=bits)
            except InputError as err:
                problems.append(str(err))
                continue
            write_png(image, tmp / name)
            records[name] = image.windowing
        if problems:
            raise InputError(f"cannot convert {len(problems)} of {len(jobs)} frame(s); nothing was written", problems)
        (tmp / WINDOWING_FILE).write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    return records


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.convert_images", description=__doc__.split("\n")[0])
    parser.add_argument("inputs", type=Path, nargs="+", metavar="INPUT", help="image / DICOM files or folders")
    parser.add_argument("--out", type=Path, required=True, help="folder to create with the PNGs and windowing.json")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--frame", type=int, default=0, help="frame of each file to convert, from 0 (default 0)")
    which.add_argument("--all-frames", action="store_true", help="convert every frame of multi-frame files")
    parser.add_argument("--bits", type=int, help="bit depth of 16/32-bit PNG or TIFF values (default: the smallest "
                                                 "that holds each frame's largest value)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if this command wrote it")
    args = parser.parse_args(argv)
    records = convert_images(args.inputs, args.out, frame=args.frame, all_frames=args.all_frames, bits=args.bits,
                             overwrite=args.overwrite)
    methods = Counter(record["method"] for record in records.values())
    print(f"wrote {len(records)} PNG(s) and {WINDOWING_FILE} to {args.out} "
          f"({', '.join(f'{m}: {n}' for m, n in sorted(methods.items()))})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
