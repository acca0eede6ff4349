"""Predict the 14 CASS segments on new angiograms with an exported model.

    python -m sweeps.predict EXPORT_DIR INPUT --out DIR [--threshold T] [--batch-size N] [--device cpu|cuda]
        [--frame K] [--bits B] [--overwrite]

EXPORT_DIR is one exported model folder (``python -m sweeps.export``; one trial's subfolder of a ``--pick pareto``
export), checked against its manifest before anything else is read. INPUT is an image or DICOM file, or a folder
whose image files are read (not its subfolders; DICOM objects that hold no image, such as reports or a DICOMDIR,
are passed over), listed as :mod:`data_prep.convert_images` lists them.

What the model sees is what it was trained on: each frame is read by :func:`data_prep.images.read_image` (16-bit
PNG/TIFF and DICOM windowed to 8 bits as dataset conversion does; ``--bits`` as there), asked all 14 CASS prompts
and resized to the trial's resolution by validation's own transforms
(:func:`trainables.data.unlabelled_batch`), and run through validation's inference loop
(:func:`trainables.inference.predict`: at most :data:`~trainables.inference.MAX_DETS_PER_PROMPT` queries per
image and prompt, masks at the image's own size) at the trial's numeric precision. Every frame of a multi-frame
file is an image (``--frame K``: only frame K of such files; single-frame files are read as they are).

``--out DIR`` receives:

- ``predictions.json``: COCO results, one entry per query scoring ``>= --threshold`` (default: the trial's
  ``score_threshold``; ``--threshold 0`` keeps every query, what AP needs): ``image_id``, ``category_id``,
  ``segmentation`` (compressed RLE, ``counts`` a string) and ``score``;
- ``images.json``: a COCO file without annotations (``images``: id, ``file_name`` = the input's path relative to
  INPUT, ``<name>#frame<k>`` for frame k of a multi-frame file, ``width``, ``height``, ``windowing``; the 14 CASS
  ``categories``), so that ``COCO("images.json").loadRes("predictions.json")`` works (pycocotools' loadRes
  refuses an empty list: a run that found nothing cannot be loaded that way);
- ``overlays/<file name>.png`` (its suffix dropped, ``_frame<k>`` for a frame): per image, the image beside the
  predicted segments painted in their colours (a segment = the union of its queries' masks at or above the
  threshold), the legend giving each segment's score (:mod:`sweeps.overlays`);
- ``segments.csv``: one row per image: its id, file name and size, the segments found (``;``-separated short
  names), its overlay, and per segment the best score of those found;
- ``skipped.json``: the files or frames that could not be predicted, each with why.

An unreadable or corrupt file or frame, or one the model cannot take (not a 2-D grey or RGB frame, a side of 0
pixels), is skipped: the rest are predicted, and the skipped ones are listed at the end and in ``skipped.json``.
The command is refused (exit status 2, nothing written) when none can be read, when the export does not verify,
and when ``--out`` overlaps EXPORT_DIR or INPUT or is a folder this project did not write (``--overwrite``
replaces only an earlier output). The output is staged and appears whole or not at all.
"""

from __future__ import annotations

import sys
from pathlib import Path, PurePosixPath

if __package__ in (None, ""):  # run as a script path: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from common.errors import InputError, run_cli  # noqa: E402
from common.outputs import check_apart, check_replaceable, staged_folder  # noqa: E402
from data_prep.cass import CASS_CATEGORIES, coco_categories  # noqa: E402
from data_prep.convert_images import input_files  # noqa: E402
from data_prep.images import SUFFIXES, Converted, check_bits, frame_count, read_image  # noqa: E402

COMMAND = "python -m sweeps.predict"
PREDICTIONS_FILE = "predictions.json"
IMAGES_FILE = "images.json"
SEGMENTS_FILE = "segments.csv"
SKIPPED_FILE = "skipped.json"
OVERLAYS = "overlays"
FRAME_SEPARATOR = "#frame"  # file_name of frame k of a multi-frame file: "<relative path>#frame<k>"


