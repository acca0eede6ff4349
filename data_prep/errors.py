"""One error type for bad user input, and the CLI convention around it.

Every check at the edge (COCO files, images, configs, search spaces, checkpoints) raises
:class:`InputError` with a message that names the file, the id/field and what to do. Command-line
entry points wrap their ``main`` with :func:`run_cli`, which prints each problem and exits with
status 2, the project-wide code for "your input is wrong" (argparse uses 2 as well).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

EXIT_BAD_INPUT = 2


class InputError(Exception):
    """Bad user input. ``problems`` lists every problem found (not just the first)."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        self.problems = list(problems)
        full = message if not self.problems else message + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(full)


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run a CLI ``main(argv)``; turn :class:`InputError` into a message on stderr and exit code 2."""
    try:
        return int(main(argv) or 0)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


def load_yaml(path: str | os.PathLike, what: str) -> Any:
    """Parse a YAML file, or raise :class:`InputError` naming the file and ``what`` it should hold."""
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise InputError(f"{path}: cannot read the {what} ({err.strerror})") from err
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML ({err})") from err


def nearest_existing(path: str | os.PathLike) -> Path:
    """``path`` if it exists, else its nearest existing ancestor: where creating ``path`` would start."""
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing
