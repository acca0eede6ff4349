"""Peak host memory of weight surgery converting a Phase 1 checkpoint of the preset's size.

    python bench/surgery_memory.py [--preset full] [--folder /tmp]

Writes a Phase 1 checkpoint once (``write_phase1_checkpoint(layout="training")``: a freshly built model's
``sam3.``-prefixed weights with 672-px RoPE tables and custom heads, beside numpy scalars, an
``argparse.Namespace``, an OmegaConf config, optimizer and RNG state), then, in a fresh Python process each time
(so the peaks are not shared), measures the peak resident set size (``ru_maxrss``, which counts the pages of a
mapped file that were read as well as allocated memory):

1. the interpreter with torch and sam3 imported and the preset's skeleton built (what any conversion costs);
2. ``python -m trainables.checkpoints.surgery IN OUT --preset P`` run in-process through ``run_cli``.

and prints both against the Phase 1 file's size (issue 17's goal: under 2x). Appends the table to
BENCHMARKS-LOG.md with the machine and the date. POSIX only (``resource``); the full preset needs about 8 GB of
RAM to write the file (a built model and its copy) and 7 GB of disk in ``--folder`` (IN and OUT).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import append_benchmark, run_fresh  # noqa: E402

MEASURE = """
import json, resource, sys, time, torch
torch.set_num_threads(1)
preset, src, dst, step = sys.argv[1:5]
start = time.perf_counter()
if step == "write":
    from trainables.checkpoints.phase1 import write_phase1_checkpoint
    from trainables.model import build_model
    write_phase1_checkpoint(build_model(preset, seed=0), src, resolution=672, layout="training")
elif step == "skeleton":
    from trainables.checkpoints.surgery import build_skeleton
    build_skeleton(preset)
elif step == "surgery":
    from common.errors import run_cli
    from trainables.checkpoints.surgery import main
    code = run_cli(main, [src, dst, "--preset", preset])
    if code:
        sys.exit(code)
print(json.dumps({"peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "seconds": time.perf_counter() - start}))
"""


def measure(preset: str, src: Path, dst: Path, step: str) -> dict:
    return run_fresh(MEASURE, preset, str(src), str(dst), step)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=("full", "tiny"), default="full")
    parser.add_argument("--folder", default=tempfile.gettempdir(), help="where IN and OUT are written")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        src, dst = Path(tmp) / "phase1.pth", Path(tmp) / "native.pt"
        measure(args.preset, src, dst, "write")
        size = src.stat().st_size
        skeleton = measure(args.preset, src, dst, "skeleton")
        surgery = measure(args.preset, src, dst, "surgery")
        out_size = dst.stat().st_size
    gib = 2**30
    ratio = surgery["peak_bytes"] / size
    table = "\n".join([
        "| step | peak RSS | / Phase 1 file size | time |", "|---|---|---|---|",
        f"| Phase 1 file (layout training, RoPE at 672 px) | {size / gib:.2f} GiB | 1.00 | - |",
        f"| native OUT written | {out_size / gib:.2f} GiB | {out_size / size:.2f} | - |",
        f"| interpreter + build_skeleton({args.preset}) | {skeleton['peak_bytes'] / gib:.2f} GiB | "
        f"{skeleton['peak_bytes'] / size:.2f} | {skeleton['seconds']:.0f} s |",
        f"| surgery IN OUT --preset {args.preset} | {surgery['peak_bytes'] / gib:.2f} GiB | {ratio:.2f} (goal < 2: "
        f"{'met' if ratio < 2 else 'NOT met'}) | {surgery['seconds']:.0f} s |",
    ])
    print(table)
    append_benchmark(f"Weight surgery's peak host memory: a {args.preset}-preset Phase 1 checkpoint",
                     " ".join(["python bench/surgery_memory.py", *(argv if argv is not None else sys.argv[1:])]),
                     table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
