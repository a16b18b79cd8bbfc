"""Cancelling an order whose payment was captured refunds it, once, across instances."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from backend.domain.orders import transition
from tests.integration.test_pipeline import settled, setup, start_instance
from tests.support.orders import placed

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

Db = Any


async def refunded(db: Db, order_id: str) -> dict[str, Any]:
    async with asyncio.timeout(20):
        while True:
            order = await db.orders.find_one({"_id": order_id})
            if order is not None and order.get("refund") == "done":
                return order
            await asyncio.sleep(0.05)


async def test_a_cancelled_paid_order_is_refunded_once_with_two_instances(
    nx_uri: str, db_name: str
) -> None:
    clients = [AsyncMongoClient[dict[str, Any]](nx_uri, tz_aware=True) for _ in range(2)]
    db = clients[0][db_name]
    await setup(db, {"A": 10})
    instances = [await start_instance(client, db_name, success_rate=1.0, seed=n)
                 for n, client in enumerate(clients)]
    engine = instances[0][0]
    try:
        order = await placed(db, engine, user_id="c01", items=[("A", 2)],
                                   correlation="refund-me", actor="customer")
        [paid] = await settled(db, 1)
        assert paid["status"] == "processing" and paid["payment"]["status"] == "captured"
        cancelled = await transition(db, engine, order["_id"], "cancelled", actor="admin")
        assert cancelled["refund"] == "due"
        done = await refunded(db, order["_id"])
        notes = await db.notifications.find({"order_id": order["_id"]}).to_list()
        product = await db.products.find_one({"_id": "A"})
    finally:
        for engine_, pipeline in instances:
            await pipeline.stop()
            await engine_.stop()
        for client in clients:
            await client.close()
    transaction = paid["payment"]["transaction_id"]
    banks = [pipeline.gateway.refunds for _, pipeline in instances]
    assert sum(transaction in bank for bank in banks) == 1  # the bank was asked once
    [refund_id] = [bank[transaction] for bank in banks if transaction in bank]
    assert done["payment"] == {**paid["payment"], "status": "refunded", "refund_id": refund_id}
    assert done["status"] == "cancelled"
    assert [n["message"] for n in notes if n["_id"].endswith(":refunded")] == [
        f"Your payment of $20.00 for order {order['_id']} was refunded ({refund_id})."]
    assert product is not None and product["stock"] == 10  # and the units went back


async def test_a_refund_left_by_a_dead_instance_is_finished_and_unpaid_orders_get_none(
    mongo: AsyncMongoClient[dict[str, Any]], db_name: str
) -> None:
    db = mongo[db_name]
    await setup(db, {"A": 10})
    payment = {"status": "captured", "transaction_id": "TXN-ORPHAN"}
    await db.orders.insert_one({
        "_id": "ORD-ORPHAN", "user_id": "c01", "status": "cancelled", "total_cents": 1000,
        "items": [{"product_id": "A", "name": "A", "quantity": 1, "price_cents": 1000}],
        "history": [{"status": "cancelled", "at": "2020-01-01T00:00:00.000Z", "by": "admin"}],
        "payment": payment, "refund": "processing:dead", "refund_at": 0,
        "correlation_id": "orphan", "updated_at": "2020-01-01T00:00:00.000Z"})
    engine, pipeline = await start_instance(mongo, db_name, reconcile_after_s=1)
    try:
        done = await refunded(db, "ORD-ORPHAN")
        await pipeline.stop()  # so that the next order stays unpaid
        fresh = await placed(db, engine, user_id="c02", items=[("A", 1)],
                                   correlation="unpaid", actor="customer")
        cancelled = await transition(db, engine, fresh["_id"], "cancelled", actor="customer")
    finally:
        await pipeline.stop()
        await engine.stop()
    assert done["payment"]["status"] == "refunded"
    assert pipeline.gateway.refunds == {"TXN-ORPHAN": done["payment"]["refund_id"]}
    assert "refund" not in cancelled  # nothing was captured: nothing to refund

