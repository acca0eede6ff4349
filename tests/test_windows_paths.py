"""Specification of Windows paths, reached on Linux through the same functions with Windows-style strings.

- a drive-letter or UNC storage path is a local path, not a URI (Ray #37639), and is joined with its own
  separator, never a mix (Ray #37226);
- a checkpoint path that Ray recorded with backslashes is found inside the experiment folder;
- on Windows, a storage path too long for the sweep's deepest files (260 characters, Ray #46607) is refused
  before Ray starts; a 40-character root fits (the deepest real path is measured in test_wandb_offline.py).
What only a Windows machine can confirm: that Ray, pyarrow and W&B accept these paths there.
"""

from __future__ import annotations

from pathlib import PureWindowsPath

import pyarrow.fs
import pytest

from common.paths import is_uri, join, last_part
from sweeps.config import SweepConfig
from sweeps.export import locate_checkpoint
from sweeps.preflight import WINDOWS_MAX_PATH, windows_path_problems
from trainables.config import TrialConfig


@pytest.mark.parametrize("path", [r"E:\sweeps", "E:/sweeps", r"\\server\share\sweeps", r"C:\Users\me\sweeps", "e:"])
def test_windows_paths_are_local_not_uris(path):
    assert not is_uri(path)


@pytest.mark.parametrize("path", ["s3://bucket/sweeps", "gs://b/x", "file:///E:/sweeps"])
def test_uris_stay_uris(path):
    assert is_uri(path)


@pytest.mark.parametrize("base", [r"E:\sweeps", "E:/sweeps", "E:/sweeps/"])
def test_a_windows_storage_path_is_joined_with_one_kind_of_separator(base):
    joined = join(base, "stage2-cass", "train_runs", flavour=PureWindowsPath)
    assert joined == r"E:\sweeps\stage2-cass\train_runs"
    assert last_part(join(base, "stage2-cass", flavour=PureWindowsPath), PureWindowsPath) == "stage2-cass"
    assert join("s3://bucket/sweeps/", "stage2-cass") == "s3://bucket/sweeps/stage2-cass"


def test_a_checkpoint_ray_recorded_with_backslashes_is_found_in_the_experiment_folder(tmp_path):
    checkpoint = tmp_path / "sweep" / "train_runs" / "sweep-t1" / "checkpoint_2026-12-05_07-17-21.618501"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.pt").write_bytes(b"weights")
    recorded = r"E:\sweeps\sweep\train_runs\sweep-t1\checkpoint_2026-12-05_07-17-21.618501"
    found = locate_checkpoint(pyarrow.fs.LocalFileSystem(), (tmp_path / "sweep").as_posix(), recorded)
    assert found == checkpoint.as_posix()


def sweep_at(storage_path: str, name: str = "stage2-cass") -> SweepConfig:
    return SweepConfig(name=name, storage_path=storage_path, search_space="space.yaml", trial=TrialConfig())


def test_a_40_character_storage_root_fits_and_a_long_one_is_refused_on_windows():
    root = "E:\\" + "s" * 37
    assert len(root) == 40 and windows_path_problems(sweep_at(root), windows=True) == []
    long_root = "E:\\" + "deep\\" * 30
    (problem,) = windows_path_problems(sweep_at(long_root), windows=True)
    assert "storage_path" in problem and f"limit of {WINDOWS_MAX_PATH}" in problem and "Ray issue #46607" in problem
    assert windows_path_problems(sweep_at(long_root), windows=False) == []  # Linux has no such limit
    assert windows_path_problems(sweep_at("s3://" + "b" * 300), windows=True) == []
