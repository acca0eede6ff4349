"""Specification of ``tasks.py``, the one set-up implementation behind ``make`` and the PowerShell commands.

It is run here with ``--dry-run`` (what it would run, in order) and on its pure functions with Windows inputs;
CI runs it for real through ``make test``. PowerShell itself is not run on this machine.
"""

from __future__ import annotations

from pathlib import Path, PureWindowsPath

import pytest

import tasks


def test_the_environments_python_is_found_where_each_platform_puts_it():
    assert tasks.venv_python(Path(".venv"), windows=False) == Path(".venv/bin/python")
    windows = tasks.venv_python(Path(".venv"), windows=True)
    assert PureWindowsPath(windows) == PureWindowsPath(r".venv\Scripts\python.exe")


def test_torch_is_installed_first_as_a_matched_pair_from_the_chosen_index():
    pip_upgrade, torch, project = tasks.install_commands(Path("py"), "torch==2.14.1 torchvision==0.29.1",
                                                         "https://download.pytorch.org/whl/cu126")
    assert torch[torch.index("torch==2.14.1") + 1] == "torchvision==0.29.1"
    assert torch[torch.index("--index-url") + 1] == "https://download.pytorch.org/whl/cu126"
    assert project[-1].endswith("[dev]") and "--upgrade" in pip_upgrade
    assert "--index-url" not in tasks.install_commands(Path("py"), "torch==2.14.1", "")[1]


def test_a_dry_run_prints_create_install_then_run_and_touches_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VENV", str(tmp_path / "env"))
    monkeypatch.delenv("TORCH_INDEX", raising=False)
    assert tasks.main(["test", "--dry-run", "-x"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("+ python -m venv") and "torch==2.14.1" in lines[2]
    assert lines[-1].endswith("-m pytest -q -x")
    assert not (tmp_path / "env").exists()


def test_an_installed_environment_is_reused_until_pyproject_or_the_torch_choice_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_SPEC", "torch==2.14.1 torchvision==0.29.1")
    monkeypatch.delenv("TORCH_INDEX", raising=False)
    python = tasks.venv_python(tmp_path)
    python.parent.mkdir(parents=True)
    python.write_text("")
    (tmp_path / tasks.STAMP).write_text(tasks.install_key("torch==2.14.1 torchvision==0.29.1", "") + "\n")
    ran = []
    monkeypatch.setattr(tasks, "run", lambda command, **kwargs: ran.append(command))
    assert tasks.ensure_venv(tmp_path, dry_run=True) == python and ran == []
    monkeypatch.setenv("TORCH_INDEX", "https://download.pytorch.org/whl/cu126")
    tasks.ensure_venv(tmp_path, dry_run=True)
    assert len(ran) == 3


@pytest.mark.parametrize("out", ["..", "/"])
def test_clean_never_removes_anything_outside_the_checkout(monkeypatch, out, capsys):
    monkeypatch.setenv("DEMO_OUT", out)
    monkeypatch.setenv("VENV", "no-such-venv")
    assert tasks.main(["clean", "--dry-run"]) == 0
    assert "remove" not in capsys.readouterr().out.replace("+ remove " + str(tasks.ROOT / ".pytest_cache"), "")
