"""A catalogue of bad inputs, each fed to the command line a user would run, in-process through ``run_cli``.

Every row breaks ONE thing in an otherwise good input (COCO files, images, sweep configs, search spaces,
checkpoints, sweep folders, output places) and runs one of the entry points a user runs (``CLIS``):

    python -m data_prep.validate        ANNOTATIONS.json [...] --images DIR
    python -m data_prep.create_coco_cass --images DIR --label-maps DIR --out DIR
    python -m data_prep.convert_images  INPUT... --out DIR
    python -m data_prep.remap           IN.json OUT.json
    python -m data_prep.synthetic       OUT
    python -m trainables.checkpoints.surgery  IN OUT --preset tiny
    python sweeps/stage2.py             --config X --dry-run
    python -m sweeps.export             EXPERIMENT_DIR --out DIR
    python -m sweeps.report             EXPERIMENT_DIR --out FILE
    python -m sweeps.evaluate           EXPORT_DIR --split test
    python -m sweeps.predict            EXPORT_DIR INPUT --out DIR

and checks the same contract for all of them: exit status 2; ONE error (one ``error:`` line with at most one
top-level ``  - `` item; no traceback) that names the file and the field or place that is wrong; and no
partial output (the workspace's file listing is unchanged, so nothing was written or left half-written,
and a malicious pickle's payload did not run). The per-module tests (test_validate.py,
test_surgery.py, test_sweep_config.py, test_search_spaces.py, test_export.py) hold more cases at
the function level; this table is self-contained and runs on its own in a few seconds.

Decided, not an error: a CASS category with no instance in a file (e.g. a rare segment absent from the
training split) is a WARNING (exit 0, the file and category named): the model still sees that prompt as a
negative query, every trial of a sweep is affected alike, and refusing would block legitimate subsets.
See ``test_a_category_absent_from_train_is_a_warning_not_an_error`` and RELIABILITY.md.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from angiograms import cine, compressed_without_decoder, png16, without_pixel_data, write_dicom, xa_dataset
from PIL import Image

from common.errors import run_cli
from data_prep import cass, convert_images, create_coco_cass, remap, synthetic, validate
from data_prep.layout import DatasetPaths
from sweeps import evaluate, export, predict, ray_compat, report, stage2
from trainables.checkpoints import surgery
from trainables.checkpoints.native import save_native
from trainables.checkpoints.phase1 import write_phase1_checkpoint
from trainables.model import build_model

CLIS = {"validate": validate.main, "surgery": surgery.main, "stage2": stage2.main, "export": export.main,
        "report": report.main, "synthetic": synthetic.main, "create_coco_cass": create_coco_cass.main,
        "remap": remap.main, "convert_images": convert_images.main, "evaluate": evaluate.main,
        "predict": predict.main}
LOCAL_SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "local.yaml"


class _TouchesAFile:
    """A pickle payload that creates a file when unpickled (what a malicious checkpoint could do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """A tiny model as a Phase 1 file (input of the surgery) and as a native file (a sweep's trial.checkpoint)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("models")
    model = build_model("tiny", seed=0)
    state = write_phase1_checkpoint(model, root / "phase1.pth")
    save_native(model, root / "native.pt")
    return root, state


class Workspace:
    """One case's folder: fresh copies of good inputs, which the case then breaks."""

    def __init__(self, root: Path, dataset: DatasetPaths, models: tuple[Path, dict]):
        self.root, self._dataset, (self._models, self.phase1_state) = root, dataset, models

    def path(self, name: str) -> Path:
        return self.root / name

    def dataset(self) -> DatasetPaths:
        """A copy of the synthetic dataset (8 train / 4 val images, 224 px)."""
        target = self.root / "data"
        if not target.exists():
            shutil.copytree(self._dataset.root, target)
        return DatasetPaths(target)

    def edit_json(self, path: Path, change: Callable[[dict], None]) -> Path:
        doc = json.loads(path.read_text())
        change(doc)
        path.write_text(json.dumps(doc))  # NaN/Infinity are written as the bare tokens JSON parsers accept
        return path

    def first_image(self) -> Path:
        paths = self.dataset()
        doc = json.loads(paths.train_json.read_text())
        return paths.images_dir / doc["images"][0]["file_name"]

    def phase1(self) -> Path:
        return Path(shutil.copy(self._models / "phase1.pth", self.root / "phase1.pth"))

    def native(self) -> Path:
        return Path(shutil.copy(self._models / "native.pt", self.root / "native.pt"))

    def torch_file(self, name: str, obj) -> Path:
        torch.save(obj, self.root / name)
        return self.root / name

    def space(self, content: dict | str | None = None) -> Path:
        path = self.root / "space.yaml"
        text = LOCAL_SPACE.read_text() if content is None else content
        path.write_text(text if isinstance(text, str) else yaml.safe_dump(text))
        return path

    def config(self, change: Callable[[dict], None] = lambda raw: None, *, text: str | None = None) -> Path:
        """A small valid sweep config (``change`` breaks it), or ``text`` verbatim."""
        space = self.root / "space.yaml" if (self.root / "space.yaml").exists() else self.space()
        raw = {"name": "bad-input", "storage_path": str(self.root / "out"), "search_space": str(space),
               "num_samples": 2, "max_concurrent_trials": 1,
               "trial": {"max_steps": 4, "val_every": 2, "num_workers": 1, "cpu_threads_per_worker": 1},
               "scheduler": {"grace_period": 2}}
        change(raw)
        path = self.root / "sweep.yaml"
        path.write_text(text if text is not None else yaml.safe_dump(raw))
        return path


@dataclass(frozen=True)
class Case:
    """``build(ws)`` breaks one input and returns (argv, the named file, fragments the message must hold)."""

    cli: str
    kind: str  # what is bad: coco, image, config, search space, checkpoint, sweep folder
    build: Callable[[Workspace], tuple[list[str], Path, list[str]]]


def _validate(ws: Workspace, change: Callable[[dict], None], *fragments: str):
    paths = ws.dataset()
    ws.edit_json(paths.train_json, change)
    return [str(paths.train_json), "--images", str(paths.images_dir)], paths.train_json, list(fragments)


def _validate_text(ws: Workspace, content: bytes, *fragments: str):
    paths = ws.dataset()
    paths.train_json.write_bytes(content)
    return [str(paths.train_json), "--images", str(paths.images_dir)], paths.train_json, list(fragments)


def _image(ws: Workspace, damage: Callable[[Path], None], *fragments: str):
    paths, image = ws.dataset(), ws.first_image()
    damage(image)
    return [str(paths.train_json), "--images", str(paths.images_dir)], image, list(fragments)


def _ann(doc: dict) -> dict:
    return doc["annotations"][0]


def _img(doc: dict) -> dict:
    return doc["images"][0]


def _dry_run(ws: Workspace, change: Callable[[dict], None], named: Callable[[Workspace], Path] | None,
             *fragments: str):
    config = ws.config(change)
    return ["--config", str(config), "--dry-run"], (named(ws) if named else config), list(fragments)


def _space(ws: Workspace, content: dict | str, *fragments: str):
    space = ws.space(content)
    config = ws.config(lambda raw: raw.__setitem__("search_space", str(space)))
    return ["--config", str(config), "--dry-run"], space, list(fragments)


def _surgery(ws: Workspace, src: Path, *fragments: str, dst: Path | None = None):
    dst = dst or ws.path("native_out.pt")
    return [str(src), str(dst), "--preset", "tiny"], src, list(fragments)


def _set(record: Callable[[dict], dict], key: str, value) -> Callable[[dict], None]:
    return lambda doc: record(doc).__setitem__(key, value)


def _trial(**values) -> Callable[[dict], None]:
    return lambda raw: raw["trial"].update(values)


def _phase1_with(ws: Workspace, name: str, change: Callable[[dict], None]) -> Path:
    state = dict(ws.phase1_state)
    change(state)
    return ws.torch_file(name, {"model": state, "epoch": 1})


def _cut(ws: Workspace, source: Path, name: str, size: int) -> Path:
    """The first ``size`` bytes of ``source`` as ``name`` (an interrupted copy or download); ``source`` removed."""
    target = ws.path(name)
    target.write_bytes(source.read_bytes()[:size])
    source.unlink()
    return target


def _surgery_into_a_file(ws: Workspace):
    blocker = ws.path("blocker")
    blocker.write_text("a file where OUT's folder should be")
    return [str(ws.phase1()), str(blocker / "native.pt"), "--preset", "tiny"], blocker, ["OUT", "not a folder"]


def _coco_dataset_case(ws: Workspace):
    paths = ws.dataset()
    ws.edit_json(paths.train_json, lambda d: _ann(d).pop("iscrowd"))
    config = ws.config(lambda raw: raw.__setitem__("dataset", {"dir": str(paths.root)}))
    return ["--config", str(config), "--dry-run"], paths.train_json, ["iscrowd"]


def _not_a_folder(ws: Workspace):
    blocker = ws.path("a_file")
    blocker.write_text("not a folder")
    config = ws.config(lambda raw: raw.__setitem__("storage_path", str(blocker / "sweeps")))
    return ["--config", str(config), "--dry-run"], blocker, ["storage_path", "not a folder"]


def _patient_in_both(ws: Workspace):
    paths = ws.dataset()
    val_patient = json.loads(paths.val_json.read_text())["images"][0]["patient_id"]
    ws.edit_json(paths.train_json, _set(_img, "patient_id", val_patient))
    argv = [str(paths.train_json), str(paths.val_json), "--images", str(paths.images_dir)]
    return argv, paths.val_json, [str(paths.train_json), "patient_id"]


def _patient_in_val_and_test(ws: Workspace):
    paths = ws.dataset()
    shutil.copy(paths.val_json, paths.test_json)  # val's patient held out again as the test split
    argv = [str(paths.train_json), str(paths.val_json), str(paths.test_json), "--images", str(paths.images_dir)]
    return argv, paths.test_json, [str(paths.val_json), "patient_id"]


def _test_fraction_leaving_train_empty(ws: Workspace):
    """Three patients, one blank frame and an all-background label map each; val and test would take all three."""
    frames, labels = ws.path("frames"), ws.path("labels")
    for folder in (frames, labels):
        folder.mkdir()
    for patient in ("P1", "P2", "P3"):
        Image.new("L", (16, 16), 128).save(frames / f"{patient}_f0.png")
        Image.new("L", (16, 16), 0).save(labels / f"{patient}_f0.png")
    return (["--images", str(frames), "--label-maps", str(labels), "--out", str(ws.path("cass")),
             "--val-fraction", "0.5", "--test-fraction", "0.4"], frames, ["--test-fraction", "leaving train no patient"])


def _export_out_exists(ws: Workspace):
    out = ws.path("best")
    out.mkdir()
    (out / "notes.txt").write_text("the user's")  # an empty folder counts as absent
    return [str(ws.path("sweep")), "--out", str(out)], out, ["--overwrite"]


def _export_empty_folder(ws: Workspace):
    ws.path("sweep").mkdir()
    return [str(ws.path("sweep")), "--out", str(ws.path("best"))], ws.path("sweep"), ["not a Tune experiment"]


def _export_a_file(ws: Workspace):
    ws.path("sweep").write_text("not a folder")
    return [str(ws.path("sweep")), "--out", str(ws.path("best"))], ws.path("sweep"), ["experiment folder not found"]


# --- issue 22: outputs over inputs, reads outside the dataset, inputs outside the first catalogue ----------


def _a_sweep_folder(ws: Workspace) -> Path:
    """A folder standing in for an experiment (refusals come before it is read)."""
    sweep = ws.path("sweep")
    sweep.mkdir()
    (sweep / "experiment_state-2026.json").write_text("{}")
    return sweep


def _export_over_the_sweep(ws: Workspace):
    sweep = _a_sweep_folder(ws)
    return [str(sweep), "--out", str(sweep), "--overwrite"], sweep, ["--out", "is the same path as EXPERIMENT_DIR"]


def _export_inside_the_sweep(ws: Workspace):
    sweep = _a_sweep_folder(ws)
    return [str(sweep), "--out", str(sweep / "best"), "--overwrite"], sweep, ["lies inside EXPERIMENT_DIR"]


def _export_over_a_foreign_folder(ws: Workspace):
    sweep, out = _a_sweep_folder(ws), ws.path("photos")
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"not ours")
    return [str(sweep), "--out", str(out), "--overwrite"], out, ["not an output of this project"]


