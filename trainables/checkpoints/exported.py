"""An export folder: the files it holds, its manifest, and the checks that it reloads exactly.

An exported model folder (written by :mod:`sweeps.export`) holds:

- ``model.pt``: the trial checkpoint's native-format file (:mod:`trainables.checkpoints.native`), bytes unchanged,
  or made whole from its trained part and its starting checkpoint's frozen text encoder (:mod:`.frozen`);
- ``trial_config.json``: the :class:`~trainables.config.TrialConfig` that trained it;
- ``metrics.json``: what the trial reported with that checkpoint (``step`` included);
- ``export.json``: provenance (experiment, trial, pick, source checkpoint, date);
- ``.written-by-sam3-cass``: the marker of an output folder this project wrote (:mod:`common.outputs`);
- ``MANIFEST.sha256``: one ``<sha256>  <relative path>`` line per file (``sha256sum -c`` compatible).

:func:`check_loads` proves a ``model.pt`` reloads bitwise, through :func:`~.native.load_native` and through sam3's
own ``_load_checkpoint``; :func:`load_exported` rebuilds the model of an export folder for use.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common.errors import InputError
from trainables.checkpoints.files import safe_torch_load
from trainables.checkpoints.native import PREFIX, load_native
from trainables.checkpoints.trial import MODEL_FILE
from trainables.config import TrialConfig
from trainables.model import build_model
from trainables.precision import configure_precision
from trainables.resolution import set_resolution

MANIFEST = "MANIFEST.sha256"
TRIAL_CONFIG_FILE = "trial_config.json"
EXPORT_FILE = "export.json"


@dataclass(frozen=True)
class LoadCheck:
    """What reloading an exported ``model.pt`` found (both loaders must load every tensor)."""

    native_loaded: int  # tensors :func:`~trainables.checkpoints.native.load_native` matched, strictly
    sam3_loaded: int  # keys sam3's ``_load_checkpoint`` passed to ``load_state_dict``
    sam3_missing: list[str]
    sam3_unexpected: list[str]
    sam3_dropped: list[str]  # file keys sam3 ignores (they lack "detector")
    resolution: int  # ``set_resolution`` ran to this size after the strict load

    @property
    def ok(self) -> bool:
        return not (self.sam3_missing or self.sam3_unexpected or self.sam3_dropped)

    def format(self) -> str:
        return (f"strict load_native: {self.native_loaded} tensors, bitwise equal; sam3 _load_checkpoint: "
                f"{self.sam3_loaded} keys, {len(self.sam3_missing)} missing, {len(self.sam3_unexpected)} "
                f"unexpected, {len(self.sam3_dropped)} ignored, bitwise equal; set_resolution({self.resolution}) ok")


def check_loads(model_path: Path, preset: str, resolution: int) -> LoadCheck:
    """Reload ``model_path`` both ways into fresh ``build_model(preset)`` models and compare every tensor.

    1. strict :func:`~trainables.checkpoints.native.load_native`, then ``set_resolution(resolution)``;
    2. sam3's own ``model_builder._load_checkpoint`` (what ``build_sam3_image_model(checkpoint_path=...)``
       runs): zero missing, unexpected or ignored keys.
    Both must leave the model's tensors bitwise equal to the file's. Raises :class:`InputError` otherwise.
    """
    state = safe_torch_load(model_path)

    def differing(model) -> list[str]:
        current = model.state_dict()
        return [k for k, v in state.items()
                if k.removeprefix(PREFIX) in current and not torch.equal(current[k.removeprefix(PREFIX)], v)]

    model, report = _load_native_at(model_path, preset, None)
    wrong = differing(model)
    set_resolution(model, resolution)
    del model
    model = build_model(preset, seed=1)
    keys, missing, unexpected = load_with_sam3(model, model_path)
    wrong += differing(model)
    check = LoadCheck(native_loaded=len(report.loaded), sam3_loaded=len(keys), sam3_missing=missing,
                      sam3_unexpected=unexpected, sam3_dropped=sorted(set(state) - {PREFIX + k for k in keys}),
                      resolution=resolution)
    if not check.ok or wrong:
        raise InputError(f"{model_path}: does not reload exactly", [
            *([f"{len(wrong)} tensor(s) differ from the file after loading, e.g. {wrong[:3]}"] if wrong else []),
            *([f"sam3 loader: missing {missing[:5]}"] if missing else []),
            *([f"sam3 loader: unexpected {unexpected[:5]}"] if unexpected else []),
            *([f"sam3 loader ignores {check.sam3_dropped[:5]}"] if check.sam3_dropped else [])])
    return check


def load_with_sam3(model, path: Path) -> tuple[list[str], list[str], list[str]]:
    """Load ``path`` with sam3's ``_load_checkpoint``; return (keys it passed, missing, unexpected).

    sam3 discards ``load_state_dict``'s result (it only prints missing keys), so the model's
    ``load_state_dict`` is wrapped for the call to record it.
    """
    from sam3.model_builder import _load_checkpoint

    seen: dict[str, Any] = {}
    original = model.load_state_dict

    def recording(state_dict, strict: bool = True, assign: bool = False):
        seen["keys"] = list(state_dict)
        seen["result"] = original(state_dict, strict=strict, assign=assign)
        return seen["result"]

    model.load_state_dict = recording
    try:
        _load_checkpoint(model, str(path))
    finally:
        del model.load_state_dict
    return seen["keys"], list(seen["result"].missing_keys), list(seen["result"].unexpected_keys)


def load_exported(directory: str | os.PathLike, device: str = "cpu", *, verified: bool = False):
    """Rebuild an exported model for use (evaluation, prediction): ``(model, trial_config)``, at the trial's
    resolution, with the trial's numeric precision set for this process (:func:`~trainables.precision.configure_precision`).

    Checks the folder's manifest first, unless the caller just did (``verified``: hashing a full model's 3.4 GB
    twice costs seconds); the model comes back in training mode (call ``.eval()``).
    """
    directory = Path(directory)
    if not verified:
        verify_export(directory)
    cfg = TrialConfig.from_dict(json.loads((directory / TRIAL_CONFIG_FILE).read_text()),
                                source=str(directory / TRIAL_CONFIG_FILE))
    configure_precision(cfg.precision)  # the TF32 switches the trial validated with (sam3 turns TF32 on at import)
    model, _ = _load_native_at(directory / MODEL_FILE, cfg.preset, cfg.resolution, device=device)
    return model, cfg


def _load_native_at(path: Path, preset: str, resolution: int | None, device: str = "cpu"):
    """``build_model(preset)`` at its native size, strict ``load_native``, then ``set_resolution``."""
    model = build_model(preset, device=device, seed=0)
    report = load_native(model, path)
    if resolution is not None:
        set_resolution(model, resolution)
    return model, report


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path) -> None:
    """Write ``folder/MANIFEST.sha256``: one ``<sha256>  <relative path>`` line per file below ``folder``."""
    lines = [f"{sha256_file(folder / rel)}  {rel}" for rel in _files_below(folder) if rel != MANIFEST]
    (folder / MANIFEST).write_text("\n".join(lines) + "\n")


def _files_below(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def verify_export(out: str | os.PathLike) -> None:
    """Check ``out/MANIFEST.sha256``: every listed file present with its hash, and no unlisted file.

    Equivalent to ``cd OUT && sha256sum -c MANIFEST.sha256`` plus the unlisted-file check. Raises
    :class:`InputError` listing every problem.
    """
    out = Path(out)
    manifest = out / MANIFEST
    if not manifest.is_file():
        raise InputError(f"{out}: no {MANIFEST}: not an export folder")
    listed: dict[str, str] = {}
    problems = []
    for number, line in enumerate(manifest.read_text().splitlines(), 1):
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64:
            problems.append(f"{MANIFEST} line {number}: not '<sha256>  <path>': {line!r}")
        else:
            listed[rel] = digest
    for rel, digest in listed.items():
        path = out / rel
        if not path.is_file():
            problems.append(f"{rel}: listed but missing")
        elif sha256_file(path) != digest:
            problems.append(f"{rel}: sha256 differs from the manifest (modified or corrupt)")
    problems += [f"{rel}: not in the manifest" for rel in _files_below(out) if rel not in listed and rel != MANIFEST]
    if problems:
        raise InputError(f"{out}: the export does not verify", problems)
