"""Specification of trainables.checkpoints.surgery and the native checkpoint format (trainables.checkpoints.native)."""

from __future__ import annotations

import pathlib
from pathlib import Path

import pytest
import torch

from common.errors import InputError
from trainables.checkpoints.files import safe_torch_load
from trainables.checkpoints.native import PREFIX, load_native, save_native
from trainables.checkpoints.phase1 import write_phase1_checkpoint
from trainables.checkpoints.surgery import extra_path, main
from trainables.model import build_model
from trainables.resolution import global_attention_blocks, set_resolution


def surgery_cli(src: Path, dst: Path, *extra: str) -> int:
    from common.errors import run_cli

    return run_cli(main, [str(src), str(dst), "--preset", "tiny", *extra])


@pytest.fixture(scope="module")
def source():
    torch.set_num_threads(1)
    return build_model("tiny", seed=3)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        if not key.endswith("freqs_cis"):
            assert torch.equal(sa[key], sb[key]), key


def test_phase1_file_surgers_into_the_native_format_and_loads_bitwise(source, tmp_path, capsys):
    src, dst = tmp_path / "phase1.pth", tmp_path / "native.pt"
    write_phase1_checkpoint(source, src, resolution=448)
    assert surgery_cli(src, dst) == 0
    report = capsys.readouterr().out
    assert "no missing, unexpected or wrong-shape tensors" in report and "set aside 3" in report

    native = torch.load(dst, weights_only=True)
    assert all(k.startswith(PREFIX) for k in native)
    assert all(v.dtype in (torch.float32, torch.complex64, torch.int64) for v in native.values())
    for name, attn in global_attention_blocks(source).items():  # tables back at the native 224 grid
        assert torch.equal(native[f"{PREFIX}{name}.freqs_cis"], attn.freqs_cis)
    assert set(torch.load(extra_path(dst), weights_only=True)) == {
        "seg_head.conv.weight", "seg_head.conv.bias", "view_encoder.embed.weight"}

    target = build_model("tiny", seed=99)
    report = load_native(target, dst)
    assert report.ok and len(report.loaded) == len(target.state_dict())
    assert_same_weights(source, target)


def test_surgered_file_loads_through_sams_own_builder_path_with_nothing_missing(source, tmp_path, capsys):
    from sam3.model_builder import _load_checkpoint

    src, dst = tmp_path / "phase1.pth", tmp_path / "native.pt"
    write_phase1_checkpoint(source, src)
    assert surgery_cli(src, dst) == 0
    capsys.readouterr()
    target = build_model("tiny", seed=99)
    _load_checkpoint(target, str(dst))
    assert "missing" not in capsys.readouterr().out  # sam3 prints missing/unexpected keys, if any
    assert_same_weights(source, target)


