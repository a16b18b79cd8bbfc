"""A ``Source`` over a MySQL / MariaDB binary log: row events become the engine's changes.

One replication connection (``mysql-replication``'s ``BinLogStreamReader``) reads the
binary log for every watched table of one schema, in a thread of its own, so the event
loop never waits on a socket. The thread hands each committed transaction over whole; the
engine's task turns its rows into MongoDB-shaped raw changes (the ``streaming.source``
format): insert / update / delete, keyed by the primary key, with the row's before image
as ``fullDocumentBeforeChange``, so an update's diff is exactly before → after.

Positions are MariaDB GTIDs (``0-1-42``; a list when there are several domains) or, on
MySQL, binlog file + offset, always at a transaction's end, and saved only after its rows
were handed off (at-least-once, like resume tokens). A position the server no longer has
(binlog purged, server rebuilt) is history lost: the source reopens from now and every
subscriber resyncs. DDL on a watched table (ALTER, TRUNCATE, DROP, RENAME) is a resync of
that table: the binlog says nothing about the rows it changed.

The server needs ``log_bin``, ``binlog_format=ROW``, ``binlog_row_image=FULL`` and
``binlog_row_metadata=FULL``; ``start()`` says which one is missing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
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

from streaming.backoff import Backoff
from streaming.breaker import CircuitBreaker
from streaming.errors import BreakerOpenError, HistoryLost, StreamingError
from streaming.tasks import cancel
from streaming.types import Document
from streaming.watcher import (
    ChangeHandler,
    CheckpointStore,
    LostHandler,
    WatcherState,
    WatcherStats,
    wait_open,
)

logger = logging.getLogger("streaming.mysql")

# ER_MASTER_FATAL_ERROR_READING_BINLOG: the position asked for is not in the server's
# binary logs (purged, or a server that never had it).
HISTORY_LOST_ERRORS = frozenset({1236})
# Client-side connection errors (CR_*) and server shutdown: the database is unreachable.
UNAVAILABLE_ERRORS = frozenset({2002, 2003, 2006, 2013, 2055, 1053, 1077, 1927})
_DDL = re.compile(r"^\s*(?:/\*.*?\*/\s*)*(ALTER|DROP|TRUNCATE|RENAME|CREATE)\b", re.I | re.S)
_REQUIRED = (("log_bin", "ON"), ("binlog_format", "ROW"), ("binlog_row_image", "FULL"),
             ("binlog_row_metadata", "FULL"))


class SourceError(StreamingError):
    """The server cannot feed a binlog source (a setting, a table without a primary key)."""


# ---- tables and their rows ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Column:
    """One column and how its values are made the same from the binlog and from SELECT."""

    name: str
    kind: str  # bool, json, float32, set, datetime, plain

    def convert(self, value: Any) -> Any:
        if value is None:
            return [] if self.kind == "set" else None
        if self.kind == "bool":
            return bool(value)
        if self.kind == "json":
            if isinstance(value, bytes):
                value = value.decode()
            return json.loads(value) if isinstance(value, str) else _text_keys(value)
        if self.kind == "float32":
            return float(f"{value:.7g}")  # FLOAT holds 7 significant digits
        if self.kind == "set":
            members = value if isinstance(value, set) else str(value).split(",")
            return sorted(part for part in members if part)
        if self.kind == "datetime" and isinstance(value, dt.datetime) and value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)  # sessions run in UTC; the binlog is UTC
        return value


def _text_keys(value: Any) -> Any:
    # MySQL's binary JSON may come back with bytes keys and strings.
    if isinstance(value, dict):
        return {(k.decode() if isinstance(k, bytes) else k): _text_keys(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_text_keys(v) for v in value]
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True, slots=True)
class Table:
    """A watched table: its collection name, columns and primary key."""

    name: str
    collection: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    converted: tuple[Column, ...] = ()  # the columns whose values need converting

    def row(self, values: Mapping[str, Any]) -> Document:
        """A row as the engine's document (column name → value, converted)."""
        doc = dict(values)
        for column in self.converted:
            if column.name in doc:
                doc[column.name] = column.convert(doc[column.name])
        return doc

    def key(self, doc: Document) -> Any:
        """The primary key's value (a tuple when the key has several columns)."""
        if len(self.primary_key) == 1:
            return doc.get(self.primary_key[0])
        return tuple(doc.get(name) for name in self.primary_key)


