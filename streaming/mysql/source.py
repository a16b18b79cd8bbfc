"""``MySQLSource``: the engine's ``Source`` over one schema's binlog: opening and
reopening the reader, turning its transactions into raw changes, saving positions."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import pymysql
import pymysql.cursors

from streaming.backoff import Backoff
from streaming.breaker import CircuitBreaker
from streaming.errors import BreakerOpenError, HistoryLost
from streaming.mysql.positions import history_lost
from streaming.mysql.reader import Commit, Reader
from streaming.mysql.schema import REQUIRED, UNAVAILABLE_ERRORS, SourceError, Table, read_tables
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
        self._pending: list[Commit | BaseException | str] = []

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
                for name, wanted in REQUIRED:
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

    async def _open(self) -> Reader:
        mariadb, tables, now = await asyncio.to_thread(self._inspect)
        self.mariadb, self.tables = mariadb, tables
        position = self.position
        if position is None or ("gtid" in position) != mariadb:
            position = now  # nothing stored (or another kind of server): from now
        self.position = position
        loop = asyncio.get_running_loop()
        reader = Reader(settings=self.settings, schema=self.schema, tables=list(self.names),
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
            reader: Reader | None = None
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
                if history_lost(exc):
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

    async def _consume(self, reader: Reader) -> None:
        items, self._pending = self._pending, []
        while True:
            for item in items:
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, Commit):
                    await self._apply(item)
            if self._reset_reason is not None:
                reason, self._reset_reason = self._reset_reason, None
                raise HistoryLost(reason)
            await self._checkpoint()
            if not reader.is_alive() and not reader.items:
                raise ConnectionError("the binlog reader stopped")
            with contextlib.suppress(TimeoutError):  # not wait_for: see CollectionWatcher
                async with asyncio.timeout(self.checkpoint_interval):
                    await self._wakeup.wait()
            self._wakeup.clear()
            items = reader.take()

    async def _apply(self, commit: Commit) -> None:
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
              commit: Commit) -> None:
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
