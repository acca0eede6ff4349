"""Specification of where commands write (``common/outputs.py``): never over an input, never over what this
project did not write, never half: an error, Ctrl-C or a kill leaves the target as it was.

The mechanism is tested directly, then through real commands interrupted mid-run in a subprocess (SIGINT, as
Ctrl-C sends, and SIGKILL, which no cleanup can catch).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.errors import InputError
from common.outputs import MARKER, check_apart, staged_file, staged_folder

ROOT = Path(__file__).resolve().parents[1]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path below ``folder`` with its bytes (folders: None)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("out, relation", [("in", "is the same path as"), ("in/sub", "lies inside"),
                                           (".", "contains"), ("in/../in", "is the same path as")])
def test_an_output_overlapping_an_input_is_refused(tmp_path, out, relation):
    (tmp_path / "in").mkdir()
    with pytest.raises(InputError) as err:
        check_apart({"--out": tmp_path / out}, {"--images": tmp_path / "in"})
    assert relation in str(err.value) and "--images" in str(err.value)


def test_a_symlink_to_an_input_is_the_input(tmp_path):
    (tmp_path / "labels").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "labels")
    with pytest.raises(InputError, match="is the same path as"):
        check_apart({"--out": tmp_path / "alias"}, {"--label-maps": tmp_path / "labels"})
    check_apart({"--out": tmp_path / "elsewhere"}, {"--label-maps": tmp_path / "labels", "--masks": None})


@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_a_failure_inside_leaves_the_target_as_it_was(tmp_path, failure):
    target = tmp_path / "a" / "b" / "out"
    with pytest.raises(failure):
        with staged_folder(target) as staging:
            (staging / "half.json").write_text("{")
            raise failure()
    assert list(tmp_path.iterdir()) == []  # no target, no staging, no parent folder made for it
    with staged_folder(target) as staging:
        (staging / "whole.json").write_text("{}")
    before = snapshot(target)
    with pytest.raises(failure):
        with staged_folder(target, overwrite=True) as staging:
            (staging / "other.json").write_text("[")
            raise failure()
    assert snapshot(target) == before and sorted(p.name for p in target.parent.iterdir()) == ["out"]


def test_overwrite_replaces_only_what_this_project_wrote(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "thesis.tex").write_text("years of work")
    for overwrite, message in ((False, "already exists"), (True, "not an output of this project")):
        with pytest.raises(InputError, match=message):
            with staged_folder(theirs, overwrite=overwrite):
                pass
    assert (theirs / "thesis.tex").read_text() == "years of work"
    ours = tmp_path / "ours"
    with staged_folder(ours) as staging:
        (staging / "v1").write_text("1")
    with staged_folder(ours, overwrite=True) as staging:
        (staging / "v2").write_text("2")
    assert sorted(p.name for p in ours.iterdir()) == [MARKER, "v2"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with staged_folder(empty) as staging:  # an empty folder counts as absent
        (staging / "x").write_text("x")
    assert (empty / "x").is_file()


def test_a_file_is_replaced_only_when_it_is_ours(tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"phase 1 weights")
    with pytest.raises(InputError, match="not an output of this project"):
        with staged_file(target, overwrite=True, is_ours=lambda path: False):
            pass
    with pytest.raises(RuntimeError):
        with staged_file(target, overwrite=True, is_ours=lambda path: True) as staging:
            staging.write_bytes(b"half")
            raise RuntimeError()
    assert target.read_bytes() == b"phase 1 weights" and [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    with staged_file(target, overwrite=True, is_ours=lambda path: True) as staging:
        staging.write_bytes(b"native")
    assert target.read_bytes() == b"native"


def start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "TORCHDYNAMO_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def interrupt_when_staging(process: subprocess.Popen, folder: Path, name: str, sig: int, *, count: int = 5) -> None:
    """Send ``sig`` once the command's staging folder beside ``folder/name`` holds ``count`` files."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        staging = [p for p in folder.glob(f".{name}.staging-*") if p.is_dir()]
        if staging and sum(1 for p in staging[0].rglob("*") if p.is_file()) >= count:
            process.send_signal(sig)
            process.wait(timeout=60)
            return
        if process.poll() is not None:
            pytest.fail(f"the command ended before it could be interrupted:\n{process.stderr.read()}")
        time.sleep(0.05)
    process.kill()
    pytest.fail("the command never staged its output")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill"])
def test_synthetic_interrupted_mid_run_leaves_the_previous_dataset_whole(tmp_path, sig):
    out = tmp_path / "data"
    first = start(["data_prep.synthetic", "--out", str(out), "--train", "1", "--val", "1", "--size", "64"])
    assert first.wait(timeout=300) == 0, first.stderr.read()
    before = snapshot(out)
    process = start(["data_prep.synthetic", "--out", str(out), "--train", "400", "--val", "1", "--size", "224",
                     "--overwrite"])
    interrupt_when_staging(process, tmp_path, "data", sig, count=20)
    assert process.returncode != 0
    assert snapshot(out) == before
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "data"]
    if sig == signal.SIGINT:
        assert leftovers == [], "Ctrl-C left a staging folder behind"
        assert "Traceback" not in process.stderr.read()
    else:  # a kill cannot clean up: at most its hidden staging folder stays, never a half-written target
        assert all(name.startswith(".data.staging-") for name in leftovers)


@pytest.mark.slow
def test_create_coco_cass_killed_mid_run_leaves_no_dataset(tmp_path):
    images, labels = tmp_path / "medis" / "images", tmp_path / "medis" / "labels"
    images.mkdir(parents=True), labels.mkdir()
    rng = np.random.default_rng(0)
    for patient in range(40):
        for frame in range(5):
            stem = f"P{patient:03d}_f{frame}"
            Image.fromarray(rng.integers(0, 255, (256, 256), dtype=np.uint8)).save(images / f"{stem}.png")
            label = np.zeros((256, 256), np.uint8)
            label[100:140, 20:240] = 1 + (patient + frame) % 14
            Image.fromarray(label).save(labels / f"{stem}.png")
    inputs = snapshot(tmp_path / "medis")
    out = tmp_path / "cass"
    process = start(["data_prep.create_coco_cass", "--images", str(images), "--label-maps", str(labels),
                     "--out", str(out)])
    interrupt_when_staging(process, tmp_path, "cass", signal.SIGKILL, count=20)
    assert not out.exists() and snapshot(tmp_path / "medis") == inputs
