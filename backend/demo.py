"""Demo controls: a random order, a random stock change, a random admin status step.

Shared by ``/api/simulate/*`` and the pages' demo buttons; admins only, demo mode only.
"""

from __future__ import annotations

import random
from typing import Any

from backend import orders as order_ops
from backend import stock
from backend.auth import User, require_admin
from backend.errors import ApiError

Document = dict[str, Any]
KINDS = ("new-order", "update-stock", "status-update")


async def demo_admin(conn: Any) -> User:
    """The signed-in admin, when demo controls are on (403 otherwise)."""
    admin = await require_admin(conn)
    if not conn.state.settings.demo:
        raise ApiError(403, "demo controls are off (CHANGECAST_DEMO)")
    return admin


async def new_order(db: Any, engine: Any, admin: User) -> Document:
    customers = await db.users.find({"role": "customer"}, {"_id": 1}).to_list()
    products = await db.products.find({"stock": {"$gt": 0}}, {"_id": 1}).to_list()
    if not customers or not products:
        raise ApiError(409, "no customers or no products in stock to simulate with")
    rng = random.Random()
    picks = rng.sample(products, min(len(products), rng.randint(1, 3)))
    return await order_ops.create_order(
        db, engine, user_id=str(rng.choice(customers)["_id"]),
        items=[(str(p["_id"]), rng.randint(1, 2)) for p in picks],
        correlation=order_ops.correlation_id(None), actor=admin.role)


async def update_stock(db: Any, engine: Any, admin: User) -> Document:
    products = await db.products.find({}, {"_id": 1, "stock": 1}).to_list()
    if not products:
        raise ApiError(409, "no products to simulate with")
    product = random.choice(products)
    delta = random.randint(-min(product["stock"], 15), 25)
    return await stock.change_stock(db, engine, str(product["_id"]), delta=delta)


async def status_update(db: Any, engine: Any, admin: User) -> Document:
    candidates = await db.orders.find({"status": {"$in": list(order_ops.ADMIN_NEXT)}},
                                      {"_id": 1, "status": 1}).limit(200).to_list()
    if not candidates:
        raise ApiError(409, "no order is waiting for an admin step")
    pick = random.choice(candidates)
    return await order_ops.transition(db, engine, pick["_id"],
                                      order_ops.ADMIN_NEXT[pick["status"]], actor=admin.role,
                                      expected=pick["status"])


SIMULATIONS = {"new-order": new_order, "update-stock": update_stock,
               "status-update": status_update}
