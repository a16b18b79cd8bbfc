"""Child-process entry for the embedded NX-27017 server.

Runs ``nx_27017`` in this process with its per-command INFO logging turned
down (it logs every command, which costs latency) and asks the kernel to
stop it when the parent dies, so a ``kill -9`` of ChangeCast leaves no orphan.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent's cleanup still applies
        pass
    # The parent may have died before prctl took effect.
    expected = os.environ.get("CHANGECAST_PARENT_PID")
    if expected and int(expected) != os.getppid():
        sys.exit(0)


def _watch_parent(parent: int) -> None:
    """Backstop for PDEATHSIG: its SIGTERM asks NX-27017 for a clean stop, which it does not
    always finish (seen under load). Once orphaned, give it 3 s, then end the process
    (SQLite's journal makes that safe)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    time.sleep(3)
    os._exit(0)


def _listen_on_unix_socket(path: str) -> None:
    """Make NX-27017 listen on a Unix socket instead of TCP (it has no option for it, nor for
    authentication): the socket is mode 600 in a directory of mode 700, so only this user's
    processes can reach the database, where a loopback port is open to every local account."""
    start_unix_server = asyncio.start_unix_server

    async def start_server(client_connected_cb: Any, host: Any = None, port: Any = None,
                           **kwargs: Any) -> asyncio.AbstractServer:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return await start_unix_server(client_connected_cb, path=path, **kwargs)

    asyncio.start_server = start_server  # type: ignore[assignment]


def _apply_updates_once() -> None:
    """Make NeoSQLite (NX-27017's storage) apply an update at most once.

    Its fast update path runs the UPDATE and then checks it, and on any error falls back
    to a second path that applies the update again, ``$inc`` and ``$set`` but not
    ``$push``. So an update that was applied but then reported an error moved stock twice
    and marked it once (seen under two pipeline instances, one stopping), and one that
    failed before its UPDATE lost its ``$push``. Here, when the fast path fails, the
    document is read: if it is no longer the one the update started from, the update was
    applied (the database's lock is held: no other command ran) and that document is
    the answer; if it is, the full (Python) path applies the whole update, once."""
    from neosqlite.collection.jsonb_support import (  # type: ignore[import-untyped]
        json_data_column,
    )
    from neosqlite.collection.query_helper._sql_updates import (  # type: ignore[import-untyped]
        SqlUpdatesMixin,
    )
    from neosqlite.sql_utils import quote_table_name  # type: ignore[import-untyped]

    fast = SqlUpdatesMixin._perform_enhanced_sql_update
    log = logging.getLogger("changecast.nxserver")

    def once(self: Any, doc_id: Any, update_spec: Any, original_doc: Any = None) -> Any:
        try:
            return fast(self, doc_id, update_spec, original_doc)
        except Exception as exc:
            if original_doc is None:
                raise
            row = self.collection.db.execute(
                f"SELECT id, {json_data_column(self.jsonb.jsonb_supported)} AS data FROM "
                f"{quote_table_name(self.collection.name)} WHERE id = ?",
                (self._get_integer_id_for_oid(doc_id),)).fetchone()
            current = self.collection._load(row[0], row[1]) if row else None
            if current is None:
                raise
            if current == original_doc:  # not applied: the full path, once
                return self._perform_python_update(doc_id, update_spec, original_doc)[0]
            log.warning("update of %s.%s applied although it reported %r; not applied "
                        "again", self.collection.name, doc_id, exc)
            return current

    SqlUpdatesMixin._perform_enhanced_sql_update = once


def _close_streams_under_lock() -> None:
    """When a client's connection ends, NX-27017 closes the change streams it opened and
    prunes their change table: on its event-loop thread, without the database's lock that
    every command holds, so on the same SQLite connection as the command a worker thread
    may be running at that moment. Here that cleanup takes the database's lock first. (A
    ``kill -9`` of one instance was followed by the server answering nothing at all.)"""
    from nx_27017.handler import NeoSQLiteHandler  # type: ignore[import-untyped]

    close = NeoSQLiteHandler.close_streams_for_connection

    def locked(self: Any, conn_id: Any) -> None:
        manager = self._change_stream_manager
        with manager._lock:
            names = sorted({stream.db_name for stream in manager._streams.values()
                            if stream._owner == conn_id})
        with contextlib.ExitStack() as held:
            for name in names:  # as a command does: this database's lock, then the rest
                held.enter_context(self._lock_for(name))
            close(self, conn_id)

    NeoSQLiteHandler.close_streams_for_connection = locked


# How often, at most, a collection's change table is pruned while its streams advance.
PRUNE_EVERY_S = 0.5


def _prune_at_most_every(interval_s: float = PRUNE_EVERY_S,
                         clock: Callable[[], float] = time.monotonic) -> None:
    """Make NX-27017 prune a collection's change table at most every ``interval_s``, and
    only once its streams have moved on since the last prune.

    It prunes after every change-stream read, empty or not, and each prune is a delete
    that walks the table (it has no index by collection) to keep the newest 1,000 rows:
    under the pipeline's load that was a fifth of the time its database's lock was held,
    and idle it was most of what the server did. Deferring a prune deletes nothing it
    would not have deleted, only later: the newest 1,000 rows of each collection are
    kept as before, and a few hundred milliseconds' worth more at most."""
    from nx_27017.changestream import ChangeStreamManager  # type: ignore[import-untyped]

    prune = ChangeStreamManager._prune
    last: dict[tuple[int, str, str], tuple[int, float]] = {}

    def deferred(self: Any, db_name: str, collection_name: str) -> None:
        with self._lock:
            marks = [stream._watermark for stream in self._streams.values()
                     if not stream._closed and stream.db_name == db_name
                     and stream.collection_name == collection_name]
        if not marks:
            return
        floor, now, key = min(marks), clock(), (id(self), db_name, collection_name)
        pruned = last.get(key)
        if pruned is not None and (floor <= pruned[0] or now - pruned[1] < interval_s):
            return
        last[key] = (floor, now)
        prune(self, db_name, collection_name)

    ChangeStreamManager._prune = deferred


def main() -> None:
    """Start NX-27017 with the arguments given on the command line (and ``--unix-socket
    PATH``, which is ours)."""
    _die_with_parent()
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True,
                     name="parent-watch").start()
    # Every file it creates (databases, journals, logs, the socket) is this user's alone.
    os.umask(0o077)
    logging.getLogger("nx_27017").setLevel(logging.WARNING)
    args = sys.argv[1:]
    if "--unix-socket" in args:
        at = args.index("--unix-socket")
        _listen_on_unix_socket(args[at + 1])
        del args[at:at + 2]
    _apply_updates_once()
    _close_streams_under_lock()
    _prune_at_most_every()
    from nx_27017.nx_27017 import main as nx_main  # type: ignore[import-untyped]

    sys.argv[:] = ["nx-27017", *args]
    nx_main()


if __name__ == "__main__":
    main()
