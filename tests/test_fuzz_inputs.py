"""Property: for ANY input a command reads, it exits 0, or exits 2 with one ``error:`` line; never a traceback,
never a hang, and when it refuses, the file system is as it was.

Hypothesis generates the inputs of every reader: sweep configs (``sweeps.stage2 --dry-run``), search spaces,
COCO files (``data_prep.validate``), label maps (``data_prep.create_coco_cass``), checkpoints
(``trainables.checkpoints.surgery``) and experiment folders (``sweeps.export``, ``sweeps.report``). Most are
valid files with one part broken (a field replaced by any JSON/YAML value, a key removed), the rest raw bytes.

``make test`` runs the ``ci`` profile (a bounded, derandomised number of examples per property);
``python bench/fuzz_inputs.py`` runs the ``long`` profile and prints the counts (RELIABILITY.md records them).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from common.errors import run_cli
from data_prep import create_coco_cass, validate
from search_spaces import parse_search_spec
from sweeps import export, ray_compat, report, stage2
from trainables.checkpoints import surgery

settings.register_profile("ci", max_examples=50, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("long", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "400")), deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("FUZZ_PROFILE", "ci"))

LOCAL_SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "local.yaml"

# Any value a JSON or YAML file can hold, with the edge cases that broke readers before: huge and
# non-finite numbers, empty and long strings, nesting.
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
                    st.sampled_from(["2e-3", "1e999", ".nan", "../..", "/etc/passwd", "C:\\x", "", " ", "~"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                      max_leaves=12)


def listing(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1) for p in sorted(root.rglob("*"))}


def run(main, argv: list[str]) -> tuple[int, str]:
    """``run_cli(main, argv)`` with stderr captured; argparse's own exit 2 counts as a refusal."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = run_cli(main, argv)
        except SystemExit as exit_:
            code = exit_.code
    return code, err.getvalue()


def assert_exit_0_or_one_error(code: int, err: str) -> None:
    assert code in (0, 2), f"exit {code}:\n{err}"
    assert "Traceback" not in err, err
    if code == 2:
        assert sum(line.startswith(("error:", "usage:")) for line in err.splitlines()) == 1, err


def mutate(doc, path: list, value, delete: bool):
    """``doc`` with the element at ``path`` (indices taken modulo the container's size) set or deleted."""
    doc = copy.deepcopy(doc)
    node = doc
    for step in path[:-1]:
        if isinstance(node, dict) and node:
            node = node[sorted(node, key=str)[step % len(node)]]
        elif isinstance(node, list) and node:
            node = node[step % len(node)]
        else:
            return value
    if isinstance(node, dict) and node:
        key = sorted(node, key=str)[path[-1] % len(node)]
        if delete:
            del node[key]
        else:
            node[key] = value
    elif isinstance(node, list) and node:
        node[path[-1] % len(node)] = value
    return doc


MUTATIONS = st.tuples(st.lists(st.integers(0, 50), min_size=1, max_size=4), VALUES, st.booleans())


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a fuzzed input reached ray_compat.init_ray")

    monkeypatch.setattr(ray_compat, "init_ray", refuse)


def base_config(root: Path) -> dict:
    return {"name": "fuzz", "storage_path": str(root / "out"), "search_space": str(LOCAL_SPACE),
            "num_samples": 2, "max_concurrent_trials": 1, "checkpoint": {"num_to_keep": 1},
            "trial": {"max_steps": 4, "val_every": 2, "num_workers": 1, "cpu_threads_per_worker": 1},
            "scheduler": {"grace_period": 2}, "ray": {"address": None}}


@given(MUTATIONS)
def test_any_sweep_config_is_run_or_refused_in_one_line(mutation):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        raw = mutate(base_config(root), *mutation)
        config = root / "sweep.yaml"
        config.write_text(yaml.safe_dump(raw, allow_unicode=True))
        before = listing(root)
        assert_exit_0_or_one_error(*run(stage2.main, ["--config", str(config), "--dry-run"]))
        assert listing(root) == before


@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_bytes_as_a_sweep_config_are_refused_in_one_line(content):
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "sweep.yaml"
        config.write_bytes(content)
        before = listing(Path(tmp))
        assert_exit_0_or_one_error(*run(stage2.main, ["--config", str(config), "--dry-run"]))
        assert listing(Path(tmp)) == before


@given(MUTATIONS)
def test_any_search_space_is_parsed_or_refused(mutation):
    from common.errors import InputError

    raw = mutate(yaml.safe_load(LOCAL_SPACE.read_text()), *mutation)
    try:
        parse_search_spec(raw, source="space.yaml")
    except InputError as err:
        assert str(err).startswith("space.yaml")


