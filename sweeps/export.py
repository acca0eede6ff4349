"""Export the best checkpoint(s) of a finished (or interrupted) sweep, then prove the export loads.

    python -m sweeps.export EXPERIMENT_DIR --out DIR [--pick dice|ap75|pareto] [--overwrite]
        [--optuna-journal FILE] [--study-name NAME]

Reads the experiment folder alone (no Ray cluster): Tune's per-trial histories through
``ExperimentAnalysis``; each row's ``checkpoint_path`` metric (put there by ``TuneReportCallback``) names
the Train checkpoint of that report. Picks:

- ``dice``: the best-``val_dice`` row that saved a checkpoint, over every row of every trial (the driver's
  :func:`~sweeps.stage2.best_checkpoint` per trial, then the best trial);
- ``ap75``: the same for ``val_ap75`` (only kept if ``num_to_keep`` kept it: Train ranks by val_dice);
- ``pareto``: every trial of the driver's :func:`~sweeps.stage2.pareto_front` (the Optuna study's front),
  each with its best-val_dice checkpoint, in its own subfolder ``OUT/<trial id>/``.

Each exported model folder holds ``model.pt`` (the trial's native-format file, bytes unchanged),
``trial_config.json`` (the :class:`~trainables.config.TrialConfig`), ``metrics.json`` (what the trial
reported with that checkpoint, ``step`` included), ``export.json`` (provenance) and ``MANIFEST.sha256``
(``sha256sum -c`` compatible; in pareto mode ``OUT/MANIFEST.sha256`` covers every file below ``OUT``).
Everything is written to a temporary folder beside ``OUT``, verified (manifest, strict reload with
:func:`~trainables.checkpoint.load_native`, sam3's own ``_load_checkpoint`` with zero missing or
unexpected keys, ``set_resolution`` to the trial's resolution) and only then renamed to ``OUT``.
Storage may be a local path or a pyarrow URI (``s3://...``). Bad input exits with status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script path: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Mapping, Sequence  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from typing import Any  # noqa: E402

import pyarrow.fs  # noqa: E402

from data_prep.errors import InputError, run_cli  # noqa: E402
from sweeps.config import METRIC, SECOND_OBJECTIVE, TIME_ATTR, SearcherConfig, SweepConfig, is_uri  # noqa: E402
from sweeps.stage2 import ParetoRow, best_checkpoint, pareto_front  # noqa: E402
from trainables.config import TrialConfig  # noqa: E402
from trainables.trial_checkpoint import METRICS_FILE, MODEL_FILE  # noqa: E402

PICKS = ("dice", "ap75", "pareto")
PICK_METRIC = {"dice": METRIC, "ap75": SECOND_OBJECTIVE}
MANIFEST = "MANIFEST.sha256"
TRIAL_CONFIG_FILE = "trial_config.json"
EXPORT_FILE = "export.json"
PARETO_INDEX = "pareto.json"
#: Where the driver's Train runs live inside the experiment folder (``stage2.make_trial_function``).
TRAIN_RUNS = "train_runs"


@dataclass(frozen=True)
class Choice:
    """One row of a trial's Tune history picked for export, with the checkpoint it saved."""

    trial_id: str
    checkpoint_path: str  # as recorded in the row (a local path, or bucket-relative for URI storage)
    val_dice: float
    val_ap75: float
    step: int


@dataclass(frozen=True)
class LoadCheck:
    """What reloading an exported ``model.pt`` found (both loaders must load every tensor)."""

    native_loaded: int  # tensors :func:`trainables.checkpoint.load_native` matched, strictly
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


