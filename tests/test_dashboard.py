"""``python -m sweeps.dashboard``: the sweep's study in optuna-dashboard, on loopback, read-only (issue 20)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest

from common.errors import InputError, run_cli
from sweeps.config import JOURNAL_FILE
from sweeps.dashboard import main, serve, study_app
from sweeps.study_storage import journal_storage

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def experiment(tmp_path) -> Path:
    """An experiment folder whose journal holds a two-objective study of 3 finished trials, as a sweep's."""
    folder = tmp_path / "stage2-cass"
    study = optuna.create_study(study_name="stage2-cass", storage=journal_storage(folder / JOURNAL_FILE),
                                directions=["maximize", "maximize"])
    study.set_metric_names(["val_dice", "val_ap75"])
    for lr in (1e-4, 3e-4, 1e-3):
        trial = study.ask({"lr_vision": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)})
        study.tell(trial, [0.5 + lr, 0.2 + lr])
    return folder


@pytest.fixture
def served(experiment):
    """The dashboard of ``experiment`` on a free loopback port: (base URL, study id, journal)."""
    app, _, study_id = study_app(str(experiment / JOURNAL_FILE), experiment.name)
    server = serve(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", study_id, experiment / JOURNAL_FILE
    server.shutdown()
    server.server_close()


def test_the_api_serves_the_studys_trials(served):
    base, study_id, _ = served
    with urllib.request.urlopen(f"{base}/api/studies/{study_id}", timeout=30) as answer:
        study = json.loads(answer.read())
    assert answer.status == 200 and study["name"] == "stage2-cass"
    assert [(t["number"], t["state"]) for t in study["trials"]] == [(0, "Complete"), (1, "Complete"), (2, "Complete")]


@pytest.mark.parametrize("method, path", [("POST", "/api/studies/{id}/rename"), ("DELETE", "/api/studies/{id}"),
                                          ("PUT", "/api/studies/{id}/note"), ("POST", "/api/trials/0/tell")])
def test_nothing_that_writes_reaches_the_study(served, method, path):
    base, study_id, journal = served
    before = journal.read_bytes()
    request = urllib.request.Request(base + path.format(id=study_id), data=b'{"study_name": "renamed"}',
                                     method=method, headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 405 and b"read-only" in refused.value.read()
    assert journal.read_bytes() == before


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (apt-get install -y chromium): "
                                             "the headless check of the dashboard page needs it")
def test_a_headless_browser_shows_the_studys_trials(served):
    base, study_id, _ = served
    page = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000",
                           "--dump-dom", f"{base}/dashboard/studies/{study_id}/trials"],
                          capture_output=True, text=True, timeout=180).stdout
    assert "NOW LOADING" not in page.upper()
    assert all(f"Trial {n}" in page for n in range(3)), page[-2000:]
    assert "stage2-cass" in page


def test_the_command_prints_the_studys_url_and_serves_it(experiment):
    server = subprocess.Popen([sys.executable, "-m", "sweeps.dashboard", str(experiment), "--port", "0"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/dashboard/studies/\d+", line)
        assert line.startswith("study stage2-cass (read-only): ") and url, line + server.stderr.read()
        with urllib.request.urlopen(url.group(0), timeout=30) as answer:
            assert answer.status == 200 and "<html" in answer.read().decode().lower()
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "lab-head.example"])
def test_another_host_than_loopback_is_refused_without_allow_remote(experiment, host, capsys):
    assert run_cli(main, [str(experiment), "--host", host]) == 2
    error = capsys.readouterr().err
    assert f"--host {host}" in error and "ssh -L 8080:127.0.0.1:8080" in error and "--allow-remote" in error


def test_a_folder_without_a_journal_is_refused_with_what_to_pass(tmp_path, capsys):
    assert run_cli(main, [str(tmp_path)]) == 2
    assert f"no Optuna journal at {tmp_path / JOURNAL_FILE}" in capsys.readouterr().err
    assert run_cli(main, ["s3://bucket/sweeps/stage2-cass"]) == 2
    assert "pass that file with --journal" in capsys.readouterr().err


def test_of_several_studies_in_one_storage_the_sweeps_is_the_one_named_after_its_folder(experiment):
    storage = journal_storage(experiment / JOURNAL_FILE)
    optuna.create_study(study_name="another-sweep", storage=storage)
    _, name, study_id = study_app(str(experiment / JOURNAL_FILE), "stage2-cass")
    assert name == "stage2-cass" and study_id == storage.get_study_id_from_name("stage2-cass")
    with pytest.raises(InputError, match="none named 'stage1'"):
        study_app(str(experiment / JOURNAL_FILE), "stage1")
