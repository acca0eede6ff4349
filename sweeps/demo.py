"""``make demo``: the whole Stage 2 pipeline on the embedded default, end to end, on one machine.

    python -m sweeps.demo --out demo_out

1. Phase 1 as the group ran it, in miniature (``sweeps/demo_phase1.py``, cached by its settings): a tiny
   SAM3-architecture model learns binary vessel segmentation on synthetic angiograms of other patients and is
   saved in the Phase 1 wrapper's format; weight surgery turns it into SAM3's native format (strict load);
2. synthetic angiograms with the 14 CASS segments (COCO), validated;
3. the local sweep (``sweeps/configs/local.yaml``: Ray Tune + Optuna + ASHA on val Dice, two one-worker trials
   at once, as ``stage2.yaml``) fine-tuning the 14 segments from the surgered Phase 1 weights;
4. export of the best checkpoint, re-evaluated on the validation set (must match the reported Dice);
5. the export evaluated on the held-out test split, which nothing was chosen on (``sweeps.evaluate``: 95%
   bootstrap intervals, the Stage 2 targets);
6. predictions on a folder of new synthetic angiograms (``sweeps.predict``);
7. the HTML sweep report, with the test evaluation and the new angiograms' predictions.

Every step prints where its output is; a second run reuses finished steps (delete ``--out`` to start over).
After ``sweeps/configs/local.yaml`` or Phase 1's settings changed, the earlier run's data, sweep, export and
report are moved to ``--out``/previous-<time>/ and made afresh.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script path: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import datetime  # noqa: E402
import shutil  # noqa: E402
from collections.abc import Sequence  # noqa: E402

import yaml  # noqa: E402

from common.errors import InputError, run_cli  # noqa: E402
from common.outputs import MARKER, is_empty_folder, is_our_folder, mark  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LOCAL_CONFIG = REPO / "sweeps" / "configs" / "local.yaml"
DATA_DIR, CONFIG_FILE = "data", "demo_sweep.yaml"
#: what depends on local.yaml and Phase 1 (cached apart, sweeps/demo_phase1.py): redone when either changes
CONFIG_DERIVED = (DATA_DIR, "sweeps", "best", "best-evaluation", "new_angiograms", "predictions", "report", CONFIG_FILE)
#: an older demo's Phase 1 files (before sweeps/demo_phase1.py), set aside with its outputs
LEGACY_PHASE1 = ("phase1_tiny.pt", "phase1_tiny_native.pt", "phase1_tiny_native.pt.extra_heads.pt")
NEW_ANGIOGRAMS = 4  # images of patients no split holds, for step 6


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def make_dataset(out: Path, synthetic: dict) -> Path:
    """Step 2: generate (once) and validate the synthetic CASS dataset; return its folder."""
    from data_prep.layout import DatasetPaths
    from data_prep.synthetic import generate_dataset
    from data_prep.validate import validate_dataset

    root = out / DATA_DIR
    wants_test = synthetic.get("test", 0) > 0
    if not DatasetPaths(root).val_json.exists() or (wants_test and not DatasetPaths(root).test_json.exists()):
        generate_dataset(root, n_train=synthetic["train"], n_val=synthetic["val"], size=synthetic["size"],
                         seed=synthetic["seed"], n_test=synthetic.get("test", 0),
                         overwrite=True)  # only an incomplete dataset of an earlier demo
    validate_dataset(DatasetPaths(root)).raise_if_errors()
    print(f"dataset: {root} (validated)")
    return root


def make_surgered_checkpoint(out: Path) -> Path:
    """Step 1: Phase 1 (binary vessel domain adaptation, cached), saved as the Phase 1 wrapper saves it, then
    weight surgery to the native format; return the surgered file."""
    from sweeps.demo_phase1 import train_phase1

    phase1 = train_phase1(out)
    print(f"Phase 1 (binary vessels, {phase1.folder / 'data'}): vessel Dice {phase1.metrics['vessel_dice']:.3f} at "
          f"step {phase1.metrics['step']:.0f} ({phase1.metrics['seconds']:.0f} s)\n"
          f"Phase 1 checkpoint: {phase1.checkpoint}\nsurgered (native format): {phase1.native}")
    return phase1.native


def demo_sweep_config(out: Path, surgered: Path) -> str:
    """Step 3's config (YAML text): local.yaml with this demo's data, Phase 1 weights and output folder."""
    raw = yaml.safe_load(LOCAL_CONFIG.read_text())
    raw["storage_path"] = str(out / "sweeps")
    raw["search_space"] = str(REPO / raw["search_space"])
    raw["dataset"]["dir"] = str(out / DATA_DIR)
    raw["trial"]["checkpoint"] = str(surgered)
    return yaml.safe_dump(raw, sort_keys=False)


def set_aside_if_changed(out: Path, config_text: str, phase1: Path | None = None) -> Path | None:
    """Move what an earlier demo run made from a different config (data, sweep, export, report; Phase 1 folders
    other than ``phase1``, the one in use; an older demo's Phase 1 files) to ``out/previous-<UTC time>/`` so that
    this run starts them afresh; return that folder, or None."""
    config = out / CONFIG_FILE
    if not config.exists() or config.read_text() == config_text:
        return None
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    previous = out / f"previous-{stamp}"
    previous.mkdir()
    stale_phase1 = [p.name for p in out.glob("phase1-*") if p.is_dir() and (phase1 is None or p != phase1)]
    for name in (*CONFIG_DERIVED, *LEGACY_PHASE1, *stale_phase1):
        if (out / name).exists():
            shutil.move(out / name, previous / name)
    return previous


def run_demo_sweep(config: Path) -> Path:
    """Step 3: the sweep (resumed if an earlier demo run was interrupted); return the experiment dir."""
    from sweeps import stage2
    from sweeps.config import load_sweep_config

    cfg = load_sweep_config(config)
    experiment = Path(cfg.experiment_dir)
    finished = (experiment / "demo_finished").exists()
    if not finished:
        args = ["--config", str(config)] + (["--resume"] if stage2.has_tune_state(experiment) else [])
        print("python sweeps/stage2.py " + " ".join(args))
        if stage2.main(args) != 0:
            raise SystemExit("the sweep failed")
        (experiment / "demo_finished").write_text("ok\n")
    return experiment


def export_and_recheck(experiment: Path, out: Path) -> Path:
    """Step 4: export the best checkpoint and re-evaluate it; the Dice must match the reported one."""
    from sweeps.export import export_best, format_result
    from trainables.checkpoints.exported import load_exported
    from trainables.evaluate import evaluate_model

    best = out / "best"
    result = export_best(experiment, best, pick="dice", overwrite=True)
    print(format_result(result))
    model = result.models[0]
    metrics = evaluate_model(*load_exported(model.directory))
    # val_dice is what the sweep optimises; presence AUROC checks the scores the Dice threshold does not show
    for key in ("val_dice", "val_presence_auroc"):
        reported = float(model.metrics[key])
        print(f"re-evaluated {key} {metrics[key]:.6f} vs reported {reported:.6f} "
              f"(difference {abs(metrics[key] - reported):.2e})")
        if not abs(metrics[key] - reported) <= 1e-4:
            raise SystemExit(f"the exported checkpoint does not reproduce its reported {key}")
    return best


def evaluate_on_test(best: Path, out: Path) -> Path:
    """Step 5: the exported model on the test split (the figure to quote), with bootstrap intervals."""
    from sweeps.evaluate import evaluate_export, format_table

    evaluation = evaluate_export(best, "test", out=out / "best-evaluation", overwrite=True)
    print(format_table(evaluation.result))
    print(f"wrote {evaluation.json_path}")
    return evaluation.out


def predict_new_angiograms(best: Path, out: Path, synthetic: dict) -> Path:
    """Step 6: synthetic angiograms of new patients (another seed), and the exported model's predictions."""
    from data_prep.layout import DatasetPaths
    from data_prep.synthetic import generate_dataset
    from sweeps.predict import format_outcome, predict_folder

    source = out / "new_angiograms"
    if not DatasetPaths(source).train_json.exists():
        generate_dataset(source, n_train=NEW_ANGIOGRAMS, n_val=0, size=synthetic["size"],
                         seed=synthetic["seed"] + 1000, overwrite=True)
    outcome = predict_folder(best, DatasetPaths(source).images_dir, out / "predictions", overwrite=True)
    print(format_outcome(outcome))
    return outcome.out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="demo_out", help="folder for everything the demo makes")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    if out.exists() and not is_empty_folder(out) and not is_our_folder(out) and not (out / CONFIG_FILE).is_file():
        raise InputError(f"--out {out} exists and is not a demo folder (no {MARKER}): the demo moves and replaces "
                         "what it finds there, so pick a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    mark(out, "python -m sweeps.demo")
    banner("1/7 Phase 1: a tiny SAM3 model learns binary vessel segmentation -> weight surgery")
    surgered = make_surgered_checkpoint(out)
    config_text = demo_sweep_config(out, surgered)
    synthetic = yaml.safe_load(config_text)["dataset"]["synthetic"]
    previous = set_aside_if_changed(out, config_text, phase1=surgered.parent)
    if previous is not None:
        print(f"{LOCAL_CONFIG.relative_to(REPO)} or Phase 1 changed since the last demo in {out}: its data, sweep, "
              f"export and report were moved to {previous}; starting them afresh")
    banner("2/7 synthetic angiograms with the 14 CASS segments")
    dataset = make_dataset(out, synthetic)
    banner("3/7 Stage 2 sweep from the Phase 1 weights (Ray Tune + Optuna + ASHA)")
    config = out / CONFIG_FILE
    config.write_text(config_text)
    experiment = run_demo_sweep(config)
    banner("4/7 export the best checkpoint")
    best = export_and_recheck(experiment, out)
    banner("5/7 the export on the held-out test split")
    evaluation = evaluate_on_test(best, out)
    banner("6/7 predictions on new angiograms")
    predictions = predict_new_angiograms(best, out, synthetic)
    banner("7/7 report")
    from sweeps.report import build_report

    report = build_report(experiment, out / "report", export_dir=best, evaluation_dir=evaluation,
                          predictions_dir=predictions, overwrite=True)
    print(f"\ndone: data {dataset}\n      sweep {experiment}\n      best checkpoint {best}\n"
          f"      test evaluation {evaluation}\n      predictions {predictions}\n      report {report}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