def _report_over_the_sweep(ws: Workspace):
    sweep = _a_sweep_folder(ws)
    return [str(sweep), "--out", str(sweep.parent), "--overwrite"], sweep, ["contains EXPERIMENT_DIR"]


def _surgery_over_its_input(ws: Workspace):
    phase1 = ws.phase1()
    return [str(phase1), str(phase1), "--preset", "tiny", "--overwrite"], phase1, ["IN", "is the same path as"]


def _surgery_over_a_phase1_file(ws: Workspace):
    phase1, other = ws.phase1(), ws.path("other_phase1.pth")
    shutil.copy(phase1, other)
    return [str(phase1), str(other), "--preset", "tiny", "--overwrite"], other, ["not an output of this project"]


def _synthetic_over_a_foreign_folder(ws: Workspace):
    out = ws.path("thesis")
    out.mkdir()
    (out / "chapter1.tex").write_text("not ours")
    return ["--out", str(out), "--train", "1", "--val", "1", "--overwrite"], out, ["not an output of this project"]


def _converter_over_its_label_maps(ws: Workspace):
    out, frames = ws.path("medis"), ws.path("frames")
    for folder in (out / "labels", frames):
        folder.mkdir(parents=True)
    return (["--images", str(frames), "--label-maps", str(out / "labels"), "--out", str(out), "--overwrite"],
            out / "labels", ["contains --label-maps"])