@dataclass(frozen=True)
class Job:
    """One image to predict: frame ``frame`` of ``path`` (which holds ``frames``), named ``file_name``."""

    path: Path
    frame: int
    frames: int
    file_name: str


@dataclass
class Outcome:
    """What a run predicted and skipped (also what :func:`main` prints)."""

    out: Path
    images: list[dict] = field(default_factory=list)  # the COCO images entries, in id order
    detections: int = 0  # entries of predictions.json
    found: int = 0  # (image, segment) pairs found
    skipped: list[dict] = field(default_factory=list)  # {"file", "frame", "problem"}
    seconds: float = 0.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    parser.add_argument("export_dir", type=Path, metavar="EXPORT_DIR", help="an exported model folder")
    parser.add_argument("input", type=Path, metavar="INPUT", help="an image / DICOM file, or a folder of them")
    parser.add_argument("--out", type=Path, required=True, help="the folder to create")
    parser.add_argument("--threshold", type=float, help="score at and above which a query counts as found "
                                                        "(default: the trial's score_threshold)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward (default 1)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when a GPU is available")
    parser.add_argument("--frame", type=int, help="only frame K (from 0) of multi-frame files (default: every frame)")
    parser.add_argument("--bits", type=int, help="bit depth of 16/32-bit PNG or TIFF values, as given to "
                                                 "data_prep.convert_images (default: the smallest that holds each "
                                                 "frame's largest value)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if this command wrote it")
    args = parser.parse_args(argv)
    outcome = predict_folder(args.export_dir, args.input, args.out, threshold=args.threshold,
                             batch_size=args.batch_size, device=args.device, frame=args.frame, bits=args.bits,
                             overwrite=args.overwrite)
    print(format_outcome(outcome))
    if outcome.skipped:
        print(f"warning: skipped {len(outcome.skipped)} image(s) (listed in {SKIPPED_FILE}):", file=sys.stderr)
        for item in outcome.skipped:
            print(f"  - {item['problem']}", file=sys.stderr)
    return 0


def format_outcome(outcome: Outcome) -> str:
    files = len({image["file_name"].split(FRAME_SEPARATOR)[0] for image in outcome.images})
    return (f"predicted {len(outcome.images)} image(s) of {files} file(s) in {outcome.seconds:.1f} s: "
            f"{outcome.found} segment(s) found, {outcome.detections} detection(s)\n"
            f"wrote {outcome.out}: {PREDICTIONS_FILE}, {IMAGES_FILE}, {SEGMENTS_FILE}, {OVERLAYS}/ "
            f"({len(outcome.images)} PNG), {SKIPPED_FILE} ({len(outcome.skipped)} skipped)")


def predict_folder(export_dir: str | Path, source: str | Path, out: str | Path, *, threshold: float | None = None,
                   batch_size: int = 1, device: str | None = None, frame: int | None = None,
                   bits: int | None = None, overwrite: bool = False, progress: bool | None = None) -> Outcome:
    """Predict every image of ``source`` with the model of ``export_dir`` into the folder ``out`` (see the
    module doc). ``progress``: a tqdm bar (default: when stderr is a terminal), else a plain line now and then."""
    import torch

    from trainables.checkpoints.exported import load_exported

    export_dir, source, out = Path(export_dir), Path(source), Path(out)
    check_apart({"--out": out}, {"EXPORT_DIR": export_dir, "INPUT": source})
    check_replaceable(out, overwrite=overwrite)
    _check_options(threshold, batch_size, frame, bits)
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: torch sees no CUDA GPU here (torch.cuda.is_available() is False); "
                         "pass --device cpu")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = _verified_config(export_dir)
    threshold = cfg.score_threshold if threshold is None else threshold
    root, files = list_inputs(source)
    jobs, skipped = plan(files, root, frame)
    if not jobs:
        raise InputError(f"INPUT {source}: none of its {len(files)} image file(s) can be read", _problems(skipped))

    start = time.perf_counter()
    model, cfg = load_exported(export_dir, device=device, verified=True)  # _verified_config checked the manifest
    model.eval()
    outcome = Outcome(out=out, skipped=skipped)
    with staged_folder(out, overwrite=overwrite, command=COMMAND) as staging:
        _predict_into(staging, model, cfg, jobs, outcome, threshold=threshold, batch_size=batch_size,
                      device=device, bits=bits, progress=sys.stderr.isatty() if progress is None else progress)
        if not outcome.images:
            raise InputError(f"INPUT {source}: none of its {len(files)} image file(s) can be read; nothing was "
                             "written", _problems(outcome.skipped))
        _write_json(staging / IMAGES_FILE, {
            "info": {"description": f"images predicted by {COMMAND}", "export_dir": str(export_dir.resolve()),
                     "input": str(source.resolve()), "threshold": threshold, "resolution": cfg.resolution},
            "images": outcome.images, "categories": coco_categories(), "annotations": []})
        _write_json(staging / SKIPPED_FILE, outcome.skipped)
        outcome.seconds = time.perf_counter() - start
    return outcome


