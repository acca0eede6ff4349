"""The sweep report: one self-contained HTML page (``index.html`` + PNG figures beside it) of a finished sweep.

    python -m sweeps.report EXPERIMENT_DIR --out DIR [--export DIR] [--journal FILE] [--study NAME] [--overwrite]
        [--evaluation DIR]

It reads what the driver (``sweeps/stage2.py``) left in the experiment directory: Tune's per-trial results
(``ray.tune.ExperimentAnalysis``) and the Optuna study in ``optuna_journal.log`` (trial states, the Pareto
front, parameter importances). It never trains; only the overlays run a model, the exported best checkpoint
(``--export``, see :mod:`sweeps.overlays`). Figures: Pareto front, best-so-far ``val_dice`` against
compute, parallel coordinates, parameter importances, learning curves, per-category Dice/AP75 of the best
trial, overlays, and the export's held-out evaluation when it has been evaluated (``--evaluation``: the
folder ``python -m sweeps.evaluate`` wrote). A figure that cannot be made is replaced by a note saying why.

The sweep is read by :func:`sweeps.results.load_sweep`, whose rules the page follows: a trial's
``val_dice``/``val_ap75`` are its LAST report (what Optuna was told); its status is Optuna's, else Tune's; the
best trial holds the sweep's best checkpoint (the one the export takes), and its per-category figures come
from that checkpoint's report.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import math
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from optuna.importance import get_param_importances
from optuna.trial import TrialState

from common.errors import InputError, run_cli
from common.outputs import check_apart, check_replaceable, staged_folder
from common.paths import is_uri
from data_prep.cass import CASS_CATEGORIES
from sweeps.config import JOURNAL_FILE, METRIC, SECOND_OBJECTIVE
from sweeps.results import SweepResults, TrialRecord, experiment_filesystem, load_sweep

STATUS_COLOURS = {"COMPLETE": "tab:blue", "PRUNED": "tab:orange", "FAIL": "tab:red"}


class FigureUnavailable(Exception):
    """A figure cannot be drawn from this sweep; the message is shown in the page instead."""


# --- figures: each draws one PNG or raises FigureUnavailable -------------------------------------------


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def plot_pareto(sweep: SweepResults, path: Path) -> None:
    """val_dice vs val_ap75 of every trial by status; the Pareto front joined; the best trial starred."""
    points = [t for t in sweep.trials if _finite(t.val_dice) and _finite(t.val_ap75)]
    if not points:
        raise FigureUnavailable(f"no trial reported both {METRIC} and {SECOND_OBJECTIVE}")
    fig = Figure(figsize=(6.5, 4.8), layout="constrained")
    ax = fig.subplots()
    for status in sorted({t.status for t in points}):
        group = [t for t in points if t.status == status]
        ax.scatter([t.val_dice for t in group], [t.val_ap75 for t in group], s=40,
                   color=STATUS_COLOURS.get(status, "tab:gray"), label=f"{status} ({len(group)})")
    by_id = {t.trial_id: t for t in points}
    front = sorted((by_id[i] for i in sweep.pareto_ids if i in by_id), key=lambda t: t.val_dice)
    if front:
        ax.plot([t.val_dice for t in front], [t.val_ap75 for t in front], "k--", lw=1, label="Pareto front")
    best = sweep.best
    if best is not None and best.trial_id in by_id:
        ax.scatter([best.val_dice], [best.val_ap75], marker="*", s=300, color="gold", edgecolor="black",
                   zorder=3, label=f"best: {best.trial_id}")
    ax.set(xlabel=f"{METRIC} (last report)", ylabel=f"{SECOND_OBJECTIVE} (last report)", title="Pareto front")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)


def compute_events(sweep: SweepResults) -> pd.DataFrame:
    """Every report of every trial in time order: ``minutes`` since the sweep began, ``steps`` spent in total
    so far (each trial's step increments, all trials together) and ``best`` val_dice so far."""
    frames = []
    for t in sweep.trials:
        h = t.history
        if h.empty or not {"step", "timestamp", "time_total_s"} <= set(h):
            continue
        frames.append(pd.DataFrame({
            "start": (h["timestamp"] - h["time_total_s"]).min(), "timestamp": h["timestamp"],
            "time_total_s": h["time_total_s"], "spent": h["step"].diff().fillna(h["step"]).clip(lower=0),
            METRIC: h[METRIC] if METRIC in h else np.nan}))
    if not frames:
        return pd.DataFrame(columns=["minutes", "steps", "best"])
    events = pd.concat(frames).sort_values(["timestamp", "time_total_s"], kind="stable")
    return pd.DataFrame({
        "minutes": (events["timestamp"] - events["start"].min()) / 60.0,
        "steps": events["spent"].cumsum(),
        "best": events[METRIC].fillna(-np.inf).cummax().replace(-np.inf, np.nan),
    }).reset_index(drop=True)


#: the fewest random draws that ran to the end from which :func:`random_search_band` draws a band
MIN_RANDOM_DRAWS = 3


def random_search_band(sweep: SweepResults, spent: float, resamples: int = 1000, seed: int = 0,
                       points: int = 200) -> tuple[int, pd.DataFrame]:
    """What random search would have reached for the same trial-steps, from the sweep's own random draws.

    The population is the trials whose parameters were drawn at random (:func:`sweeps.optuna_search.draw_kind`)
    and that ran to the end (COMPLETE). Random search runs such trials one after another, drawn with
    replacement, and picks by the sweep's rule (the highest val_dice of any report so far), a report counting
    once its step is paid for, as the sweep's own curve counts them. Each resample runs as many trials as the
    population holds (no more: beyond that the resamples would only repeat its best); each row gives ``steps``
    (up to ``spent`` and that many trials' steps) and the 10th, 50th and 90th percentiles over the resamples.
    Returns the population's size and the rows (none below :data:`MIN_RANDOM_DRAWS`).
    """
    finished = [t for t in sweep.trials
                if t.draw == "random" and t.status == "COMPLETE" and t.best_report() is not None]
    rows = pd.DataFrame(columns=["steps", "low", "median", "high"])
    if len(finished) < MIN_RANDOM_DRAWS:
        return len(finished), rows
    curves = [t.history.dropna(subset=[METRIC]) for t in finished]
    longest = max(len(c) for c in curves)
    steps = np.full((len(curves), longest), np.inf)  # each trial's report steps, padded with never-paid ones
    values = np.full((len(curves), longest), -np.inf)
    for i, curve in enumerate(curves):
        steps[i, :len(curve)], values[i, :len(curve)] = curve["step"].to_numpy(), curve[METRIC].to_numpy()
    lengths = np.array([t.steps for t in finished], dtype=float)
    drawn = np.random.default_rng(seed).integers(len(curves), size=(resamples, len(curves)))
    offsets = np.cumsum(lengths[drawn], axis=1) - lengths[drawn]  # where each drawn trial starts
    paid = (offsets[:, :, None] + steps[drawn]).reshape(resamples, -1)  # [resamples, reports]
    order = np.argsort(paid, axis=1, kind="stable")  # in the order they are paid for (padding last)
    paid = np.take_along_axis(paid, order, axis=1)
    best = np.maximum.accumulate(np.take_along_axis(values[drawn].reshape(resamples, -1), order, axis=1), axis=1)
    xs = np.linspace(0, min(spent, float(np.min(np.sum(lengths[drawn], axis=1)))), points)
    at = np.stack([np.searchsorted(row, xs, side="right") - 1 for row in paid])  # last report paid by each x
    picks = np.where(at >= 0, np.take_along_axis(best, np.maximum(at, 0), axis=1), np.nan)
    picks[np.isinf(picks)] = np.nan
    keep = ~np.isnan(picks).all(axis=0)
    if not keep.any():
        return len(finished), rows
    low, median, high = np.nanquantile(picks[:, keep], [0.1, 0.5, 0.9], axis=0)
    return len(finished), pd.DataFrame({"steps": xs[keep], "low": low, "median": median, "high": high})


def band_note(sweep: SweepResults, draws: int) -> str:
    """Why a best-so-far figure has no random-search band."""
    if not any(t.draw for t in sweep.trials):
        return ("no random-search band: this sweep did not record how its trials were drawn (no Optuna study, "
                "an NSGA-II sampler, or a sweep from before draws were recorded)")
    return f"no random-search band: {draws} random draw(s) ran to the end, {MIN_RANDOM_DRAWS} needed"


def plot_best_so_far(sweep: SweepResults, path: Path) -> None:
    """Best val_dice so far against total trial steps spent, with the random-search band of
    :func:`random_search_band` where the sweep has one, and against wall-clock minutes."""
    events = compute_events(sweep)
    if events["best"].isna().all():
        raise FigureUnavailable(f"no trial reported {METRIC}")
    fig = Figure(figsize=(10, 4), layout="constrained")
    by_steps, by_time = fig.subplots(1, 2, sharey=True)
    by_steps.plot(events["steps"], events["best"], drawstyle="steps-post", marker=".", label="this sweep")
    draws, band = random_search_band(sweep, float(events["steps"].max()))
    if len(band):
        by_steps.fill_between(band["steps"], band["low"], band["high"], color="tab:gray", alpha=0.25,
                              label=f"random search, 10-90% (from {draws} random draws that ran to the end)")
        by_steps.plot(band["steps"], band["median"], color="tab:gray", ls="--", label="its median")
    else:
        by_steps.plot([], [], " ", label=band_note(sweep, draws))
    by_steps.legend(fontsize=7, loc="lower right")
    by_steps.set(xlabel="trial steps spent (all trials)", ylabel=f"best {METRIC} so far")
    by_time.plot(events["minutes"], events["best"], drawstyle="steps-post", marker=".", color="tab:green")
    by_time.set(xlabel="wall-clock minutes since the first trial started")
    for ax in (by_steps, by_time):
        ax.grid(alpha=0.3)
    fig.suptitle(f"Best {METRIC} so far against compute")
    fig.savefig(path, dpi=100)


def parallel_axes(trials: Sequence[TrialRecord]) -> tuple[list[str], np.ndarray, list[list[tuple[float, str]]]]:
    """Axis names (hyperparameters, then val_dice), values scaled to [0, 1] per axis (trials x axes; nan
    when missing), and per axis (position, label) ticks. Positive numbers spanning a factor >= 10 are
    log-scaled; non-numeric values are placed as evenly spaced categories."""
    names = sorted({k for t in trials for k in t.params})
    columns = [[t.params.get(n) for t in trials] for n in names] + [[t.val_dice for t in trials]]
    scaled, ticks = [], []
    for values in columns:
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values if v is not None)
        if numeric:
            raw = np.array([np.nan if v is None else float(v) for v in values])
            finite = raw[np.isfinite(raw)]
            log = finite.size > 0 and finite.min() > 0 and finite.max() / finite.min() >= 10
            axis = np.log10(raw) if log else raw
            low, high = (np.nanmin(axis), np.nanmax(axis)) if finite.size else (0.0, 1.0)
            span = high - low or 1.0
            scaled.append((axis - low) / span if high > low else np.where(np.isfinite(axis), 0.5, np.nan))
            ends = [(0.0, low), (1.0, high)] if high > low else [(0.5, low)]
            ticks.append([(pos, f"{10 ** v if log else v:.3g}") for pos, v in ends])
        else:
            categories = sorted({str(v) for v in values})
            positions = np.linspace(0, 1, len(categories)) if len(categories) > 1 else [0.5]
            place = dict(zip(categories, positions))
            scaled.append(np.array([place[str(v)] for v in values], dtype=float))
            ticks.append([(place[c], c) for c in categories])
    return names + [METRIC], np.array(scaled).T, ticks