def _column_kind(data_type: str, column_type: str, json_columns: set[str], name: str) -> str:
    if data_type == "json" or name in json_columns:
        return "json"
    if column_type.startswith("tinyint(1)"):
        return "bool"
    if data_type == "float":
        return "float32"
    if data_type == "set":
        return "set"
    if data_type in ("datetime", "timestamp"):
        return "datetime"
    return "plain"


def read_tables(conn: Any, schema: str, names: Mapping[str, str]) -> dict[str, Table]:
    """Each watched table's columns and primary key, from information_schema."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, COLUMN_KEY "
            "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s "
            "ORDER BY TABLE_NAME, ORDINAL_POSITION", (schema,))
        rows = cur.fetchall()
        json_columns: dict[str, set[str]] = collections.defaultdict(set)
        with contextlib.suppress(pymysql.err.Error):  # MariaDB: JSON is a checked LONGTEXT
            cur.execute(
                "SELECT TABLE_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
                "WHERE CONSTRAINT_SCHEMA = %s", (schema,))
            for table, clause in cur.fetchall():
                found = re.fullmatch(r"\s*json_valid\(`([^`]+)`\)\s*", str(clause), re.I)
                if found:
                    json_columns[table].add(found.group(1))
        cur.execute(
            "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE "
            "WHERE TABLE_SCHEMA = %s AND CONSTRAINT_NAME = 'PRIMARY' "
            "ORDER BY TABLE_NAME, ORDINAL_POSITION", (schema,))
        keys: dict[str, list[str]] = collections.defaultdict(list)
        for table, column in cur.fetchall():
            keys[table].append(column)
    columns: dict[str, list[Column]] = collections.defaultdict(list)
    for table, column, data_type, column_type, _ in rows:
        if table in names:
            kind = _column_kind(str(data_type).lower(), str(column_type).lower(),
                                json_columns[table], column)
            columns[table].append(Column(column, kind))
    tables = {}
    for table, collection in names.items():
        if table not in columns:
            raise SourceError(f"table {schema}.{table} does not exist")
        if not keys[table]:
            raise SourceError(f"table {schema}.{table} has no primary key: its rows cannot be "
                              "told apart (add one to watch it)")
        cols = tuple(columns[table])
        tables[table] = Table(table, collection, cols, tuple(keys[table]),
                              tuple(c for c in cols if c.kind != "plain"))
    return tables


def ddl_tables(query: str, tables: Iterable[str]) -> list[str]:
    """The watched tables a statement may have changed behind the rows' back (DDL)."""
    if not _DDL.match(query):
        return []
    return [t for t in tables if re.search(rf"(?<![\w$])`?{re.escape(t)}`?(?![\w$])", query)]


# ---- positions --------------------------------------------------------------------------------

def gtid_state(text: str | None) -> dict[int, str]:
    """MariaDB's ``0-1-42,1-2-7`` as domain → GTID."""
    state: dict[int, str] = {}
    for part in (text or "").split(","):
        part = part.strip()
        if part:
            state[int(part.split("-", 1)[0])] = part
    return state


def gtid_text(state: Mapping[int, str]) -> str:
    """The ``@slave_connect_state`` spelling of a GTID state."""
    return ",".join(state[d] for d in sorted(state))


# ---- the reader thread ----------------------------------------------------------------------

@dataclass(slots=True)
class _Commit:
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


class _Reader(threading.Thread):
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
        self.items: collections.deque[_Commit | BaseException | str] = collections.deque()
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

    def take(self) -> list[_Commit | BaseException | str]:
        """Everything handed over so far (called on the event loop)."""
        with self.cond:
            items = list(self.items)
            self.items.clear()
            self.scheduled = False
            self.cond.notify_all()
        return items

    def _emit(self, item: _Commit | BaseException | str) -> None:
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
                if _DDL.match(query):
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
        self._emit(_Commit(rows, position, at_ms, ddl or [], query))


# ---- the source -------------------------------------------------------------------------------