def test_loading_works_whatever_the_models_current_resolution(source, tmp_path):
    path = tmp_path / "trained_at_448.pt"
    trained = build_model("tiny", 448, seed=5)
    save_native(trained, path)  # saved at 448: the file still carries native 224 tables
    assert safe_torch_load(path)[f"{PREFIX}backbone.vision_backbone.trunk.blocks.1.attn.freqs_cis"].shape == (256, 16)
    for px in (224, 336):
        target = build_model("tiny", px, seed=6)
        load_native(target, path)
        assert_same_weights(trained, target)
        assert global_attention_blocks(target)["backbone.vision_backbone.trunk.blocks.1.attn"].input_size == (
            px // 14, px // 14)


def test_a_file_without_sam3_prefixes_is_refused_and_nothing_is_written(source, tmp_path, capsys):
    src, dst = tmp_path / "wrong.pth", tmp_path / "native.pt"
    torch.save({"model": {f"net.{k}": v for k, v in source.state_dict().items()}}, src)
    assert surgery_cli(src, dst) == 2
    err = capsys.readouterr().err
    assert "no sam3 weights found" in err and "'sam3.'" in err and "['net.']" in err
    assert not dst.exists() and list(tmp_path.iterdir()) == [src]


def test_a_native_file_without_the_detector_prefix_is_refused(source, tmp_path):
    path = tmp_path / "unprefixed.pt"
    torch.save(source.state_dict(), path)
    with pytest.raises(InputError, match="lack the 'detector.' prefix"):
        load_native(build_model("tiny", seed=0), path)


def test_a_missing_tensor_is_refused_unless_allowed_by_pattern(source, tmp_path, capsys):
    src, dst = tmp_path / "phase1.pth", tmp_path / "native.pt"
    state = write_phase1_checkpoint(source, src)
    del state["sam3.transformer.decoder.presence_token.weight"]
    torch.save({"model": state}, src)
    assert surgery_cli(src, dst) == 2
    err = capsys.readouterr().err
    assert "1 tensor(s) missing from the file: {'transformer.decoder': 1}" in err
    assert not dst.exists() and not extra_path(dst).exists()
    assert surgery_cli(src, dst, "--allow-missing", "transformer.decoder.presence_*") == 0
    assert "allowed missing 1" in capsys.readouterr().out


def test_a_wrong_shape_is_refused(source, tmp_path, capsys):
    src, dst = tmp_path / "phase1.pth", tmp_path / "native.pt"
    state = write_phase1_checkpoint(source, src)
    state["sam3.dot_prod_scoring.hs_proj.weight"] = torch.zeros(32, 64)
    torch.save({"model": state}, src)
    assert surgery_cli(src, dst) == 2
    err = capsys.readouterr().err
    assert "1 tensor(s) wrong shape: {'dot_prod_scoring.hs_proj': 1}" in err
    assert "file [32, 64] vs model [64, 64]" in err
    assert not dst.exists()


def test_an_unexpected_sam3_tensor_is_refused(source, tmp_path, capsys):
    src, dst = tmp_path / "phase1.pth", tmp_path / "native.pt"
    state = write_phase1_checkpoint(source, src)
    state["sam3.transformer.decoder.extra_layer.weight"] = torch.zeros(2)
    torch.save({"model": state}, src)
    assert surgery_cli(src, dst) == 2
    assert "1 tensor(s) unexpected in the file" in capsys.readouterr().err


def test_rope_tables_from_a_plain_formula_are_refused(source, tmp_path):
    """The Stage 2 notes' recipe (no interpolation) gives other tables: loading them must not pass silently."""
    from sam3.model.vitdet import compute_axial_cis

    path = tmp_path / "plain_rope.pt"
    state = {PREFIX + k: v for k, v in source.state_dict().items()}
    state[f"{PREFIX}backbone.vision_backbone.trunk.blocks.1.attn.freqs_cis"] = compute_axial_cis(32, 16, 16)
    torch.save(state, path)
    with pytest.raises(InputError, match="RoPE tables differ"):
        load_native(build_model("tiny", seed=0), path)


class _WritesAFile:
    """A pickle payload that creates a file when unpickled (what a malicious checkpoint could do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_a_pickle_that_would_run_code_is_refused_and_does_not_run(tmp_path, capsys):
    src, dst = tmp_path / "evil.pth", tmp_path / "native.pt"
    marker = tmp_path / "pwned"
    torch.save({"model": {"sam3.x": torch.zeros(1)}, "payload": _WritesAFile(marker)}, src)
    assert surgery_cli(src, dst) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "would run code" in err and "Unsupported global" in err
    assert not marker.exists() and not dst.exists()
    torch.load(src, weights_only=False)  # the file really is dangerous: an unsafe load runs the payload
    assert marker.exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_files_get_a_clear_error(source, tmp_path, damage):
    path = tmp_path / "model.pt"
    save_native(source, path)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not a checkpoint" * 10, "empty": b""}[damage])
    with pytest.raises(InputError, match="truncated or corrupt|empty|not a readable"):
        safe_torch_load(path)


def test_a_missing_file_gets_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        safe_torch_load(tmp_path / "absent.pt")


def test_set_resolution_after_load_keeps_the_loaded_weights(source, tmp_path):
    path = tmp_path / "native.pt"
    save_native(source, path)
    target = build_model("tiny", seed=1)
    load_native(target, path)
    set_resolution(target, 336)
    assert_same_weights(source, target)


def test_a_mapped_load_gives_the_copied_loads_model_and_never_writes_the_file(tmp_path):
    """load_native(map_file=True), a worker's start: the same tensors and parameters as a copied load, and the
    optimizer's in-place updates land in the process (copy-on-write), not in the checkpoint file."""
    path = tmp_path / "native.pt"
    save_native(build_model("tiny", seed=3), path)
    before = path.read_bytes()
    copied, mapped = build_model("tiny", seed=0), build_model("tiny", seed=0)
    load_native(copied, path)
    load_native(mapped, path, map_file=True)
    assert [(n, p.requires_grad, p.shape) for n, p in copied.named_parameters()] == \
        [(n, p.requires_grad, p.shape) for n, p in mapped.named_parameters()]
    assert all(isinstance(p, torch.nn.Parameter) for p in mapped.parameters())
    for (name, a), b in zip(copied.state_dict().items(), mapped.state_dict().values()):
        assert torch.equal(a, b), name
    with torch.no_grad():
        for p in mapped.parameters():
            p.add_(1.0)
    assert path.read_bytes() == before
    load_native(copied, path)  # the file still holds the saved weights
    assert not torch.equal(next(copied.parameters()), next(mapped.parameters()))
