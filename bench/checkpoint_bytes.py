"""The disk bytes of ONE trial checkpoint, and what they make of a Stage 2 sweep's peak.

    python bench/checkpoint_bytes.py [--preset full] [--no-freeze-text-encoder] [--folder /tmp]

Builds the preset on the CPU (seed 0), freezes the text encoder as ``sweeps/configs/stage2.yaml`` does (unless
``--no-freeze-text-encoder``), builds the trial's own AdamW and scheduler (``trainables.optim``) from a
``TrialConfig``, gives every trainable parameter a zero gradient and takes one optimizer step (so AdamW holds its
real state: ``exp_avg`` and ``exp_avg_sq`` per trained parameter), then writes the checkpoint with
``save_trial_checkpoint`` twice:

1. ``resumable=True``: model.pt + trainer_state.pt + metrics.json (what every report wrote before only a trial's
   newest checkpoint kept its optimizer state);
2. ``resumable=False``: model.pt + metrics.json (what a kept, non-newest checkpoint holds now).

Prints each file's bytes against ``estimated_bytes``, then the peak checkpoint bytes of the Stage 2 sweep
(``stage2.yaml`` with ``max_concurrent_trials: 2``: two one-GPU trials on a 2-GPU workstation) under the old rule
(every kept checkpoint holds model + optimizer state) and the new one (``sweeps.preflight.disk_budget``), from the
estimate and from the measured bytes. Appends the tables to BENCHMARKS-LOG.md with the machine and the date.

The full preset needs about 10 GB of RAM (model 3.4 GB, gradients 1.9 GB until the step, AdamW state 3.9 GB) and
about 7.5 GB of disk in ``--folder`` at once (each checkpoint is removed once measured).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import append_benchmark  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STAGE2 = ROOT / "sweeps" / "configs" / "stage2.yaml"
CONCURRENT = 2  # two one-GPU trials on a 2x RTX 3090 workstation (stage2.yaml derives it from the cluster)


def measure(preset: str, freeze: bool, folder: Path) -> dict:
    """Write one trial checkpoint of ``preset`` resumable and not; return the bytes of each file."""
    import torch

    from trainables.checkpoints.trial import METRICS_FILE, MODEL_FILE, STATE_FILE, save_trial_checkpoint
    from trainables.config import TrialConfig
    from trainables.model import build_model, freeze_text_encoder
    from trainables.optim import build_optimizer, build_scheduler

    cfg = TrialConfig(preset=preset, freeze_text_encoder=freeze)
    model = build_model(cfg.preset, device="cpu", seed=0)
    if cfg.freeze_text_encoder:
        freeze_text_encoder(model)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    trained = [p for p in model.parameters() if p.requires_grad]
    for p in trained:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    scheduler.step()
    for p in trained:
        p.grad = None  # the gradients are not saved: free them before the state is pickled
    gc.collect()
    with_state = sum(1 for p in trained if optimizer.state.get(p))
    result = {"parameters": sum(p.numel() for p in model.parameters()),
              "trained": sum(p.numel() for p in trained), "trained_tensors": len(trained),
              "tensors_with_state": with_state}
    for resumable in (True, False):
        directory = folder / ("resumable" if resumable else "final")
        save_trial_checkpoint(directory, model, optimizer, scheduler, step=1, metrics={"step": 1},
                              config=dataclasses.asdict(cfg), resumable=resumable)
        sizes = {name: (directory / name).stat().st_size if (directory / name).is_file() else None
                 for name in (MODEL_FILE, STATE_FILE, METRICS_FILE)}
        assert sorted(p.name for p in directory.iterdir()) == sorted(n for n, s in sizes.items() if s is not None)
        result["resumable" if resumable else "final"] = sizes
        shutil.rmtree(directory)
    return result


def sweep_peaks(model_bytes: int, state_bytes: int) -> tuple[int, int, str]:
    """stage2.yaml's peak checkpoint bytes with ``max_concurrent_trials`` 2 for one checkpoint's model and state
    bytes: the old rule (every kept checkpoint holds both), the new one (``disk_budget``), and its counts."""
    from sweeps.config import load_sweep_config
    from sweeps.preflight import disk_budget

    cfg = dataclasses.replace(load_sweep_config(STAGE2), max_concurrent_trials=CONCURRENT)
    budget = dataclasses.replace(disk_budget(cfg), model_bytes=model_bytes, state_bytes=state_bytes)
    old = budget.models * (model_bytes + state_bytes) + budget.export  # the same checkpoints, each with a state
    counts = f"{budget.models} checkpoints; new: {budget.models} models, {budget.states} states; + export"
    return old, budget.total, counts


def tables(preset: str, freeze: bool, m: dict) -> str:
    from trainables.checkpoints.trial import METRICS_FILE, MODEL_FILE, STATE_FILE, estimated_bytes

    est = estimated_bytes(preset, freeze_text_encoder=freeze)
    res, fin = m["resumable"], m["final"]
    total = {k: sum(v for v in sizes.values() if v) for k, sizes in (("resumable", res), ("final", fin))}
    gb = 1e9

    def cell(n: int | None) -> str:
        return "-" if n is None else f"{n} ({n / gb:.3f} GB)"

    lines = [
        f"Preset {preset}, text encoder {'frozen' if freeze else 'trained'}: {m['parameters']} parameters, "
        f"{m['trained']} trained in {m['trained_tensors']} tensors, AdamW state for {m['tensors_with_state']} "
        "after one step with zero gradients.",
        "",
        f"| checkpoint | {MODEL_FILE} | {STATE_FILE} | {METRICS_FILE} | total |",
        "|---|---|---|---|---|",
        f"| resumable=True (every report, before) | {cell(res[MODEL_FILE])} | {cell(res[STATE_FILE])} | "
        f"{res[METRICS_FILE]} | {cell(total['resumable'])} |",
        f"| resumable=False (a kept, non-newest checkpoint, now) | {cell(fin[MODEL_FILE])} | {cell(fin[STATE_FILE])} | "
        f"{fin[METRICS_FILE]} | {cell(total['final'])} |",
        f"| estimated_bytes | {cell(est.model)} | {cell(est.trainer_state)} | - | "
        f"{cell(est.model + est.trainer_state)} |",
        f"| measured / estimate | {res[MODEL_FILE] / est.model:.4f} | {res[STATE_FILE] / est.trainer_state:.4f} | - | "
        f"{total['resumable'] / (est.model + est.trainer_state):.4f} |",
    ]
    old_est, new_est, counts = sweep_peaks(est.model, est.trainer_state)
    old, new, _ = sweep_peaks(res[MODEL_FILE], res[STATE_FILE])
    lines += [
        "",
        f"Sweep peak, sweeps/configs/stage2.yaml with max_concurrent_trials {CONCURRENT} ({counts}):",
        "",
        "| rule | from estimated_bytes | from the measured checkpoint |",
        "|---|---|---|",
        f"| old: every kept checkpoint holds model + optimizer state | {old_est / gb:.1f} GB | {old / gb:.1f} GB |",
        f"| new: preflight.disk_budget (state only in a running trial's newest + the one being written) | "
        f"{new_est / gb:.1f} GB | {new / gb:.1f} GB |",
        f"| new / old | {new_est / old_est:.3f} | {new / old:.3f} |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=("full", "tiny"), default="full")
    parser.add_argument("--freeze-text-encoder", action=argparse.BooleanOptionalAction, default=True,
                        help="freeze the language backbone (stage2.yaml: freeze_text_encoder: true)")
    parser.add_argument("--folder", default=tempfile.gettempdir(), help="where the checkpoints are written")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        measured = measure(args.preset, args.freeze_text_encoder, Path(tmp))
    table = tables(args.preset, args.freeze_text_encoder, measured)
    print(table)
    append_benchmark(f"Checkpoint bytes: one {args.preset}-preset trial checkpoint, and the Stage 2 sweep's peak",
                     " ".join(["python bench/checkpoint_bytes.py", *(argv if argv is not None else sys.argv[1:])]),
                     table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
