"""``bench/driver_gpu.py`` on the tiny preset (its CPU dry run): a one-trial sweep through the real driver and
gpu_step.py's bare step of the same configuration, both measured, side by side. The full preset's figures need
a GPU (BENCHMARKS.md lists them as not measured until one ran it)."""

from __future__ import annotations

import re

import bench.common
from bench import driver_gpu


def test_the_dry_run_measures_the_driver_trial_and_the_bare_step(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench.common, "LOG", tmp_path / "BENCHMARKS-LOG.md")
    assert driver_gpu.main(["--preset", "tiny", "--steps", "4"]) == 0
    table = capsys.readouterr().out
    bare = re.search(r"\| bare step \(`gpu_step.py`, median of 4\) \| ([\d.]+) \| nan GiB", table)
    driver = re.search(r"\| through the driver \(mean of its last 2 steps\) \| ([\d.]+) \(([\d.]+)x\) \| nan GiB \| "
                       r"inside the loop (\d+) s, Tune's trial (\d+) s", table)
    assert bare and driver, table
    assert float(bare.group(1)) > 0 and float(driver.group(1)) > 0
    assert int(driver.group(4)) >= int(driver.group(3))  # Tune's wall time includes the loop
    assert "through the sweep driver on one CPU worker" in (tmp_path / "BENCHMARKS-LOG.md").read_text()
