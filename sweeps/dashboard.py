"""The sweep's Optuna study in optuna-dashboard, read-only: ``python -m sweeps.dashboard EXPERIMENT_DIR``.

Serves the sweep's study, from its journal (``<experiment dir>/optuna_journal.log``) or from what ``--journal``
names (a sweep whose ``searcher.storage`` is another file or a database) with optuna-dashboard (an optional extra:
``pip install -e ".[dashboard]"``) on 127.0.0.1, prints the study's URL and serves until Ctrl-C. It can be
opened while the sweep runs: the page follows the study.

Read-only: optuna-dashboard can also rename or delete studies, finish trials and write notes, which would
change the sweep's own record of its trials; this command answers every request that would write (any
method but GET and HEAD) with 405 and leaves the study as the sweep wrote it. Another host than loopback
is refused unless ``--allow-remote`` (whoever reaches the port reads the study); from another machine, an
SSH tunnel (``ssh -L 8080:127.0.0.1:8080 head``) keeps it on loopback.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from common.errors import InputError, run_cli
from common.paths import is_uri, last_part
from sweeps.config import JOURNAL_FILE, default_journal
from sweeps.study_storage import is_database_url, open_storage, shown

WSGIApp = Callable[[dict, Callable[..., Any]], Iterable[bytes]]
READ_METHODS = ("GET", "HEAD")


def read_only(app: WSGIApp) -> WSGIApp:
    """``app`` answering only requests that read (GET, HEAD); any other gets 405 and never reaches it."""

    def guarded(environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD", "GET") not in READ_METHODS:
            start_response("405 Method Not Allowed", [("Content-Type", "text/plain; charset=utf-8"),
                                                      ("Allow", ", ".join(READ_METHODS))])
            return [b"read-only: python -m sweeps.dashboard shows the sweep's study and never changes it\n"]
        return app(environ, start_response)

    return guarded


def study_app(storage_location: str, fallback_name: str) -> tuple[WSGIApp, str, int]:
    """The read-only dashboard of a journal file's or database's studies, and the sweep's study there (its
    only one, else the one named ``fallback_name``, the experiment folder's): its name and id (its page)."""
    try:
        from optuna_dashboard import wsgi
    except ImportError as err:
        raise InputError('optuna-dashboard is not installed: it is an optional extra, pip install -e ".[dashboard]" '
                         "in this project's environment") from err
    storage = open_storage(storage_location)
    studies = storage.get_all_studies()
    if not studies:
        raise InputError(f"{shown(storage_location)}: no Optuna study there yet (the sweep creates it when it starts)")
    names = [s.study_name for s in studies]
    name = names[0] if len(names) == 1 else fallback_name
    if name not in names:
        raise InputError(f"{shown(storage_location)} holds the studies {names}, none named {name!r} (the "
                         "experiment folder's name): is EXPERIMENT_DIR that sweep's?")
    return read_only(wsgi(storage)), name, storage.get_study_id_from_name(name)


class QuietHandler(WSGIRequestHandler):
    """No line per request on the console (the page polls the study every few seconds)."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(app: WSGIApp, host: str, port: int) -> WSGIServer:
    """A server for ``app`` on ``host:port`` (port 0: a free one); call ``serve_forever`` / ``shutdown``."""
    try:
        return make_server(host, port, app, handler_class=QuietHandler)
    except OSError as err:
        raise InputError(f"--host {host} --port {port}: cannot listen there ({err.strerror}); pick another "
                         "--port") from err


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine's loopback interface only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_journal(experiment_dir: str, journal: str | None) -> str:
    """The study storage to serve: ``--journal`` (a file or database URL), else the experiment's journal;
    refuses a journal file that does not exist."""
    if journal and is_database_url(journal):
        return journal
    if journal is None and is_uri(experiment_dir):
        raise InputError(f"{experiment_dir}: a sweep on object storage keeps its Optuna journal where its "
                         "searcher.storage says; pass that file with --journal")
    path = Path(journal or default_journal(experiment_dir))
    if not path.is_file():
        raise InputError(f"no Optuna journal at {path}: pass the sweep's experiment folder "
                         f"(<storage_path>/<name>, holding {JOURNAL_FILE}) or the journal with --journal")
    return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment_dir", help="the sweep's experiment folder (<storage_path>/<name>)")
    parser.add_argument("--journal", help=f"the Optuna journal or database URL (searcher.storage; default "
                                          f"<experiment_dir>/{JOURNAL_FILE})")
    parser.add_argument("--host", default="127.0.0.1", help="the interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="the port (default 8080; 0: a free one)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="listen on a --host other than loopback (whoever reaches the port reads the study)")
    args = parser.parse_args(argv)
    if not is_loopback(args.host) and not args.allow_remote:
        raise InputError(f"--host {args.host}: the dashboard listens on loopback only, so that no one else reads "
                         "the study; from another machine use an SSH tunnel (ssh -L 8080:127.0.0.1:8080 HOST), "
                         "or add --allow-remote")
    app, name, study_id = study_app(resolve_journal(args.experiment_dir, args.journal), last_part(args.experiment_dir))
    server = serve(app, args.host, args.port)
    host, port = server.server_address[:2]
    url_host = f"[{host}]" if ":" in host else host
    print(f"study {name} (read-only): http://{url_host}:{port}/dashboard/studies/{study_id}  (Ctrl-C stops it)",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("dashboard stopped", flush=True)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