def _file_name_outside(ws: Workspace, file_name: str | None = None, *fragments: str):
    paths = ws.dataset()
    outside = ws.path("outside.png")
    shutil.copy(ws.first_image(), outside)
    name = file_name if file_name is not None else str(outside)
    ws.edit_json(paths.train_json, _set(_img, "file_name", name))
    return [str(paths.train_json), "--images", str(paths.images_dir)], paths.train_json, list(fragments)


def _symlink_outside(ws: Workspace):
    paths = ws.dataset()
    outside = ws.path("outside.png")
    shutil.copy(ws.first_image(), outside)
    ws.first_image().unlink()
    ws.first_image().symlink_to(outside)
    return [str(paths.train_json), "--images", str(paths.images_dir)], paths.train_json, ["outside the images folder"]


def _resume_without_state(ws: Workspace):
    config = ws.config()
    (ws.path("out") / "bad-input").mkdir(parents=True)
    return ["--config", str(config), "--resume", "--dry-run"], ws.path("out") / "bad-input", ["no Tune experiment state"]


def _journal_is_a_folder(ws: Workspace):
    journal = ws.path("journal")
    journal.mkdir()
    config = ws.config(lambda raw: raw.__setitem__("searcher", {"storage": str(journal)}))
    return ["--config", str(config), "--dry-run"], journal, ["searcher.storage", "is a folder"]


def _config_text(ws: Workspace, text: str | bytes, *fragments: str):
    config = ws.config()
    config.write_bytes(text if isinstance(text, bytes) else text.encode())
    return ["--config", str(config), "--dry-run"], config, list(fragments)


def _remap(ws: Workspace, extra: dict[int, str], map_text: str | None = None, *fragments: str):
    """The synthetic train file named as the Stage 2 notes name its categories, plus ``extra`` (id -> name),
    remapped to ``out.json``; with ``map_text``, through a ``--map`` file (then the named file)."""
    source = ws.edit_json(ws.dataset().train_json, lambda d: d.__setitem__("categories", [
        *({"id": c.id, "name": c.short_name} for c in cass.CASS_CATEGORIES),
        *({"id": cid, "name": name} for cid, name in extra.items())]))
    argv, named = [str(source), str(ws.path("out.json"))], source
    if map_text is not None:
        named = ws.path("map.yaml")
        named.write_text(map_text)
        argv += ["--map", str(named)]
    return argv, named, list(fragments)