@dataclass(frozen=True)
class ExportedModel:
    """One exported checkpoint: where it is and everything needed to rebuild and re-evaluate it."""

    directory: Path
    trial_id: str
    step: int
    trial_config: TrialConfig  # preset, resolution, val_json, images_dir, score_threshold...
    metrics: dict[str, Any]  # what the trial reported with this checkpoint (val_dice, val_ap75, step...)
    source_checkpoint: str
    check: LoadCheck

    @property
    def model_path(self) -> Path:
        return self.directory / MODEL_FILE

    @property
    def preset(self) -> str:
        return self.trial_config.preset

    @property
    def resolution(self) -> int:
        return self.trial_config.resolution


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_best` wrote: ``OUT`` and one :class:`ExportedModel` per exported trial."""

    out: Path
    pick: str
    experiment: str
    models: list[ExportedModel]


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: export, verify, print what was exported."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment_dir", help="the sweep's Tune experiment folder (<storage_path>/<name>) or URI")
    parser.add_argument("--out", required=True, help="the folder to create")
    parser.add_argument("--pick", choices=PICKS, default="dice", help="which checkpoint(s) to export")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    parser.add_argument("--optuna-journal", help="pareto only: the study's journal file "
                        "(default <experiment>/optuna_journal.log; required for URI storage)")
    parser.add_argument("--study-name", help="pareto only: the Optuna study (default: the experiment name)")
    args = parser.parse_args(argv)
    result = export_best(args.experiment_dir, args.out, pick=args.pick, overwrite=args.overwrite,
                         optuna_journal=args.optuna_journal, study_name=args.study_name)
    print(format_result(result))
    return 0


def export_best(experiment_dir: str | os.PathLike, out: str | os.PathLike, pick: str = "dice", *,
                overwrite: bool = False, optuna_journal: str | None = None,
                study_name: str | None = None) -> ExportResult:
    """Export the ``pick`` checkpoint(s) of a sweep to ``out`` and verify them; see the module docstring.

    Raises :class:`InputError` (nothing is left at ``out``) when the experiment folder is missing or has
    no reported validation metrics or no checkpoint, a checkpoint is missing or corrupt, or the export
    does not verify. ``optuna_journal`` and ``study_name`` locate the study for ``pick="pareto"``.
    """
    if pick not in PICKS:
        raise InputError(f"pick {pick!r} is not one of {list(PICKS)}")
    experiment = str(experiment_dir)
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out} exists: pass --overwrite to replace it")
    fs, experiment_fs_path = _filesystem(experiment)
    results = load_results(fs, experiment_fs_path, experiment)
    histories = trial_histories(results)
    front = None
    if pick == "pareto":
        front = pareto_front(_study_config(experiment, optuna_journal, study_name), results)
    choices = choose(histories, pick, front)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        models = []
        for choice in choices:
            folder = staging / choice.trial_id if pick == "pareto" else staging
            source = locate_checkpoint(fs, experiment_fs_path, choice.checkpoint_path)
            models.append(_export_one(fs, source, choice, folder, experiment=experiment, pick=pick))
        if pick == "pareto":
            index = [{"trial_id": m.trial_id, "folder": m.trial_id, "step": m.step, METRIC: m.metrics.get(METRIC),
                      SECOND_OBJECTIVE: m.metrics.get(SECOND_OBJECTIVE)} for m in models]
            (staging / PARETO_INDEX).write_text(json.dumps(index, indent=2) + "\n")
            write_manifest(staging)
        verify_export(staging)
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    final = [_moved(m, staging, out) for m in models]
    return ExportResult(out=out, pick=pick, experiment=experiment, models=final)


def _filesystem(experiment: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The experiment's filesystem and its path there; refuse a folder that does not exist."""
    if is_uri(experiment):
        fs, path = pyarrow.fs.FileSystem.from_uri(experiment)
    else:
        fs, path = pyarrow.fs.LocalFileSystem(), str(Path(experiment).resolve())
    if fs.get_file_info(path).type != pyarrow.fs.FileType.Directory:
        raise InputError(f"{experiment}: experiment folder not found (expected <storage_path>/<sweep name>)")
    return fs, path


def load_results(fs: pyarrow.fs.FileSystem, experiment_fs_path: str, experiment: str):
    """The sweep's ``ray.tune.ResultGrid``, read from the experiment folder (no Ray cluster needed)."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    try:
        analysis = ExperimentAnalysis(experiment_fs_path, storage_filesystem=fs)
    except (ValueError, OSError) as err:
        raise InputError(f"{experiment}: not a Tune experiment folder ({str(err).splitlines()[0]})") from None
    return ResultGrid(analysis)


def trial_histories(results) -> dict[str, Any]:
    """Tune trial id -> that trial's history (a metrics DataFrame, one row per report)."""
    return {r.metrics.get("trial_id") or Path(r.path).name: r.metrics_dataframe for r in results}


def choose(histories: Mapping[str, Any], pick: str, front: Sequence[ParetoRow] | None = None) -> list[Choice]:
    """The rows to export, per the pick rule (``front``: the driver's Pareto front, for ``pick="pareto"``)."""
    if not any(_has_values(h, METRIC) for h in histories.values()):
        raise InputError(f"no trial of the {len(histories)} in the experiment reported {METRIC} "
                         f"(did every trial diverge or fail before its first validation?)")
    if pick == "pareto":
        if not front:
            raise InputError("the Pareto front is empty: no trial ran to max_steps with finite objectives "
                             "(use --pick dice to export the best checkpoint of any trial)")
        lacking = [r.trial_id for r in front if r.checkpoint_path is None or r.trial_id not in histories]
        if lacking:
            raise InputError("Pareto-optimal trials without a saved checkpoint in this experiment", lacking)
        return [_choice(r.trial_id, histories[r.trial_id], r.checkpoint_path) for r in front]
    metric = PICK_METRIC[pick]
    candidates = []
    for trial_id, history in histories.items():
        path = best_checkpoint(history, metric)
        if path is not None:
            candidates.append(_choice(trial_id, history, path))
    if not candidates:
        raise InputError(f"no report with {metric} saved a checkpoint (no 'checkpoint_path' in any trial's "
                         f"history: did the trials run through TuneReportCallback?)")
    return [max(candidates, key=lambda c: c.val_dice if pick == "dice" else c.val_ap75)]


def _has_values(history, column: str) -> bool:
    return history is not None and column in history and history[column].notna().any()


def _choice(trial_id: str, history, checkpoint_path: str) -> Choice:
    row = history[history["checkpoint_path"] == checkpoint_path].iloc[0]
    ap75 = row.get(SECOND_OBJECTIVE, math.nan)
    return Choice(trial_id=trial_id, checkpoint_path=checkpoint_path, val_dice=float(row[METRIC]),
                  val_ap75=float(ap75), step=int(row[TIME_ATTR]))


def _study_config(experiment: str, journal: str | None, study_name: str | None) -> SweepConfig:
    """A :class:`SweepConfig` naming only the study (all that ``stage2.pareto_front`` reads of it)."""
    storage_path, _, name = experiment.rstrip("/").rpartition("/")
    if journal is None:
        if is_uri(experiment):
            raise InputError(f"{experiment}: pass --optuna-journal (the study's journal is a local/NFS file)")
        journal = str(Path(experiment) / "optuna_journal.log")
    if not Path(journal).is_file():
        raise InputError(f"{journal}: Optuna journal not found (pass --optuna-journal)")
    return SweepConfig(name=name, storage_path=storage_path, search_space="", trial=TrialConfig(),
                       searcher=SearcherConfig(storage=journal, study_name=study_name or name))


def locate_checkpoint(fs: pyarrow.fs.FileSystem, experiment_fs_path: str, recorded: str) -> str:
    """The checkpoint folder to read: inside THIS experiment folder if it has a copy (the folder may have
    been moved or copied since the sweep), else the recorded location. Refuses one without ``model.pt``."""
    candidates = [recorded]
    if f"/{TRAIN_RUNS}/" in recorded:
        candidates.insert(0, f"{experiment_fs_path}/{TRAIN_RUNS}/{recorded.rsplit(f'/{TRAIN_RUNS}/', 1)[1]}")
    for path in candidates:
        if fs.get_file_info(f"{path}/{MODEL_FILE}").type == pyarrow.fs.FileType.File:
            return path
    raise InputError(f"checkpoint {recorded}: {MODEL_FILE} not found (deleted by CheckpointConfig.num_to_keep, "
                     f"which keeps the best by {METRIC}, or the experiment folder is incomplete)")


def _export_one(fs: pyarrow.fs.FileSystem, source: str, choice: Choice, folder: Path, *, experiment: str,
                pick: str) -> ExportedModel:
    """Copy one checkpoint's model into ``folder`` with its config, metrics, provenance and manifest; check it."""
    folder.mkdir(parents=True, exist_ok=True)
    with fs.open_input_stream(f"{source}/{METRICS_FILE}") as f:
        try:
            saved = json.loads(f.readall())
            cfg = TrialConfig.from_dict(saved["config"], source=f"{source}/{METRICS_FILE} config")
            metrics = dict(saved["metrics"])
        except (ValueError, KeyError, TypeError) as err:
            raise InputError(f"{source}/{METRICS_FILE}: not a trial checkpoint's metrics file ({err})") from None
    _check_same_report(source, metrics, choice)
    source_sha = _copy(fs, f"{source}/{MODEL_FILE}", folder / MODEL_FILE)
    if sha256_file(folder / MODEL_FILE) != source_sha:
        raise InputError(f"{source}/{MODEL_FILE}: the copy differs from the source (changed while copying?)")
    _write_json(folder / TRIAL_CONFIG_FILE, cfg.to_dict())
    _write_json(folder / METRICS_FILE, metrics)
    _write_json(folder / EXPORT_FILE, {
        "experiment": experiment, "trial_id": choice.trial_id, "pick": pick, "step": choice.step,
        METRIC: choice.val_dice, SECOND_OBJECTIVE: choice.val_ap75, "preset": cfg.preset,
        "resolution": cfg.resolution, "source_checkpoint": source, "recorded_checkpoint": choice.checkpoint_path,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "format": "sam3 native: {'detector.' + state_dict key: fp32 tensor}, RoPE tables at the preset's "
                  "native grid; build_model(preset), load_native, then set_resolution(resolution)",
    })
    write_manifest(folder)
    try:
        check = check_loads(folder / MODEL_FILE, cfg.preset, cfg.resolution)
    except InputError as err:  # name the trial's file (the staged copy is byte-identical and goes away)
        raise InputError(str(err).replace(str(folder / MODEL_FILE), f"{source}/{MODEL_FILE}")) from None
    return ExportedModel(directory=folder, trial_id=choice.trial_id, step=choice.step, trial_config=cfg,
                         metrics=metrics, source_checkpoint=source, check=check)


def _check_same_report(source: str, metrics: Mapping[str, Any], choice: Choice) -> None:
    """Refuse a checkpoint whose own metrics are not the picked Tune row's (a mismatched path)."""
    if metrics.get(TIME_ATTR) != choice.step or metrics.get(METRIC) != choice.val_dice:
        raise InputError(f"{source}: its {METRICS_FILE} ({TIME_ATTR} {metrics.get(TIME_ATTR)}, {METRIC} "
                         f"{metrics.get(METRIC)}) is not the picked report ({TIME_ATTR} {choice.step}, "
                         f"{METRIC} {choice.val_dice})")


def _copy(fs: pyarrow.fs.FileSystem, source: str, target: Path) -> str:
    """Stream ``source`` on ``fs`` to the local ``target``; return the sha256 of the bytes read."""
    digest = hashlib.sha256()
    with fs.open_input_stream(source) as src, open(target, "wb") as dst:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            dst.write(chunk)
    return digest.hexdigest()


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, default=float) + "\n")


def check_loads(model_path: Path, preset: str, resolution: int) -> LoadCheck:
    """Reload ``model_path`` both ways into fresh ``build_model(preset)`` models and compare every tensor.

    1. :func:`load_model` (strict ``load_native``, then ``set_resolution(resolution)``);
    2. sam3's own ``model_builder._load_checkpoint`` (what ``build_sam3_image_model(checkpoint_path=...)``
       runs): zero missing, unexpected or ignored keys.
    Both must leave the model's tensors bitwise equal to the file's. Raises :class:`InputError` otherwise.
    """
    import torch

    from trainables.checkpoint import PREFIX, safe_torch_load
    from trainables.model import build_model
    from trainables.resolution import set_resolution

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


def load_model(directory: str | os.PathLike, device: str = "cpu"):
    """Rebuild an exported model for use (evaluation): ``(model, trial_config)``, at the trial's resolution.

    Checks the folder's manifest first; the model comes back in training mode (call ``.eval()``).
    """
    directory = Path(directory)
    verify_export(directory)
    cfg = TrialConfig.from_dict(json.loads((directory / TRIAL_CONFIG_FILE).read_text()),
                                source=str(directory / TRIAL_CONFIG_FILE))
    model, _ = _load_native_at(directory / MODEL_FILE, cfg.preset, cfg.resolution, device=device)
    return model, cfg


def _load_native_at(path: Path, preset: str, resolution: int | None, device: str = "cpu"):
    """``build_model(preset)`` at its native size, strict ``load_native``, then ``set_resolution``."""
    from trainables.checkpoint import load_native
    from trainables.model import build_model
    from trainables.resolution import set_resolution

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


def _publish(staging: Path, out: Path) -> None:
    """Rename ``staging`` to ``out``, replacing an existing ``out`` only once the new one is complete."""
    if not out.exists() and not out.is_symlink():
        os.replace(staging, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent)) / out.name
    os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old.parent)


def _moved(model: ExportedModel, staging: Path, out: Path) -> ExportedModel:
    return replace(model, directory=out / model.directory.relative_to(staging))


def format_result(result: ExportResult) -> str:
    """What was exported, from where, and how it was checked."""
    lines = [f"exported {len(result.models)} checkpoint(s) of {result.experiment} (pick {result.pick}) to "
             f"{result.out}"]
    for m in result.models:
        lines += [f"  {m.trial_id} step {m.step}: {METRIC}={m.metrics.get(METRIC)} "
                  f"{SECOND_OBJECTIVE}={m.metrics.get(SECOND_OBJECTIVE)}  preset {m.preset}, {m.resolution} px",
                  f"    {m.directory}  (from {m.source_checkpoint})",
                  f"    {m.check.format()}"]
    lines.append(f"verify later with: cd {result.out} && sha256sum -c {MANIFEST}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run_cli(main))