def _check_options(threshold: float | None, batch_size: int, frame: int | None, bits: int | None) -> None:
    problems = []
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        problems.append(f"--threshold {threshold}: a score threshold lies in [0, 1]")
    if batch_size < 1:
        problems.append(f"--batch-size {batch_size}: give at least 1 image per forward")
    if frame is not None and frame < 0:
        problems.append(f"--frame {frame}: frames are counted from 0")
    if problems:
        raise InputError("invalid options", problems)
    check_bits(bits)


def _verified_config(export_dir: Path):
    """The export's :class:`~trainables.config.TrialConfig`, once its manifest verifies."""
    from trainables.checkpoints.exported import TRIAL_CONFIG_FILE, verify_export
    from trainables.checkpoints.trial import MODEL_FILE
    from trainables.config import TrialConfig

    if not export_dir.is_dir():
        raise InputError(f"EXPORT_DIR {export_dir}: no such folder (give a folder written by python -m sweeps.export)")
    verify_export(export_dir)
    if not (export_dir / MODEL_FILE).is_file():
        models = sorted(p.parent.name for p in export_dir.glob(f"*/{MODEL_FILE}"))
        hint = (f": it holds {len(models)} models in subfolders (a --pick pareto export); pass one of them, e.g. "
                f"{export_dir / models[0]}") if models else ""
        raise InputError(f"EXPORT_DIR {export_dir}: no {MODEL_FILE}{hint}")
    config_path = export_dir / TRIAL_CONFIG_FILE
    try:
        values = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"{config_path}: cannot be read as JSON ({err})") from None
    if not isinstance(values, dict):
        raise InputError(f"{config_path}: not a trial config (a JSON object)")
    return TrialConfig.from_dict(values, source=str(config_path))


def list_inputs(source: Path) -> tuple[Path, list[Path]]:
    """(the folder file names are relative to, the image files of ``source``), listed as
    :func:`data_prep.convert_images.input_files` lists them; a folder without one is refused, saying what it holds."""
    if source.is_dir():
        try:
            return source, input_files([source])
        except InputError:
            raise InputError(f"INPUT {source}: the folder holds no image or DICOM image file",
                             [_what_is_there(source)]) from None
    if source.is_file():
        return source.parent, [source]
    raise InputError(f"INPUT {source}: no such file or folder")


def _what_is_there(folder: Path) -> str:
    from pydicom.misc import is_dicom

    entries = sorted(folder.iterdir())
    if not entries:
        return "it is empty"
    folders = [p.name + "/" for p in entries if p.is_dir()]
    files = [p.name + (" (DICOM without an image)" if p.is_file() and is_dicom(p) else "")
             for p in entries if not p.is_dir()]
    shown = files[:8] + folders[:4]
    more = len(files) + len(folders) - len(shown)
    note = "; subfolders are not searched: give one of them as INPUT" if folders else ""
    return (f"found {len(files)} file(s) and {len(folders)} subfolder(s): {', '.join(shown)}"
            f"{f', and {more} more' if more else ''}; images are {', '.join(SUFFIXES)} files or DICOM images{note}")