def _sixteen_bit_image(ws: Workspace):
    """The dataset's first frame re-saved as a 16-bit PNG (what a DICOM export writes), same name and size."""
    paths, image = ws.dataset(), ws.first_image()
    png16(image, np.asarray(Image.open(image)).astype(np.uint16) * 16)
    return ([str(paths.train_json), "--images", str(paths.images_dir)], image,
            ["16-bit image", "python -m data_prep.convert_images"])


def _convert_one(ws: Workspace, make: Callable[[Path], object], name: str, *fragments: str):
    """``python -m data_prep.convert_images FILE --out converted`` on the file ``make`` writes."""
    source = ws.path(name)
    make(source)
    return [str(source), "--out", str(ws.path("converted"))], source, list(fragments)


def _run_labelled_past_its_last_frame(ws: Workspace):
    """A 3-frame run whose label map names frame 7 (``<stem>_frame7.png``)."""
    run = write_dicom(ws.path("runs") / "P1_run1.dcm", xa_dataset(cine(3)))
    ws.path("labels").mkdir()
    Image.new("L", (64, 32), 0).save(ws.path("labels") / "P1_run1_frame7.png")
    return (["--images", str(run.parent), "--label-maps", str(ws.path("labels")), "--out", str(ws.path("cass"))],
            run, ["frame 7 is out of range", "3 frame(s)"])


def _export_folder(ws: Workspace) -> Path:
    """An export folder as sweeps/export.py writes it: the tiny native model, its trial config (on the workspace's
    dataset, which has no test split) and the manifest."""
    from trainables.checkpoints.exported import write_manifest
    from trainables.config import TrialConfig

    folder = ws.path("best")
    folder.mkdir()
    shutil.move(ws.native(), folder / "model.pt")
    config = TrialConfig(**ws.dataset().trial_fields(), preset="tiny", resolution=112)
    (folder / "trial_config.json").write_text(json.dumps(config.to_dict()))
    write_manifest(folder)
    return folder


def _evaluate_changed_export(ws: Workspace, change: Callable[[Path], None], *fragments: str):
    folder = _export_folder(ws)
    shutil.copy(ws.dataset().val_json, ws.dataset().test_json)  # a test split, so only the export is wrong
    change(folder)
    return [str(folder), "--split", "test"], folder, list(fragments)


def _evaluate_without_test_split(ws: Workspace):
    folder = _export_folder(ws)
    return [str(folder), "--split", "test"], ws.dataset().test_json, ["no test split", "--test-fraction"]


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
    for i in range(8))