@pytest.fixture(scope="module")
def coco_dataset(tmp_path_factory):
    from data_prep.synthetic import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("fuzz-coco") / "d", n_train=2, n_val=1, size=64, seed=0)


@given(MUTATIONS)
def test_any_coco_file_is_accepted_or_refused_in_one_line(coco_dataset, mutation):
    doc = mutate(json.loads(coco_dataset.train_json.read_text()), *mutation)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.json"
        path.write_text(json.dumps(doc))
        assert_exit_0_or_one_error(*run(validate.main, [str(path), "--images", str(coco_dataset.images_dir)]))


@given(st.binary(max_size=400))
def test_any_bytes_as_a_coco_file_are_refused_in_one_line(coco_dataset, content):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.json"
        path.write_bytes(content)
        assert_exit_0_or_one_error(*run(validate.main, [str(path), "--images", str(coco_dataset.images_dir)]))


LABEL_ARRAYS = st.tuples(
    st.sampled_from([np.uint8, np.uint16, np.int32, np.float32, np.bool_]),
    st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**31 - 1), st.sampled_from([".png", ".tif", ".bin"]))


@given(LABEL_ARRAYS, LABEL_ARRAYS)
def test_any_label_map_is_converted_or_refused_without_a_partial_dataset(frame, label):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "images").mkdir(), (root / "labels").mkdir()
        for folder, (dtype, height, width, seed, suffix) in (("images", frame), ("labels", label)):
            rng = np.random.default_rng(seed)
            values = rng.integers(0, 20, (height, width)).astype(dtype)
            name = root / folder / f"P1_f0{'.png' if folder == 'images' else suffix}"
            try:
                Image.fromarray(values).save(name)
            except (TypeError, OSError, KeyError, ValueError):
                name.write_bytes(values.tobytes())  # a file PIL cannot write is one it must refuse to read
        before = listing(root)
        code, err = run(create_coco_cass.main, ["--images", str(root / "images"), "--label-maps",
                                                str(root / "labels"), "--out", str(root / "out")])
        assert_exit_0_or_one_error(code, err)
        if code == 2:
            assert listing(root) == before


TENSORS = st.builds(lambda shape, dtype: torch.zeros(shape, dtype=dtype),
                    st.lists(st.integers(0, 3), max_size=3), st.sampled_from([torch.float32, torch.int64, torch.bool]))
CHECKPOINTS = st.recursive(st.one_of(TENSORS, SCALARS), lambda inner: st.dictionaries(
    st.sampled_from(["model", "state_dict", "sam3.x", "detector.a", "module.sam3.b", "epoch", "seg_head.w"])
    | st.text(max_size=8), inner, max_size=5), max_leaves=8)


@given(CHECKPOINTS | st.binary(max_size=200))
@settings(max_examples=max(12, settings().max_examples // 4))
def test_any_checkpoint_is_converted_or_refused_without_output(obj):
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "phase1.pth", Path(tmp) / "out" / "native.pt"
        if isinstance(obj, bytes):
            src.write_bytes(obj)
        else:
            torch.save(obj, src)
        before = listing(Path(tmp))
        code, err = run(surgery.main, [str(src), str(dst), "--preset", "tiny"])
        assert_exit_0_or_one_error(code, err)
        if code == 2:
            assert listing(Path(tmp)) == before


EXPERIMENT_FILES = st.dictionaries(
    st.sampled_from(["experiment_state-2026-12-05.json", "basic-variant-state.json", "tuner.pkl",
                     "trial_1/params.json", "trial_1/result.json", "trial_1/progress.csv", "optuna_journal.log"]),
    st.one_of(st.binary(max_size=100), VALUES.map(lambda v: json.dumps(v).encode())), max_size=5)


@given(EXPERIMENT_FILES, st.sampled_from(["export", "report"]))
@settings(max_examples=max(15, settings().max_examples // 4))
def test_any_experiment_folder_is_read_or_refused_without_output(files, command):
    with tempfile.TemporaryDirectory() as tmp:
        sweep = Path(tmp) / "sweep"
        sweep.mkdir()
        for name, content in files.items():
            (sweep / name).parent.mkdir(parents=True, exist_ok=True)
            (sweep / name).write_bytes(content)
        before = listing(Path(tmp))
        main = export.main if command == "export" else report.main
        code, err = run(main, [str(sweep), "--out", str(Path(tmp) / "result")])
        assert_exit_0_or_one_error(code, err)
        if code == 2:
            assert listing(Path(tmp)) == before


def test_the_fuzz_profile_in_force_is_named():
    """Guards the budget: CI runs the small, derandomised profile unless FUZZ_PROFILE says otherwise."""
    long = int(os.environ.get("FUZZ_EXAMPLES", "400"))
    assert settings().max_examples == (50 if os.environ.get("FUZZ_PROFILE", "ci") == "ci" else long)
