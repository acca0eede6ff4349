"""The README's shell commands, read as tests run them (the recipes are tested as written), and the machine
they run on: an environment of its own, free ports, the Ray processes present."""

from __future__ import annotations

import itertools
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import psutil
from ray.autoscaler._private.constants import RAY_PROCESSES

REPO = Path(__file__).resolve().parents[1]
AUTH_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")  # a leading NAME=value of a shell command


def readme_commands(after: str) -> list[tuple[dict[str, str], list[str]]]:
    """The commands of the first ``bash`` block after the line ``after`` in README.md: (leading environment
    assignments, argv), continuation lines joined, comments and ``source`` lines left out."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text[text.index(after):].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if not words or words[0] == "source":
            continue
        assignments = len(words) - len(list(itertools.dropwhile(ASSIGNMENT.match, words)))
        commands.append((dict(w.split("=", 1) for w in words[:assignments]), words[assignments:]))
    return commands


def substituted(argv: list[str], replacements: dict[str, str]) -> list[str]:
    """``argv`` with each replacement made inside every argument."""
    for old, new in replacements.items():
        argv = [arg.replace(old, new) for arg in argv]
    return argv


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 now (held open together while chosen)."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def cli_env(home: Path) -> dict[str, str]:
    """A machine whose home folder is ``home``: the venv first on PATH (the job's ``python``), no inherited
    RAY_ADDRESS or Ray auth settings (each command sets its own, as the README writes them)."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", *AUTH_VARIABLES)}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", HOME=str(home),
               USERPROFILE=str(home), TORCHDYNAMO_DISABLE="1", PYTHONUNBUFFERED="1", WANDB_MODE="disabled")
    return env


def ray_processes() -> list[psutil.Process]:
    """The processes ``ray stop`` would stop: its own name and command-line filters (``RAY_PROCESSES``)."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        name, argv = proc.info["name"] or "", subprocess.list2cmdline(proc.info["cmdline"] or [])
        if any(keyword in (name if by_name else argv) for keyword, by_name in RAY_PROCESSES):
            found.append(proc)
    return found
