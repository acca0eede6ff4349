"""The long fuzz run: every input reader's property (``tests/test_fuzz_inputs.py``) with many more examples.

    python bench/fuzz_inputs.py [--examples 400]

Runs pytest on the fuzz tests under Hypothesis' ``long`` profile (random, not derandomised: each run tries new
inputs) and prints, per property, how many examples ran and whether it held. Any failure prints Hypothesis'
smallest failing example. RELIABILITY.md records the counts of the runs made so far.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=400, help="examples per property (the long profile's)")
    args = parser.parse_args()
    env = {**os.environ, "FUZZ_PROFILE": "long", "FUZZ_EXAMPLES": str(args.examples), "TORCHDYNAMO_DISABLE": "1"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_fuzz_inputs.py",
                             "--hypothesis-show-statistics"], cwd=ROOT, env=env, capture_output=True, text=True)
    output = result.stdout + result.stderr
    print("| property | examples run (all phases) | result |\n|---|---|---|")
    for name, block in re.findall(r"tests/test_fuzz_inputs.py::(\w+):\n(.*?)(?=\n\S|\Z)", output, re.S):
        counts = re.findall(r"- (\d+) passing, (\d+) failing, and (\d+) invalid", block)
        passing, failing = (sum(int(c[i]) for c in counts) for i in (0, 1))
        print(f"| {name} | {passing + failing} | {'FAILED' if failing else 'held'} |")
    print(output.strip().splitlines()[-1])
    if result.returncode:
        print(output)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