class MySQLSource:
    """Watch tables of one MySQL / MariaDB schema through the binary log.

    ``tables``: the table names, or a mapping table → collection name. Positions are saved
    in ``checkpoints`` (any ``CheckpointStore``) under ``binlog:<schema>``.
    """

    kind = "mysql"

    def __init__(self, *, database: str, tables: Iterable[str] | Mapping[str, str],
                 host: str = "127.0.0.1", port: int = 3306, user: str = "root",
                 password: str = "", checkpoints: CheckpointStore | None = None,
                 server_id: int | None = None, heartbeat: float = 1.0,
                 backoff_initial: float = 0.05, backoff_max: float = 5.0,
                 checkpoint_interval: float = 0.25, max_pending: int = 10_000,
                 connect_timeout: float = 5.0, pool_size: int = 4) -> None:
        self.schema = database
        self.names: dict[str, str] = dict(tables) if isinstance(tables, Mapping) \
            else {t: t for t in tables}
        if not self.names:
            raise ValueError("MySQLSource needs at least one table to watch")
        self.collections = tuple(self.names.values())
        self._table_of = {coll: table for table, coll in self.names.items()}
        self.settings: dict[str, Any] = {
            "host": host, "port": port, "user": user, "password": password,
            "connect_timeout": connect_timeout, "read_timeout": max(3 * heartbeat, 5.0),
            "init_command": "SET time_zone = '+00:00'"}
        self.checkpoints = checkpoints
        self.server_id = server_id or random.randint(1 << 20, (1 << 31) - 1)
        self.heartbeat = heartbeat
        self.checkpoint_interval = checkpoint_interval
        self.max_pending = max_pending
        self.pool_size = pool_size
        self._backoff = Backoff(initial=backoff_initial, maximum=backoff_max)
        self.tables: dict[str, Table] = {}
        self.mariadb: bool | None = None
        self.position: dict[str, Any] | None = None
        self.state = WatcherState.STOPPED
        self.reconnects = self.errors = 0
        self.last_error: str | None = None
        self.history_losses: dict[str, int] = dict.fromkeys(self.collections, 0)
        self.last_change_ms: dict[str, int | None] = dict.fromkeys(self.collections)
        self.last_batch = 0
        self._handler: ChangeHandler | None = None
        self._on_lost: LostHandler | None = None
        self.breaker = CircuitBreaker()
        self._idle: list[Any] = []
        self._pool_lock = threading.Lock()
        self._saved: Any = None
        self._saved_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._watching = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._reset_reason: str | None = None
        self._lost_reason: str | None = None
        self._pending: list[_Commit | BaseException | str] = []

    # ---- the Source protocol ---------------------------------------------------------------

    def attach(self, *, handler: ChangeHandler, on_history_lost: LostHandler,
               breaker: CircuitBreaker) -> None:
        self._handler, self._on_lost, self.breaker = handler, on_history_lost, breaker

    async def start(self, *, timeout: float = 15.0) -> None:
        if self._task is not None:
            raise RuntimeError("this binlog source is already running")
        if self.checkpoints is not None:
            self.position = await self.checkpoints.load(self._checkpoint_name)
            self._saved = self.position
        task = self._task = asyncio.create_task(self._run(), name=f"binlog-{self.schema}")
        try:
            await wait_open(task, self._watching, timeout, f"the binlog of {self.schema!r}")
        finally:
            if task.done():  # it failed (a SourceError): stop() has nothing left to end
                self._task = None

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel(task)
        with contextlib.suppress(Exception):
            await self._checkpoint(force=True)
        with self._pool_lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()
        self.state = WatcherState.STOPPED

    def nudge(self, collection: str | None = None) -> None:
        """Nothing to do: the server pushes binlog events as they commit."""

    def wake(self, collection: str) -> None:
        """Nothing to do: the server pushes binlog events as they commit."""

    def writing(self, collection: str) -> None:
        """Nothing to do: the server pushes binlog events as they commit."""

    def reset(self, reason: str) -> None:
        self._reset_reason = reason
        self._wakeup.set()

    def stats(self) -> dict[str, WatcherStats]:
        now_ms = time.time_ns() // 1_000_000
        age = round(time.monotonic() - self._saved_at, 3) if self._saved_at else None
        return {coll: WatcherStats(
            state=self.state.value, mode="binlog", reconnects=self.reconnects,
            history_losses=self.history_losses[coll], errors=self.errors, stalls=0,
            cursor_ends=0, foreign_changes=0, last_error=self.last_error,
            lag_ms=None if (last := self.last_change_ms[coll]) is None else max(0, now_ms - last),
            last_change_at=last, last_batch=self.last_batch, checkpoint_age_s=age)
            for coll in self.collections}

    def is_unavailable(self, exc: BaseException) -> bool:
        if isinstance(exc, pymysql.err.OperationalError | pymysql.err.InterfaceError):
            code = exc.args[0] if exc.args else None
            return code in UNAVAILABLE_ERRORS or not isinstance(code, int) or code >= 2000
        return isinstance(exc, OSError | TimeoutError)

    def key_of(self, collection: str, doc: Document) -> Any:
        table = self.tables.get(self._table_of[collection])
        if table is None:
            raise RuntimeError("the binlog source has not read its tables yet (start it, or "
                               "scan or load first)")
        return table.key(doc)

    async def load(self, collection: str, key: Any) -> Document | None:
        table = await self._table(collection)
        values = key if isinstance(key, tuple) else (key,)
        where = " AND ".join(f"`{c}` = %s" for c in table.primary_key)
        rows = await self._query(f"SELECT * FROM `{self.schema}`.`{table.name}` WHERE {where}",
                                 values)
        return table.row(rows[0]) if rows else None

    async def scan(self, collection: str) -> list[Document]:
        table = await self._table(collection)
        rows = await self._query(f"SELECT * FROM `{self.schema}`.`{table.name}`", ())
        return [table.row(r) for r in rows]

    # ---- reads (a few pooled connections, in threads) --------------------------------------

    async def _table(self, collection: str) -> Table:
        if not self.tables:  # a snapshot before start(): read the tables now
            self.mariadb, self.tables, _ = await asyncio.to_thread(self._inspect)
        return self.tables[self._table_of[collection]]

    def _connect(self) -> Any:
        return pymysql.connect(**self.settings, autocommit=True,
                               cursorclass=pymysql.cursors.DictCursor)

    async def _query(self, sql: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._run_query, sql, args)

    def _run_query(self, sql: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
        with self._pool_lock:
            conn = self._idle.pop() if self._idle else None
        pooled = conn is not None
        while True:
            if conn is None:
                conn = self._connect()
            try:
                with conn.cursor() as cur:
                    cur.execute(sql, args)
                    rows = list(cur.fetchall())
                break
            except Exception as exc:
                with contextlib.suppress(Exception):
                    conn.close()
                conn = None
                if not (pooled and self.is_unavailable(exc)):
                    raise
                pooled = False  # an idle connection the server dropped: once more, fresh
        with self._pool_lock:
            if len(self._idle) < self.pool_size:
                self._idle.append(conn)
                conn = None
        if conn is not None:
            conn.close()
        return rows

    # ---- opening ---------------------------------------------------------------------------

    @property
    def _checkpoint_name(self) -> str:
        return f"binlog:{self.schema}"

    def _inspect(self) -> tuple[bool, dict[str, Table], dict[str, Any]]:
        """Check the server's settings; read the tables and the current position."""
        conn = pymysql.connect(**self.settings, autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT VERSION()")
                mariadb = "mariadb" in str(cur.fetchone()[0]).lower()
                for name, wanted in _REQUIRED:
                    cur.execute(f"SELECT @@GLOBAL.{name}")
                    value = str(cur.fetchone()[0]).upper()
                    if value not in (wanted, "1" if wanted == "ON" else wanted):
                        raise SourceError(f"the server has {name}={value}; a binlog source needs "
                                          f"{name}={wanted}")
                if mariadb:
                    cur.execute("SELECT @@GLOBAL.gtid_binlog_pos")
                    now: dict[str, Any] = {"gtid": str(cur.fetchone()[0] or "")}
                else:
                    try:
                        cur.execute("SHOW BINARY LOG STATUS")  # MySQL 8.2 and later
                    except pymysql.err.ProgrammingError:
                        cur.execute("SHOW MASTER STATUS")
                    status = cur.fetchone()
                    if status is None:
                        raise SourceError("the server's binary log is off (SHOW MASTER STATUS "
                                          "is empty)")
                    now = {"file": status[0], "pos": int(status[1])}
            return mariadb, read_tables(conn, self.schema, self.names), now
        finally:
            conn.close()

    async def _open(self) -> _Reader:
        mariadb, tables, now = await asyncio.to_thread(self._inspect)
        self.mariadb, self.tables = mariadb, tables
        position = self.position
        if position is None or ("gtid" in position) != mariadb:
            position = now  # nothing stored (or another kind of server): from now
        self.position = position
        loop = asyncio.get_running_loop()
        reader = _Reader(settings=self.settings, schema=self.schema, tables=list(self.names),
                         position=position, mariadb=mariadb, server_id=self.server_id,
                         heartbeat=self.heartbeat, max_pending=self.max_pending, loop=loop,
                         wake=self._wakeup.set)
        reader.start()
        try:
            while True:  # until the server answered the dump: its first event, or an error
                await self._wakeup.wait()
                self._wakeup.clear()
                items = reader.take()
                if items and items[0] == "open":
                    self._pending = items[1:]
                    return reader
                for item in items:
                    if isinstance(item, BaseException):
                        raise item
                if not reader.is_alive():
                    raise ConnectionError("the binlog reader ended before the stream opened")
        except BaseException:  # an error, or stop() while opening: no reader is left behind
            reader.stop()
            await asyncio.shield(asyncio.to_thread(reader.join, 5.0))
            raise

    # ---- the loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        first = True
        while True:
            reader: _Reader | None = None
            try:
                self.state = WatcherState.CONNECTING
                reader = await self.breaker.call(self._open)
                self._backoff.reset()
                self.state = WatcherState.WATCHING
                self._watching.set()
                first = False
                if self._lost_reason is not None:
                    reason, self._lost_reason = self._lost_reason, None
                    for coll in self.collections:
                        self._announce_lost(coll, reason)
                await self._consume(reader)
            except asyncio.CancelledError:
                raise
            except SourceError as exc:
                if first:
                    raise  # a setting or a table is wrong: start() says so
                self._failed(exc)
                await asyncio.sleep(self._backoff.next_delay())
            except Exception as exc:
                if _history_lost(exc):
                    self._lose_history(str(exc))
                    continue
                self._failed(exc)
                await asyncio.sleep(self._backoff.next_delay())
            finally:
                if reader is not None:
                    reader.stop()
                    await asyncio.to_thread(reader.join, 5.0)

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        self.reconnects += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.state = WatcherState.BACKOFF
        if isinstance(exc, BreakerOpenError) or self.is_unavailable(exc):
            logger.info("binlog of %s: %s; reopening", self.schema, self.last_error)
        else:
            logger.warning("binlog of %s: %s; reopening", self.schema, self.last_error)

    def _lose_history(self, reason: str) -> None:
        logger.warning("binlog history of %s lost (%s); subscribers resync", self.schema, reason)
        self.position = None
        self._lost_reason = reason  # announced once the fresh stream is open

    def _announce_lost(self, collection: str, reason: str) -> None:
        self.history_losses[collection] += 1
        assert self._on_lost is not None
        self._on_lost(collection, reason)

    async def _consume(self, reader: _Reader) -> None:
        items, self._pending = self._pending, []
        while True:
            for item in items:
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, _Commit):
                    await self._apply(item)
            if self._reset_reason is not None:
                reason, self._reset_reason = self._reset_reason, None
                raise HistoryLost(reason)
            await self._checkpoint()
            if not reader.is_alive() and not reader.items:
                raise ConnectionError("the binlog reader stopped")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.checkpoint_interval)
            self._wakeup.clear()
            items = reader.take()

    async def _apply(self, commit: _Commit) -> None:
        assert self._handler is not None
        handler = self._handler
        wall = dt.datetime.fromtimestamp(commit.at_ms / 1000, dt.UTC)
        self.last_batch = len(commit.rows)
        for op, name, before_row, after_row in commit.rows:
            table = self.tables[name]
            before = table.row(before_row) if before_row is not None else None
            after = table.row(after_row) if after_row is not None else None
            key = table.key(after if after is not None else before)  # type: ignore[arg-type]
            if before is not None and after is not None and (old := table.key(before)) != key:
                # The primary key changed: to a keyed view that is one row leaving, another
                # arriving.
                self._hand(handler, table, "delete", old, before, None, wall, commit)
                self._hand(handler, table, "insert", key, None, after, wall, commit)
            else:
                self._hand(handler, table, op, key, before, after, wall, commit)
        self.position = commit.position
        if commit.ddl:
            # The table's shape or rows changed without row events: read it again, then
            # its subscribers reload (the stream goes on).
            _, self.tables, _ = await asyncio.to_thread(self._inspect)
            for name in commit.ddl:
                self._announce_lost(self.names[name],
                                    f"DDL on {self.schema}.{name}: {commit.query[:200]}")

    def _hand(self, handler: ChangeHandler, table: Table, op: str, key: Any,
              before: Document | None, after: Document | None, wall: dt.datetime,
              commit: _Commit) -> None:
        raw: Document = {"operationType": op, "documentKey": {"_id": key},
                         "fullDocument": after, "fullDocumentBeforeChange": before,
                         "wallTime": wall, "_id": commit.position}
        at = handler(table.collection, raw)
        if at is not None:
            self.last_change_ms[table.collection] = at

    async def _checkpoint(self, *, force: bool = False) -> None:
        position = self.position
        if self.checkpoints is None or position is None or position == self._saved:
            return
        now = time.monotonic()
        if not force and now - self._saved_at < self.checkpoint_interval:
            return
        await self.checkpoints.save(self._checkpoint_name, position)
        self._saved, self._saved_at = position, now


