"""Convert a Phase 1 checkpoint into the native sam3 format, then prove it loads strictly.

    python -m trainables.checkpoints.surgery IN OUT [--preset full|tiny] [--ema] [--allow-unexpected PREFIX]...
                                             [--allow-missing PATTERN ...] [--overwrite]

Reading IN: ``torch.load(weights_only=True)``, memory-mapped, with an allowlist of the plain metadata training
scripts save beside the weights (:mod:`.allowlist`: numpy scalars, arrays and dtypes, ``argparse.Namespace``,
OmegaConf configs, paths, dates). A file that needs any other global (a pickled ``nn.Module`` or optimizer
object, a function, a class of the training code) is refused with exit 2, the global named; nothing of it runs.

Finding the weights: a flat dict of tensors at the top level, or under ``model``, ``state_dict``,
``model_state_dict`` or ``module`` (DeepSpeed), at any depth (``{"state_dict": {"model": ...}}``). The other
entries on the way (epoch, args, config, optimizer and scheduler state) are ignored and listed in the report:
the native format holds weights only, and a sweep's trials start their own optimizer. ``--ema`` takes the EMA
weights instead: an ``ema``, ``model_ema``, ``ema_state_dict``, ``state_dict_ema`` (timm) or ``ema_model``
entry beside the weights (unwrapped the same way), or keys under ``ema.`` / ``model_ema.`` / ``ema_model.``
inside them. An EMA helper's ``module.`` prefixes (timm's ``ModelEmaV2``, torch's ``AveragedModel``) are
stripped and its bookkeeping entries (``n_averaged``, ``num_updates``, ``updates``, ``step``, ``decay``,
``initted``) dropped, with a note. Without ``--ema`` the report says whether EMA weights exist.

Converting: strip DDP's ``module.`` and torch.compile's ``_orig_mod.``; keep the sam3 weights (keys under
``sam3.``, or already ``detector.``) and set everything else aside (custom heads such as ``seg_head.*``,
``view_encoder.*``) in ``OUT.extra_heads.pt``; drop the sam3 keys the model lacks that start with an
``--allow-unexpected`` PREFIX (counted and named in the report); put sam3's own table at the preset's native
grid in every global block's ``attn.freqs_cis`` (a Phase 1 file saved at 672 carries 672 tables; one saved
with the Stage 2 notes' non-persistent tables carries none); store plain fp32 tensors.

Checking, before anything is written: keys and shapes against a skeleton of the preset (its parameters on the
meta device: built in seconds, no memory). Missing (not allowed by ``--allow-missing``), unexpected (not
allowed by ``--allow-unexpected``) or wrong-shape tensors exit with status 2, named and counted by submodule,
with the option that would accept them. Then OUT, staged beside its target, is loaded strictly into the
skeleton (``load_native(map_file=True)``) and renamed into place (atomic). An OUT that cannot be written (its
folder is a file, a read-only or full disk), that is IN, or that exists (without ``--overwrite``, or when it is
not a native checkpoint) exits with status 2 too, checked before IN is read.

Memory: IN is mapped, not read; its tensors are written out without copies (fp16/bf16 ones become fp32), and
the model is a skeleton: the peak resident memory is about the size of the weights plus the interpreter's
(``bench/surgery_memory.py``: a full-size checkpoint converts under 2x the file's size).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from common.errors import InputError, run_cli
from common.outputs import check_apart, check_replaceable, staged_file
from common.paths import nearest_existing
from trainables.checkpoints.files import safe_torch_load
from trainables.checkpoints.native import PREFIX, compare_state, load_native, native_rope_tables, submodule_of
from trainables.model import build_model
from trainables.resolution import global_attention_blocks, rope_table

SAM3_PREFIXES = ("sam3.", "detector.")
EXTRA_SUFFIX = ".extra_heads.pt"
MODEL_KEYS = ("model", "state_dict", "model_state_dict", "module")  # where the weights are, tried in this order
EMA_KEYS = ("ema", "model_ema", "ema_state_dict", "state_dict_ema", "ema_model")  # EMA weights beside them
EMA_PREFIXES = ("ema.", "model_ema.", "ema_model.")  # EMA weights inside them (an EMA submodule)
EMA_BOOKKEEPING = ("n_averaged", "num_updates", "updates", "step", "decay", "initted")  # an EMA helper's counters
OPTIMIZER_WORDS = ("optim", "scheduler", "scaler")  # entries whose name says they are training state


@dataclass
class Weights:
    """The flat state :func:`find_weights` took from a checkpoint, and what the report says about the rest."""

    state: dict[str, object]
    notes: list[str] = field(default_factory=list)


def find_weights(obj: object, source: str, *, ema: bool = False) -> Weights:
    """The weights inside a loaded checkpoint (the EMA weights with ``ema``), wherever the usual layouts keep
    them; every entry passed over is named in ``notes``. Refuses a file without a dict of tensors, and ``ema``
    on a file without EMA weights."""
    state, path, passed, emas = _descend(obj)
    where = _where(path)
    raw, embedded, ema_prefixes = {}, {}, []
    for key, value in (state.items() if isinstance(state, dict) else ()):
        if key in EMA_KEYS and isinstance(value, dict):
            continue  # an EMA entry beside flat weights: already in ``emas``
        key = _strip_wrappers(str(key))
        prefix = next((p for p in EMA_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            raw[key] = value
        else:
            embedded[key[len(prefix):]] = value
            ema_prefixes += [prefix] if prefix not in ema_prefixes else []
    if embedded:
        emas.append((f"the keys under {_quoted(ema_prefixes)} in {where}", embedded))
    notes = []
    if passed:
        optimizer = [k for k in passed if any(word in k.lower() for word in OPTIMIZER_WORDS)]
        notes.append(f"ignored {len(passed)} other entr{'y' if len(passed) == 1 else 'ies'}: {', '.join(passed[:8])}"
                     f"{', ...' if len(passed) > 8 else ''}"
                     + (f" ({', '.join(optimizer[:3])}: optimizer state; the native format holds weights only and "
                        f"a sweep's trials start their own optimizer)" if optimizer else ""))
    if not ema:
        if not any(isinstance(v, torch.Tensor) for v in raw.values()):
            raise InputError(f"{source}: no state dict found: expected a dict of tensors at the top level or under "
                             f"{_quoted(MODEL_KEYS)}; the file holds {_describe(obj)}")
        if emas:
            notes.append(f"EMA weights exist in this file ({emas[0][0]}, {_count_tensors(emas[0][1])} tensors); "
                         f"these are the raw weights ({where}): pass --ema to convert the EMA weights instead")
        _check_all_tensors(raw, source)
        return Weights(raw, [f"weights: {len(raw)} tensors from {where}", *notes])
    if not emas:
        raise InputError(f"{source}: --ema: no EMA weights in the file (looked for {_quoted(EMA_KEYS)} beside the "
                         f"weights and keys under {_quoted(EMA_PREFIXES)} in them; the file holds {_describe(obj)}); "
                         f"run without --ema to convert the weights ({where})")
    ema_where, container = emas[0]
    inner, inner_path, _, _ = _descend(container)
    ema_state, counters = {}, []
    for key, value in (inner.items() if isinstance(inner, dict) else ()):
        key = _strip_wrappers(str(key))
        if key in EMA_BOOKKEEPING:
            counters.append(key)
        else:
            ema_state[key] = value
    if not any(isinstance(v, torch.Tensor) for v in ema_state.values()):
        raise InputError(f"{source}: --ema: the EMA entry ({ema_where}) holds {_describe(inner)}, not a dict of "
                         f"tensors; run without --ema to convert the weights ({where})")
    _check_all_tensors(ema_state, source)
    notes.insert(0, f"weights: {len(ema_state)} EMA tensors from {ema_where}{_where(inner_path, within=True)} "
                    f"(--ema); the raw weights ({where}) were not used")
    if counters:
        notes.append(f"dropped the EMA helper's bookkeeping entries {counters} (not weights)")
    return Weights(ema_state, notes)


def _descend(obj: object) -> tuple[object, list[str], list[str], list[tuple[str, object]]]:
    """Follow the model keys down: (the innermost object, the keys followed, the other entries passed on the
    way, (where, entry) of every EMA entry seen on the way). Only plain dicts are followed, never a config."""
    path: list[str] = []
    passed: list[str] = []
    emas: list[tuple[str, object]] = []
    while isinstance(obj, dict):
        emas += [(_where([*path, k]), obj[k]) for k in EMA_KEYS if isinstance(obj.get(k), dict)]
        here = [k for k in MODEL_KEYS if isinstance(obj.get(k), dict)]
        key = next((k for k in here if _holds_tensors(obj[k])), here[0] if here else None)
        if key is None:
            break
        passed += [".".join([*path, str(k)]) for k in obj if k != key and k not in EMA_KEYS]
        path.append(key)
        obj = obj[key]
    return obj, path, passed, emas


def _holds_tensors(obj: object, depth: int = 4) -> bool:
    """Whether a dict holds a tensor, directly or in dicts nested up to ``depth`` deep."""
    return isinstance(obj, dict) and depth > 0 and any(
        isinstance(v, torch.Tensor) or _holds_tensors(v, depth - 1) for v in obj.values())


def _count_tensors(obj: object) -> int:
    """How many weights an EMA entry holds (its helper's counters not counted)."""
    inner = _descend(obj)[0]
    return sum(isinstance(v, torch.Tensor) and _strip_wrappers(str(k)) not in EMA_BOOKKEEPING
               for k, v in inner.items()) if isinstance(inner, dict) else 0


def _check_all_tensors(state: Mapping[str, object], source: str) -> None:
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise InputError(f"{source}: {len(not_tensors)} entries are not tensors, e.g. {not_tensors[:3]}")


def _where(path: Sequence[str], *, within: bool = False) -> str:
    if not path:
        return "" if within else "the top level"
    return (" > " if within else "") + " > ".join(repr(k) for k in path)


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names)