CASES: dict[str, Case] = {
    # --- COCO annotation files (python -m data_prep.validate) ---
    "coco: file truncated mid-write": Case("validate", "coco", lambda ws: _validate_text(
        ws, ws.dataset().train_json.read_bytes()[:700], "invalid JSON at line")),
    "coco: empty file": Case("validate", "coco", lambda ws: _validate_text(ws, b"", "invalid JSON at line 1 column 1")),
    "coco: binary file, not UTF-8 text": Case("validate", "coco", lambda ws: _validate_text(
        ws, b"\x89PNG\r\n\x1a\n\xff\xfe\x00binary", "not UTF-8")),
    "coco: top level is a list": Case("validate", "coco", lambda ws: _validate_text(ws, b"[]", "top level")),
    "coco: NaN in a bbox": Case("validate", "coco", lambda ws: _validate(
        ws, lambda d: _ann(d)["bbox"].__setitem__(0, float("nan")), "field 'bbox'")),
    "coco: infinite area": Case("validate", "coco", lambda ws: _validate(
        ws, _set(_ann, "area", float("inf")), "field 'area'")),
    "coco: image id is a string": Case("validate", "coco", lambda ws: _validate(
        ws, _set(_img, "id", "1"), "field 'id' must be an int")),
    "coco: negative image width": Case("validate", "coco", lambda ws: _validate(
        ws, _set(_img, "width", -224), "'width'/'height'")),
    "coco: annotation is not an object": Case("validate", "coco", lambda ws: _validate(
        ws, lambda d: d["annotations"].__setitem__(0, 5), "annotations[0] is not an object")),
    "coco: iscrowd is 2": Case("validate", "coco", lambda ws: _validate(
        ws, _set(_ann, "iscrowd", 2), "field 'iscrowd' is 2")),
    "coco: bbox of 3 numbers": Case("validate", "coco", lambda ws: _validate(
        ws, lambda d: _ann(d)["bbox"].pop(), "field 'bbox' must be [x, y, width, height]")),
    "coco: polygon of strings": Case("validate", "coco", lambda ws: _validate(
        ws, _set(_ann, "segmentation", [["1", "2", "3", "4", "5", "6"]]), "polygon 0 is not a flat list")),
    "coco: a patient in train and val": Case("validate", "coco", _patient_in_both),
    "coco: a patient in val and test": Case("validate", "coco", _patient_in_val_and_test),
    "coco: a test fraction that leaves train empty": Case("create_coco_cass", "coco",
                                                          _test_fraction_leaving_train_empty),
    # --- image files ---
    "image: --images folder missing": Case("validate", "image", lambda ws: (
        [str(ws.dataset().train_json), "--images", str(ws.path("no-such-images"))], ws.path("no-such-images"),
        ["--images", "not a folder"])),
    "image: zero-byte file": Case("validate", "image", lambda ws: _image(
        ws, lambda p: p.write_bytes(b""), "field 'file_name'", "cannot be read as an image")),
    "image: JSON saved under an image's name": Case("validate", "image", lambda ws: _image(
        ws, lambda p: p.write_text("{}"), "field 'file_name'", "cannot be read as an image")),
    # images of any depth (16-bit, DICOM): refused where sam3 would misread them, converted otherwise
    "image: a 16-bit PNG in a dataset": Case("validate", "image", _sixteen_bit_image),
    "image: a DICOM without pixel data": Case("convert_images", "image", lambda ws: _convert_one(
        ws, without_pixel_data, "header.dcm", "holds no pixel data")),
    "image: a compressed DICOM without a decoder": Case("convert_images", "image", lambda ws: _convert_one(
        ws, compressed_without_decoder, "run.dcm", "no installed pydicom decoder", "pip install")),
    "image: a label map naming a frame past the run's end": Case("create_coco_cass", "image",
                                                                   _run_labelled_past_its_last_frame),
    "image: an image mode nothing here reads (CMYK)": Case("convert_images", "image", lambda ws: _convert_one(
        ws, lambda p: Image.new("CMYK", (8, 8)).save(p), "print.tif", "PIL mode CMYK")),
    # --- sweep configs (python sweeps/stage2.py --config X --dry-run) ---
    "config: YAML truncated": Case("stage2", "config", lambda ws: (
        ["--config", str(ws.config(text="name: x\ntrial: {max_steps: 4, val_every")), "--dry-run"],
        ws.path("sweep.yaml"),
        ["not valid YAML"])),
    "config: a list, not a mapping": Case("stage2", "config", lambda ws: (
        ["--config", str(ws.config(text="- name\n- trial\n")), "--dry-run"], ws.path("sweep.yaml"),
        ["must be a mapping"])),
    "config: resolution not a multiple of 14": Case("stage2", "config", lambda ws: _dry_run(
        ws, _trial(resolution=500), None, "resolution: 500 must be a positive multiple of the patch size 14")),
    "config: GPUs requested where none exist": Case("stage2", "config", lambda ws: _dry_run(
        ws, _trial(use_gpu=True), None, "trial.use_gpu", "0 GPU")),
    "config: NCCL backend on CPU workers": Case("stage2", "config", lambda ws: _dry_run(
        ws, _trial(backend="nccl"), None, "backend", "nccl", "use_gpu")),
    "config: storage_path under a regular file": Case("stage2", "config", _not_a_folder),
    "config: train_json does not exist": Case("stage2", "config", lambda ws: _dry_run(
        ws, _trial(train_json=str(ws.path("absent.json"))), lambda ws: ws.path("absent.json"),
        "trial.train_json", "does not exist")),
    "config: dashboard bound to every interface": Case("stage2", "config", lambda ws: _dry_run(
        ws, lambda raw: raw.__setitem__("ray", {"dashboard_host": "0.0.0.0"}), None, "ray.dashboard_host")),
    "config: negative learning rate": Case("stage2", "config", lambda ws: _dry_run(
        ws, _trial(lr_transformer=-1e-4), None, "lr_transformer", "must be >= 0")),
    "config: num_samples is a string": Case("stage2", "config", lambda ws: _dry_run(
        ws, lambda raw: raw.__setitem__("num_samples", "ten"), None, "num_samples: expected int")),
    "config: --resume with no sweep to resume": Case("stage2", "config", lambda ws: (
        ["--config", str(ws.config()), "--resume", "--dry-run"], ws.path("out") / "bad-input", ["--resume"])),
    "config: dataset whose COCO file is broken": Case("stage2", "coco", _coco_dataset_case),
    # --- search spaces (through the sweep config that names them) ---
    "space: file missing": Case("stage2", "search space", lambda ws: _dry_run(
        ws, lambda raw: raw.__setitem__("search_space", str(ws.path("nope.yaml"))), lambda ws: ws.path("nope.yaml"),
        "cannot read the search space")),
    "space: YAML truncated": Case("stage2", "search space", lambda ws: _space(
        ws, "params:\n  lr_transformer: {type: loguniform, low: 2.0e-5", "not valid YAML")),
    "space: qrandint with q 0": Case("stage2", "search space", lambda ws: _space(
        ws, {"params": {"warmup_steps": {"type": "qrandint", "low": 0, "high": 100, "q": 0}}},
        "params.warmup_steps", "q must be positive")),
    "space: searches use_gpu": Case("stage2", "search space", lambda ws: _space(
        ws, {"params": {"use_gpu": {"type": "choice", "values": [True, False]}}}, "params.use_gpu",
        "fixed per sweep")),
    "space: NaN bound": Case("stage2", "search space", lambda ws: _space(
        ws, "params:\n  loss_ce: {type: uniform, low: .nan, high: 100}\n", "params.loss_ce", "expected a finite float")),
    "space: resolution choice not a multiple of 14": Case("stage2", "search space", lambda ws: _space(
        ws, {"params": {"resolution": {"type": "choice", "values": [224, 500]}}}, "params.resolution",
        "value 500")),
    "space: baseline point outside the domain": Case("stage2", "search space", lambda ws: _space(
        ws, {"params": {"loss_ce": {"type": "uniform", "low": 10, "high": 100}},
             "points_to_evaluate": [{"loss_ce": 500.0}]}, "points_to_evaluate[0].loss_ce", "outside")),
    # --- checkpoints: the sweep's starting weights (trial.checkpoint) ---
    "checkpoint: trial.checkpoint runs code when unpickled": Case("stage2", "checkpoint", lambda ws: _dry_run(
        ws, _trial(checkpoint=str(ws.torch_file("evil.pt", {"detector.x": torch.zeros(1),
                                                            "p": _TouchesAFile(ws.path("pwned"))}))),
        lambda ws: ws.path("evil.pt"), "trial.checkpoint", "would run code")),
    "checkpoint: trial.checkpoint truncated": Case("stage2", "checkpoint", lambda ws: _dry_run(
        ws, _trial(checkpoint=str(_cut(ws, ws.native(), "cut.pt", 4096))), lambda ws: ws.path("cut.pt"),
        "trial.checkpoint", "truncated or corrupt")),
    "checkpoint: trial.checkpoint not surgered (sam3. prefix)": Case("stage2", "checkpoint", lambda ws: _dry_run(
        ws, _trial(checkpoint=str(ws.torch_file("phase1_flat.pt", dict(ws.phase1_state)))),
        lambda ws: ws.path("phase1_flat.pt"), "trial.checkpoint", "'detector.' prefix", "trainables.checkpoints.surgery")),
    # --- checkpoints: Phase 1 files (python -m trainables.checkpoints.surgery IN OUT --preset tiny) ---
    "surgery: Phase 1 file truncated": Case("surgery", "checkpoint", lambda ws: _surgery(
        ws, _cut(ws, ws.phase1(), "cut.pth", 100_000), "truncated or corrupt")),
    "surgery: pickle that would run code": Case("surgery", "checkpoint", lambda ws: _surgery(
        ws, ws.torch_file("evil.pth", {"model": {"sam3.x": torch.zeros(1)}, "p": _TouchesAFile(ws.path("pwned"))}),
        "would run code")),
    "surgery: wrong key prefix": Case("surgery", "checkpoint", lambda ws: _surgery(
        ws, ws.torch_file("net.pth", {"state_dict": {k.replace("sam3.", "net.", 1): v
                                                     for k, v in ws.phase1_state.items()}}),
        "no sam3 weights found", "['net.'")),
    "surgery: a tensor of the wrong shape": Case("surgery", "checkpoint", lambda ws: _surgery(
        ws, _phase1_with(ws, "shape.pth", lambda s: s.__setitem__("sam3.dot_prod_scoring.hs_proj.weight",
                                                                   torch.zeros(32, 64))),
        "dot_prod_scoring.hs_proj.weight", "file [32, 64] vs model [64, 64]")),
    "surgery: a tensor missing": Case("surgery", "checkpoint", lambda ws: _surgery(
        ws, _phase1_with(ws, "missing.pth", lambda s: s.pop("sam3.transformer.decoder.presence_token.weight")),
        "missing from the file", "transformer.decoder")),
    "surgery: empty file": Case("surgery", "checkpoint", lambda ws: _surgery(
        ws, _cut(ws, ws.phase1(), "empty.pth", 0), "empty")),
    "surgery: a bare tensor, not a state dict": Case("surgery", "checkpoint", lambda ws: _surgery(
        ws, ws.torch_file("tensor.pth", torch.zeros(3)), "no state dict found")),
    "surgery: non-tensor entries": Case("surgery", "checkpoint", lambda ws: _surgery(
        ws, ws.torch_file("mixed.pth", {"sam3.a": torch.zeros(1), "sam3.lr": 0.1}), "not tensors", "sam3.lr")),
    "surgery: input file missing": Case("surgery", "checkpoint", lambda ws: _surgery(
        ws, ws.path("absent.pth"), "not found")),
    "surgery: output folder is a regular file": Case("surgery", "checkpoint", _surgery_into_a_file),
    # real Phase 1 files: plain metadata is read, anything else refused by name (issue 17)
    "surgery: a pickled module beside the weights (a disallowed global)": Case("surgery", "checkpoint",
        lambda ws: _surgery(ws, ws.torch_file("module.pth", {"model": dict(ws.phase1_state), "epoch": 3,
                                                             "ema": torch.nn.Linear(2, 2)}),
                            "torch.nn.modules.linear.Linear", "not allowed")),
    "surgery: --ema on a file without EMA weights": Case("surgery", "checkpoint", lambda ws: (
        [*_surgery(ws, ws.phase1())[0], "--ema"], ws.path("phase1.pth"), ["--ema", "no EMA weights"])),
    "surgery: unexpected keys without --allow-unexpected": Case("surgery", "checkpoint", lambda ws: _surgery(
        ws, _phase1_with(ws, "unexpected.pth", lambda s: s.__setitem__("sam3.transformer.decoder.extra.weight",
                                                                        torch.zeros(2))),
        "unexpected in the file", "--allow-unexpected transformer.decoder.")),
    # --- sweep folders (python -m sweeps.export) ---
    "export: experiment folder missing": Case("export", "sweep folder", lambda ws: (
        [str(ws.path("sweep")), "--out", str(ws.path("best"))], ws.path("sweep"), ["experiment folder not found"])),
    "export: experiment is a regular file": Case("export", "sweep folder", _export_a_file),
    "export: an empty folder, not a Tune experiment": Case("export", "sweep folder", _export_empty_folder),
    "export: --out exists": Case("export", "sweep folder", _export_out_exists),
    # outputs never overlap inputs; --overwrite replaces only this project's own outputs
    "export: --out is the sweep, with --overwrite": Case("export", "output", _export_over_the_sweep),
    "export: --out inside the sweep": Case("export", "output", _export_inside_the_sweep),
    "export: --overwrite over a folder it did not write": Case("export", "output", _export_over_a_foreign_folder),
    "report: --out contains the sweep": Case("report", "output", _report_over_the_sweep),
    "surgery: OUT is IN": Case("surgery", "output", _surgery_over_its_input),
    "surgery: --overwrite over a Phase 1 file": Case("surgery", "output", _surgery_over_a_phase1_file),
    "synthetic: --overwrite over a folder it did not write": Case("synthetic", "output",
                                                                  _synthetic_over_a_foreign_folder),
    "create_coco_cass: --out holds the label maps": Case("create_coco_cass", "output", _converter_over_its_label_maps),
    # a dataset is read only from its images folder
    "coco: file_name climbs out with ..": Case("validate", "coco", lambda ws: _file_name_outside(
        ws, "../../outside.png", "image id", "leaves the images folder")),
    "coco: absolute file_name": Case("validate", "coco", lambda ws: _file_name_outside(
        ws, None, "leaves the images folder")),
    "coco: Windows drive in file_name": Case("validate", "coco", lambda ws: _file_name_outside(
        ws, "E:\\angio\\frame.png", "leaves the images folder")),
    "coco: image symlinked from outside": Case("validate", "coco", _symlink_outside),
    # what a run would wait on or crash on, refused at --dry-run
    "config: more CPUs per trial than the machine has": Case("stage2", "config", lambda ws: _dry_run(
        ws, _trial(num_workers=1000), None, "trial.num_workers", "wait for them forever")),
    "config: negative seed": Case("stage2", "config", lambda ws: _dry_run(
        ws, _trial(seed=-1), None, "trial.seed", "must lie in")),
    "config: searcher seed too large": Case("stage2", "config", lambda ws: _dry_run(
        ws, lambda raw: raw.__setitem__("searcher", {"seed": 2**40}), None, "searcher.seed")),
    "config: journal path is a folder": Case("stage2", "config", _journal_is_a_folder),
    "config: --resume of a folder without Tune state": Case("stage2", "sweep folder", _resume_without_state),
    "config: name escapes the storage folder": Case("stage2", "config", lambda ws: _dry_run(
        ws, lambda raw: raw.__setitem__("name", ".."), None, "name", "plain folder name")),
    "config: NaN learning rate": Case("stage2", "config", lambda ws: _config_text(
        ws, "name: x\nstorage_path: /tmp/x\nsearch_space: s\ntrial: {lr_vision: .nan}\n", "trial.lr_vision",
        "finite")),
    "config: a number too large for a float": Case("stage2", "config", lambda ws: _config_text(
        ws, "name: x\nstorage_path: /tmp/x\nsearch_space: s\ntrial: {weight_decay: 1e999}\n", "trial.weight_decay",
        "finite")),
    "config: a list where a string belongs": Case("stage2", "config", lambda ws: _dry_run(
        ws, lambda raw: raw.__setitem__("name", ["a", "b"]), None, "name: expected str")),
    "config: a key given twice": Case("stage2", "config", lambda ws: _config_text(
        ws, "name: x\nname: y\nstorage_path: /tmp/x\nsearch_space: s\ntrial: {}\n", "line 2", "given twice")),
    "config: not UTF-8": Case("stage2", "config", lambda ws: _config_text(
        ws, "name: caf\xe9\n".encode("latin-1"), "not UTF-8")),
    "config: a YAML alias bomb": Case("stage2", "config", lambda ws: _config_text(ws, ALIAS_BOMB, "aliases")),
    # an existing COCO file mapped onto CASS (python -m data_prep.remap IN OUT)
    "remap: two source categories onto one CASS category": Case("remap", "coco", lambda ws: _remap(
        ws, {77: "Proximal RCA"}, None, "id 1 'proximal_rca' and id 77 'Proximal RCA'", "proximal_rca")),
    "remap: a category matching no CASS category, without --drop-unmapped": Case("remap", "coco", lambda ws: _remap(
        ws, {99: "catheter"}, None, "category id 99 'catheter'", "--drop-unmapped")),
    "remap: --map names an unknown CASS category": Case("remap", "coco", lambda ws: _remap(
        ws, {}, "proximal_rca: proximal_rcx\n", "key 'proximal_rca'", "'proximal_rcx' is not a CASS category")),
    # exported models (python -m sweeps.evaluate): the manifest must verify
    "evaluate: an export folder without its manifest": Case("evaluate", "checkpoint", lambda ws: (
        _evaluate_changed_export(ws, lambda f: (f / "MANIFEST.sha256").unlink(), "not an export folder"))),
    "evaluate: an export with a changed file": Case("evaluate", "checkpoint", lambda ws: _evaluate_changed_export(
        ws, lambda f: (f / "trial_config.json").write_text("{}"), "trial_config.json", "sha256 differs")),
    "evaluate: a dataset without test.json": Case("evaluate", "coco", _evaluate_without_test_split),
    # new angiograms through an exported model (python -m sweeps.predict EXPORT_DIR INPUT --out DIR)
    "predict: export folder without its manifest": Case("predict", "checkpoint", lambda ws: _predict(
        ws, lambda export: (export / "MANIFEST.sha256").unlink(), "no MANIFEST.sha256")),
    "predict: exported model.pt changed after the export": Case("predict", "checkpoint", lambda ws: _predict(
        ws, lambda export: (export / "model.pt").open("ab").write(b"\0"), "model.pt: sha256 differs")),
    "predict: INPUT folder holding no image": Case("predict", "image", lambda ws: _predict_input(
        ws, {"notes.txt": b"a text file"}, None, "holds no image", "notes.txt")),
    "predict: INPUT's only image is not an image": Case("predict", "image", lambda ws: _predict_input(
        ws, {"frame.png": b"not a PNG"}, "frame.png", "none of its 1 image file(s) can be read")),
    "predict: --out inside INPUT": Case("predict", "output", lambda ws: _predict_input(
        ws, {"frame.png": b"never read"}, None, "lies inside INPUT", out="angiograms/predicted")),
}


