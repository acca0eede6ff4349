"""Where the Optuna study lives: a journal file, or a database URL for sites that have one (issue 20)."""

from __future__ import annotations

import optuna
import pytest

from common.errors import InputError
from sweeps.config import parse_sweep_config
from sweeps.preflight import storage_problems
from sweeps.results import load_study
from sweeps.study_storage import is_database_url, open_storage, shown

MINIMAL = {"name": "s", "storage_path": "/tmp/sweeps", "search_space": "search_spaces/local.yaml"}


@pytest.mark.parametrize("location, database", [
    ("sqlite:////data/sweeps/study.db", True), ("postgresql://optuna@db.lab:5432/sweeps", True),
    ("mysql+pymysql://optuna@db.lab/sweeps", True), ("/nfs/sweeps/stage2.optuna.log", False),
    ("E:\\sweeps\\stage2.optuna.log", False), ("s3://bucket/journal.log", False)])
def test_a_database_url_is_told_from_a_journal_file(location, database):
    assert is_database_url(location) is database


def test_a_study_in_a_database_is_created_and_found_again_by_name(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    study = optuna.create_study(study_name="stage2-cass", storage=open_storage(url), directions=["maximize"] * 2)
    study.tell(study.ask(), [0.4, 0.1])
    notes = []
    found = load_study(url, None, "stage2-cass", notes)  # another driver, another process: by name
    assert notes == [] and found.study_name == "stage2-cass" and len(found.trials) == 1


def test_a_database_that_cannot_be_used_is_refused_with_one_clear_error_and_no_password(tmp_path):
    with pytest.raises(InputError, match="the study database sqlite:////nonexistent-sam3/sub/s.db cannot be used"):
        open_storage("sqlite:////nonexistent-sam3/sub/s.db")
    # no driver installed here, or no server on port 1: either way one error, the password never shown
    with pytest.raises(InputError, match="searcher.storage: .*postgresql://optuna:\\*\\*\\*@127.0.0.1:1/db") as err:
        open_storage("postgresql://optuna:secret@127.0.0.1:1/db")
    assert "secret" not in str(err.value)
    assert shown("mysql://u:p@ss@h/db") == "mysql://u:***@h/db"


def test_the_sweeps_preflight_refuses_a_database_that_does_not_answer_before_ray_starts():
    cfg = parse_sweep_config({**MINIMAL, "searcher": {"storage": "sqlite:////nonexistent-sam3/s.db"}}, source="x")
    (problem,) = [p for p in storage_problems(cfg) if "searcher.storage" in p]
    assert "cannot be used" in problem


def test_a_database_url_is_the_studys_storage_with_a_shared_folder_but_not_with_object_storage(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    assert parse_sweep_config({**MINIMAL, "searcher": {"storage": url}}, source="x").study_storage == url
    on_s3 = parse_sweep_config({**MINIMAL, "storage_path": "s3://b/sweeps", "searcher": {"storage": url}},
                               source="x")
    with pytest.raises(InputError, match="name a journal file on this machine's disk"):
        on_s3.study_storage
