"""Demo controls: a random order, a random stock change, a random admin status step.

Shared by ``/api/simulate/*`` and the pages' demo buttons; the web layer lets only
admins in demo mode reach them.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

from pymongo.asynchronous.database import AsyncDatabase

from backend.domain import orders as order_ops
from backend.domain import stock
from backend.domain.errors import Conflict
from backend.domain.users import User
from streaming import ChangeEngine, Document

Simulation = Callable[[AsyncDatabase[Document], ChangeEngine, User], Awaitable[Document]]


async def new_order(db: AsyncDatabase[Document], engine: ChangeEngine, admin: User) -> Document:
    customers = await db.users.find({"role": "customer"}, {"_id": 1}).to_list()
    products = await db.products.find({"stock": {"$gt": 0}}, {"_id": 1}).to_list()
    if not customers or not products:
        raise Conflict("There is no customer, or no product in stock, to simulate an order with.")
    rng = random.Random()
    picks = rng.sample(products, min(len(products), rng.randint(1, 3)))
    order, _ = await order_ops.place_order(
        db, engine, user_id=str(rng.choice(customers)["_id"]),
        items=[(str(p["_id"]), rng.randint(1, 2)) for p in picks],
        correlation=order_ops.correlation_id(None), actor=admin.role)
    return order


async def update_stock(db: AsyncDatabase[Document], engine: ChangeEngine,
                       admin: User) -> Document:
    products = await db.products.find({}, {"_id": 1, "stock": 1}).to_list()
    if not products:
        raise Conflict("There are no products to simulate a stock change with.")
    product = random.choice(products)
    delta = random.randint(-min(product["stock"], 15), 25)
    return await stock.change_stock(db, engine, str(product["_id"]), delta=delta)


async def status_update(db: AsyncDatabase[Document], engine: ChangeEngine,
                        admin: User) -> Document:
    candidates = await db.orders.find({"status": {"$in": list(order_ops.ADMIN_NEXT)}},
                                      {"_id": 1, "status": 1}).limit(200).to_list()
    if not candidates:
        raise Conflict("No order is waiting for an admin step right now.")
    pick = random.choice(candidates)
    return await order_ops.transition(db, engine, pick["_id"],
                                      order_ops.ADMIN_NEXT[pick["status"]], actor=admin.role,
                                      expected=pick["status"])


SIMULATIONS: dict[str, Simulation] = {"new-order": new_order, "update-stock": update_stock,
                                      "status-update": status_update}
KINDS = tuple(SIMULATIONS)
