"""Where the sweep's Optuna study lives: a journal file, or a database for sites that have one.

``searcher.storage`` (default: ``optuna_journal.log`` in the experiment folder) is either a journal file
(Optuna's ``JournalFileBackend``: a local or shared folder, not object storage) or an SQLAlchemy database URL
(``postgresql://user@host/db``, ``mysql+pymysql://...``, ``sqlite:////abs/path.db``) opened as Optuna's
``RDBStorage``: a driver restarted on another machine finds the study there by name, wherever Tune's
storage is. A database that does not answer is refused in :data:`CONNECT_TIMEOUT_S` with one clear error, before
any trial starts.
"""

from __future__ import annotations

import re
from pathlib import Path

from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from common.errors import InputError

#: how long connecting to a study database may take before the sweep is refused
CONNECT_TIMEOUT_S = 10
#: an SQLAlchemy URL's scheme: ``dialect`` or ``dialect+driver``
DATABASE_URL = re.compile(r"^(sqlite|postgres|postgresql|mysql|mariadb|mssql|oracle)(\+\w+)?://", re.IGNORECASE)


def is_database_url(location: str) -> bool:
    """Whether ``searcher.storage`` names a database (an SQLAlchemy URL) rather than a journal file."""
    return bool(DATABASE_URL.match(location))


def shown(url: str) -> str:
    """``url`` without its password, for messages and the console."""
    return re.sub(r"(://[^:/@]+):[^/]*@", r"\1:***@", url)


def journal_storage(journal: str | Path) -> JournalStorage:
    """The Optuna storage in a journal file (safe for several writers, NFS included); creates its folder."""
    Path(journal).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(journal)))


def database_storage(url: str) -> RDBStorage:
    """Optuna's storage in the database at ``url``; :class:`InputError` if it cannot be reached in
    :data:`CONNECT_TIMEOUT_S` or its driver is not installed."""
    dialect = DATABASE_URL.match(url).group(1).lower()
    connect_args = {} if dialect == "sqlite" else {"connect_timeout": CONNECT_TIMEOUT_S}
    try:
        return RDBStorage(url, engine_kwargs={"connect_args": connect_args, "pool_pre_ping": True})
    except ImportError as err:
        raise InputError(f"searcher.storage: {shown(url)} needs a database driver this environment lacks "
                         f"({err.name or err}); install it (postgresql: psycopg, mysql: pymysql) or use a journal "
                         "file") from err
    except Exception as err:  # SQLAlchemy's OperationalError and kin: the database did not answer as one
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"searcher.storage: the study database {shown(url)} cannot be used ({reason}); check "
                         "that it runs and this machine reaches it, or use a journal file") from err


def open_storage(location: str | Path) -> BaseStorage:
    """The Optuna storage at ``location``: a database URL or a journal file."""
    location = str(location)
    return database_storage(location) if is_database_url(location) else journal_storage(location)
