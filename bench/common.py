"""What every benchmark shares: a description of the machine, appending run records to BENCHMARKS-LOG.md, and a free
local port for a process group (``sweeps.ray_compat.free_port`` imports Ray, which the GPU machine lacks)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOG = ROOT / "BENCHMARKS-LOG.md"  # raw run records, newest last


def machine_description() -> str:
    """CPU count and model, memory, GPU (if any), torch version: enough to compare runs."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages * page_size / 2**30:.0f} GiB RAM"
    except (ValueError, OSError, AttributeError):
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    load = f", load avg {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return f"{os.cpu_count()} CPUs ({cpu}){memory}{gpu}, torch {torch.__version__}{load}"


def append_benchmark(title: str, command: str, table: str) -> None:
    """Append a dated section (machine, command, table) to BENCHMARKS-LOG.md (BENCHMARKS.md quotes from it)."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = f"\n### {title}\n\n- date: {stamp}\n- machine: {machine_description()}\n- command: `{command}`\n\n{table}\n"
    with LOG.open("a") as handle:
        handle.write(section)


def run_fresh(code: str, *args: str) -> dict:
    """Run ``code`` in a fresh Python process at the repository root (``sys.argv[1:]`` = ``args``, dynamo off), so
    that its peak memory is its own; return the JSON object its last output line prints. Exits naming the step
    (``args``' last) with the process's error output when it fails."""
    env = {**os.environ, "TORCHDYNAMO_DISABLE": "1"}
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the {args[-1]} step failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for ``init_process_group``'s ``tcp://`` rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
