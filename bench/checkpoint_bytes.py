"""The disk bytes of ONE trial checkpoint, and what they make of a Stage 2 sweep's peak.

    python bench/checkpoint_bytes.py [--preset full] [--no-freeze-text-encoder] [--folder /tmp]

Builds the preset on the CPU (seed 0) and saves it as the trial's starting checkpoint (``save_native``: what weight
surgery writes), freezes the text encoder as ``sweeps/configs/stage2.yaml`` does (unless
``--no-freeze-text-encoder``), builds the trial's own AdamW and scheduler (``trainables.optim``) from a
``TrialConfig``, gives every trainable parameter a zero gradient and takes one optimizer step (so AdamW holds its
real state: ``exp_avg`` and ``exp_avg_sq`` per trained parameter), then writes the checkpoint with
``save_trial_checkpoint`` four ways:

1. whole, ``resumable=True``: model.pt + trainer_state.pt (what every report wrote at first);
2. whole, ``resumable=False``: model.pt alone (a kept, non-newest checkpoint once only a trial's newest kept its
   optimizer state);
3. and 4. the same with the frozen text encoder shared with the starting checkpoint (``frozen=``, what a trial
   writes now): model_trained.pt + frozen_source.json, with and without trainer_state.pt.

Prints each file's bytes against ``estimated_bytes``, then the peak checkpoint bytes of the Stage 2 sweep
(``stage2.yaml`` with ``max_concurrent_trials: 2``: two one-GPU trials on a 2-GPU workstation) under the three
rules, from the estimate and from the measured bytes. Appends the tables to BENCHMARKS-LOG.md with the machine and
the date.

The full preset needs about 12 GB of RAM (model 3.4 GB, gradients 1.9 GB until the step, AdamW state 3.9 GB, the
native copy being saved 3.4 GB) and about 11 GB of disk in ``--folder`` at once (the starting checkpoint, and one
checkpoint at a time, removed once measured).
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
#: The four ways one checkpoint is written: (label, frozen part shared, resumable).
VARIANTS = (("whole, resumable", False, True), ("whole, kept", False, False),
            ("shared, resumable", True, True), ("shared, kept", True, False))


def measure(preset: str, freeze: bool, folder: Path) -> dict:
    """Write one trial checkpoint of ``preset`` each way of :data:`VARIANTS`; return the bytes of each file."""
    import torch

    from trainables.checkpoints.frozen import FrozenSource
    from trainables.checkpoints.native import save_native
    from trainables.checkpoints.trial import save_trial_checkpoint
    from trainables.config import TrialConfig
    from trainables.model import build_model, freeze_text_encoder
    from trainables.optim import build_optimizer, build_scheduler

    cfg = TrialConfig(preset=preset, freeze_text_encoder=freeze)
    model = build_model(cfg.preset, device="cpu", seed=0)
    save_native(model, folder / "start.pt")
    frozen = FrozenSource.of(folder / "start.pt") if freeze else None
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
    for label, shared, resumable in VARIANTS:
        directory = folder / label.replace(", ", "-")
        save_trial_checkpoint(directory, model, optimizer, scheduler, step=1, metrics={"step": 1},
                              config=dataclasses.asdict(cfg), resumable=resumable,
                              frozen=frozen if shared else None)
        result[label] = {p.name: p.stat().st_size for p in directory.iterdir()}
        shutil.rmtree(directory)
    return result


def sweep_peak(model_bytes: int, state_bytes: int, *, every_state: bool = False) -> tuple[int, str]:
    """stage2.yaml's peak checkpoint bytes with ``max_concurrent_trials`` 2 for one checkpoint's model and state
    bytes (``preflight.disk_budget``; ``every_state``: every kept checkpoint holds a state), and its counts."""
    from sweeps.config import load_sweep_config
    from sweeps.preflight import disk_budget

    cfg = dataclasses.replace(load_sweep_config(STAGE2), max_concurrent_trials=CONCURRENT)
    budget = dataclasses.replace(disk_budget(cfg), model_bytes=model_bytes, state_bytes=state_bytes)
    counts = f"{budget.models} checkpoints, {budget.states} optimizer states, + the export"
    if every_state:
        return budget.models * (model_bytes + state_bytes) + budget.export, counts
    return budget.total, counts


def tables(preset: str, freeze: bool, m: dict) -> str:
    from trainables.checkpoints.trial import (
        FROZEN_SOURCE_FILE,
        METRICS_FILE,
        MODEL_FILE,
        STATE_FILE,
        TRAINED_FILE,
        estimated_bytes,
    )

    gb = 1e9

    def cell(n: int | None) -> str:
        return "-" if n is None else f"{n} ({n / gb:.3f} GB)"

    def model_of(label: str) -> int:
        return m[label].get(MODEL_FILE) or m[label][TRAINED_FILE]

    lines = [
        f"Preset {preset}, text encoder {'frozen' if freeze else 'trained'}: {m['parameters']} parameters, "
        f"{m['trained']} trained in {m['trained_tensors']} tensors, AdamW state for {m['tensors_with_state']} "
        "after one step with zero gradients.",
        "",
        f"| checkpoint | {MODEL_FILE} or {TRAINED_FILE} | {STATE_FILE} | {METRICS_FILE} + {FROZEN_SOURCE_FILE} "
        "| total |",
        "|---|---|---|---|---|",
    ]
    for label, _, _ in VARIANTS:
        sizes = m[label]
        small = sizes[METRICS_FILE] + sizes.get(FROZEN_SOURCE_FILE, 0)
        lines.append(f"| {label} | {cell(model_of(label))} | {cell(sizes.get(STATE_FILE))} | {small} | "
                     f"{cell(sum(sizes.values()))} |")
    whole = estimated_bytes(preset, freeze_text_encoder=freeze, starting_checkpoint=False)
    shared = estimated_bytes(preset, freeze_text_encoder=freeze, starting_checkpoint=True)
    lines += [
        f"| estimated_bytes, whole / shared | {cell(whole.model)} / {cell(shared.model)} | "
        f"{cell(whole.trainer_state)} | - | - |",
        f"| measured / estimate | {model_of('whole, resumable') / whole.model:.4f} / "
        f"{model_of('shared, resumable') / shared.model:.4f} | "
        f"{m['whole, resumable'][STATE_FILE] / whole.trainer_state:.4f} | - | - |",
    ]
    state = m["whole, resumable"][STATE_FILE]
    rules = [("every kept checkpoint: whole model + optimizer state", whole.model, whole.trainer_state,
              model_of("whole, resumable"), True),
             ("optimizer state only in a running trial's newest (+ the one being written)", whole.model,
              whole.trainer_state, model_of("whole, kept"), False),
             ("and the frozen text encoder shared with the starting checkpoint (now)", shared.model,
              shared.trainer_state, model_of("shared, kept"), False)]
    rows, first = [], None
    for label, est_model, est_state, measured_model, every in rules:
        (est, counts), (meas, _) = (sweep_peak(est_model, est_state, every_state=every),
                                    sweep_peak(measured_model, state, every_state=every))
        first = first or (est, meas)
        rows.append(f"| {label} | {est / gb:.1f} GB ({est / first[0]:.3f}x) | {meas / gb:.1f} GB "
                    f"({meas / first[1]:.3f}x) |")
    lines += ["", f"Sweep peak, sweeps/configs/stage2.yaml with max_concurrent_trials {CONCURRENT} ({counts}):", "",
              "| rule | from estimated_bytes | from the measured checkpoint |", "|---|---|---|", *rows]
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
