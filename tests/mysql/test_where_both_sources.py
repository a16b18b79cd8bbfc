"""The ``where`` language means the same whichever database feeds the engine: one table of
cases (tests/support/where_cases.py) run through live subscriptions on the embedded
MongoDB-wire server and on MariaDB's binlog, each against the answers written by hand."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from streaming import ChangeEngine, compile_filter
from streaming.mysql import MySQLSource
from tests.support.mariadb import MariaDB
from tests.support.where_cases import CASES, ROWS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def matched(engine: ChangeEngine, write: Callable[[], Awaitable[None]]) -> dict[str, list[Any]]:
    """Subscribe every case, write the rows, and collect which rows each case let in."""
    subscriber = engine.subscriber(maxsize=10_000)
    subscriber.subscribe("all", "rows")
    names = {f"case{i}": case for i, case in enumerate(CASES)}
    for sub_id, case in names.items():
        subscriber.subscribe(sub_id, "rows", where=compile_filter(case))
    await write()
    keys: dict[str, list[Any]] = {case: [] for case in CASES}
    inserted = 0
    while inserted < len(ROWS) or len(subscriber):
        for delivery in await asyncio.wait_for(subscriber.get_batch(), 10):
            message = delivery.to_message()
            if message["type"] != "change":
                continue
            if message["id"] == "all":
                inserted += 1
            elif message["op"] in ("insert", "enter"):
                keys[names[message["id"]]].append(message["key"])
    return {case: sorted(found) for case, found in keys.items()}


async def test_where_cases_on_the_embedded_mongodb_server(
        mongo: AsyncMongoClient[dict[str, Any]], db_name: str) -> None:
    db = mongo[db_name]
    engine = ChangeEngine(db, collections=["rows"], mode="poll")
    await engine.start()

    async def write() -> None:
        for row in ROWS:
            doc = {"_id": row["id"], **{k: v for k, v in row.items() if k != "id"}}
            doc["amount"] = float(row["amount"])
            await db.rows.insert_one(doc)
            engine.nudge("rows")

    try:
        assert await matched(engine, write) == CASES
    finally:
        await engine.stop()


async def test_where_cases_on_mariadb(mariadb_server: MariaDB, schema: str) -> None:
    mariadb_server.execute(schema, """CREATE TABLE `rows` (
        id VARCHAR(8) PRIMARY KEY, status VARCHAR(16), total INT, amount DECIMAL(10, 2),
        ratio DOUBLE, note VARCHAR(40) NULL, flag BOOL, meta JSON NULL,
        tags SET('gift', 'rush'))""")
    engine = ChangeEngine(source=MySQLSource(database=schema, tables=["rows"],
                                             **mariadb_server.settings))
    await engine.start()

    async def write() -> None:
        def insert() -> None:
            with mariadb_server.connect(schema) as conn, conn.cursor() as cur:
                for r in ROWS:
                    cur.execute("INSERT INTO `rows` VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                                (r["id"], r["status"], r["total"], r["amount"], r["ratio"],
                                 r["note"], r["flag"],
                                 None if r["meta"] is None else json.dumps(r["meta"]),
                                 ",".join(r["tags"])))
        await asyncio.to_thread(insert)

    try:
        assert await matched(engine, write) == CASES
    finally:
        await engine.stop()
