"""Where the Optuna study lives: a journal file, or a database URL for sites that have one (issue 20)."""

from __future__ import annotations

import optuna
import pytest

from common.errors import InputError
from sweeps.config import parse_sweep_config
from sweeps.preflight import storage_problems
from sweeps.results import load_study
from sweeps.study_storage import check_database, is_database_url, open_storage, shown

MINIMAL = {"name": "s", "storage_path": "/tmp/sweeps", "search_space": "search_spaces/local.yaml"}


@pytest.mark.parametrize("location, database", [
    ("sqlite:////data/sweeps/study.db", True), ("postgresql://optuna@db.lab:5432/sweeps", True),
    ("mysql+pymysql://optuna@db.lab/sweeps", True), ("postgres://optuna@db.lab/sweeps", True),
    ("/nfs/sweeps/stage2.optuna.log", False), ("E:\\sweeps\\stage2.optuna.log", False),
    ("s3://bucket/journal.log", False)])
def test_a_database_url_is_told_from_a_journal_file(location, database):
    assert is_database_url(location) is database


def test_a_study_in_a_database_is_created_by_the_sweep_and_found_again_by_name(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    study = optuna.create_study(study_name="stage2-cass", storage=open_storage(url, create=True),
                                directions=["maximize"] * 2)
    study.tell(study.ask(), [0.4, 0.1])
    notes = []
    found = load_study(url, None, "stage2-cass", notes)  # another driver, another process: by name
    assert notes == [] and found.study_name == "stage2-cass" and len(found.trials) == 1


def test_reading_a_database_creates_nothing_in_it(tmp_path):
    import sqlite3

    url = f"sqlite:///{tmp_path / 'empty.db'}"
    sqlite3.connect(tmp_path / "empty.db").close()
    check_database(url)  # the check before a sweep
    with pytest.raises(InputError, match="holds no Optuna study"):
        open_storage(url)  # what report, export and the dashboard do
    tables = sqlite3.connect(tmp_path / "empty.db").execute("select name from sqlite_master").fetchall()
    assert tables == []


@pytest.mark.parametrize("url, message", [
    ("sqlite:////nonexistent-sam3/sub/s.db", "the study database sqlite:////nonexistent-sam3/sub/s.db cannot be used"),
    ("postgresql://optuna:se/cret@127.0.0.1:1/db", "holds a password, which the experiment's saved state and W&B"),
    ("mysql://optuna@db?password=secret", "holds a password"),
    ("postgres://optuna@127.0.0.1:1/db", "postgres:// is spelled postgresql://"),
    ("sqlite:///relative/study.db", "give an absolute path: sqlite:////abs/path.db"),
    ("postgresql://optuna@127.0.0.1:1/db", "pip install psycopg2"),  # no PostgreSQL driver in this environment
])
def test_a_database_that_cannot_be_used_is_refused_with_one_clear_error_and_no_password(url, message):
    with pytest.raises(InputError, match="searcher.storage: ") as refused:
        open_storage(url)
    assert message in str(refused.value) and "secret" not in str(refused.value) and "se/cret" not in str(refused.value)


def test_a_password_is_masked_wherever_a_url_is_printed():
    assert shown("postgresql://u:se/cret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert shown("mysql://u@h/db?password=secret&charset=utf8") == "mysql://u@h/db?charset=utf8&password=***"
    assert shown("/nfs/j.log") == "/nfs/j.log"


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
