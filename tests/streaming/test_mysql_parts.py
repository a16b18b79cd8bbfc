"""The binlog source's pure parts: DDL detection, GTID states, column conversions."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from streaming.filters import compile_filter, index_keys
from streaming.mysql import Column, ddl_tables, gtid_state, gtid_text


def test_ddl_names_the_watched_tables_it_touches_and_nothing_else() -> None:
    tables = ["orders", "order_items", "users"]
    assert ddl_tables("ALTER TABLE orders ADD COLUMN x INT", tables) == ["orders"]
    assert ddl_tables("TRUNCATE `shop`.`order_items`", tables) == ["order_items"]
    assert ddl_tables("/* gh-ost */ RENAME TABLE users TO users_old, users_new TO users",
                      tables) == ["users"]
    assert ddl_tables("DROP TABLE IF EXISTS orders_archive", tables) == []
    assert ddl_tables("CREATE INDEX i ON users (name)", tables) == ["users"]
    # Not DDL: row statements never come as queries in ROW format, and COMMIT is a boundary.
    assert ddl_tables("COMMIT", tables) == []
    assert ddl_tables("INSERT INTO orders VALUES (1)", tables) == []


def test_gtid_states_keep_the_newest_per_domain_in_domain_order() -> None:
    state = gtid_state("1-2-7, 0-1-42")
    assert state == {0: "0-1-42", 1: "1-2-7"}
    state[0] = "0-1-43"
    assert gtid_text(state) == "0-1-43,1-2-7"
    assert gtid_state("") == {} and gtid_state(None) == {}


def test_columns_convert_binlog_and_select_values_alike() -> None:
    assert Column("flag", "bool").convert(1) is True
    assert Column("meta", "json").convert('{"a": [1]}') == {"a": [1]}
    assert Column("meta", "json").convert({b"a": [b"x"]}) == {"a": ["x"]}
    assert Column("approx", "float32").convert(1.100000023841858) == 1.1
    assert Column("tags", "set").convert({"rush", "gift"}) == ["gift", "rush"]
    assert Column("tags", "set").convert("rush,gift") == ["gift", "rush"]
    assert Column("tags", "set").convert(None) == [] == Column("tags", "set").convert("")
    naive = dt.datetime(2026, 12, 1, 10, 0)
    assert Column("at", "datetime").convert(naive) == naive.replace(tzinfo=dt.UTC)
    assert Column("n", "plain").convert(None) is None


def test_where_compares_decimals_exactly_and_the_index_finds_them() -> None:
    assert compile_filter("amount = 1.1").matches({"amount": Decimal("1.10")})
    assert not compile_filter("amount = 1.1").matches({"amount": Decimal("1.11")})
    assert compile_filter("amount < 1.2 AND amount >= 1").matches({"amount": Decimal("1.1")})
    assert not compile_filter("amount = '1.1'").matches({"amount": Decimal("1.1")})
    assert index_keys([Decimal("3.00"), Decimal("1.10"), "x", None, [1]]) == [3, 1.1, "x"]
