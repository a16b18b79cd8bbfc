"""The engine fed by MariaDB's binary log: the same guarantees as on MongoDB, against a real
``mariadbd`` (concurrent writers, kill -9, a purged binlog, a rebuilt server, DDL)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pymysql
import pytest

from streaming import ChangeEngine, ChangeEvent, MemoryCheckpoints, compile_filter
from streaming.mysql import MySQLCheckpoints, MySQLSource, SourceError
from tests.conftest import free_port
from tests.support.mariadb import MariaDB
from tests.support.views import Counter, SourceView

pytestmark = [pytest.mark.integration]

TABLES = ("orders", "products", "users")
WRITERS = 10
OPS_PER_WRITER = 1_000  # 10 x 1,000 statements: over 10,000 row changes on 3 tables


def create_tables(server: MariaDB, schema: str) -> None:
    server.execute(schema, *(
        f"CREATE TABLE {t} (id VARCHAR(32) PRIMARY KEY, user_id VARCHAR(8) NOT NULL, "
        "v INT NOT NULL, stock INT NOT NULL, tag VARCHAR(8) NULL) ENGINE=InnoDB"
        for t in TABLES))


def own_server(tmp_path: Path, schema: str) -> MariaDB:
    """A server of the test's own (it kills or rebuilds it), with the tables in ``schema``."""
    server = MariaDB(tmp_path / "mariadb", free_port())
    server.start()
    create_schema(server, schema)
    return server


def create_schema(server: MariaDB, schema: str) -> None:
    server.execute(None, f"CREATE DATABASE {schema}")
    create_tables(server, schema)


def source(server: MariaDB, schema: str, **kwargs: Any) -> MySQLSource:
    return MySQLSource(database=schema, tables=TABLES, **server.settings, **kwargs)


def write(server: MariaDB, schema: str, n: int, ops: int) -> int:
    """One writer's statements (in a thread, on its own connection); returns how many row
    changes they made: every statement changes exactly one row, a transaction two."""
    rng = random.Random(n)
    keys: dict[str, list[str]] = {t: [] for t in TABLES}
    changes = 0
    with contextlib.closing(server.connect(schema)) as conn, conn.cursor() as cur:
        for i in range(ops):
            table = TABLES[i % 3]
            mine = keys[table]
            roll = rng.random()
            if len(mine) < 2 or roll < 0.25:
                key = f"w{n:02d}-{table[0]}{i:04d}"
                cur.execute(f"INSERT INTO {table} VALUES (%s, %s, 0, %s, 'a')",
                            (key, f"u{n % 5}", rng.randint(0, 20)))
                mine.append(key)
                changes += 1
            elif roll < 0.30:
                first, second = rng.sample(mine, 2)
                conn.begin()
                cur.execute(f"UPDATE {table} SET v = v + 1, stock = %s WHERE id = %s",
                            (rng.randint(0, 20), first))
                cur.execute(f"UPDATE {table} SET v = v + 1, tag = 'b' WHERE id = %s", (second,))
                conn.commit()
                changes += 2
            elif roll < 0.35:
                key = mine.pop(rng.randrange(len(mine)))
                cur.execute(f"DELETE FROM {table} WHERE id = %s", (key,))
                changes += 1
            else:
                key = rng.choice(mine)
                if roll < 0.75:
                    cur.execute(f"UPDATE {table} SET v = v + 1, stock = %s WHERE id = %s",
                                (rng.randint(0, 20), key))
                elif roll < 0.9:
                    cur.execute(f"UPDATE {table} SET v = v + 1, tag = %s WHERE id = %s",
                                (rng.choice("bcd"), key))
                else:
                    cur.execute(f"UPDATE {table} SET v = v + 1, tag = NULL WHERE id = %s", (key,))
                changes += 1
    return changes