def plot_parallel_coordinates(sweep: SweepResults, path: Path) -> None:
    """One line per trial across its hyperparameters and val_dice, coloured by val_dice (grey: none)."""
    if not sweep.trials or not any(t.params for t in sweep.trials):
        raise FigureUnavailable("no trial has sampled hyperparameters")
    names, values, ticks = parallel_axes(sweep.trials)
    dice = np.array([t.val_dice for t in sweep.trials])
    finite = dice[np.isfinite(dice)]
    norm = Normalize(finite.min(), finite.max()) if finite.size else Normalize(0, 1)
    cmap = ScalarMappable(norm=norm, cmap="viridis")
    fig = Figure(figsize=(max(6.0, 2.0 * len(names)), 4.8), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(names))
    for row, d in zip(values, dice):
        if math.isfinite(d):
            ax.plot(x, row, color=cmap.to_rgba(d), lw=2, alpha=0.9, marker="o")
        else:
            ax.plot(x, row, color="gray", lw=1.5, ls="--", marker="o", alpha=0.7)
    for i, axis_ticks in enumerate(ticks):
        ax.axvline(i, color="black", lw=0.8)
        for pos, label in axis_ticks:
            ax.annotate(label, (i, pos), xytext=(4, 0), textcoords="offset points", fontsize=8, va="center")
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_yticks([])
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"Hyperparameters of each trial\n(colour: last {METRIC}; grey dashed: none reported)")
    fig.colorbar(cmap, ax=ax, label=METRIC)
    fig.savefig(path, dpi=100)


