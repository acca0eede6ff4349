"""The README's shell commands, read as tests run them: the recipes are tested as written."""

from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
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