class MySQLCheckpoints:
    """Positions kept in a table of the watched server (``CheckpointStore``), so a MySQL-only
    deployment needs no other store. The table is created on first use; its own writes are
    in the binlog too, but a source never watches it."""

    def __init__(self, *, database: str, table: str = "stream_checkpoints",
                 host: str = "127.0.0.1", port: int = 3306, user: str = "root",
                 password: str = "", connect_timeout: float = 5.0) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_$]+", table) or not re.fullmatch(r"[A-Za-z0-9_$]+", database):
            raise ValueError("MySQLCheckpoints: database and table names are letters, digits, _ and $")
        self.name = f"`{database}`.`{table}`"
        self.settings: dict[str, Any] = {"host": host, "port": port, "user": user,
                                         "password": password, "connect_timeout": connect_timeout,
                                         "autocommit": True}
        self._created = False

    def _run(self, sql: str, args: tuple[Any, ...]) -> Any:
        conn = pymysql.connect(**self.settings)
        try:
            with conn.cursor() as cur:
                if not self._created:
                    cur.execute(f"CREATE TABLE IF NOT EXISTS {self.name} (name VARCHAR(191) "
                                "PRIMARY KEY, position JSON NOT NULL, saved_at DATETIME(3) NOT NULL)")
                    self._created = True
                cur.execute(sql, args)
                return cur.fetchone()
        finally:
            conn.close()

    async def load(self, collection: str) -> Any | None:
        row = await asyncio.to_thread(self._run, f"SELECT position FROM {self.name} WHERE name = %s",
                                      (collection,))
        return json.loads(row[0]) if row else None

    async def save(self, collection: str, token: Any) -> None:
        await asyncio.to_thread(
            self._run, f"INSERT INTO {self.name} (name, position, saved_at) VALUES (%s, %s, "
                       "UTC_TIMESTAMP(3)) ON DUPLICATE KEY UPDATE position = VALUES(position), "
                       "saved_at = VALUES(saved_at)", (collection, json.dumps(token)))


def _history_lost(exc: BaseException) -> bool:
    if isinstance(exc, HistoryLost):
        return True
    return isinstance(exc, pymysql.err.OperationalError | pymysql.err.InternalError) and \
        bool(exc.args) and exc.args[0] in HISTORY_LOST_ERRORS


__all__ = ["Column", "MySQLCheckpoints", "MySQLSource", "SourceError", "Table", "ddl_tables",
           "read_tables"]