def param_importances(study: optuna.Study) -> dict[str, dict[str, float]]:
    """Optuna's default (PED-ANOVA) importance of each hyperparameter per objective (COMPLETE trials only):
    how much each one matters for reaching the objective's best values, in the study's own direction.

    PED-ANOVA ranks trials by ``target`` as if lower were better whenever a ``target`` is given (and warns
    so); both objectives here are maximised, so each is scored on a single-objective copy of the study that
    keeps its direction, with no ``target``.
    """
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        raise FigureUnavailable(f"parameter importances need at least 2 completed trials; this sweep has "
                                f"{len(complete)}")
    importances = {}
    for index, objective in enumerate((METRIC, SECOND_OBJECTIVE)):
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" line
        try:
            one_objective = optuna.create_study(direction=study.directions[index])
        finally:
            optuna.logging.set_verbosity(verbosity)
        one_objective.add_trials([optuna.trial.create_trial(params=t.params, distributions=t.distributions,
                                                            value=t.values[index]) for t in complete])
        try:
            importances[objective] = get_param_importances(one_objective)
        except (ValueError, RuntimeError) as err:
            raise FigureUnavailable(f"Optuna could not compute importances for {objective}: {err}") from None
    if not any(importances.values()):
        raise FigureUnavailable("the completed trials vary no hyperparameter")
    return importances