def _predict(ws: Workspace, damage: Callable[[Path], object], *fragments: str):
    """``predict EXPORT_DIR angiograms --out predicted`` with the export broken by ``damage``."""
    export_dir, angiograms = _export_folder(ws), ws.path("angiograms")
    angiograms.mkdir()
    shutil.copy(ws.first_image(), angiograms / "frame.png")
    damage(export_dir)
    return [str(export_dir), str(angiograms), "--out", str(ws.path("predicted"))], export_dir, list(fragments)


def _predict_input(ws: Workspace, files: dict[str, bytes], named: str | None, *fragments: str,
                   out: str = "predicted"):
    """``predict EXPORT_DIR angiograms --out OUT``, ``angiograms`` holding ``files`` (``named``: the file the
    message must name; default the folder)."""
    export_dir, angiograms = _export_folder(ws), ws.path("angiograms")
    angiograms.mkdir()
    for name, content in files.items():
        (angiograms / name).write_bytes(content)
    return ([str(export_dir), str(angiograms), "--out", str(ws.path(out))],
            angiograms / named if named else angiograms, list(fragments))


def listing(root: Path) -> dict[str, int]:
    """Every path under ``root`` with its size (folders: -1): what the workspace holds."""
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1) for p in sorted(root.rglob("*"))}


