"""One error type for bad user input, and the CLI convention around it.

Every check at the edge (COCO files, images, configs, search spaces, checkpoints) raises
:class:`InputError` with a message that names the file, the id/field and what to do. Command-line
entry points wrap their ``main`` with :func:`run_cli`, which prints each problem and exits with
status 2, the project-wide code for "your input is wrong" (argparse uses 2 as well); Ctrl-C exits with 130
and one line instead of a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # the shell's code for a command stopped by Ctrl-C (128 + SIGINT)


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
    except KeyboardInterrupt:  # Ctrl-C: outputs are staged, so the targets are as they were
        print("interrupted: no half-written output was left in place (a sweep continues with --resume)",
              file=sys.stderr)
        return EXIT_INTERRUPTED