def plan(files: Sequence[Path], root: Path, frame: int | None) -> tuple[list[Job], list[dict]]:
    """The images to predict (every frame of a multi-frame file, or ``frame``), and the files skipped (unreadable
    headers, ``frame`` past a file's last frame)."""
    jobs, skipped = [], []
    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            frames = frame_count(path)
        except InputError as err:
            skipped.append({"file": rel, "frame": None, "problem": str(err)})
            continue
        if frames < 1:
            skipped.append({"file": rel, "frame": None, "problem": f"{path}: holds no frame"})
            continue
        if frames == 1:
            jobs.append(Job(path, 0, 1, rel))
            continue
        if frame is not None and frame >= frames:
            skipped.append({"file": rel, "frame": frame, "problem": f"{path}: --frame {frame} is out of range: the "
                            f"file holds {frames} frames, numbered 0 to {frames - 1}"})
            continue
        for k in [frame] if frame is not None else range(frames):
            jobs.append(Job(path, k, frames, f"{rel}{FRAME_SEPARATOR}{k}"))
    return jobs, skipped


def model_problem(path: Path, frame: int | None, pixels: np.ndarray) -> str | None:
    """Why the model cannot take a frame read from ``path`` (``frame``: of a multi-frame file, else None): not a
    2-D grey or RGB image, or a side of 0."""
    where = f"{path}" + (f" frame {frame}" if frame is not None else "")
    if not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3)):
        return (f"{where}: holds an array of shape {list(pixels.shape)}, not a 2-D grey or RGB frame (a volume?); "
                "the model takes one 2-D angiogram frame at a time")
    if 0 in pixels.shape[:2]:
        return f"{where}: is {pixels.shape[1]} x {pixels.shape[0]} pixels: an image without pixels"
    return None


def _problems(skipped: list[dict]) -> list[str]:
    return [item["problem"] for item in skipped]


def _readable(jobs: Sequence[Job], bits: int | None, skipped: list[dict],
              tick) -> Iterator[tuple[Job, Converted]]:
    """Each job's frame as 8 bits; an unreadable one, or one the model cannot take, is recorded in ``skipped``."""
    for job in jobs:
        try:
            image = read_image(job.path, frame=job.frame, bits=bits)
            problem = model_problem(job.path, job.frame if job.frames > 1 else None, image.pixels)
        except InputError as err:
            problem = str(err)
        if problem is None:
            yield job, image
        else:
            skipped.append({"file": job.file_name.split(FRAME_SEPARATOR)[0],
                            "frame": job.frame if job.frames > 1 else None, "problem": problem})
            tick(1)