def _describe(obj: object) -> str:
    """What a loaded object is, for an error message: a dict's first keys, else its type."""
    if isinstance(obj, dict):
        keys = [str(k) for k in obj][:5]
        return f"a dict with the keys {keys}{' ...' if len(obj) > 5 else ''}" if keys else "an empty dict"
    return f"a {type(obj).__name__}"


def unwrap_state(obj: object, source: str) -> dict[str, torch.Tensor]:
    """The flat tensor dict inside a checkpoint (see :func:`find_weights`: the raw weights)."""
    return find_weights(obj, source).state  # type: ignore[return-value]


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


def drop_unexpected(sam3: Mapping[str, torch.Tensor], model: nn.Module,
                    prefixes: Sequence[str]) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """(the weights without the keys the model lacks that start with one of ``prefixes``, the dropped keys, the
    prefixes that matched nothing). A prefix is matched against the key as the errors name it, without
    ``sam3.``/``detector.`` (a prefix given with one is read without it)."""
    expected = set(model.state_dict())
    wanted = [next((p[len(s):] for s in SAM3_PREFIXES if p.startswith(s)), p) for p in prefixes]
    dropped = [k for k in sam3 if k not in expected and any(k.startswith(p) for p in wanted)]
    unused = [p for p, w in zip(prefixes, wanted) if not any(k.startswith(w) for k in dropped)]
    return {k: v for k, v in sam3.items() if k not in set(dropped)}, dropped, unused