async def converge(views: list[SourceView], engine: ChangeEngine, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    for view in views:
        while (truth := await view.truth()) != view.docs:
            if asyncio.get_running_loop().time() > deadline:
                diff = {k: (view.docs.get(k), truth.get(k)) for k in set(view.docs) | set(truth)
                        if view.docs.get(k) != truth.get(k)}
                raise AssertionError(f"{view.sub_id} did not converge: {list(diff.items())[:5]} "
                                     f"resyncs={view.resyncs} {engine.snapshot()['watchers']}")
            await asyncio.sleep(0.05)


@pytest.mark.timeout(240)
async def test_binlog_concurrent_writers_10000_changes_every_view_exact(
        mariadb_server: MariaDB, schema: str) -> None:
    create_tables(mariadb_server, schema)
    engine = ChangeEngine(source=source(mariadb_server, schema), queue_size=50_000,
                          buffer_size=20_000)
    await engine.start()
    views = [
        SourceView(engine, "orders", "orders"),
        SourceView(engine, "mine", "orders", restriction={"user_id": "u3"}),
        SourceView(engine, "low", "products", where="stock < 5 AND user_id IN ('u1','u2')"),
        SourceView(engine, "users", "users", where="tag = 'b' OR tag IS NULL"),
    ]
    for view in views:
        await view.start()
    events: list[ChangeEvent] = []
    engine.listen(events.append)
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(WRITERS) as pool:
        made = await asyncio.gather(*(
            loop.run_in_executor(pool, write, mariadb_server, schema, n, OPS_PER_WRITER)
            for n in range(WRITERS)))
    total = sum(made)
    assert total >= 10_000
    counter = Counter(total)
    counter.count = len(events)
    engine.listen(counter)
    if counter.count < total:
        await asyncio.wait_for(counter.done.wait(), 60)
    for view in views:
        while len(view.subscriber):
            await asyncio.sleep(0.01)

    snapshot = engine.snapshot()
    assert snapshot["changes_total"] == total
    assert snapshot["dropped"] == 0 and snapshot["resyncs"] == 0
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    for view in views:
        assert view.anomalies == []
        assert len(view.seqs) == len(set(view.seqs)), f"{view.sub_id}: duplicate deliveries"
        assert view.seqs == sorted(view.seqs), f"{view.sub_id}: out of order"
        assert view.docs == await view.truth(), f"{view.sub_id} diverged from the table"
        assert view.docs, f"{view.sub_id} matched nothing: the test proves little"
    # The cache the stream keeps coherent answers like the tables.
    for table in TABLES:
        for row in await engine.source.scan(table):
            assert await engine.get(table, row["id"]) == row
    for view in views:
        await view.stop()
    await engine.stop()


@pytest.mark.timeout(240)
async def test_binlog_survives_kill_9_of_mariadbd(tmp_path: Path) -> None:
    schema = "chaos"
    server = own_server(tmp_path, schema)
    engine = ChangeEngine(source=source(server, schema, backoff_max=0.5,
                                        checkpoints=MemoryCheckpoints()))
    try:
        await engine.start()
        views = [SourceView(engine, "orders", "orders"),
                 SourceView(engine, "mine", "orders", restriction={"user_id": "u1"}),
                 SourceView(engine, "low", "products", where="stock < 10")]
        for view in views:
            await view.start()
        killed = asyncio.Event()
        loop = asyncio.get_running_loop()

        def resilient_writer(n: int) -> None:
            rng = random.Random(n)
            conn = None
            for i in range(120):
                table = TABLES[i % 2]
                key = f"w{n}-{i // 4}"
                for _ in range(600):  # retry through the outage; every statement is idempotent
                    try:
                        if conn is None:
                            conn = server.connect(schema)
                        with conn.cursor() as cur:
                            if i % 4 == 0:
                                cur.execute(f"INSERT IGNORE INTO {table} VALUES (%s, %s, 0, 50, NULL)",
                                            (key, f"u{n % 3}"))
                            else:
                                cur.execute(f"UPDATE {table} SET v = %s, stock = %s WHERE id = %s",
                                            (i, rng.randint(0, 20), key))
                        break
                    except pymysql.err.Error:
                        with contextlib.suppress(Exception):
                            if conn is not None:
                                conn.close()
                        conn = None
                        time.sleep(0.05)
                if n == 0 and i == 60:
                    server.kill()
                    loop.call_soon_threadsafe(killed.set)
            if conn is not None:
                conn.close()

        with ThreadPoolExecutor(8) as pool:
            writers = [loop.run_in_executor(pool, resilient_writer, n) for n in range(8)]
            await killed.wait()
            await asyncio.to_thread(server.start)
            await asyncio.gather(*writers)
        await converge(views, engine)
        stats = engine.snapshot()["watchers"]
        assert all(w["state"] == "watching" for w in stats.values()), stats
        assert stats["orders"]["reconnects"] >= 1, "the kill went unnoticed: the test proves little"
        # The binlog survived the kill: the stream resumed from its position, with nothing
        # lost, so no view needed a reload.
        assert stats["orders"]["history_losses"] == 0
        for view in views:
            assert view.resyncs == 0, view.sub_id
            assert len(view.seqs) == len(set(view.seqs))
            assert view.seqs == sorted(view.seqs)
            await view.stop()
    finally:
        await engine.stop()
        server.kill()


def purge(server: MariaDB) -> None:
    """Every binlog but the newest deleted. MariaDB keeps a file until InnoDB has flushed
    the transactions it holds (its binlog checkpoint, about a second here): ask again until
    the file is gone."""
    deadline = time.monotonic() + 15
    with contextlib.closing(server.connect()) as conn, conn.cursor() as cur:
        while True:
            cur.execute("SHOW BINARY LOGS")
            logs = [row[0] for row in cur.fetchall()]
            if len(logs) == 1:
                return
            assert time.monotonic() < deadline, f"the old binlogs stay: {logs}"
            cur.execute(f"PURGE BINARY LOGS TO '{logs[-1]}'")
            time.sleep(0.1)


@pytest.mark.timeout(120)
async def test_binlog_restart_replays_from_its_position_and_a_purged_binlog_resyncs(
        mariadb_server: MariaDB, schema: str) -> None:
    create_tables(mariadb_server, schema)
    # Kept in the server itself, as a MySQL-only deployment would.
    checkpoints = MySQLCheckpoints(database=schema, **mariadb_server.settings)
    insert = f"INSERT INTO {schema}.orders VALUES (%s, 'u1', 0, 5, NULL)"

    def rows(*keys: str) -> None:
        with contextlib.closing(mariadb_server.connect(schema)) as conn, conn.cursor() as cur:
            for key in keys:
                cur.execute(insert, (key,))

    first = ChangeEngine(source=source(mariadb_server, schema, checkpoints=checkpoints))
    await first.start()
    rows("a1", "a2")
    seen: list[Any] = []
    first.listen(lambda e: seen.append(e.key))
    while len(seen) < 2:
        await asyncio.sleep(0.01)
    await first.stop()
    saved = mariadb_server.rows(schema, "SELECT name, position FROM stream_checkpoints")
    assert [row["name"] for row in saved] == [f"binlog:{schema}"]
    assert json.loads(saved[0]["position"])["gtid"]

    # Down for a while: a restart from the saved position replays exactly what it missed.
    rows("b1", "b2", "b3")
    second = ChangeEngine(source=source(mariadb_server, schema, checkpoints=checkpoints))
    replayed: list[Any] = []
    second.listen(lambda e: replayed.append(e.key))
    await second.start()
    while len(replayed) < 3:
        await asyncio.sleep(0.01)
    await second.stop()
    assert replayed == ["b1", "b2", "b3"]
    assert second.snapshot()["watchers"]["orders"]["history_losses"] == 0

    # Down longer than the binlog is kept: the position is gone, subscribers resync.
    rows("c1", "c2")
    mariadb_server.execute(None, "FLUSH BINARY LOGS")
    purge(mariadb_server)
    third = ChangeEngine(source=source(mariadb_server, schema, checkpoints=checkpoints))
    view = SourceView(third, "orders", "orders")
    await view.start()  # subscribed before the source opens: it must hear of the loss
    await third.start()
    rows("d1")
    await converge([view], third)
    assert view.resyncs == 1
    assert set(view.docs) == {"a1", "a2", "b1", "b2", "b3", "c1", "c2", "d1"}
    assert third.snapshot()["watchers"]["orders"]["history_losses"] == 1
    await view.stop()
    await third.stop()


@pytest.mark.timeout(120)
async def test_binlog_a_rebuilt_server_that_lost_the_position_resyncs(tmp_path: Path) -> None:
    schema = "shop"
    server = own_server(tmp_path, schema)
    engine = ChangeEngine(source=source(server, schema, backoff_max=0.2))
    try:
        await engine.start()
        view = SourceView(engine, "orders", "orders")
        await view.start()
        with contextlib.closing(server.connect(schema)) as conn, conn.cursor() as cur:
            for i in range(30):
                cur.execute("INSERT INTO orders VALUES (%s, 'u1', 0, 5, NULL)", (f"old{i}",))
        await converge([view], engine)
        # The server is rebuilt from nothing: its binlog never had the position we hold.
        server.wipe()
        server.start()
        create_schema(server, schema)
        server.execute(schema, "INSERT INTO orders VALUES ('new', 'u2', 0, 1, NULL)")
        await converge([view], engine)
        assert set(view.docs) == {"new"} and view.resyncs >= 1
        assert engine.snapshot()["watchers"]["orders"]["history_losses"] >= 1
        await view.stop()
    finally:
        await engine.stop()
        server.kill()


@pytest.mark.timeout(60)
async def test_binlog_ddl_on_a_watched_table_resyncs_its_subscribers(
        mariadb_server: MariaDB, schema: str) -> None:
    create_tables(mariadb_server, schema)
    engine = ChangeEngine(source=source(mariadb_server, schema))
    await engine.start()
    orders, products = SourceView(engine, "orders", "orders"), SourceView(engine, "p", "products")
    for view in (orders, products):
        await view.start()
    mariadb_server.execute(schema, "INSERT INTO orders VALUES ('o1', 'u1', 0, 5, NULL)",
                           "INSERT INTO products VALUES ('p1', 'u1', 0, 5, NULL)")
    await converge([orders, products], engine)
    mariadb_server.execute(schema, "ALTER TABLE orders ADD COLUMN note VARCHAR(20) NULL DEFAULT 'x'")
    await converge([orders], engine)
    assert orders.resyncs == 1 and orders.docs["o1"]["note"] == "x"
    # Rows after the DDL are read with the new shape (the old table map is forgotten).
    mariadb_server.execute(schema, "UPDATE orders SET note = 'y', v = 1 WHERE id = 'o1'",
                           "ALTER TABLE orders DROP COLUMN stock",
                           "INSERT INTO orders VALUES ('o2', 'u2', 0, NULL, 'z')")
    await converge([orders], engine)
    assert orders.docs == {"o1": {"id": "o1", "user_id": "u1", "v": 1, "tag": None, "note": "y"},
                           "o2": {"id": "o2", "user_id": "u2", "v": 0, "tag": None, "note": "z"}}
    assert orders.resyncs == 2
    mariadb_server.execute(schema, "TRUNCATE TABLE orders")
    await converge([orders], engine)
    assert orders.resyncs == 3 and orders.docs == {}
    assert products.resyncs == 0  # the other table's subscribers are left alone
    for view in (orders, products):
        await view.stop()
    await engine.stop()


TYPES_TABLE = """CREATE TABLE kinds (
    id INT UNSIGNED PRIMARY KEY, small TINYINT, big BIGINT, flag BOOL, price DECIMAL(10, 2),
    ratio DOUBLE, approx FLOAT, name VARCHAR(40), body TEXT, raw VARBINARY(8), data BLOB,
    meta JSON, day DATE, at DATETIME(3), stamp TIMESTAMP(6) NULL, span TIME, yr YEAR,
    kind ENUM('a', 'b'), tags SET('gift', 'rush', 'fragile'), nothing VARCHAR(5) NULL)"""
TYPES_ROW = """INSERT INTO kinds VALUES (7, -3, 9007199254740993, TRUE, 12.50, 0.1, 1.1,
    'Kettle ☕', 'long text', x'0001ff', x'cafe', '{"a": {"b": [1, 2]}, "s": "x"}',
    '2026-12-01', '2026-12-01 10:11:12.345', '2026-12-01 10:11:12.123456', '-01:02:03', 2026,
    'b', 'rush,gift', NULL)"""
TYPES_DOC = {
    "id": 7, "small": -3, "big": 9007199254740993, "flag": True, "price": Decimal("12.50"),
    "ratio": 0.1, "approx": 1.1, "name": "Kettle ☕", "body": "long text",
    "raw": b"\x00\x01\xff", "data": b"\xca\xfe", "meta": {"a": {"b": [1, 2]}, "s": "x"},
    "day": dt.date(2026, 12, 1), "at": dt.datetime(2026, 12, 1, 10, 11, 12, 345000, dt.UTC),
    "stamp": dt.datetime(2026, 12, 1, 10, 11, 12, 123456, dt.UTC),
    "span": -dt.timedelta(hours=1, minutes=2, seconds=3), "yr": 2026, "kind": "b",
    "tags": ["gift", "rush"], "nothing": None,
}


@pytest.mark.timeout(60)
async def test_binlog_column_types_arrive_as_a_select_reads_them(
        mariadb_server: MariaDB, schema: str) -> None:
    mariadb_server.execute(schema, TYPES_TABLE)
    engine = ChangeEngine(source=MySQLSource(database=schema, tables={"kinds": "things"},
                                             **mariadb_server.settings))
    await engine.start()
    subscriber = engine.subscriber()
    subscriber.subscribe("all", "things")
    subscriber.subscribe("gold", "things", where=compile_filter("meta.a.b = 2 AND price = 12.5"))
    mariadb_server.execute(schema, TYPES_ROW, "UPDATE kinds SET price = 13.75, tags = '' WHERE id = 7")
    got: list[dict[str, Any]] = []
    while len([m for m in got if m["type"] == "change"]) < 4:
        got.extend(d.to_message() for d in await asyncio.wait_for(subscriber.get_batch(), 10))
    changes = [m for m in got if m["type"] == "change"]
    inserted = next(m for m in changes if m["id"] == "all" and m["op"] == "insert")
    assert inserted["collection"] == "things" and inserted["key"] == 7
    assert inserted["doc"] == TYPES_DOC
    assert await engine.source.scan("things") == [
        {**TYPES_DOC, "price": Decimal("13.75"), "tags": []}]
    update = next(m for m in changes if m["id"] == "all" and m["op"] == "update")
    assert update["changes"] == {"set": {"price": Decimal("13.75"), "tags": []}, "unset": []}
    assert [m["op"] for m in changes if m["id"] == "gold"] == ["enter", "leave"]
    await engine.stop()


async def test_binlog_source_refuses_a_table_without_a_primary_key_and_a_wrong_setting(
        mariadb_server: MariaDB, schema: str) -> None:
    mariadb_server.execute(schema, "CREATE TABLE loose (a INT, b INT)")
    engine = ChangeEngine(source=MySQLSource(database=schema, tables=["loose"],
                                             **mariadb_server.settings))
    with pytest.raises(SourceError, match="loose has no primary key"):
        await engine.start()
    await engine.stop()
    missing = ChangeEngine(source=MySQLSource(database=schema, tables=["nope"],
                                              **mariadb_server.settings))
    with pytest.raises(SourceError, match=r"nope does not exist"):
        await missing.start()
    await missing.stop()
    mariadb_server.execute(None, "SET GLOBAL binlog_row_image = 'MINIMAL'")
    try:
        minimal = ChangeEngine(source=MySQLSource(database=schema, tables=["loose"],
                                                  **mariadb_server.settings))
        with pytest.raises(SourceError, match="binlog_row_image=FULL"):
            await minimal.start()
        await minimal.stop()
    finally:
        mariadb_server.execute(None, "SET GLOBAL binlog_row_image = 'FULL'")


@pytest.mark.timeout(60)
async def test_binlog_reset_reopens_from_now_and_resyncs_everyone(
        mariadb_server: MariaDB, schema: str) -> None:
    create_tables(mariadb_server, schema)
    engine = ChangeEngine(source=source(mariadb_server, schema))
    await engine.start()
    views = [SourceView(engine, "orders", "orders"), SourceView(engine, "users", "users")]
    for view in views:
        await view.start()
    mariadb_server.execute(schema, "INSERT INTO orders VALUES ('o1', 'u1', 0, 5, NULL)")
    await converge(views, engine)
    engine.reset("the operator distrusts the history")
    deadline = asyncio.get_running_loop().time() + 10
    while [view.resyncs for view in views] != [1, 1]:
        assert asyncio.get_running_loop().time() < deadline, [v.resyncs for v in views]
        await asyncio.sleep(0.01)
    # Reopened from now: what is written next still arrives.
    mariadb_server.execute(schema, "INSERT INTO users VALUES ('x1', 'u1', 0, 5, 'b')")
    await converge(views, engine)
    assert "x1" in views[1].docs and [view.resyncs for view in views] == [1, 1]
    stats = engine.snapshot()["watchers"]
    assert stats["orders"]["history_losses"] == 1 and stats["orders"]["state"] == "watching"
    for view in views:
        await view.stop()
    await engine.stop()
