"""Set up and run the project the same way on Linux, macOS and Windows (PowerShell), with only Python.

    python tasks.py demo      # create .venv if needed, then the whole pipeline on the embedded default
    python tasks.py test      # create .venv if needed, then the test suite (what CI runs)
    python tasks.py venv      # only create / update .venv
    python tasks.py clean     # remove .venv, demo_out and .pytest_cache (this checkout's own folders only)

The Makefile's targets call this file, so both ways run the same steps. The environment is ``.venv`` (its
Python is ``.venv/bin/python``, or ``.venv\\Scripts\\python.exe`` on Windows). It is (re)installed when
``pyproject.toml`` or the torch choice changed since the last install: first a matched torch/torchvision pair
(``TORCH_SPEC``, from ``TORCH_INDEX`` when set: PyTorch's CUDA wheels for Windows GPUs), then the project
with its test tools. ``--dry-run`` prints the commands instead of running them.

Environment variables (as the Makefile's): ``TORCH_SPEC`` (default ``torch==2.14.1 torchvision==0.29.1``),
``TORCH_INDEX`` (e.g. ``https://download.pytorch.org/whl/cu126``), ``VENV`` (default ``.venv``), ``DEMO_OUT``
(default ``demo_out``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import venv
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent
DEFAULT_TORCH_SPEC = "torch==2.14.1 torchvision==0.29.1"
STAMP = ".installed"


def venv_python(venv_dir: Path, windows: bool = os.name == "nt") -> Path:
    """The interpreter of a virtual environment: ``Scripts\\python.exe`` on Windows, ``bin/python`` elsewhere."""
    return venv_dir / ("Scripts/python.exe" if windows else "bin/python")


def install_commands(python: Path, torch_spec: str, torch_index: str) -> list[list[str]]:
    """The pip commands that install the environment, in order."""
    torch = [str(python), "-m", "pip", "install", "-q", *torch_spec.split()]
    return [[str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"],
            torch + (["--index-url", torch_index] if torch_index else []),
            [str(python), "-m", "pip", "install", "-q", "-e", f"{ROOT}[dev]"]]


def install_key(torch_spec: str, torch_index: str) -> str:
    """What the installed environment was made from: pyproject.toml and the torch choice."""
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes())
    digest.update(f"\n{torch_spec}\n{torch_index}".encode())
    return digest.hexdigest()


def task_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The environment the demo and the tests run in (as the Makefile exports it)."""
    return {**env, "TORCHDYNAMO_DISABLE": env.get("TORCHDYNAMO_DISABLE", "1"), "PYTHONUNBUFFERED": "1"}


def run(command: Sequence[str], *, dry_run: bool, env: Mapping[str, str] | None = None) -> None:
    print("+ " + " ".join(shlex.quote(part) for part in command), flush=True)
    if not dry_run:
        subprocess.run(list(command), cwd=ROOT, env=dict(env) if env is not None else None, check=True)


def ensure_venv(venv_dir: Path, *, dry_run: bool) -> Path:
    """Create and install ``venv_dir`` unless it is already installed from the same inputs; return its Python."""
    torch_spec = os.environ.get("TORCH_SPEC", DEFAULT_TORCH_SPEC)
    torch_index = os.environ.get("TORCH_INDEX", "")
    python = venv_python(venv_dir)
    key = install_key(torch_spec, torch_index)
    stamp = venv_dir / STAMP
    if python.exists() and stamp.is_file() and stamp.read_text().strip() == key:
        return python
    if not python.exists():
        print(f"+ python -m venv {venv_dir}", flush=True)
        if not dry_run:
            venv.EnvBuilder(with_pip=True).create(venv_dir)
    for command in install_commands(python, torch_spec, torch_index):
        run(command, dry_run=dry_run)
    if not dry_run:
        stamp.write_text(key + "\n")
    return python


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=("venv", "demo", "test", "clean"))
    parser.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    args, extra = parser.parse_known_args(argv)  # the rest goes to pytest (test) or the demo (demo)
    venv_dir = ROOT / os.environ.get("VENV", ".venv")
    if args.task == "clean":
        for name in (venv_dir, ROOT / os.environ.get("DEMO_OUT", "demo_out"), ROOT / ".pytest_cache"):
            if name.resolve().is_relative_to(ROOT) and name.resolve() != ROOT and name.exists():
                print(f"+ remove {name}")
                if not args.dry_run:
                    shutil.rmtree(name)
        return 0
    python = ensure_venv(venv_dir, dry_run=args.dry_run)
    env = task_environment(os.environ)
    try:
        if args.task == "demo":
            run([str(python), "-m", "sweeps.demo", "--out", os.environ.get("DEMO_OUT", "demo_out"), *extra],
                dry_run=args.dry_run, env=env)
        elif args.task == "test":
            run([str(python), "-m", "pytest", "-q", *extra], dry_run=args.dry_run, env=env)
    except subprocess.CalledProcessError as failed:
        return failed.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