def to_native(sam3: Mapping[str, torch.Tensor], model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(Native-format dict: ``detector.`` keys, plain fp32 tensors, RoPE tables at the model's native grid; the
    RoPE keys the file lacked and that were added). Tensors are not copied (a mapped file stays mapped) unless
    they are views into a larger or shared storage, or need a new dtype."""
    tables = native_rope_tables(model)
    added = [k for k in tables if k not in sam3]
    out, storages = {}, set()
    for key, value in [*sam3.items(), *((k, tables[k]) for k in added)]:
        value = tables.get(key, value).detach().cpu()
        value = value.float() if value.is_floating_point() else value
        storage = value.untyped_storage()
        if (not value.is_contiguous() or storage.nbytes() != value.nbytes or value.nbytes == 0
                or storage.data_ptr() in storages):
            value = value.clone(memory_format=torch.contiguous_format)
        storages.add(value.untyped_storage().data_ptr())
        out[PREFIX + key] = value
    return out, added


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Every parameter a module registers meanwhile moves to the meta device as it is registered (one
    parameter at a time exists on the CPU, briefly). ``nn.Module.register_parameter`` is patched while open."""
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        registered = module._parameters.get(name)
        if registered is not None and registered.device.type != "meta":
            module._parameters[name] = nn.Parameter(registered.to("meta"), requires_grad=registered.requires_grad)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def build_skeleton(preset: str) -> nn.Module:
    """The preset's model with its parameters and buffers on the meta device (built in seconds, no memory) and
    the RoPE tables of its global-attention blocks computed on the CPU: a built model's keys, shapes and tables
    (``tests/test_surgery.py`` compares them), into which :func:`load_native` maps a file's tensors."""
    with _parameters_on_meta():
        model = build_model(preset, device="meta", seed=0)
    for attn in global_attention_blocks(model).values():
        attn.freqs_cis = torch.empty(0, dtype=attn.freqs_cis.dtype)  # on the CPU: rope_table computes there
        attn.freqs_cis = rope_table(attn, attn.input_size[0])
    return model


def check_matches(model: nn.Module, native: Mapping[str, torch.Tensor], src: Path, preset: str,
                  allow_missing: Sequence[str]) -> None:
    """Refuse, before anything is written, a conversion whose keys or shapes differ from the model's."""
    report = compare_state(model, {k[len(PREFIX):]: v for k, v in native.items()}, allow_missing=allow_missing)
    if report.ok:
        return
    hints = []
    if report.unexpected:
        examples = sorted({submodule_of(k) + "." for k in report.unexpected})[:3]
        hints.append(f"to drop tensors sam3 does not have, pass --allow-unexpected PREFIX (repeatable), e.g. "
                     f"{' '.join(f'--allow-unexpected {e}' for e in examples)}")
    if report.missing:
        hints.append("to let absent tensors keep their random init, pass --allow-missing PATTERN")
    raise InputError(f"{src} (preset {preset}, nothing written): does not match the model"
                     + "".join(f"; {h}" for h in hints), report.problems())


def surgery(src: Path, dst: Path, *, preset: str = "full", allow_missing: Sequence[str] = (),
            allow_unexpected: Sequence[str] = (), ema: bool = False, overwrite: bool = False) -> str:
    """Convert ``src`` into ``dst`` (plus the side file of non-sam3 tensors); return the report.

    ``dst`` never overlaps ``src``; an existing ``dst`` is replaced only with ``overwrite`` and only if it is a
    native checkpoint (what this command writes), so a Phase 1 file can never be overwritten. Both files are
    written beside their targets and renamed into place once the strict load passed.
    """
    check_output_folder(dst)
    check_apart({"OUT": dst, "OUT's side file": extra_path(dst)}, {"IN": src})
    check_replaceable(dst, overwrite=overwrite, is_ours=is_native_checkpoint, option="OUT")
    check_replaceable(extra_path(dst), overwrite=overwrite, is_ours=is_tensor_file, option="OUT's side file")
    weights = find_weights(safe_torch_load(src, mmap=True, metadata=True), str(src), ema=ema)
    sam3, extra = split_sam3(weights.state, str(src))  # type: ignore[arg-type]
    model = build_skeleton(preset)
    sam3, dropped, unused = drop_unexpected(sam3, model, allow_unexpected)
    native, added = to_native(sam3, model)
    check_matches(model, native, src, preset, allow_missing)
    try:
        with staged_file(dst, overwrite=overwrite, is_ours=is_native_checkpoint) as staged:
            torch.save(native, staged)
            try:
                report = load_native(model, staged, allow_missing=allow_missing, map_file=True)
            except InputError as err:  # name the input, not the temporary file that is about to go
                raise InputError(str(err).replace(str(staged), f"{src} (preset {preset}, nothing written)")) from None
            model.to("meta")  # let go of the mapped file before it is renamed (Windows refuses a mapped file)
            if extra:
                with staged_file(extra_path(dst), overwrite=overwrite, is_ours=is_tensor_file) as side:
                    torch.save(extra, side)
            elif is_tensor_file(extra_path(dst)):  # an earlier surgery's side file would describe another IN
                extra_path(dst).unlink()
    except OSError as err:
        raise InputError(f"OUT {dst}: cannot be written ({err.strerror or err}); nothing written") from None
    lines = [f"{src} -> {dst} (preset {preset})", *weights.notes, report.format()]
    if added:
        lines.append(f"added {len(added)} RoPE table(s) the file lacks (sam3's own at the native grid; not learned)")
    if dropped:
        lines.append(f"dropped {len(dropped)} unexpected tensor(s) (--allow-unexpected {' '.join(allow_unexpected)}): "
                     f"{_count_by_submodule(dropped)}; e.g. {dropped[:3]}")
    if unused:
        lines.append(f"--allow-unexpected {' '.join(unused)}: matched no key")
    if extra:
        lines.append(f"set aside {len(extra)} non-sam3 tensor(s) in {extra_path(dst)}: "
                     f"{sorted({k.split('.')[0] for k in extra})}")
    return "\n".join(lines)


def _count_by_submodule(keys: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for key in keys:
        counts[submodule_of(key)] = counts.get(submodule_of(key), 0) + 1
    return dict(sorted(counts.items()))


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
    parser.add_argument("--allow-unexpected", action="append", default=[], metavar="PREFIX",
                        help="drop the sam3 keys the model does not have that start with PREFIX (as the error names "
                             "them, e.g. transformer.decoder.extra_layer.); repeatable; the report lists them")
    parser.add_argument("--ema", action="store_true",
                        help="convert the EMA weights (ema, model_ema, ema_state_dict, state_dict_ema, ema_model, "
                             "or ema.-prefixed keys) instead of the raw ones")
    args = parser.parse_args(argv)
    print(surgery(args.src, args.dst, preset=args.preset, allow_missing=args.allow_missing,
                  allow_unexpected=args.allow_unexpected, ema=args.ema, overwrite=args.overwrite))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
