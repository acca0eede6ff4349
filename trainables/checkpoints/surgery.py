"""Convert a Phase 1 checkpoint into the native sam3 format, then prove it loads strictly.

    python -m trainables.checkpoints.surgery IN OUT [--preset full|tiny] [--allow-missing PATTERN ...] [--overwrite]

Steps: read IN with ``weights_only=True``; unwrap ``model`` / ``state_dict``; strip ``module.`` and
``_orig_mod.``; keep the sam3 weights (keys under ``sam3.``, or already ``detector.``) and set everything
else aside (custom heads such as ``seg_head.*``, ``view_encoder.*``) in ``OUT.extra_heads.pt``; replace
every ``attn.freqs_cis`` by sam3's table at the preset's native grid (a Phase 1 file saved at 672 carries
672 tables); store plain fp32 tensors; load the result into a fresh model of the preset strictly and print
the report. Any missing (not allowed by ``--allow-missing``), unexpected or wrong-shape tensor exits with
status 2 and writes nothing; OUT is written atomically (temp file + rename). An OUT that cannot be
written (its folder is a file, a read-only or full disk), that is IN, or that exists (without
``--overwrite``, or when it is not a native checkpoint) exits with status 2 too, checked before the model
is built.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from common.errors import InputError, run_cli
from common.outputs import check_apart, check_replaceable, staged_file
from common.paths import nearest_existing
from trainables.checkpoints.files import safe_torch_load
from trainables.checkpoints.native import PREFIX, load_native, native_rope_tables
from trainables.model import build_model

SAM3_PREFIXES = ("sam3.", "detector.")
EXTRA_SUFFIX = ".extra_heads.pt"


def unwrap_state(obj: object, source: str) -> dict[str, torch.Tensor]:
    """The flat tensor dict inside a checkpoint (under ``model`` or ``state_dict`` if wrapped)."""
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in ("model", "state_dict") if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise InputError(f"{source}: no state dict found (expected a dict of tensors, maybe under 'model')")
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise InputError(f"{source}: {len(not_tensors)} entries are not tensors, e.g. {not_tensors[:3]}")
    return dict(obj)


def _strip_wrappers(key: str) -> str:
    """Remove DDP's leading ``module.`` and torch.compile's ``_orig_mod.`` from a key."""
    key = key.replace("_orig_mod.", "")
    while key.startswith("module."):
        key = key[len("module."):]
    return key


def split_sam3(state: Mapping[str, torch.Tensor],
               source: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(sam3 weights with unprefixed keys, everything else). Refuses a file with no sam3 weights."""
    sam3, extra = {}, {}
    for key, value in state.items():
        key = _strip_wrappers(key)
        prefix = next((p for p in SAM3_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            extra[key] = value
        else:
            sam3[key[len(prefix):]] = value
    if not sam3:
        found = sorted({k.split(".")[0] + "." for k in extra})
        raise InputError(f"{source}: no sam3 weights found: expected keys starting with one of "
                         f"{list(SAM3_PREFIXES)}; the file's keys start with {found[:8]}")
    return sam3, extra


def to_native(sam3: Mapping[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Native-format dict: ``detector.`` keys, plain fp32 tensors, RoPE tables at the model's native grid."""
    tables = native_rope_tables(model)
    out = {}
    for key, value in sam3.items():
        value = tables.get(key, value).detach().cpu()
        value = value.float() if value.is_floating_point() else value
        out[PREFIX + key] = value.clone().contiguous()
    return out


def surgery(src: Path, dst: Path, *, preset: str = "full", allow_missing: Sequence[str] = (),
            overwrite: bool = False) -> str:
    """Convert ``src`` into ``dst`` (plus the side file of non-sam3 tensors); return the load report.

    ``dst`` never overlaps ``src``; an existing ``dst`` is replaced only with ``overwrite`` and only if it is a
    native checkpoint (what this command writes), so a Phase 1 file can never be overwritten. Both files are
    written beside their targets and renamed into place once the strict load passed.
    """
    check_output_folder(dst)
    check_apart({"OUT": dst, "OUT's side file": extra_path(dst)}, {"IN": src})
    check_replaceable(dst, overwrite=overwrite, is_ours=is_native_checkpoint, option="OUT")
    check_replaceable(extra_path(dst), overwrite=overwrite, is_ours=is_tensor_file, option="OUT's side file")
    sam3, extra = split_sam3(unwrap_state(safe_torch_load(src), str(src)), str(src))
    model = build_model(preset, seed=0)
    native = to_native(sam3, model)
    try:
        with staged_file(dst, overwrite=overwrite, is_ours=is_native_checkpoint) as staged:
            torch.save(native, staged)
            try:
                report = load_native(model, staged, allow_missing=allow_missing)
            except InputError as err:  # name the input, not the temporary file that is about to go
                raise InputError(str(err).replace(str(staged), f"{src} (preset {preset}, nothing written)")) from None
            if extra:
                with staged_file(extra_path(dst), overwrite=overwrite, is_ours=is_tensor_file) as side:
                    torch.save(extra, side)
            elif is_tensor_file(extra_path(dst)):  # an earlier surgery's side file would describe another IN
                extra_path(dst).unlink()
    except OSError as err:
        raise InputError(f"OUT {dst}: cannot be written ({err.strerror or err}); nothing written") from None
    lines = [f"{src} -> {dst} (preset {preset})", report.format()]
    if extra:
        lines.append(f"set aside {len(extra)} non-sam3 tensor(s) in {extra_path(dst)}: "
                     f"{sorted({k.split('.')[0] for k in extra})}")
    return "\n".join(lines)


def is_tensor_file(path: Path) -> bool:
    """Whether ``path`` is a torch file holding a flat dict of tensors (what this command writes)."""
    return _tensor_keys(path) is not None


def is_native_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a native-format checkpoint: a flat tensor dict whose keys all carry the prefix."""
    keys = _tensor_keys(path)
    return keys is not None and all(k.startswith(PREFIX) for k in keys)


def _tensor_keys(path: Path) -> list[str] | None:
    """The keys of the flat, non-empty dict of tensors in ``path`` (read mapped, not loaded), or None."""
    try:
        state = safe_torch_load(path, mmap=True)
    except InputError:
        return None
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return None
    return [str(k) for k in state]


def check_output_folder(dst: Path) -> None:
    """Refuse an OUT whose folder cannot exist: the nearest existing ancestor must be a folder."""
    existing = nearest_existing(dst.parent)
    if not existing.is_dir():
        raise InputError(f"OUT {dst}: {existing} is not a folder; choose an OUT inside a folder")


def extra_path(dst: Path) -> Path:
    """Where the tensors that are not sam3's go: ``OUT.extra_heads.pt``."""
    return dst.with_name(dst.name + EXTRA_SUFFIX)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainables.checkpoints.surgery", description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, metavar="IN", help="Phase 1 checkpoint (.pt/.pth)")
    parser.add_argument("dst", type=Path, metavar="OUT", help="native-format output file")
    parser.add_argument("--preset", choices=("full", "tiny"), default="full")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT if it is a native checkpoint (never any other file)")
    parser.add_argument("--allow-missing", nargs="*", default=[], metavar="PATTERN",
                        help="fnmatch patterns of model keys that may be absent from IN (they keep random init)")
    args = parser.parse_args(argv)
    print(surgery(args.src, args.dst, preset=args.preset, allow_missing=args.allow_missing,
                  overwrite=args.overwrite))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
