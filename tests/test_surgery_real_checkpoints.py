"""Weight surgery on files that look like real training checkpoints (issue 17, part 3), through the CLI users run.

Real Phase 1 files hold metadata beside the weights (numpy scalars, ``argparse.Namespace``, an OmegaConf config,
optimizer and RNG state), keep the weights under one of several keys, may be DDP saves, and may carry EMA
weights. Each is converted by ``python -m trainables.checkpoints.surgery`` (``run_cli(main, argv)``), and the
result is loaded strictly into a fresh model and compared bitwise with the weights the file was written from.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from test_surgery import surgery_cli

from common.errors import InputError
from trainables.checkpoints.allowlist import Inert, metadata_globals
from trainables.checkpoints.files import safe_torch_load
from trainables.checkpoints.native import PREFIX, load_native
from trainables.checkpoints.phase1 import LAYOUTS, training_metadata, write_phase1_checkpoint
from trainables.checkpoints.surgery import build_skeleton, extra_path
from trainables.model import build_model
from trainables.resolution import global_attention_blocks


@pytest.fixture(scope="module")
def source():
    torch.set_num_threads(1)
    return build_model("tiny", seed=3)



def converted_state(dst: Path) -> dict[str, torch.Tensor]:
    """OUT loaded strictly into a fresh tiny model: its state (RoPE tables excluded, they are recomputed)."""
    target = build_model("tiny", seed=99)
    assert load_native(target, dst).ok
    return {k: v for k, v in target.state_dict().items() if not k.endswith("freqs_cis")}


def assert_weights(dst: Path, expected: dict[str, torch.Tensor]) -> None:
    got = converted_state(dst)
    for key, value in got.items():
        assert torch.equal(value, expected[f"sam3.{key}"].float() if value.is_floating_point()
                           else expected[f"sam3.{key}"]), key


def nothing_written(tmp_path: Path, *inputs: Path) -> bool:
    return sorted(tmp_path.iterdir()) == sorted(inputs)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_converts_to_the_raw_weights(source, tmp_path, capsys, layout):
    src, dst = tmp_path / f"{layout}.pth", tmp_path / "native.pt"
    state = write_phase1_checkpoint(source, src, resolution=672, layout=layout)
    assert surgery_cli(src, dst) == 0
    report = capsys.readouterr().out
    assert "no missing, unexpected or wrong-shape tensors" in report and "set aside 3" in report
    where = {"plain": "the top level", "ddp": "'state_dict'"}.get(layout, "'model'")
    assert f"weights: 287 tensors from {where}" in report
    if layout in ("training", "ema"):
        assert "ignored 8 other entries: epoch, step, best_dice, args, optimizer, scheduler, rng, cfg" in report
        assert "optimizer state; the native format holds weights only" in report
    assert ("EMA weights exist" in report and "pass --ema" in report) == (layout == "ema")
    assert_weights(dst, state)
    assert set(torch.load(extra_path(dst), weights_only=True)) == {
        "seg_head.conv.weight", "seg_head.conv.bias", "view_encoder.embed.weight"}


def test_ema_takes_the_ema_weights_and_drops_the_helpers_counter(source, tmp_path, capsys):
    src, dst = tmp_path / "ema.pth", tmp_path / "native.pt"
    state = write_phase1_checkpoint(source, src, layout="ema")
    assert surgery_cli(src, dst, "--ema") == 0
    report = capsys.readouterr().out
    assert "weights: 287 EMA tensors from 'ema' (--ema); the raw weights ('model') were not used" in report
    assert "dropped the EMA helper's bookkeeping entries ['n_averaged']" in report
    assert_weights(dst, {k: v + 1 if v.is_floating_point() else v for k, v in state.items()})


@pytest.mark.parametrize("layout", [
    "timm",  # {"state_dict": raw, "state_dict_ema": ema} (timm's train.py)
    "nested",  # {"state_dict": {"model": raw}, "model_ema": {"module": {"module.<key>": ema}, "num_updates": 9}}
    "deepspeed",  # {"module": raw, "ema_state_dict": ema, "optimizer": None, "buffer_names": [...]}
    "submodule",  # {"model": {**raw, "ema.<key>": ema}} (an EMA copy registered inside the training module)
])
def test_other_common_ema_layouts(source, tmp_path, capsys, layout):
    src, dst = tmp_path / f"{layout}.pth", tmp_path / "native.pt"
    raw = write_phase1_checkpoint(source, src)
    ema = {k: v * 2 if v.is_floating_point() else v for k, v in raw.items()}
    checkpoint = {
        "timm": {"state_dict": raw, "state_dict_ema": ema, "epoch": 5, "arch": "sam3"},
        "nested": {"state_dict": {"model": raw}, "model_ema": {"module": {f"module.{k}": v for k, v in ema.items()},
                                                               "num_updates": 9}},
        "deepspeed": {"module": raw, "ema_state_dict": ema, "optimizer": None, "buffer_names": ["x"]},
        "submodule": {"model": {**raw, **{f"ema.{k}": v for k, v in ema.items()}}},
    }[layout]
    torch.save(checkpoint, src)
    assert surgery_cli(src, dst) == 0
    assert "EMA weights exist" in capsys.readouterr().out
    assert_weights(dst, raw)
    assert surgery_cli(src, dst, "--ema", "--overwrite") == 0
    assert "EMA tensors from" in capsys.readouterr().out
    assert_weights(dst, ema)


def test_ema_without_ema_weights_is_refused_and_nothing_is_written(source, tmp_path, capsys):
    src, dst = tmp_path / "phase1.pth", tmp_path / "native.pt"
    write_phase1_checkpoint(source, src, layout="training")
    assert surgery_cli(src, dst, "--ema") == 2
    err = capsys.readouterr().err
    assert f"{src}: --ema: no EMA weights in the file" in err and "run without --ema" in err
    assert nothing_written(tmp_path, src)


def test_unexpected_keys_are_refused_with_the_option_named_then_dropped_with_it(source, tmp_path, capsys):
    src, dst = tmp_path / "phase1.pth", tmp_path / "native.pt"
    state = write_phase1_checkpoint(source, src)
    state["sam3.transformer.decoder.extra_layer.weight"] = torch.zeros(2)
    state["sam3.transformer.decoder.extra_layer.bias"] = torch.zeros(2)
    state["sam3.adapter.scale"] = torch.ones(1)
    torch.save({"model": state}, src)
    assert surgery_cli(src, dst) == 2
    err = capsys.readouterr().err
    assert "3 tensor(s) unexpected in the file: {'adapter.scale': 1, 'transformer.decoder': 2}" in err
    assert "--allow-unexpected adapter.scale. --allow-unexpected transformer.decoder." in err
    assert nothing_written(tmp_path, src)

    assert surgery_cli(src, dst, "--allow-unexpected", "transformer.decoder.extra_layer.") == 2  # one left
    assert "1 tensor(s) unexpected in the file: {'adapter.scale': 1}" in capsys.readouterr().err
    assert surgery_cli(src, dst, "--allow-unexpected", "sam3.transformer.decoder.extra_layer.",
                       "--allow-unexpected", "adapter.", "--allow-unexpected", "nothing.here.") == 0
    report = capsys.readouterr().out
    assert "dropped 3 unexpected tensor(s) (--allow-unexpected sam3.transformer.decoder.extra_layer. adapter. " \
           "nothing.here.): {'adapter.scale': 1, 'transformer.decoder': 2}" in report
    assert "--allow-unexpected nothing.here.: matched no key" in report
    del state["sam3.transformer.decoder.extra_layer.weight"], state["sam3.transformer.decoder.extra_layer.bias"]
    del state["sam3.adapter.scale"]
    assert_weights(dst, state)


def test_rope_tables_the_file_lacks_are_added(source, tmp_path, capsys):
    """The Stage 2 notes register their regenerated tables with persistent=False: such a file has none."""
    src, dst = tmp_path / "phase1.pth", tmp_path / "native.pt"
    state = write_phase1_checkpoint(source, src, resolution=672)
    for name in global_attention_blocks(source):
        del state[f"sam3.{name}.freqs_cis"]
    torch.save({"model": state}, src)
    assert surgery_cli(src, dst) == 0
    assert "added 2 RoPE table(s) the file lacks" in capsys.readouterr().out
    native = torch.load(dst, weights_only=True)
    for name, attn in global_attention_blocks(source).items():
        assert torch.equal(native[f"{PREFIX}{name}.freqs_cis"], attn.freqs_cis)


def test_a_bf16_checkpoint_becomes_fp32(source, tmp_path):
    src, dst = tmp_path / "phase1.pth", tmp_path / "native.pt"
    state = write_phase1_checkpoint(source, src)
    half = {k: v.bfloat16() if v.is_floating_point() else v for k, v in state.items()}
    torch.save({"model": half}, src)
    assert surgery_cli(src, dst) == 0
    native = torch.load(dst, weights_only=True)
    assert {v.dtype for v in native.values()} <= {torch.float32, torch.complex64, torch.int64}
    assert_weights(dst, half)


def test_the_skeleton_has_the_built_models_keys_shapes_dtypes_and_rope_tables(source):
    skeleton, built = build_skeleton("tiny"), build_model("tiny", seed=0)
    a, b = skeleton.state_dict(), built.state_dict()
    assert a.keys() == b.keys()
    assert all(a[k].shape == b[k].shape and a[k].dtype == b[k].dtype for k in a)
    assert {t.device.type for t in skeleton.parameters()} == {"meta"}
    for name, attn in global_attention_blocks(built).items():
        assert torch.equal(a[f"{name}.freqs_cis"], attn.freqs_cis)


# --- the allowlist: plain metadata loads, anything else is refused by name and never runs ----------------------


def test_the_strict_reader_still_refuses_metadata_the_surgery_accepts(source, tmp_path):
    path = tmp_path / "training.pth"
    write_phase1_checkpoint(source, path, layout="training")
    with pytest.raises(InputError, match="numpy"):  # a sweep's trial.checkpoint stays tensors-only
        safe_torch_load(path)
    loaded = safe_torch_load(path, metadata=True)
    assert isinstance(loaded["args"], argparse.Namespace) and loaded["args"].lr == 1e-4
    # numpy and OmegaConf objects are recorded, never built: no numpy or OmegaConf code runs on the file's data
    for value in (loaded["epoch"], loaded["cfg"], loaded["rng"]["numpy"][1]):
        assert isinstance(value, Inert) and "not built" in repr(value)
    assert "numpy" in loaded["epoch"].global_name and "DictConfig" in loaded["cfg"].global_name


def test_no_numpy_or_omegaconf_callable_is_on_the_allowlist():
    """A crafted numpy dtype state can make numpy read a file's bytes as object pointers: every numpy and
    OmegaConf name loads as an inert record instead of the real class or function."""
    real = [(obj, name) for obj, name in metadata_globals()
            if name.startswith(("numpy", "omegaconf")) and not issubclass(obj, Inert)]
    assert not real


def test_metadata_of_every_allowed_kind_loads(tmp_path):
    import collections
    import datetime
    import pathlib

    path = tmp_path / "meta.pth"
    cfg = OmegaConf.create({"a": 1, "b": [1.5, "x", {"c": None}], "p": pathlib.Path("/data"), "i": "${a}"})
    OmegaConf.set_struct(cfg, True)
    meta = {"np": [np.int64(3), np.float32(0.5), np.float64(1.0), np.bool_(True), np.arange(4.0),
                   np.dtype("int16"), np.zeros((2, 2), dtype=np.float16)],
            "args": argparse.Namespace(out=pathlib.Path("/x"), names=("a", "b")), "cfg": cfg,
            "when": datetime.datetime(2026, 12, 5, 9, 0), "took": datetime.timedelta(hours=3),
            "od": collections.OrderedDict(a=1), "counts": collections.defaultdict(int),  # torch fills no defaultdict
            "sets": [frozenset({1}), {2}], "slice": slice(1, 3), "range": range(3), "torch": torch.__version__,
            "complex": 1j, "bytes": b"x"}
    torch.save({"model": {"sam3.x": torch.zeros(1)}, **meta}, path)
    with torch.serialization.safe_globals(metadata_globals()):  # every global of it is on the list, by name
        assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    loaded = safe_torch_load(path, metadata=True)
    assert all(isinstance(v, Inert) for v in loaded["np"]) and isinstance(loaded["cfg"], Inert)
    assert loaded["args"].names == ("a", "b") and loaded["slice"] == slice(1, 3)
    assert loaded["when"].year == 2026 and loaded["counts"]["a"] == 0


def _legacy_file_with_renamed_globals(tmp_path: Path, obj: object, renames: dict[bytes, bytes]) -> Path:
    """A legacy-format (plain pickle) file whose GLOBAL names are rewritten: what another numpy or OS writes."""
    path = tmp_path / "legacy.pth"
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    for old, new in renames.items():
        assert old in data
        data = data.replace(old, new)
    path.write_bytes(data)
    return path


def test_a_file_from_numpy_1_and_windows_loads(source, tmp_path, capsys):
    """numpy 1.x names its scalars numpy.core.multiarray.scalar; a file saved on Windows holds WindowsPath."""
    import pathlib

    state = write_phase1_checkpoint(source, tmp_path / "unused.pth")
    obj = {"model": state, "epoch": np.int64(3), "rng": np.random.RandomState(0).get_state(),
           "args": argparse.Namespace(data=pathlib.PurePosixPath("E:/AngioMLDL_data"))}
    src = _legacy_file_with_renamed_globals(tmp_path, obj, {b"numpy._core.multiarray": b"numpy.core.multiarray",
                                                            b"pathlib\nPurePosixPath": b"pathlib\nWindowsPath"})
    loaded = safe_torch_load(src, metadata=True)
    assert isinstance(loaded["args"].data, pathlib.PureWindowsPath)
    assert loaded["epoch"].global_name == "numpy.core.multiarray.scalar"
    assert surgery_cli(src, tmp_path / "native.pt") == 0
    assert_weights(tmp_path / "native.pt", state)


@dataclasses.dataclass
class _RunConfig:
    """A structured config: a class of the training code, not plain metadata."""

    lr: float = 1e-4


class _RunsAShellCommand:
    """A pickle payload that calls os.system when unpickled (a module torch blocks outright)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("payload, named", [
    (lambda m: torch.nn.Linear(2, 2), "torch.nn.modules.linear.Linear"),  # a pickled module (ultralytics' "ema")
    (lambda m: _RunConfig(), "_RunConfig"),
    (lambda m: _RunsAShellCommand(m), f"{os.system.__module__}.system"),
    (lambda m: np.random.default_rng(0), "numpy.random"),  # a Generator object: its constructor is not allowed
    (lambda m: __import__("collections").defaultdict(int, a=2), "Can only SETITEM"),  # torch fills no defaultdict
])
def test_a_disallowed_global_is_refused_by_name_and_never_runs(source, tmp_path, capsys, payload, named):
    src, dst, marker = tmp_path / "phase1.pth", tmp_path / "native.pt", tmp_path / "pwned"
    state = write_phase1_checkpoint(source, src)
    torch.save({"model": state, **training_metadata(state, 448), "extra": payload(marker)}, src)
    assert surgery_cli(src, dst) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and named in err and "refused" in err
    assert "numpy" in err and "OmegaConf" in err  # says what is accepted
    assert "torch.save only its weights" in err  # and what to do
    assert nothing_written(tmp_path, src) and not marker.exists()
