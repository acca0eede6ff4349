"""The project's native checkpoint format for sam3 image models: save, strict load, safe read.

Native format = what sam3's own ``build_sam3_image_model(checkpoint_path=...)`` keeps
(``model_builder.py:523-547``): a flat dict ``{"detector." + state_dict key: tensor}``, floating tensors
in fp32, and every RoPE table ``...attn.freqs_cis`` at the model's BUILD (native) grid, so that sam3's
builder loads it whatever resolution the model was trained at.

:func:`load_native` works at any current resolution: RoPE tables are not learned, so the file's tables
are checked against sam3's own table at the native grid and the model keeps its current ones.
Files are always read with :func:`~trainables.checkpoints.files.safe_torch_load` (``weights_only=True``).
"""

from __future__ import annotations

import fnmatch
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from common.errors import InputError
from trainables.checkpoints.files import atomic_torch_save, safe_torch_load
from trainables.resolution import global_attention_blocks, native_resolution, patch_size, rope_table

PREFIX = "detector."
ROPE_SUFFIX = "attn.freqs_cis"


@dataclass
class LoadReport:
    """What a strict load found. ``mismatched`` holds (key, shape in file, shape in model)."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    allowed_missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def problems(self) -> list[str]:
        """One line per kind of problem, counted by submodule, with a few example keys (and their shapes)."""
        lines = []
        for kind, keys in (("missing from the file", self.missing), ("unexpected in the file", self.unexpected)):
            if keys:
                lines.append(f"{len(keys)} tensor(s) {kind}: {_count_by_submodule(keys)}; e.g. {keys[:3]}")
        if self.mismatched:
            examples = "; ".join(f"{k}: file {list(f)} vs model {list(m)}" for k, f, m in self.mismatched[:3])
            lines.append(f"{len(self.mismatched)} tensor(s) wrong shape: "
                         f"{_count_by_submodule([k for k, _, _ in self.mismatched])}; e.g. {examples}")
        return lines

    def format(self) -> str:
        """A human-readable summary (loaded, missing, unexpected, wrong shape; by submodule)."""
        lines = [f"loaded {len(self.loaded)} tensors: {_count_by_submodule(self.loaded)}"]
        if self.allowed_missing:
            lines.append(f"allowed missing {len(self.allowed_missing)}: {_count_by_submodule(self.allowed_missing)}")
        lines += self.problems() or ["no missing, unexpected or wrong-shape tensors"]
        return "\n".join(lines)


def submodule_of(key: str) -> str:
    """The submodule a state_dict key belongs to, for counting: its first two name parts."""
    return ".".join(key.split(".")[:2])


def _count_by_submodule(keys: Sequence[str]) -> dict[str, int]:
    return dict(sorted(Counter(submodule_of(k) for k in keys).items()))


def _unwrap(model: nn.Module) -> nn.Module:
    """The sam3 model inside a DDP wrapper (``.module``), or the model itself."""
    return getattr(model, "module", model)


def native_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights in the native format: ``detector.``-prefixed, fp32, RoPE at the native grid."""
    model = _unwrap(model)
    tables = native_rope_tables(model)
    out = {}
    for key, value in model.state_dict().items():
        value = tables.get(key, value).detach().cpu()
        out[PREFIX + key] = value.float() if value.is_floating_point() else value.clone()
    return out


def native_rope_tables(model: nn.Module) -> dict[str, torch.Tensor]:
    """state_dict key -> sam3's RoPE table at the model's native grid, for every global-attention block."""
    model = _unwrap(model)
    grid = native_resolution(model) // patch_size(model)
    return {f"{name}.freqs_cis": rope_table(attn, grid) for name, attn in global_attention_blocks(model).items()}


def save_native(model: nn.Module, path: str | os.PathLike) -> None:
    """Write the model in the native format, atomically (a failure leaves no partial file)."""
    atomic_torch_save(native_state_dict(model), path)


