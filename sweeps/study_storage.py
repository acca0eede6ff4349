"""Where the sweep's Optuna study lives: a journal file, or a database for sites that have one.

``searcher.storage`` (default: ``optuna_journal.log`` in the experiment folder) is either a journal file
(Optuna's ``JournalFileBackend``: a local or shared folder, not object storage) or a database URL opened as
Optuna's ``RDBStorage``: ``postgresql://user@host/db`` (driver psycopg or psycopg2), ``mysql://user@host/db``
(mysqlclient; ``mysql+pymysql://`` for PyMySQL) or ``sqlite:////absolute/path.db``. A driver restarted on
another machine finds the study there by name, wherever Tune's storage is.

- No password in the URL: Tune pickles the searcher, with its storage, into the experiment folder, and the
  sweep config goes to W&B. PostgreSQL reads it from ``~/.pgpass`` or ``PGPASSWORD``, MySQL from ``~/.my.cnf``.
- A database that does not answer within :data:`CONNECT_TIMEOUT_S`, or whose driver is missing, is one clear
  error before any trial starts.
- Only the sweep's own searcher creates Optuna's tables; reading (reports, export, the dashboard, the check
  before the sweep) creates nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from common.errors import InputError

#: how long connecting to a study database may take before the sweep is refused
CONNECT_TIMEOUT_S = 10
#: the databases (SQLAlchemy backends) a study may live in, with the package their default driver needs
BACKENDS = {"postgresql": "psycopg2 (or postgresql+psycopg://: psycopg)", "mysql": "mysqlclient (or mysql+pymysql://: "
            "pymysql)", "mariadb": "mysqlclient (or mariadb+pymysql://: pymysql)", "sqlite": "none (Python's own)"}
#: drivers known to take ``connect_timeout`` (seconds) when connecting
TIMEOUT_DRIVERS = {"psycopg2", "psycopg", "mysqldb", "pymysql"}


def is_database_url(location: str) -> bool:
    """Whether ``searcher.storage`` names a database (``dialect[+driver]://``) rather than a journal file."""
    scheme = location.split("://", 1)[0] if "://" in location else ""
    return scheme.split("+", 1)[0].lower() in (*BACKENDS, "postgres")


def shown(location: str) -> str:
    """``location`` as printed: a database URL with any password masked."""
    if not is_database_url(location):
        return location
    from sqlalchemy.engine import make_url

    try:
        rendered = make_url(location).render_as_string(hide_password=True)
    except Exception:  # not parseable: show only its scheme
        return location.split("://", 1)[0] + "://..."
    return re.sub(r"(password=)[^&]*", r"\1***", rendered, flags=re.IGNORECASE)


def journal_storage(journal: str | Path) -> JournalStorage:
    """The Optuna storage in a journal file (safe for several writers, NFS included); creates its folder."""
    Path(journal).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(journal)))


def database_problem(url: str) -> str | None:
    """What is wrong with ``url`` as the study's database before connecting, or None."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception as err:
        return f"searcher.storage: {shown(url)} is not a database URL ({err})"
    backend = parsed.get_backend_name()
    if backend not in BACKENDS:
        return (f"searcher.storage: {shown(url)}: use one of {', '.join(f'{b}://' for b in BACKENDS)}"
                + (" (postgres:// is spelled postgresql://)" if backend == "postgres" else ""))
    if parsed.password is not None or "password" in parsed.query:
        return (f"searcher.storage: {shown(url)} holds a password, which the experiment's saved state and W&B "
                "would keep; leave it out (PostgreSQL reads ~/.pgpass or PGPASSWORD, MySQL ~/.my.cnf)")
    if backend == "sqlite" and parsed.database and not Path(parsed.database).is_absolute():
        return (f"searcher.storage: {url} is relative to wherever the driver runs (under ray job submit, a temporary "
                "copy); give an absolute path: sqlite:////abs/path.db")
    return None


def engine_args(url: str) -> dict:
    """SQLAlchemy engine arguments for the study database: a connect timeout where its driver takes one."""
    from sqlalchemy.engine import make_url

    driver = make_url(url).get_driver_name()
    return {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S} if driver in TIMEOUT_DRIVERS else {},
            "pool_pre_ping": True}


def unusable(url: str, err: Exception) -> InputError:
    """The one error for a study database that cannot be used, naming why (its password masked)."""
    from sqlalchemy.engine import make_url

    if isinstance(err, ImportError):
        return InputError(f"searcher.storage: {shown(url)} needs its database driver, which this environment lacks: "
                          f"pip install {BACKENDS[make_url(url).get_backend_name()]}")
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return InputError(f"searcher.storage: the study database {shown(url)} cannot be used "
                      f"({reason.replace(url, shown(url))}); check that it runs, that this machine reaches it and "
                      "that the user may read it (and create tables, for a new sweep)")


def check_database(url: str) -> None:
    """Connect to the study database and leave it as it was; :class:`InputError` if the URL is refused, its
    driver is missing or it does not answer within :data:`CONNECT_TIMEOUT_S`."""
    from sqlalchemy import create_engine, text

    if problem := database_problem(url):
        raise InputError(problem)
    try:
        engine = create_engine(url, **engine_args(url))
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as err:  # ImportError (driver), SQLAlchemy's OperationalError and kin
        raise unusable(url, err) from err


def database_storage(url: str, *, create_tables: bool = False) -> RDBStorage:
    """Optuna's storage in the database at ``url``; Optuna's tables are made only with ``create_tables`` (the
    sweep's searcher): a database without them is then refused as holding no study."""
    check_database(url)
    try:
        return RDBStorage(url, engine_kwargs=engine_args(url), skip_table_creation=not create_tables)
    except Exception as err:
        if create_tables:
            raise unusable(url, err) from err
        raise InputError(f"searcher.storage: the database {shown(url)} holds no Optuna study (no sweep has written "
                         "one there yet)") from err


def open_storage(location: str | Path, *, create: bool = False) -> BaseStorage:
    """The Optuna storage at ``location``: a database URL or a journal file. ``create``: the sweep's own
    searcher, which may create Optuna's tables in a new database."""
    location = str(location)
    if is_database_url(location):
        return database_storage(location, create_tables=create)
    return journal_storage(location)
