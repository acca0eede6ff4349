"""What every benchmark shares: a description of the machine, appending run records to BENCHMARKS-LOG.md, and a free
local port for a process group (``sweeps.ray_compat.free_port`` imports Ray, which the GPU machine lacks)."""

from __future__ import annotations

import datetime
import os
import platform
import socket
from pathlib import Path

LOG = Path(__file__).resolve().parents[1] / "BENCHMARKS-LOG.md"  # raw run records, newest last


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


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for ``init_process_group``'s ``tcp://`` rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