@pytest.fixture
def workspace(tmp_path, synthetic_dataset, model_files, monkeypatch):
    def no_ray(*args, **kwargs):
        raise AssertionError("a bad input reached ray_compat.init_ray")

    monkeypatch.setattr(ray_compat, "init_ray", no_ray)
    return Workspace(tmp_path, synthetic_dataset, model_files)


@pytest.mark.parametrize("name", CASES)
def test_bad_input_exits_2_with_one_message_naming_file_and_field_and_writes_nothing(name, workspace, capsys):
    case = CASES[name]
    argv, named_file, fragments = case.build(workspace)
    capsys.readouterr()
    before = listing(workspace.root)

    code = run_cli(CLIS[case.cli], argv)

    out, err = capsys.readouterr()
    assert code == 2, f"exit {code}; stdout:\n{out}\nstderr:\n{err}"
    assert "Traceback" not in err
    lines = err.splitlines()
    assert sum(line.startswith("error:") for line in lines) == 1, err
    assert sum(line.startswith("  - ") for line in lines) <= 1, f"more than one problem reported:\n{err}"
    assert str(named_file) in err, f"the message does not name {named_file}:\n{err}"
    missing = [f for f in fragments if f not in err]
    assert not missing, f"the message lacks {missing}:\n{err}"
    assert listing(workspace.root) == before, "the command wrote (or left) files"


def test_the_catalogue_covers_every_kind_of_input_with_at_least_25_cases():
    kinds = {case.kind for case in CASES.values()}
    assert len(CASES) >= 25
    assert kinds == {"coco", "image", "config", "search space", "checkpoint", "sweep folder", "output"}
    assert {case.cli for case in CASES.values()} == set(CLIS)


def test_an_unknown_cli_option_value_exits_2_through_argparse(workspace, capsys):
    with pytest.raises(SystemExit) as exit_:
        export.main([str(workspace.path("sweep")), "--out", str(workspace.path("best")), "--pick", "loss"])
    assert exit_.value.code == 2 and "invalid choice: 'loss'" in capsys.readouterr().err
    assert listing(workspace.root) == {}


def test_a_category_absent_from_train_is_a_warning_not_an_error(workspace, capsys):
    paths = workspace.dataset()
    workspace.edit_json(paths.train_json, lambda d: d.__setitem__(
        "annotations", [a for a in d["annotations"] if a["category_id"] != 4]))
    assert run_cli(validate.main, [str(paths.train_json), "--images", str(paths.images_dir)]) == 0
    out = capsys.readouterr().out
    assert f"warning: {paths.train_json}: category id 4" in out and "no instance" in out
