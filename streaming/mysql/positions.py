"""Where a source is in the binlog: MariaDB GTID state as text and back, when a
position is history the server no longer has, and positions kept in the watched server
(``MySQLCheckpoints``)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from typing import Any

import pymysql
import pymysql.cursors

from streaming.errors import HistoryLost
from streaming.mysql.schema import HISTORY_LOST_ERRORS


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


def history_lost(exc: BaseException) -> bool:
    if isinstance(exc, HistoryLost):
        return True
    return isinstance(exc, pymysql.err.OperationalError | pymysql.err.InternalError) and \
        bool(exc.args) and exc.args[0] in HISTORY_LOST_ERRORS
