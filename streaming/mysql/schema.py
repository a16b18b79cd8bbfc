"""The watched tables as the server describes them (``read_tables``), the decoding of
their column types into JSON-able values, and which statements are DDL on them."""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pymysql
import pymysql.cursors

from streaming.errors import StreamingError
from streaming.types import Document

# ER_MASTER_FATAL_ERROR_READING_BINLOG: the position asked for is not in the server's
# binary logs (purged, or a server that never had it).
HISTORY_LOST_ERRORS = frozenset({1236})
# Client-side connection errors (CR_*) and server shutdown: the database is unreachable.
UNAVAILABLE_ERRORS = frozenset({2002, 2003, 2006, 2013, 2055, 1053, 1077, 1927})
DDL = re.compile(r"^\s*(?:/\*.*?\*/\s*)*(ALTER|DROP|TRUNCATE|RENAME|CREATE)\b", re.I | re.S)
REQUIRED = (("log_bin", "ON"), ("binlog_format", "ROW"), ("binlog_row_image", "FULL"),
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
    if not DDL.match(query):
        return []
    return [t for t in tables if re.search(rf"(?<![\w$])`?{re.escape(t)}`?(?![\w$])", query)]


# ---- positions --------------------------------------------------------------------------------
