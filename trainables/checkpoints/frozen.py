"""The frozen part a trial checkpoint shares with the trial's starting checkpoint instead of copying it.

A trial that freezes the text encoder (``freeze_text_encoder``) never changes it: every checkpoint would repeat
the same tensors, the full preset's 1.4 GB, already held by the starting checkpoint (``trial.checkpoint``, the
surgered Phase 1 file every worker reads). Such a checkpoint stores only the other tensors and a record of
where the frozen ones are (:class:`FrozenSource`): the starting checkpoint's path and a SHA-256 digest of the
frozen tensors. Reading the checkpoint back (:func:`assemble`) takes them from that file again and refuses it
when their digest differs (the file was replaced or changed since the sweep), so a resumed trial and an export
get exactly the weights the trial had.

The saving worker digests the frozen tensors it is about to save and shares them only when the digest equals
the starting checkpoint's: tensors that changed in any way (a trial that trains them) are saved in full.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from common.errors import InputError
from trainables.checkpoints.files import safe_torch_load
from trainables.checkpoints.native import PREFIX
from trainables.model import LANGUAGE_PREFIX

#: The native-format keys a frozen text encoder leaves unchanged: the language backbone's parameters and buffers.
FROZEN_PREFIX = PREFIX + LANGUAGE_PREFIX


def frozen_part(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The frozen tensors of a native-format ``state`` (its :data:`FROZEN_PREFIX` keys)."""
    return {key: value for key, value in state.items() if key.startswith(FROZEN_PREFIX)}


def digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of ``tensors``: every key, dtype, shape and byte, in key order (CPU tensors)."""
    sha = hashlib.sha256()
    for key in sorted(tensors):
        value = tensors[key].detach()
        sha.update(f"{key}\0{value.dtype}\0{tuple(value.shape)}\0".encode())
        sha.update(value.contiguous().reshape(-1).view(torch.uint8).numpy())
    return sha.hexdigest()


@dataclass(frozen=True)
class FrozenSource:
    """Where a checkpoint's frozen tensors live: ``checkpoint`` (a native-format file) and their digest."""

    checkpoint: str
    sha256: str
    tensors: int  # how many (a quick plausibility check, and for people reading the record)

    @classmethod
    def of(cls, checkpoint: str | Path) -> FrozenSource:
        """Read the frozen tensors of a native starting ``checkpoint`` (mapped, not copied) and digest them."""
        frozen = frozen_part(safe_torch_load(checkpoint, mmap=True))
        if not frozen:
            raise InputError(f"{checkpoint}: no {FROZEN_PREFIX}* tensors: not a native sam3 checkpoint")
        return cls(checkpoint=str(Path(checkpoint).absolute()), sha256=digest(frozen), tensors=len(frozen))

    def shared_by(self, state: Mapping[str, torch.Tensor]) -> bool:
        """True when ``state``'s frozen tensors are exactly this source's (then they need not be saved)."""
        frozen = frozen_part(state)
        return len(frozen) == self.tensors and digest(frozen) == self.sha256

    def write(self, path: Path) -> None:
        """Save the record as JSON (what :meth:`read` takes back)."""
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> FrozenSource:
        """The record :meth:`write` saved; :class:`InputError` for a file that is not one."""
        try:
            raw = json.loads(path.read_text())
            return cls(checkpoint=str(raw["checkpoint"]), sha256=str(raw["sha256"]), tensors=int(raw["tensors"]))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise InputError(f"{path}: not a readable frozen-source record ({err})") from None


def assemble(trained: Mapping[str, torch.Tensor], source: FrozenSource, *, record: str,
             frozen_from: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The whole native state: the checkpoint's ``trained`` tensors plus the frozen ones of ``source``.

    ``frozen_from`` reads them from another copy of the starting checkpoint (a file moved since the sweep);
    either way their digest must be the recorded one. ``record`` names the record in errors.
    """
    path = Path(frozen_from or source.checkpoint)
    if not path.is_file():
        raise InputError(f"{record}: this checkpoint stores its frozen text encoder by reference to the trial's "
                         f"starting checkpoint {path}, which is not there; put that file back where it was (an "
                         "export can read a copy of it instead: python -m sweeps.export ... --frozen-from FILE)")
    frozen = frozen_part(safe_torch_load(path, mmap=True))
    if len(frozen) != source.tensors or digest(frozen) != source.sha256:
        raise InputError(f"{record}: the frozen text encoder in {path} is not the one this checkpoint was trained "
                         f"with (SHA-256 {source.sha256[:12]}... recorded); the starting checkpoint was replaced "
                         "or changed since the sweep: restore the original file")
    overlap = sorted(set(frozen) & set(trained))
    if overlap:
        raise InputError(f"{record}: the checkpoint's own tensors include frozen ones it claims to share, "
                         f"e.g. {overlap[:3]}")
    return {**trained, **frozen}