def _batches(items: Iterator, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _predict_into(staging: Path, model, cfg, jobs: Sequence[Job], outcome: Outcome, *, threshold: float,
                  batch_size: int, device: str, bits: int | None, progress: bool) -> None:
    """Predict ``jobs`` batch by batch; write the overlays and ``predictions.json`` and ``segments.csv`` into
    ``staging``; fill ``outcome``."""
    from trainables.data import unlabelled_batch
    from trainables.inference import predict

    (staging / OVERLAYS).mkdir()
    categories = coco_categories()
    short = {c.id: c.short_name for c in CASS_CATEGORIES}
    bar = _Progress(len(jobs), enabled=progress)
    overlay_names: set[str] = set()
    with open(staging / PREDICTIONS_FILE, "w", encoding="utf-8") as results, \
            open(staging / SEGMENTS_FILE, "w", encoding="utf-8", newline="") as table:
        writer = csv.writer(table)
        writer.writerow(["image_id", "file_name", "width", "height", "segments", "overlay",
                         *(c.short_name for c in CASS_CATEGORIES)])
        results.write("[")
        for batch in _batches(_readable(jobs, bits, outcome.skipped, bar.update), batch_size):
            entries = []
            for job, image in batch:
                image_id = len(outcome.images) + len(entries) + 1
                entries.append((image_id, job, image, Image.fromarray(image.pixels).convert("RGB")))
            sam3_batch = unlabelled_batch([(image_id, rgb) for image_id, _, _, rgb in entries], cfg.resolution,
                                          categories)
            (predictions,) = list(predict(model, [sam3_batch], device))
            by_image: dict[int, list] = {}
            for p in predictions:
                by_image.setdefault(p.image_id, []).append(p)
            for image_id, job, image, rgb in entries:
                width, height = rgb.size
                found, masks = {}, {}
                for p in sorted(by_image[image_id], key=lambda p: p.category_id):
                    for index in np.flatnonzero(p.scores >= threshold).tolist():
                        results.write(("," if outcome.detections else "") + "\n" + json.dumps({
                            "image_id": image_id, "category_id": p.category_id,
                            "segmentation": _rle(p.masks[index]), "score": float(p.scores[index])}))
                        outcome.detections += 1
                        found[p.category_id] = max(found.get(p.category_id, 0.0), float(p.scores[index]))
                        masks[p.category_id] = masks[p.category_id] | p.masks[index] if p.category_id in masks \
                            else p.masks[index].copy()
                overlay = _overlay_name(job.file_name, image_id, overlay_names)
                _draw(staging / OVERLAYS / overlay, image_id, job.file_name, np.asarray(rgb), masks, found)
                outcome.images.append({"id": image_id, "file_name": job.file_name, "width": width, "height": height,
                                       "windowing": image.windowing})
                outcome.found += len(found)
                writer.writerow([image_id, job.file_name, width, height, ";".join(short[c] for c in sorted(found)),
                                 f"{OVERLAYS}/{overlay}",
                                 *(f"{found[c.id]:.4f}" if c.id in found else "" for c in CASS_CATEGORIES)])
            bar.update(len(entries))
        results.write("\n]\n")
    bar.close()


def _rle(mask: np.ndarray) -> dict:
    """A boolean (H, W) mask as a compressed COCO RLE with ``counts`` a string (JSON-ready)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.view(np.uint8)))  # column-major masks are encoded in place
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _overlay_name(file_name: str, image_id: int, taken: set[str]) -> str:
    """``run.dcm#frame3`` -> ``run_frame3.png``, ``sub/a.tif`` -> ``sub_a.png`` (the image id when taken)."""
    base, _, frame = file_name.partition(FRAME_SEPARATOR)
    stem = PurePosixPath(base).with_suffix("").as_posix().replace("/", "_") + (f"_frame{frame}" if frame else "")
    name, extra = f"{stem}.png", 0
    while name.casefold() in taken:  # case-blind: a.png and A.png are one file on Windows
        extra += 1
        name = f"{stem}_{image_id}.png" if extra == 1 else f"{stem}_{image_id}_{extra}.png"
    taken.add(name.casefold())
    return name


def _draw(path: Path, image_id: int, file_name: str, image: np.ndarray, masks: dict, scores: dict) -> None:
    from sweeps.overlays import ImageMasks, compose_overlay

    compose_overlay(ImageMasks(image_id, file_name, image, ground_truth=None, prediction=masks,
                               scores=scores)).save(path)


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=1) + "\n", encoding="utf-8")


class _Progress:
    """A tqdm bar on a terminal; otherwise a plain line on stderr about every tenth of the images."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        self.total, self.done, self.start = total, 0, time.perf_counter()
        self._next = 0
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc="predicting", unit="image")

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.done >= self._next or self.done == self.total:
            print(f"predicting: {self.done}/{self.total} image(s), {time.perf_counter() - self.start:.1f} s",
                  file=sys.stderr, flush=True)
            self._next = self.done + max(1, self.total // 10)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


if __name__ == "__main__":
    sys.exit(run_cli(main))
