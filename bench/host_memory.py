"""A worker's host memory while it builds a preset and loads a full-size native checkpoint into it.

    python bench/host_memory.py [--preset full] [--folder /tmp]

Writes the preset's native checkpoint once (``save_native`` of a freshly built model), then, in a fresh Python
process each time (so the peaks are not shared), measures the peak resident set size (``ru_maxrss``):

1. after ``build_model(preset)`` alone;
2. after ``build_model(preset)`` and ``load_native`` of the checkpoint copied into it (a resumed worker);
3. the same with ``load_native(map_file=True)``: the model takes the file's mapped tensors (a worker's start).

and prints both against the checkpoint's size (issue 16's goal: at most 1.5x the checkpoint). Appends the table
to BENCHMARKS-LOG.md with the machine and the date. POSIX only (``resource``); the full preset needs about 8 GB
of RAM and 3.4 GB of disk in ``--folder``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import append_benchmark, run_fresh  # noqa: E402

MEASURE = """
import json, resource, sys, torch
torch.set_num_threads(1)
from trainables.model import build_model
from trainables.checkpoints.native import load_native, save_native
preset, path, step = sys.argv[1:4]
model = build_model(preset, seed=0)
if step == "save":
    save_native(model, path)
elif step in ("load", "map"):
    load_native(model, path, map_file=step == "map")
print(json.dumps({"peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def measure(preset: str, path: Path, step: str) -> int:
    return run_fresh(MEASURE, preset, str(path), step)["peak_bytes"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=("full", "tiny"), default="full")
    parser.add_argument("--folder", default=tempfile.gettempdir(), help="where the checkpoint is written")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        path = Path(tmp) / "native.pt"
        measure(args.preset, path, "save")
        size = path.stat().st_size
        build = measure(args.preset, path, "build")
        load = measure(args.preset, path, "load")
        mapped = measure(args.preset, path, "map")
    gib = 2**30
    table = "\n".join([
        "| step | peak RSS | / checkpoint size |", "|---|---|---|",
        f"| checkpoint file | {size / gib:.2f} GiB | 1.00 |",
        f"| build_model({args.preset}) | {build / gib:.2f} GiB | {build / size:.2f} |",
        f"| build_model + load_native, copied (a resumed worker) | {load / gib:.2f} GiB | {load / size:.2f} |",
        f"| build_model + load_native(map_file=True) (a worker's start) | {mapped / gib:.2f} GiB | "
        f"{mapped / size:.2f} (goal <= 1.5) |",
    ])
    print(table)
    append_benchmark(f"Host memory: building the {args.preset} preset and loading its native checkpoint",
                     " ".join(["python bench/host_memory.py", *(argv or sys.argv[1:])]), table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