def compare_state(model: nn.Module, state: Mapping[str, torch.Tensor], *,
                  allow_missing: Sequence[str] = ()) -> LoadReport:
    """Compare unprefixed ``state`` with the model's state_dict: keys and shapes (RoPE checked at native grid)."""
    model = _unwrap(model)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected.update({k: tuple(v.shape) for k, v in native_rope_tables(model).items()})
    report = LoadReport()
    for key, value in state.items():
        if key not in expected:
            report.unexpected.append(key)
        elif tuple(value.shape) != expected[key]:
            report.mismatched.append((key, tuple(value.shape), expected[key]))
        else:
            report.loaded.append(key)
    for key in expected:
        if key not in state:
            allowed = any(fnmatch.fnmatchcase(key, pattern) for pattern in allow_missing)
            (report.allowed_missing if allowed else report.missing).append(key)
    return report


def strip_native_prefix(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Drop the ``detector.`` prefix; refuse a file whose keys do not carry it."""
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{source}: not a native checkpoint (expected a flat dict of tensors)")
    wrong = [k for k in state if not k.startswith(PREFIX)]
    if wrong:
        prefixes = sorted({k.split(".")[0] + "." for k in wrong})
        raise InputError(f"{source}: {len(wrong)} of {len(state)} keys lack the {PREFIX!r} prefix of the native "
                         f"format (found prefixes {prefixes[:5]}, e.g. {wrong[:2]}); convert the file with "
                         f"`python -m trainables.checkpoints.surgery`")
    return {k[len(PREFIX):]: v for k, v in state.items()}


def load_native(model: nn.Module, path: str | os.PathLike, *, allow_missing: Sequence[str] = (),
                map_file: bool = False) -> LoadReport:
    """Load a native-format file into ``model`` strictly, at whatever resolution the model is set to.

    Refuses (with :class:`InputError`, counted by submodule) missing tensors (unless a key matches one of
    the fnmatch patterns in ``allow_missing``), unexpected tensors, wrong shapes, and RoPE tables that
    differ from sam3's table at the native grid. Nothing is loaded when anything is refused.

    ``map_file`` (a model on the CPU): the model's tensors become the file's, memory-mapped copy-on-write,
    instead of copies of them, so a worker never holds the built model and the whole file at once
    (``bench/host_memory.py``). The file stays open while the model lives: use it for a file nothing deletes
    meanwhile (the starting checkpoint, not a Train checkpoint that ``num_to_keep`` may remove). A model whose
    tensors are on the meta device (a skeleton: weight surgery's strict check) takes them the same way.
    """
    assign = map_file and can_assign(model)
    return load_native_state(model, safe_torch_load(path, mmap=assign), str(path), allow_missing=allow_missing,
                             assign=assign)


def can_assign(model: nn.Module) -> bool:
    """True when ``model``'s tensors can be replaced by loaded ones (on the CPU or the meta device)."""
    return all(t.device.type in ("cpu", "meta") for t in _unwrap(model).state_dict().values())


def load_native_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str, *,
                      allow_missing: Sequence[str] = (), assign: bool = False) -> LoadReport:
    """:func:`load_native` of a native state already read (``source`` names it in errors); ``assign``: the
    model takes the state's tensors themselves (see :func:`can_assign`) instead of copying them."""
    target = _unwrap(model)
    state = strip_native_prefix(state, source)
    report = compare_state(model, state, allow_missing=allow_missing)
    if not report.ok:
        raise InputError(f"{source}: does not match the model", report.problems())
    tables = native_rope_tables(target)
    wrong_rope = [k for k, table in tables.items() if not torch.allclose(state[k], table, atol=1e-5)]
    if wrong_rope:
        raise InputError(f"{source}: RoPE tables differ from sam3's own at the native grid (a plain RoPE formula "
                         f"without sam3's interpolation?)", wrong_rope)
    weights = {k: v for k, v in state.items() if k not in tables}
    target.load_state_dict(weights, strict=False, assign=assign)
    return report
