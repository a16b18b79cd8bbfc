"""The order rules that need no database: ids, the state machine, input validation."""

from __future__ import annotations

import random
from typing import Any

import pytest

from backend.domain import orders
from backend.domain.errors import Invalid


def test_orders_ids_are_ord_and_8_characters_and_seeded_ids_repeat() -> None:
    order_id = orders.new_order_id()
    assert order_id.startswith("ORD-") and len(order_id) == 12
    assert set(order_id[4:]) <= set(orders.ID_ALPHABET)
    assert orders.new_order_id(random.Random(7)) == orders.new_order_id(random.Random(7))


def test_orders_idempotency_key_maps_to_one_id_per_user() -> None:
    first = orders.idempotent_order_id("u1", "key-1")
    assert first == orders.idempotent_order_id("u1", "key-1")
    assert first != orders.idempotent_order_id("u2", "key-1")
    assert first.startswith("ORD-") and len(first) == 12


def test_orders_state_machine_finals_and_cancellable_statuses() -> None:
    assert {"delivered", "rejected", "payment_failed", "cancelled"} == orders.FINAL
    cancellable = {s for s, nxt in orders.TRANSITIONS.items() if "cancelled" in nxt}
    assert cancellable == {"pending", "reserved", "paid", "processing"}
    assert all(set(nxt) <= set(orders.STATUSES) for nxt in orders.TRANSITIONS.values())
    for status, target in orders.ADMIN_NEXT.items():
        assert target in orders.TRANSITIONS[status]


def test_orders_correlation_id_keeps_a_sane_header_only() -> None:
    assert orders.correlation_id("abc-123") == "abc-123"
    generated = orders.correlation_id("bad value with spaces")
    assert generated != "bad value with spaces" and len(generated) == 32


class _Untouchable:
    """A database that fails the test if validation lets a bad order reach it."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the database was used ({name}) for an invalid order")


@pytest.mark.parametrize(("items", "message"), [
    ([], "at least one item"),
    ([("P", 0)], "must be 1..1000"),
    ([("P", 1_001)], "must be 1..1000"),
    ([(f"P{n}", 1) for n in range(51)], "at most 50 items"),
])
async def test_orders_invalid_items_are_refused_before_any_database_call(
        items: list[tuple[str, int]], message: str) -> None:
    with pytest.raises(Invalid, match=message):
        await orders.place_order(_Untouchable(), _Untouchable(), user_id="u1",  # type: ignore[arg-type]
                                 items=items, correlation="c", actor="customer")