def plot_importances(sweep: SweepResults, path: Path) -> None:
    """Horizontal bars: each hyperparameter's importance for val_dice and for val_ap75."""
    if sweep.study is None:
        raise FigureUnavailable("no Optuna study was found for this sweep")
    importances = param_importances(sweep.study)
    names = sorted({n for values in importances.values() for n in values})
    fig = Figure(figsize=(7, 1.2 + 0.6 * len(names)), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(names))
    height = 0.8 / len(importances)
    for k, (objective, values) in enumerate(importances.items()):
        ax.barh(y + k * height, [values.get(n, 0.0) for n in names], height=height, label=objective)
    ax.set_yticks(y + height * (len(importances) - 1) / 2, names)
    ax.set(xlabel="importance (Optuna's PED-ANOVA, normalised per objective)", title="Hyperparameter importances")
    ax.legend()
    fig.savefig(path, dpi=100)


def plot_learning_curves(sweep: SweepResults, path: Path) -> None:
    """val_dice and train_loss against step, one line per trial; trials that did not complete end in an X."""
    if not any(k in t.history for t in sweep.trials for k in (METRIC, "train_loss")):
        raise FigureUnavailable(f"no trial reported {METRIC} or train_loss")
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    axes = fig.subplots(1, 2)
    for index, t in enumerate(sweep.trials):
        label, colour = f"{t.trial_id} ({t.status}, {t.steps} steps)", f"C{index % 10}"  # one colour per trial
        for ax, key in zip(axes, (METRIC, "train_loss")):
            if key not in t.history or "step" not in t.history:
                continue
            h = t.history.dropna(subset=[key])
            if h.empty:
                continue
            ax.plot(h["step"], h[key], marker=".", color=colour, label=label)
            if t.status != "COMPLETE":
                ax.plot(h["step"].iloc[-1], h[key].iloc[-1], marker="X", ms=11, color=colour)
    for ax, key in zip(axes, (METRIC, "train_loss")):
        ax.set(xlabel="step", ylabel=key, title=f"{key} by step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.savefig(path, dpi=100)


def plot_per_category(sweep: SweepResults, path: Path) -> None:
    """Dice and AP75 per CASS category at the best trial's best report (n/a: no value for that category)."""
    best = sweep.best
    report = best.best_report() if best else None
    if report is None:
        raise FigureUnavailable(f"no trial reported {METRIC}")
    keys = [(f"{METRIC}/{c.short_name}", f"{SECOND_OBJECTIVE}/{c.short_name}") for c in CASS_CATEGORIES]
    if not any(k in report for pair in keys for k in pair):
        raise FigureUnavailable(f"the best trial reported no per-category metrics ({METRIC}/<short_name>)")
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(CASS_CATEGORIES))
    for offset, column, label in ((-0.2, 0, "Dice"), (0.2, 1, "AP75")):
        values = np.array([float(report.get(pair[column], np.nan)) for pair in keys])
        ax.bar(x + offset, np.nan_to_num(values), width=0.4, label=label)
        for xi, v in zip(x, values):
            if not math.isfinite(v):
                ax.annotate("n/a", (xi + offset, 0.0), ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(x, [c.short_name for c in CASS_CATEGORIES], rotation=35, ha="right")
    ax.set(ylim=(0, 1.05), ylabel="score",
           title=f"Per-category scores of {best.trial_id} at step {int(report.get('step', 0))}")
    ax.legend()
    fig.savefig(path, dpi=100)


# --- the page -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """One part of the page: its images (file names relative to the page) or a note saying why none."""

    title: str
    caption: str
    images: list[str]
    note: str | None = None
    html: str | None = None  # a table or other markup shown after the title (already escaped)


FIGURES: list[tuple[str, str, Callable[[SweepResults, Path], None], str]] = [
    ("Pareto front", "pareto.png", plot_pareto,
     f"Last {METRIC} and {SECOND_OBJECTIVE} of every trial; the dashed line joins Optuna's Pareto-optimal "
     f"completed trials; the star is the best trial, which holds the sweep's best checkpoint (the highest {METRIC} "
     "of any report that saved one: the checkpoint the export takes)."),
    ("Best so far against compute", "best_so_far.png", plot_best_so_far,
     f"Running maximum of every reported {METRIC} (selection figures), against the trial steps spent by all trials "
     "together and against wall-clock time. The grey band is what random search would have picked for the same "
     "steps: trials drawn one after another from this sweep's random draws that ran to the end (the sampler's "
     "first draws), as many as there are. Its limits cut both ways: those draws are ASHA's survivors (diverged "
     "and stopped draws are left out), which flatters random search, and a few of them cap the band at their "
     "best, which flatters the sweep. Read it as a hint, not a test: bench/search_replay.py measures the "
     "search against random on held-out data."),
    ("Hyperparameters", "parallel_coordinates.png", plot_parallel_coordinates,
     "Parallel coordinates: one line per trial; each axis spans the sampled range (log where it covers a "
     "factor of 10 or more)."),
    ("Parameter importances", "importances.png", plot_importances,
     "Optuna's parameter importances (its default evaluator, PED-ANOVA) over completed trials, one bar per "
     "objective."),
    ("Learning curves", "learning_curves.png", plot_learning_curves,
     "Each trial's validation Dice and mean training loss by step. Trials stopped early by ASHA (PRUNED) "
     "or failed (FAIL: diverged or errored) end early, marked X."),
    ("Per-category scores of the best trial", "per_category.png", plot_per_category,
     "Dice and AP75 for each of the 14 CASS segments at the sweep's best checkpoint."),
]


def make_figure(sweep: SweepResults, out_dir: Path, title: str, file_name: str,
                plot: Callable[[SweepResults, Path], None], caption: str) -> Section:
    """Draw one figure into ``out_dir``; a :class:`FigureUnavailable` becomes the section's note."""
    try:
        plot(sweep, out_dir / file_name)
    except FigureUnavailable as why:
        return Section(title, caption, [], note=str(why))
    return Section(title, caption, [file_name])


def overlay_section(export_dir: Path | None, out_dir: Path, max_images: int) -> Section:
    """Prediction overlays of the exported best checkpoint, or a note when there is none."""
    from sweeps import overlays

    title = "Predictions on validation images"
    caption = ("Left: ground truth; right: the exported checkpoint's masks (queries scoring at least the trial's "
               "score_threshold); one colour per CASS segment.")
    if export_dir is None:
        return Section(title, caption, [], note="no exported checkpoint given: pass --export DIR (a directory "
                       "written by sweeps/export.py) to draw predictions")
    try:
        paths = overlays.write_overlays(export_dir, out_dir, max_images)
    except (InputError, OSError) as err:
        return Section(title, caption, [], note=f"could not draw predictions from {export_dir}: {err}")
    if not paths:
        return Section(title, caption, [], note=f"the validation set of {export_dir} has no images")
    return Section(title, caption, [p.name for p in paths])


def evaluation_section(evaluation_dir: Path) -> Section:
    """The held-out evaluation of the export (``python -m sweeps.evaluate``'s ``evaluation_<split>.json`` files in
    ``evaluation_dir``, test first): each figure with its 95% bootstrap interval, per segment, and the Stage 2
    targets met or not; a note when there is none."""
    title = "Held-out evaluation of the exported checkpoint"
    caption = "python -m sweeps.evaluate; mean [95% bootstrap interval]"
    files = sorted(Path(evaluation_dir).glob("evaluation_*.json"), key=lambda p: (p.stem != "evaluation_test", p.name))
    if not files:
        return Section(title, caption, [], note=f"{evaluation_dir} holds no evaluation_<split>.json (run python -m "
                       "sweeps.evaluate EXPORT_DIR --split test)")
    parts = []
    for path in files:
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
            parts.append(_evaluation_html(result))
        except (OSError, ValueError, KeyError, TypeError) as err:
            return Section(title, caption, [], note=f"cannot read {path}: {err}")
    return Section(title, caption, [], html="\n".join(parts))


def selection_section(sweep: SweepResults, resamples: int = 1000, seed: int = 0) -> Section:
    """How sure the pick is: each Pareto trial's picked checkpoint's val Dice with a 95% bootstrap interval over
    the validation images, and how often a resample (the same images for every trial) makes it the best,
    from the ``val_pairs.csv`` each checkpoint keeps (:mod:`trainables.bootstrap`); a note when there are none."""
    from sweeps.export import locate_checkpoint
    from trainables import bootstrap
    from trainables.checkpoints.trial import VAL_PAIRS_FILE, read_val_pairs

    title = "How sure the pick is (validation: selection figures)"
    caption = (f"val Dice of each Pareto trial's picked checkpoint, mean [95% interval] over {resamples} bootstrap "
               "resamples of the validation images, and the share of resamples in which it is the highest. These "
               "are the figures the pick was made on: quote the test evaluation instead.")
    rows = [r for r in sweep.pareto if r.checkpoint_path]
    if not rows:
        return Section(title, caption, [], note="no Pareto-optimal trial with a checkpoint")
    fs, experiment = experiment_filesystem(str(sweep.experiment_dir))
    pairs = {}
    for row in rows:
        try:
            path = f"{locate_checkpoint(fs, experiment, row.checkpoint_path, (VAL_PAIRS_FILE,))}/{VAL_PAIRS_FILE}"
            with fs.open_input_stream(path) as f:
                pairs[row.trial_id] = read_val_pairs(f.readall().decode("utf-8"), path)
        except (InputError, OSError) as err:
            return Section(title, caption, [], note=f"trial {row.trial_id}: its checkpoint's per-image validation "
                           f"figures cannot be read ({err}); sweeps run before they were kept have none")
    common = set.intersection(*({p.image_id for p in trial} for trial in pairs.values()))  # the same val set
    images, categories = sorted(common), sorted({p.category_id for trial in pairs.values() for p in trial})
    units, _ = bootstrap.unit_indices([None] * len(images))
    weights = np.vstack([np.ones((1, len(images))), bootstrap.resample_weights(units, resamples, seed)])
    values = np.column_stack([bootstrap.weighted_category_means(bootstrap.PairArrays.from_pairs(
        [p for p in trial if p.image_id in common], images, categories).dice(), weights)[1]
        for trial in pairs.values()])  # [1 + resamples, trials]: row 0 the validation set itself
    share = bootstrap.best_frequency(values[1:])
    lines = ["<tr><th>trial</th><th>last val Dice (Optuna's value)</th><th>picked checkpoint's val Dice [95% "
             "interval]</th><th>best in resamples</th></tr>"]
    for k, row in enumerate(rows):
        low, high = bootstrap.interval(values[1:, k])
        lines.append(f"<tr><td>{html.escape(row.trial_id)}</td><td>{_fmt(row.val_dice)}</td><td>{_fmt(values[0, k])} "
                     f"[{_fmt(low)}, {_fmt(high)}]</td><td>{share[k]:.0%}</td></tr>")
    return Section(title, caption + f" {len(images)} validation images.", [],
                   html="<table>\n" + "\n".join(lines) + "\n</table>")


def predictions_section(predictions_dir: Path, out_dir: Path, max_images: int) -> Section:
    """Predictions on new images (``python -m sweeps.predict``'s ``--out``): up to ``max_images`` of its overlays,
    copied beside the page, and the segments found per image (its ``segments.csv``); a note when there are none."""
    from sweeps.predict import OVERLAYS, SEGMENTS_FILE

    title = "Predictions on new angiograms"
    caption = (f"python -m sweeps.predict on {predictions_dir}: each image beside the segments found (queries scoring "
               "at least the threshold), the legend giving each segment's best score; no ground truth.")
    table = Path(predictions_dir) / SEGMENTS_FILE
    try:
        with open(table, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as err:
        return Section(title, caption, [], note=f"cannot read {table}: {err} (run python -m sweeps.predict)")
    images = []
    try:
        for row in rows[:max_images]:
            overlay = Path(row["overlay"])
            if overlay.parent != Path(OVERLAYS):  # only the overlays folder of the predictions is read
                raise ValueError(f"overlay {row['overlay']!r} is not a file of {OVERLAYS}/")
            name = f"predicted_{overlay.name}"
            shutil.copyfile(Path(predictions_dir) / overlay, out_dir / name)
            images.append(name)
    except (OSError, KeyError, ValueError) as err:
        return Section(title, caption, [], note=f"{table}: not a segments.csv of python -m sweeps.predict ({err})")
    esc = html.escape
    lines = ["<tr><th>image</th><th>segments found</th></tr>"]
    lines += [f"<tr><td>{esc(row['file_name'])}</td><td>{esc(row['segments'].replace(';', ', ') or '(none)')}</td></tr>"
              for row in rows]
    return Section(title, caption + f" {len(rows)} image(s); {len(images)} shown.", images,
                   html="<table>\n" + "\n".join(lines) + "\n</table>")


def _evaluation_html(result: dict) -> str:
    """One split's evaluation as HTML: a summary line, the targets, the overall and per-segment tables."""
    from sweeps.evaluate import format_estimate, format_target

    b, figures = result["bootstrap"], result["figures"]

    def cell(e: dict) -> str:
        return format_estimate(e, b["resamples"])

    esc = html.escape
    out = [f"<h3>{esc(result['split'])} split</h3>",
           f"<p>{result['images']} images ({b['units']} {esc(b['unit'])}s) of <code>{esc(result['dataset'])}</code>; "
           f"intervals from {b['resamples']} bootstrap resamples of {esc(b['unit'])}s. Thresholded Dice is the "
           "deployment figure (validation's val_dice); matched Dice is the training logs' (best query, no "
           "threshold).</p>", "<ul>"]
    out += [f"<li>{esc(format_target(t))}</li>" for t in result["targets"]]
    out.append("</ul>")
    rows = ["<tr><th>figure</th><th>all</th><th>what it is</th></tr>"]
    rows += [f"<tr><td>{esc(e['label'])}</td><td>{esc(cell(e['all']))}</td><td>{esc(e['description'])}</td></tr>"
             for e in figures.values()]
    out.append("<table>\n" + "\n".join(rows) + "\n</table>")
    segmented = [e for e in figures.values() if "per_category" in e]
    if segmented:
        rows = ["<tr><th>segment</th>" + "".join(f"<th>{esc(e['label'])}</th>" for e in segmented) + "</tr>"]
        for category in segmented[0]["per_category"]:
            rows.append(f"<tr><td>{esc(category)}</td>" + "".join(
                f"<td>{esc(cell(e['per_category'][category]))}</td>" for e in segmented) + "</tr>")
        out.append("<table>\n" + "\n".join(rows) + "\n</table>")
    return "\n".join(out)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def trials_table(sweep: SweepResults) -> str:
    """The trials as an HTML table, best first (Pareto trials marked)."""
    params = sorted({k for t in sweep.trials for k in t.params})
    head = ["trial", "status", "steps", *params, METRIC, SECOND_OBJECTIVE, f"best {METRIC}", "Pareto",
            "time validating"]
    best = sweep.best
    rows = []
    for t in sorted(sweep.trials, key=lambda t: -t.val_dice if _finite(t.val_dice) else math.inf):
        report = t.best_report()
        cells = [t.trial_id + (" ★" if best is not None and t.trial_id == best.trial_id else ""), t.status,
                 t.steps, *[t.params.get(p, "") for p in params], t.val_dice, t.val_ap75,
                 math.nan if report is None else float(report[METRIC]), "yes" if t.trial_id in sweep.pareto_ids
                 else "", "n/a" if math.isnan(t.validation_share) else f"{t.validation_share:.1%}"]
        rows.append("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in cells) + "</tr>")
    header = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
    return f"<table>\n{header}\n" + "\n".join(rows) + "\n</table>"


STYLE = """
body { font-family: sans-serif; max-width: 1200px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #eee; }
img { max-width: 100%; border: 1px solid #ddd; margin: 4px 0; }
.note { background: #fff4d6; border-left: 4px solid #e0a800; padding: 0.5em 1em; }
figcaption { color: #555; font-size: 0.9em; }
"""


def render_html(sweep: SweepResults, sections: Sequence[Section]) -> str:
    """The page: summary, notes, trials table, then each section's images or its note."""
    complete = sum(t.status == "COMPLETE" for t in sweep.trials)
    best = sweep.best
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Sweep report: {html.escape(sweep.name)}</title><style>{STYLE}</style></head><body>",
        f"<h1>Sweep report: {html.escape(sweep.name)}</h1>",
        f"<p>{len(sweep.trials)} trials, {complete} completed; Pareto front of {len(sweep.pareto_ids)}; best trial "
        f"{html.escape(best.trial_id) if best else 'none'}. Experiment directory: "
        f"<code>{html.escape(str(sweep.experiment_dir))}</code>.</p>",
        *[f'<p class="note">{html.escape(n)}</p>' for n in sweep.notes],
        "<h2>Trials</h2>", trials_table(sweep),
    ]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.note:
            parts.append(f'<p class="note">Not available: {html.escape(s.note)}</p>')
        if s.html:
            parts.append(s.html)
        for image in s.images:
            parts.append(f'<figure><img src="{html.escape(image)}" alt="{html.escape(s.title)}">'
                         f"<figcaption>{html.escape(s.caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def build_report(experiment_dir: str | Path, out_dir: str | Path, *, export_dir: str | Path | None = None,
                 journal: str | Path | None = None, study_name: str | None = None,
                 overlay_images: int = 4, overwrite: bool = False,
                 evaluation_dir: str | Path | None = None, predictions_dir: str | Path | None = None) -> Path:
    """Write ``index.html`` and its figures into the folder ``out_dir``; return the page's path.

    ``out_dir`` never overlaps the sweep, the export or the journal; it is built beside its place and renamed
    there at the end, replacing an earlier report only with ``overwrite`` (:mod:`common.outputs`).
    ``evaluation_dir``: the export's held-out evaluation (``python -m sweeps.evaluate``'s ``--out``), shown
    when given (:func:`evaluation_section`); ``predictions_dir``: ``python -m sweeps.predict``'s ``--out``
    (:func:`predictions_section`).
    """
    if overlay_images < 0:
        raise InputError(f"--overlay-images {overlay_images}: must be >= 0")
    out_dir = Path(out_dir)
    check_apart({"--out": out_dir}, {"EXPERIMENT_DIR": None if is_uri(str(experiment_dir)) else experiment_dir,
                                     "--export": export_dir, "--journal": journal, "--evaluation": evaluation_dir,
                                     "--predictions": predictions_dir})
    check_replaceable(out_dir, overwrite=overwrite)
    sweep = load_sweep(experiment_dir, journal=journal, study_name=study_name)
    with staged_folder(out_dir, overwrite=overwrite, command="python -m sweeps.report") as staging:
        sections = [make_figure(sweep, staging, *figure) for figure in FIGURES]
        sections.append(selection_section(sweep))
        sections.append(overlay_section(Path(export_dir) if export_dir else None, staging, overlay_images))
        if evaluation_dir is not None:
            sections.append(evaluation_section(Path(evaluation_dir)))
        if predictions_dir is not None:
            sections.append(predictions_section(Path(predictions_dir), staging, overlay_images))
        (staging / "index.html").write_text(render_html(sweep, sections), encoding="utf-8")
    return out_dir / "index.html"


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: build the report and print where it is."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment_dir", help="the sweep's experiment directory (<storage_path>/<name>)")
    parser.add_argument("--out", required=True, help="folder for index.html and its figures")
    parser.add_argument("--export", help="an exported checkpoint directory (sweeps/export.py) for overlays")
    parser.add_argument("--journal", help=f"the Optuna journal or database URL (searcher.storage; default "
                                          f"<experiment_dir>/{JOURNAL_FILE})")
    parser.add_argument("--study", help="the Optuna study name (default: the journal's only study)")
    parser.add_argument("--overlay-images", type=int, default=4, help="validation images to overlay")
    parser.add_argument("--evaluation", help="the export's held-out evaluation folder (python -m sweeps.evaluate)")
    parser.add_argument("--predictions", help="predictions on new images to show (python -m sweeps.predict --out)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it is an earlier report")
    args = parser.parse_args(argv)
    page = build_report(args.experiment_dir, args.out, export_dir=args.export, journal=args.journal,
                        study_name=args.study, overlay_images=args.overlay_images, overwrite=args.overwrite,
                        evaluation_dir=args.evaluation, predictions_dir=args.predictions)
    print(f"report: {page}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
