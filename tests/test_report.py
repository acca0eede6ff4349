"""The sweep report (``sweeps/report.py``, ``sweeps/overlays.py``) on a real small sweep.

``stand_in_train_loop`` is a TEST STAND-IN for ``trainables.train_loop.train_loop_per_worker``: no model;
it reports the real loop's metric keys with values computed from the trial config, so that the sweep has
two completed trials that trade Dice against AP75 and one that ASHA stops early.
The overlays run the real (tiny, untrained) model from an export directory made here.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import ray
import yaml
from PIL import Image
from pycocotools.coco import COCO

from data_prep.cass import CASS_CATEGORIES
from search_spaces import load_search_spec
from sweeps import ray_compat
from sweeps.config import parse_sweep_config
from sweeps.overlays import HEADER_PX, SEGMENT_COLOURS, ImageMasks, compose_overlay, ground_truth_masks, rgb
from sweeps.report import (
    FIGURES,
    MIN_RANDOM_DRAWS,
    FigureUnavailable,
    build_report,
    compute_events,
    main,
    param_importances,
    random_search_band,
)
from sweeps.results import SweepResults, TrialRecord, load_sweep
from sweeps.stage2 import run_sweep
from trainables.checkpoints.trial import VAL_PAIRS_FILE, format_val_pairs

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # tests/ is not importable on workers

MAX_STEPS = 8
# (lr_transformer, loss_dice) in run order: an AP-leaning trial, a Dice-leaning one (better at every step, so
# ASHA keeps both), a poor lr (ASHA stops it at step 2)
POINTS = [(8e-5, 1.0), (8e-5, 20.0), (1.2e-5, 10.0)]
MISSING_CATEGORY = "obtuse_marginal_3"  # like a validation set without OM3: its per-category values are nan


def stand_in_train_loop(config: dict) -> None:
    """TEST STAND-IN: quality peaks at lr 8e-5; a high loss_dice favours Dice, a low one AP75."""
    import ray.train

    trial = config["trial"]
    quality = max(0.05, 1.0 - abs(math.log10(trial["lr_transformer"] / 8e-5)))
    lean = trial["loss_dice"] / 20.0
    for step in range(trial["val_every"], trial["max_steps"] + 1, trial["val_every"]):
        time.sleep(0.1)
        progress = step / trial["max_steps"]
        dice, ap75 = quality * progress * (0.7 + 0.3 * lean), quality * progress * (0.9 - 0.3 * lean)
        metrics = {"val_dice": dice, "val_ap75": ap75, "val_ap": 0.9 * ap75, "val_ap50": min(1.0, 1.2 * ap75),
                   "val_presence_auroc": 0.5 + 0.4 * quality * progress, "train_loss": 3.0 / (1 + step * quality),
                   "train_loss_mask": 1.0 / step, "train_loss_dice": 0.5 / step, "step": step,
                   "epoch": step / 4, "lr": trial["lr_transformer"], "seconds_per_step": 0.05, "diverged": False,
                   "val_seconds": 0.02, "elapsed_s": 0.1 * step}
        for i, c in enumerate(CASS_CATEGORIES):
            value = math.nan if c.short_name == MISSING_CATEGORY else dice * (0.5 + i / 28)
            metrics[f"val_dice/{c.short_name}"] = value
            metrics[f"val_ap75/{c.short_name}"] = value * 0.8
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "state.json").write_text(json.dumps({"step": step}))
            Path(tmp, VAL_PAIRS_FILE).write_text(format_val_pairs(scripted_pairs(dice, seed=step)))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def scripted_pairs(dice: float, seed: int, images: int = 6) -> list:
    """Per-pair validation figures whose Dice scatter around ``dice`` (the same images in every trial)."""
    from trainables.metrics import PairFigures

    rng = np.random.default_rng(seed)
    return [PairFigures(image_id=i, category_id=c.id, gt_area=100, pred_area=100,
                        intersection=int(100 * np.clip(dice + rng.normal(0, 0.05), 0, 1)), presence_score=0.5,
                        matched_dice=math.nan) for i in range(1, images + 1) for c in CASS_CATEGORIES]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """A finished 3-trial sweep (one trial at a time): its config."""
    tmp = tmp_path_factory.mktemp("report-sweep")
    space = tmp / "space.yaml"
    space.write_text(yaml.safe_dump({
        "params": {"lr_transformer": {"type": "loguniform", "low": 1e-5, "high": 3e-4},
                   "loss_dice": {"type": "uniform", "low": 1.0, "high": 20.0}},
        "points_to_evaluate": [{"lr_transformer": lr, "loss_dice": w} for lr, w in POINTS],
    }))
    cfg = parse_sweep_config({
        "name": "report-sweep", "storage_path": str(tmp / "out"), "search_space": str(space),
        "num_samples": len(POINTS), "max_concurrent_trials": 1,
        "trial": {"max_steps": MAX_STEPS, "val_every": 2, "num_workers": 1, "cpu_threads_per_worker": 1},
        "scheduler": {"grace_period": 2, "reduction_factor": 2}, "checkpoint": {"num_to_keep": 1},
    }, source="test")
    ray_compat.init_ray(None, "127.0.0.1", ray_compat.worker_env_vars(0.5), num_cpus=2)
    try:
        run_sweep(cfg, load_search_spec(cfg.search_space), train_loop=stand_in_train_loop)
    finally:
        ray.shutdown()
    return cfg


@pytest.fixture(scope="module")
def export_dir(synthetic_dataset, tmp_path_factory):
    """An export directory as sweeps/export.py writes it: a tiny untrained model that predicts everywhere."""
    from trainables.checkpoints.exported import write_manifest
    from trainables.checkpoints.native import save_native
    from trainables.config import TrialConfig
    from trainables.model import build_model

    out = tmp_path_factory.mktemp("export")
    save_native(build_model("tiny", seed=0), out / "model.pt")
    cfg = TrialConfig(**synthetic_dataset.trial_fields(), preset="tiny", resolution=224,
                      score_threshold=0.0)  # threshold 0: every query is kept, so predictions are visible
    (out / "trial_config.json").write_text(json.dumps(cfg.to_dict()))
    (out / "metrics.json").write_text(json.dumps({"val_dice": 0.0}))
    write_manifest(out)
    return out


@pytest.fixture(scope="module")
def report(experiment, export_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    start = time.monotonic()
    page = build_report(experiment.experiment_dir, out, export_dir=export_dir, overlay_images=2)
    print(f"report with 2 overlays took {time.monotonic() - start:.1f} s")
    return page


def image_sources(page: Path) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page.read_text())


def test_the_page_shows_every_figure_and_no_section_is_replaced_by_a_note(report):
    sources = image_sources(report)
    for _, file_name, _, _ in FIGURES:
        assert file_name in sources
    assert [s for s in sources if s.startswith("overlay_")], "no overlay image on the page"
    assert "Not available" not in report.read_text()
    assert "http://" not in report.read_text() and "https://" not in report.read_text()  # self-contained


def test_every_figure_is_a_non_blank_png_beside_the_page(report):
    for source in image_sources(report):
        path = report.parent / source
        assert not Path(source).is_absolute() and path.is_file() and path.stat().st_size > 0
        pixels = np.asarray(Image.open(path).convert("L"), dtype=float)
        assert pixels.std() > 5, f"{source} looks blank"


def test_the_trials_table_shows_how_each_trial_ended(report, experiment):
    sweep = load_sweep(experiment.experiment_dir)
    by_point = {(t.params["lr_transformer"], t.params["loss_dice"]): t for t in sweep.trials}
    assert [by_point[p].status for p in POINTS] == ["COMPLETE", "COMPLETE", "PRUNED"]
    text = report.read_text()
    for t in sweep.trials:
        assert t.trial_id in text
    assert text.count("<td>COMPLETE</td>") == 2 and text.count("<td>PRUNED</td>") == 1


def test_the_trials_table_shows_each_trials_time_spent_validating(report, experiment):
    text = report.read_text()
    assert "<th>time validating</th>" in text
    # stand-in reports: 0.02 s of validation per 2 steps of 0.1 s elapsed each
    assert text.count("<td>10.0%</td>") == 3


def test_validation_share_counts_each_resumed_runs_time_once():
    from sweeps.results import TrialRecord

    def share(history: dict) -> float:
        return TrialRecord("t", {}, "COMPLETE", pd.DataFrame(history)).validation_share

    assert share({"val_seconds": [1.0, 1.0], "elapsed_s": [10.0, 20.0]}) == pytest.approx(2 / 20)
    # resumed after step 2: elapsed_s restarts, so the first run's 20 s and the second's 15 s add up
    assert share({"val_seconds": [1.0, 1.0, 1.0, 1.0], "elapsed_s": [10.0, 20.0, 5.0, 15.0]}) == pytest.approx(4 / 35)
    assert math.isnan(share({"val_dice": [0.5]}))  # reports from before val_seconds existed


def test_the_page_says_how_often_each_pareto_trial_is_the_best_in_validation_resamples(experiment):
    from sweeps.report import selection_section

    sweep = load_sweep(experiment.experiment_dir)
    section = selection_section(sweep, resamples=200)
    assert section.note is None, section.note
    rows = re.findall(r"<tr><td>(\w+)</td><td>([\d.]+)</td><td>([\d.]+) \[([\d.]+), ([\d.]+)\]</td><td>(\d+)%</td>",
                      section.html)
    assert [r[0] for r in rows] == [r.trial_id for r in sweep.pareto]
    shares = {trial: int(share) for trial, *_, share in rows}
    assert abs(sum(shares.values()) - 100) <= len(rows)  # rounded shares of all resamples
    dice_leaning = sweep.pareto[0].trial_id  # the highest val Dice, by a margin the noise cannot close
    assert shares[dice_leaning] >= 90
    for _, _, mean, low, high, _ in rows:
        assert float(low) <= float(mean) <= float(high)


def test_the_pareto_front_holds_both_trade_offs_and_the_best_has_the_highest_dice(experiment):
    sweep = load_sweep(experiment.experiment_dir)
    by_lr_w = {(t.params["lr_transformer"], t.params["loss_dice"]): t for t in sweep.trials}
    ap_leaning, dice_leaning = by_lr_w[POINTS[0]], by_lr_w[POINTS[1]]
    assert sweep.pareto_ids == [dice_leaning.trial_id, ap_leaning.trial_id]
    assert sweep.best is dice_leaning and dice_leaning.val_dice > ap_leaning.val_dice
    assert ap_leaning.val_ap75 > dice_leaning.val_ap75


def test_an_early_stopped_trial_has_a_shorter_learning_curve(experiment):
    sweep = load_sweep(experiment.experiment_dir)
    steps = {t.status: t.steps for t in sweep.trials}
    assert steps["COMPLETE"] == MAX_STEPS and steps["PRUNED"] < MAX_STEPS


def test_best_so_far_never_decreases_and_counts_every_step_of_every_trial(experiment):
    sweep = load_sweep(experiment.experiment_dir)
    events = compute_events(sweep)
    best = events["best"].dropna().to_numpy()
    assert len(best) and (np.diff(best) >= 0).all()
    assert best[-1] == pytest.approx(max(t.best_report()["val_dice"] for t in sweep.trials
                                         if t.best_report() is not None))
    assert events["steps"].iloc[-1] == sum(t.steps for t in sweep.trials)
    assert (events["minutes"].diff().dropna() >= 0).all()


def drawn_trial(trial_id: str, draw: str | None, status: str, dice: float, steps: int = 10) -> TrialRecord:
    """A hand-made trial validating at half its steps and at its last, ``dice`` the better of the two."""
    return TrialRecord(trial_id, {}, status, pd.DataFrame({
        "step": [steps // 2, steps], "val_dice": [dice / 2, dice], "val_ap75": [0.1, 0.1],
        "timestamp": [100, 110], "time_total_s": [5.0, 10.0]}), draw)


def test_the_random_search_band_runs_the_sweeps_random_draws_one_after_another(tmp_path):
    randoms = [drawn_trial(f"r{i}", "random", "COMPLETE", dice) for i, dice in enumerate((0.2, 0.4, 0.6, 0.8))]
    others = [drawn_trial("model", "model", "COMPLETE", 0.99), drawn_trial("base", "baseline", "COMPLETE", 0.95),
              drawn_trial("stopped", "random", "PRUNED", 0.97, steps=4)]  # none of these is a full random draw
    sweep = SweepResults("s", tmp_path, randoms + others, study=None, pareto=[], notes=[])

    draws, band = random_search_band(sweep, spent=1000.0, points=81)

    assert draws == 4
    assert band["steps"].max() == 40  # as many trials as the population holds (4 x 10 steps), not 1000 steps
    first = band[band["steps"] < 5]
    assert first.empty  # nothing is paid for before the first report, at step 5
    at5, at10 = band[band["steps"] == 5].iloc[0], band[band["steps"] == 10].iloc[0]
    assert (at5["low"], at5["high"]) == pytest.approx((0.1, 0.4))  # the first trial's mid-way report counts
    assert (at10["low"], at10["high"]) == pytest.approx((0.2, 0.8))
    assert (band["high"] <= 0.8).all()  # never the model's, the baseline's or a stopped trial's figure
    assert (band["median"].diff().dropna() >= 0).all()
    assert band["median"].iloc[-1] == pytest.approx(0.8)


@pytest.mark.parametrize("draws, expected", [
    ("random", f"no random-search band: {MIN_RANDOM_DRAWS - 1} random draw(s) ran to the end, "
               f"{MIN_RANDOM_DRAWS} needed"),
    (None, "no random-search band: this sweep did not record how its trials were drawn"),
])
def test_without_enough_random_draws_the_figure_says_why_there_is_no_band(tmp_path, draws, expected):
    from sweeps.report import band_note, plot_best_so_far

    trials = [drawn_trial(f"r{i}", draws, "COMPLETE", 0.5) for i in range(MIN_RANDOM_DRAWS - 1)]
    trials.append(drawn_trial("m", draws and "model", "COMPLETE", 0.7))
    sweep = SweepResults("s", tmp_path, trials, study=None, pareto=[], notes=[])
    found, band = random_search_band(sweep, spent=1000.0)
    assert band.empty
    assert band_note(sweep, found).startswith(expected)
    plot_best_so_far(sweep, tmp_path / "best.png")  # drawn all the same, the legend saying why
    assert (tmp_path / "best.png").stat().st_size > 0


def test_the_overlay_colours_exactly_the_annotated_pixels_of_the_ground_truth(report, export_dir,
                                                                              synthetic_dataset):
    coco = COCO(str(synthetic_dataset.val_json))
    overlays = [s for s in image_sources(report) if s.startswith("overlay_")]
    assert len(overlays) == 2
    for source in overlays:
        image_id = int(source.removeprefix("overlay_").removesuffix(".png"))
        truth = ground_truth_masks(coco, image_id)
        assert truth, "the synthetic image has no annotated segment"
        height, width = next(iter(truth.values())).shape
        canvas = np.asarray(Image.open(report.parent / source).convert("RGB")).astype(int)
        for left, name in ((0, "ground truth"), (width, "prediction")):
            panel = canvas[HEADER_PX:HEADER_PX + height, left:left + width]
            coloured = panel.max(axis=2) - panel.min(axis=2) > 10  # the X-ray itself is grey
            if name == "ground truth":
                assert (coloured == np.logical_or.reduce(list(truth.values()))).mean() > 0.999
            else:  # threshold 0 keeps every query of the untrained model: it paints most of the image
                assert coloured.mean() > 0.5


def test_each_segment_is_painted_in_its_own_colour_on_the_prediction_panel():
    image = np.full((40, 60, 3), 100, np.uint8)
    first, second = np.zeros((40, 60), bool), np.zeros((40, 60), bool)
    first[5:15, 5:20], second[25:35, 30:50] = True, True
    item = ImageMasks(1, "frame.png", image, ground_truth={}, prediction={1: first, 4: second})
    canvas = np.asarray(compose_overlay(item)).astype(int)
    prediction = canvas[HEADER_PX:HEADER_PX + 40, 60:120]
    for mask, category_id in ((first, 1), (second, 4)):
        expected = 0.45 * 100 + 0.55 * np.array(rgb(SEGMENT_COLOURS[category_id]))
        assert np.abs(prediction[mask] - expected).max() <= 1
    assert (prediction[~(first | second)] == 100).all()
    assert (canvas[HEADER_PX:HEADER_PX + 40, :60] == 100).all()  # no ground truth: the plain image


def test_every_cass_segment_has_a_distinct_colour():
    assert sorted(SEGMENT_COLOURS) == [c.id for c in CASS_CATEGORIES]
    assert len(set(SEGMENT_COLOURS.values())) == len(CASS_CATEGORIES)


def test_importances_need_two_completed_trials_and_say_so():
    study = optuna.create_study(directions=["maximize", "maximize"])
    study.add_trial(optuna.trial.create_trial(params={"lr": 1e-4}, values=[0.5, 0.4], distributions={
        "lr": optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)}))
    with pytest.raises(FigureUnavailable, match="at least 2 completed trials; this sweep has 1"):
        param_importances(study)


def test_a_diverged_trial_is_listed_without_scores_and_drawn_where_it_has_data(tmp_path):
    from sweeps.report import FIGURES, make_figure, trials_table
    from sweeps.results import ParetoRow, TrialRecord

    good = TrialRecord("good", {"lr_transformer": 8e-5}, "COMPLETE", pd.DataFrame({
        "step": [2, 4], "val_dice": [0.3, 0.6], "val_ap75": [0.2, 0.5], "train_loss": [2.0, 1.0],
        "timestamp": [100, 110], "time_total_s": [5.0, 15.0]}))
    diverged = TrialRecord("diverged", {"lr_transformer": 3e-4}, "FAIL", pd.DataFrame({
        "step": [2], "diverged": [True], "train_loss": [float("nan")], "timestamp": [120], "time_total_s": [4.0]}))
    sweep = SweepResults("hand-made", tmp_path, [good, diverged], study=None,
                         pareto=[ParetoRow("good", good.params, 0.6, 0.5, None)], notes=[])
    table = trials_table(sweep)
    assert "<td>diverged</td><td>FAIL</td><td>2</td><td>0.0003</td><td>n/a</td><td>n/a</td>" in table
    sections = {s.title: s for s in (make_figure(sweep, tmp_path, *figure) for figure in FIGURES)}
    assert sections["Parameter importances"].note == "no Optuna study was found for this sweep"
    assert sections["Per-category scores of the best trial"].note.startswith("the best trial reported no per-category")
    drawn = [title for title, s in sections.items() if s.images]
    assert drawn == ["Pareto front", "Best so far against compute", "Hyperparameters", "Learning curves"]


def test_a_sweep_without_results_gets_a_page_of_notes_not_a_crash(tmp_path):
    from sweeps.report import FIGURES, make_figure

    empty = SweepResults("empty", tmp_path, trials=[], study=None, pareto=[], notes=[])
    sections = [make_figure(empty, tmp_path, *figure) for figure in FIGURES]
    assert all(s.note and not s.images for s in sections)
    assert not list(tmp_path.glob("*.png"))


def test_the_command_line_without_an_export_notes_how_to_get_overlays(experiment, tmp_path, capsys):
    assert main([experiment.experiment_dir, "--out", str(tmp_path / "page")]) == 0
    assert str(tmp_path / "page" / "index.html") in capsys.readouterr().out
    text = (tmp_path / "page" / "index.html").read_text()
    assert "Not available: no exported checkpoint given: pass --export DIR" in text
    assert not list((tmp_path / "page").glob("overlay_*.png"))


def test_a_directory_that_is_not_a_sweep_is_refused(tmp_path, capsys):
    from common.errors import run_cli

    (tmp_path / "not-a-sweep").mkdir()
    assert run_cli(main, [str(tmp_path / "not-a-sweep"), "--out", str(tmp_path / "page")]) == 2
    assert "not a Tune experiment directory" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["not-a-sweep"]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (apt-get install -y chromium): "
                                             "the headless screenshot check of the page needs it")
def test_a_headless_browser_renders_the_page_with_its_figures(report, tmp_path):
    shot = tmp_path / "page.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1280,4000", f"--screenshot={shot}", report.as_uri()],
                   check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    assert pixels.std() > 10
    # the figures rendered: plenty of saturated (non-grey) pixels, which text and tables alone lack
    assert ((pixels.max(axis=2) - pixels.min(axis=2)) > 60).mean() > 0.01


def test_importances_name_the_parameter_that_reaches_each_objectives_high_values():
    """Known answer: val_dice exceeds 0.8 only where ``a`` > 0.8 and val_ap75 only where ``b`` > 0.8; below
    that, each is set by the other parameter. Both are maximised, so ``a`` matters for val_dice and ``b`` for
    val_ap75 (scored in the minimising direction, the low values, the answer would be the other way round)."""
    rng = np.random.default_rng(0)
    unit = optuna.distributions.FloatDistribution(0.0, 1.0)
    study = optuna.create_study(directions=["maximize", "maximize"])
    for a, b in rng.uniform(size=(100, 2)):
        values = [a if a > 0.8 else 0.8 * b, b if b > 0.8 else 0.8 * a]
        study.add_trial(optuna.trial.create_trial(params={"a": a, "b": b}, distributions={"a": unit, "b": unit},
                                                  values=values))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        importances = param_importances(study)

    assert importances["val_dice"]["a"] > 0.8 and importances["val_ap75"]["b"] > 0.8
    assert not [w for w in caught if "low `target` values" in str(w.message)]
