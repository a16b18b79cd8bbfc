"""The binlog connection: a thread that reads row events (blocking) and hands whole
transactions (``Commit``) to the event loop."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pymysql
import pymysql.cursors
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import (
    FormatDescriptionEvent,
    HeartbeatLogEvent,
    MariadbGtidEvent,
    QueryEvent,
    RotateEvent,
    XidEvent,
)
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

from streaming.mysql.positions import gtid_state, gtid_text
from streaming.mysql.schema import DDL, ddl_tables


@dataclass(slots=True)
class Commit:
    rows: list[tuple[str, str, Mapping[str, Any] | None, Mapping[str, Any] | None]]
    position: dict[str, Any]
    at_ms: int
    ddl: list[str] = field(default_factory=list)
    query: str = ""


def _not_its_reconnect(record: logging.LogRecord) -> bool:
    # The library logs that it lost the connection and will reconnect; our reader refuses
    # that reconnect (the source's own loop reopens, counts and backs off) and says so.
    return "Re-request the connection" not in record.getMessage()


logging.getLogger("pymysqlreplication").addFilter(_not_its_reconnect)


class Reader(threading.Thread):
    """Reads the binlog (blocking) and hands whole transactions to the event loop."""

    def __init__(self, *, settings: dict[str, Any], schema: str, tables: list[str],
                 position: dict[str, Any], mariadb: bool, server_id: int, heartbeat: float,
                 max_pending: int, loop: asyncio.AbstractEventLoop,
                 wake: Callable[[], None]) -> None:
        super().__init__(name=f"binlog-{schema}", daemon=True)
        self.settings, self.schema, self.tables = settings, schema, tables
        self.mariadb, self.server_id, self.heartbeat = mariadb, server_id, heartbeat
        self.position = dict(position)
        self.gtids = gtid_state(position.get("gtid")) if mariadb else {}
        self.max_pending = max_pending
        self.loop, self.wake = loop, wake
        self.items: collections.deque[Commit | BaseException | str] = collections.deque()
        self.cond = threading.Condition()
        self.scheduled = False
        self.stopping = False
        self.stream: BinLogStreamReader | None = None
        self.connections = 0

    def _connect(self, **kwargs: Any) -> Any:
        # The library opens the stream's connection, then its control connection; a third
        # call is its own reconnect after a lost connection. The source reopens instead:
        # it counts the reconnect, backs off, reads the tables again and goes through the
        # breaker.
        self.connections += 1
        if self.stopping:
            raise ConnectionAbortedError("the binlog source is stopping")
        if self.connections > 2:
            raise ConnectionResetError("the binlog connection was lost")
        for old, new in (("db", "database"), ("passwd", "password")):  # PyMySQL's names now
            if old in kwargs:
                kwargs[new] = kwargs.pop(old)
        return pymysql.connect(**kwargs)

    def stop(self) -> None:
        """Ask the thread to end; a blocked read ends with the connection's shutdown."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        stream = self.stream
        conn = getattr(stream, "_stream_connection", None) if stream is not None else None
        sock = getattr(conn, "_sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(2)  # SHUT_RDWR: the read returns at once

    def take(self) -> list[Commit | BaseException | str]:
        """Everything handed over so far (called on the event loop)."""
        with self.cond:
            items = list(self.items)
            self.items.clear()
            self.scheduled = False
            self.cond.notify_all()
        return items

    def _emit(self, item: Commit | BaseException | str) -> None:
        with self.cond:
            while len(self.items) >= self.max_pending and not self.stopping:
                self.cond.wait(0.5)  # the engine is behind: stop reading (back-pressure)
            if self.stopping:
                return
            self.items.append(item)
            if self.scheduled:
                return
            self.scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop closed under us
            self.loop.call_soon_threadsafe(self.wake)

    def run(self) -> None:
        kwargs: dict[str, Any] = {}
        if self.mariadb:
            kwargs.update(is_mariadb=True, auto_position=self.position.get("gtid") or "")
        else:
            kwargs.update(log_file=self.position["file"], log_pos=self.position["pos"],
                          resume_stream=True)
        try:
            self.stream = BinLogStreamReader(
                connection_settings=self.settings, server_id=self.server_id, blocking=True,
                only_events=[WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent, QueryEvent,
                             XidEvent, RotateEvent, MariadbGtidEvent, HeartbeatLogEvent,
                             FormatDescriptionEvent],
                only_schemas=[self.schema], only_tables=self.tables,
                # A table map is parsed once per table id, not before every row event (half
                # the library's time per row); _read forgets them whenever a table id could
                # mean something else: a new binlog file (a restart) or any DDL.
                freeze_schema=True,
                slave_heartbeat=self.heartbeat, pymysql_wrapper=self._connect, **kwargs)
            self._read(self.stream)
        except BaseException as exc:  # handed to the engine's task, which decides
            if not self.stopping:
                self._emit(exc)
        finally:
            if self.stream is not None:
                with contextlib.suppress(Exception):
                    self.stream.close()

    def _read(self, stream: BinLogStreamReader) -> None:
        rows: list[tuple[str, str, Mapping[str, Any] | None, Mapping[str, Any] | None]] = []
        gtid: str | None = None
        opened = False
        while not self.stopping:
            event = stream.fetchone()
            if event is None:
                raise ConnectionError("the server ended the binlog stream")
            if not opened:
                opened = True  # the first event of a dump (the server's rotate) is here
                self._emit("open")
            if isinstance(event, FormatDescriptionEvent):
                stream.table_map.clear()  # a binlog file starts: table ids start over
            elif isinstance(event, MariadbGtidEvent):
                rows, gtid = [], event.gtid  # a transaction starts (a retry starts over)
            elif isinstance(event, WriteRowsEvent | UpdateRowsEvent | DeleteRowsEvent):
                if event.schema != self.schema or event.table not in self.tables:
                    continue
                for row in event.rows:
                    if isinstance(event, WriteRowsEvent):
                        rows.append(("insert", event.table, None, row["values"]))
                    elif isinstance(event, DeleteRowsEvent):
                        rows.append(("delete", event.table, row["values"], None))
                    else:
                        rows.append(("update", event.table, row["before_values"],
                                     row["after_values"]))
            elif isinstance(event, XidEvent):
                self._commit(stream, rows, gtid, event.timestamp)
                rows, gtid = [], None
            elif isinstance(event, QueryEvent):
                query = event.query if isinstance(event.query, str) else str(event.query)
                if query.strip().upper() == "BEGIN":
                    rows = []
                    continue
                if DDL.match(query):
                    stream.table_map.clear()  # the next row events map tables afresh
                schema = event.schema.decode() if isinstance(event.schema, bytes) \
                    else str(event.schema or "")
                ddl = ddl_tables(query, self.tables) if schema in ("", self.schema) or \
                    self.schema in query else []
                self._commit(stream, rows, gtid, event.timestamp, ddl=ddl, query=query)
                rows, gtid = [], None

    def _commit(self, stream: BinLogStreamReader, rows: list[Any], gtid: str | None,
                timestamp: int, *, ddl: list[str] | None = None, query: str = "") -> None:
        if self.mariadb:
            if gtid is not None:
                self.gtids[int(gtid.split("-", 1)[0])] = gtid
            text = gtid_text(self.gtids)
            stream.auto_position = text  # the library's own reconnects resume here too
            position: dict[str, Any] = {"gtid": text}
        else:
            position = {"file": stream.log_file, "pos": stream.log_pos}
        if not rows and not ddl and position == self.position:
            return
        self.position = position
        now_ms = time.time_ns() // 1_000_000
        # The binlog keeps whole seconds: the change happened in that second, by the time
        # it reached us at the latest.
        at_ms = min(now_ms, int(timestamp) * 1000 + 999) if timestamp else now_ms
        self._emit(Commit(rows, position, at_ms, ddl or [], query))


# ---- the source -------------------------------------------------------------------------------
