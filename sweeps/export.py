"""Export the best checkpoint(s) of a finished (or interrupted) sweep, then prove the export loads.

    python -m sweeps.export EXPERIMENT_DIR --out DIR [--pick dice|ap75|pareto] [--overwrite]
        [--optuna-journal FILE] [--study-name NAME] [--frozen-from FILE]

Reads the experiment folder alone (no Ray cluster): Tune's per-trial histories through
``ExperimentAnalysis``; each row's ``checkpoint_path`` metric (put there by ``TuneReportCallback``) names
the Train checkpoint of that report. Picks:

- ``dice``: the sweep's best checkpoint (:mod:`sweeps.results`: the best-``val_dice`` report that saved a
  checkpoint, over every report of every trial);
- ``ap75``: the same for ``val_ap75`` (only kept if ``num_to_keep`` kept it: Train ranks by val_dice);
- ``pareto``: every trial of the sweep's Pareto front (:mod:`sweeps.results`, the Optuna study's front),
  each with its best-val_dice checkpoint, in its own subfolder ``OUT/<trial id>/``.

A checkpoint whose frozen text encoder is shared with the trial's starting checkpoint
(:mod:`trainables.checkpoints.frozen`) is made whole again: its frozen tensors are read from the starting
checkpoint the sweep was given (``trial.checkpoint``), or from ``--frozen-from`` (a copy of it, e.g. on
another machine), and used only if their SHA-256 digest is the one the checkpoint recorded.

Each exported model folder is laid out as :mod:`trainables.checkpoints.exported` describes (``model.pt``
bytes unchanged or made whole, ``trial_config.json``, ``metrics.json``, ``export.json``, ``MANIFEST.sha256``; in pareto
mode ``OUT/MANIFEST.sha256`` covers every file below ``OUT``). OUT never overlaps the experiment folder or
the journal, and ``--overwrite`` replaces only an earlier export (:mod:`common.outputs`). Everything is
written to a temporary folder beside ``OUT``, verified (manifest, and
:func:`~trainables.checkpoints.exported.check_loads`: strict reload, sam3's own ``_load_checkpoint`` with
zero missing or unexpected keys, ``set_resolution`` to the trial's resolution) and only then renamed to
``OUT``.
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
import os  # noqa: E402
from collections.abc import Mapping, Sequence  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from typing import Any  # noqa: E402

import pyarrow.fs  # noqa: E402

from common.errors import InputError, run_cli  # noqa: E402
from common.outputs import check_apart, check_replaceable, staged_folder  # noqa: E402
from common.paths import is_uri  # noqa: E402
from sweeps.config import JOURNAL_FILE, METRIC, SECOND_OBJECTIVE, TIME_ATTR, TRAIN_RUNS  # noqa: E402
from sweeps.results import (  # noqa: E402
    CheckpointReport,
    ParetoRow,
    best_of,
    checkpoint_report,
    experiment_filesystem,
    load_sweep,
)
from trainables.checkpoints.exported import (  # noqa: E402
    EXPORT_FILE,
    MANIFEST,
    TRIAL_CONFIG_FILE,
    LoadCheck,
    check_loads,
    sha256_file,
    verify_export,
    write_manifest,
)
from trainables.checkpoints.files import atomic_torch_save  # noqa: E402
from trainables.checkpoints.frozen import FrozenSource  # noqa: E402
from trainables.checkpoints.trial import (  # noqa: E402
    FROZEN_SOURCE_FILE,
    METRICS_FILE,
    MODEL_FILE,
    TRAINED_FILE,
    read_model_state,
)
from trainables.config import TrialConfig  # noqa: E402

PICKS = ("dice", "ap75", "pareto")
PICK_METRIC = {"dice": METRIC, "ap75": SECOND_OBJECTIVE}
PARETO_INDEX = "pareto.json"


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
    frozen_from: dict[str, str] | None = None  # where a shared frozen text encoder was read (and its digest)

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
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it is an earlier export")
    parser.add_argument("--optuna-journal", help="pareto only: the study's journal file or database URL "
                        f"(default <experiment>/{JOURNAL_FILE}; required for URI storage)")
    parser.add_argument("--study-name", help="pareto only: the Optuna study (default: the experiment name)")
    parser.add_argument("--frozen-from", help="a copy of the sweep's starting checkpoint (trial.checkpoint), "
                        "read for the frozen text encoder instead of the path the sweep recorded (its digest must match)")
    args = parser.parse_args(argv)
    result = export_best(args.experiment_dir, args.out, pick=args.pick, overwrite=args.overwrite,
                         optuna_journal=args.optuna_journal, study_name=args.study_name,
                         frozen_from=args.frozen_from)
    print(format_result(result))
    return 0


def export_best(experiment_dir: str | os.PathLike, out: str | os.PathLike, pick: str = "dice", *,
                overwrite: bool = False, optuna_journal: str | None = None,
                study_name: str | None = None, frozen_from: str | os.PathLike | None = None) -> ExportResult:
    """Export the ``pick`` checkpoint(s) of a sweep to ``out`` and verify them; see the module docstring.

    Raises :class:`InputError` (nothing is left at ``out``) when the experiment folder is missing or has
    no reported validation metrics or no checkpoint, a checkpoint is missing or corrupt, or the export
    does not verify. ``optuna_journal`` and ``study_name`` locate the study for ``pick="pareto"``;
    ``frozen_from``: where to read a shared frozen text encoder (default: the recorded starting checkpoint).
    """
    if pick not in PICKS:
        raise InputError(f"pick {pick!r} is not one of {list(PICKS)}")
    experiment = str(experiment_dir)
    out = Path(out)
    check_apart({"--out": out}, {"EXPERIMENT_DIR": None if is_uri(experiment) else experiment,
                                 "--optuna-journal": optuna_journal, "--frozen-from": frozen_from})
    check_replaceable(out, overwrite=overwrite)
    fs, experiment_fs_path = experiment_filesystem(experiment)
    sweep = load_sweep(experiment, journal=optuna_journal, study_name=study_name)
    if pick == "pareto" and sweep.study is None:
        raise InputError(f"{experiment}: no Optuna study to take the Pareto front from (pass --optuna-journal)",
                         sweep.notes)
    choices = choose(sweep.histories, pick, sweep.pareto)

    with staged_folder(out, overwrite=overwrite, command="python -m sweeps.export") as staging:
        models = []
        for choice in choices:
            folder = staging / choice.trial_id if pick == "pareto" else staging
            source = locate_checkpoint(fs, experiment_fs_path, choice.checkpoint_path)
            models.append(_export_one(fs, source, choice, folder, experiment=experiment, pick=pick,
                                      frozen_from=frozen_from))
        if pick == "pareto":
            index = [{"trial_id": m.trial_id, "folder": m.trial_id, "step": m.step, METRIC: m.metrics.get(METRIC),
                      SECOND_OBJECTIVE: m.metrics.get(SECOND_OBJECTIVE)} for m in models]
            (staging / PARETO_INDEX).write_text(json.dumps(index, indent=2) + "\n")
            write_manifest(staging)
        verify_export(staging)
    final = [_moved(m, staging, out) for m in models]
    return ExportResult(out=out, pick=pick, experiment=experiment, models=final)


def choose(histories: Mapping[str, Any], pick: str,
           front: Sequence[ParetoRow] | None = None) -> list[CheckpointReport]:
    """The reports to export, per the pick rule (``front``: the sweep's Pareto front, for ``pick="pareto"``)."""
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
        return [_report_of(r.trial_id, histories[r.trial_id], r.checkpoint_path) for r in front]
    metric = PICK_METRIC[pick]
    best = best_of(histories, metric)
    if best is None:
        raise InputError(f"no report with {metric} saved a checkpoint (no 'checkpoint_path' in any trial's "
                         f"history: did the trials run through TuneReportCallback?)")
    return [best]


def _has_values(history, column: str) -> bool:
    return history is not None and column in history and history[column].notna().any()


def _report_of(trial_id: str, history, checkpoint_path: str) -> CheckpointReport:
    """The report of ``history`` that saved ``checkpoint_path``."""
    return checkpoint_report(trial_id, history[history["checkpoint_path"] == checkpoint_path].iloc[0])


def locate_checkpoint(fs: pyarrow.fs.FileSystem, experiment_fs_path: str, recorded: str,
                      needs: tuple[str, ...] = (MODEL_FILE, TRAINED_FILE)) -> str:
    """The checkpoint folder to read: the recorded checkpoint's place inside THIS experiment folder (which may
    have been moved or copied since the sweep). Nothing outside the folder the user named is read: a
    checkpoint that is not in it, or holds none of the files ``needs`` (default: its weights), is refused."""
    recorded_posix = recorded.replace("\\", "/")  # Ray on Windows may record backslashes (Ray #37226)
    if f"/{TRAIN_RUNS}/" in recorded_posix:
        inside = f"{experiment_fs_path}/{TRAIN_RUNS}/{recorded_posix.rsplit(f'/{TRAIN_RUNS}/', 1)[1]}"
        if any(fs.get_file_info(f"{inside}/{name}").type == pyarrow.fs.FileType.File for name in needs):
            return inside
    raise InputError(f"checkpoint {recorded}: {' or '.join(needs)} not found in the experiment folder {experiment_fs_path} "
                     f"(deleted by CheckpointConfig.num_to_keep, which keeps the best by {METRIC}, or the folder "
                     "is an incomplete copy)")


def _export_one(fs: pyarrow.fs.FileSystem, source: str, choice: CheckpointReport, folder: Path, *, experiment: str,
                pick: str, frozen_from: str | os.PathLike | None = None) -> ExportedModel:
    """Copy one checkpoint's model into ``folder`` (made whole when its frozen part is shared) with its config,
    metrics, provenance and manifest; check it."""
    folder.mkdir(parents=True, exist_ok=True)
    with fs.open_input_stream(f"{source}/{METRICS_FILE}") as f:
        try:
            saved = json.loads(f.readall())
            cfg = TrialConfig.from_dict(saved["config"], source=f"{source}/{METRICS_FILE} config")
            metrics = dict(saved["metrics"])
        except (ValueError, KeyError, TypeError) as err:
            raise InputError(f"{source}/{METRICS_FILE}: not a trial checkpoint's metrics file ({err})") from None
    _check_same_report(source, metrics, choice)
    frozen = _copy_model(fs, source, folder, frozen_from)
    _write_json(folder / TRIAL_CONFIG_FILE, cfg.to_dict())
    _write_json(folder / METRICS_FILE, metrics)
    _write_json(folder / EXPORT_FILE, {
        "experiment": experiment, "trial_id": choice.trial_id, "pick": pick, "step": choice.step,
        METRIC: choice.val_dice, SECOND_OBJECTIVE: choice.val_ap75, "preset": cfg.preset,
        "resolution": cfg.resolution, "source_checkpoint": source, "recorded_checkpoint": choice.checkpoint_path,
        "frozen_text_encoder_from": frozen,
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
                         metrics=metrics, source_checkpoint=source, check=check, frozen_from=frozen)


def _check_same_report(source: str, metrics: Mapping[str, Any], choice: CheckpointReport) -> None:
    """Refuse a checkpoint whose own metrics are not the picked Tune row's (a mismatched path)."""
    if metrics.get(TIME_ATTR) != choice.step or metrics.get(METRIC) != choice.val_dice:
        raise InputError(f"{source}: its {METRICS_FILE} ({TIME_ATTR} {metrics.get(TIME_ATTR)}, {METRIC} "
                         f"{metrics.get(METRIC)}) is not the picked report ({TIME_ATTR} {choice.step}, "
                         f"{METRIC} {choice.val_dice})")


def _copy_model(fs: pyarrow.fs.FileSystem, source: str, folder: Path,
                frozen_from: str | os.PathLike | None) -> dict[str, str] | None:
    """Write the checkpoint's whole model to ``folder/model.pt``: its ``model.pt`` bytes unchanged, or its
    trained part plus the digest-checked frozen tensors (then return where those came from, for export.json)."""
    if fs.get_file_info(f"{source}/{MODEL_FILE}").type == pyarrow.fs.FileType.File:
        _copy_checked(fs, f"{source}/{MODEL_FILE}", folder / MODEL_FILE)
        return None
    if fs.get_file_info(f"{source}/{FROZEN_SOURCE_FILE}").type != pyarrow.fs.FileType.File:
        raise InputError(f"{source}: holds {TRAINED_FILE} without {FROZEN_SOURCE_FILE}, which says where its frozen "
                         "text encoder is: an incomplete copy of the checkpoint")
    parts = folder / ".checkpoint-parts"
    parts.mkdir()
    for name in (TRAINED_FILE, FROZEN_SOURCE_FILE):
        _copy_checked(fs, f"{source}/{name}", parts / name)
    record = FrozenSource.read(parts / FROZEN_SOURCE_FILE)
    try:
        state = read_model_state(parts, frozen_from=frozen_from)
    except InputError as err:  # name the trial's files (the staged copies go away)
        raise InputError(str(err).replace(str(parts), source)) from None
    atomic_torch_save(state, folder / MODEL_FILE)
    del state
    for name in (TRAINED_FILE, FROZEN_SOURCE_FILE):
        (parts / name).unlink()
    parts.rmdir()
    return {"checkpoint": str(frozen_from or record.checkpoint), "sha256": record.sha256}


def _copy_checked(fs: pyarrow.fs.FileSystem, source: str, target: Path) -> None:
    """:func:`_copy`, then refuse a copy whose bytes differ from what was read."""
    source_sha = _copy(fs, source, target)
    if sha256_file(target) != source_sha:
        raise InputError(f"{source}: the copy differs from the source (changed while copying?)")


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
                  *([f"    frozen text encoder from {m.frozen_from['checkpoint']} (SHA-256 as recorded)"]
                    if m.frozen_from else []),
                  f"    {m.check.format()}"]
    lines.append(f"verify later with: cd {result.out} && sha256sum -c {MANIFEST}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run_cli(main))
