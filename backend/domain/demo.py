"""Demo controls: a random order, a random stock change, a random admin status step; and
for a customer watching the portal, another shopper's order, a restock, and the next step
of their own order.

Shared by ``/api/simulate/*`` and the pages' demo buttons; the web layer lets only
admins (the first three) or signed-in users (the shopper's three) reach them, in demo
mode only, at most ``DEMO_LIMIT`` per session per ``DEMO_WINDOW_S``.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

from pymongo.asynchronous.database import AsyncDatabase

from backend.domain import orders as order_ops
from backend.domain import stock
from backend.domain.errors import Conflict, Throttled
from backend.domain.limits import SlidingWindow
from backend.domain.users import User
from streaming import ChangeEngine, Document

Simulation = Callable[[AsyncDatabase[Document], ChangeEngine, User], Awaitable[Document]]


async def _random_order(db: AsyncDatabase[Document], engine: ChangeEngine,
                        customers: Document, *, most: int, actor: str) -> Document:
    """An order of 1..``most`` products in stock for one of ``customers``."""
    products = await db.products.find({"stock": {"$gt": 0}}, {"_id": 1}).to_list()
    buyers = await db.users.find({"role": "customer", **customers}, {"_id": 1}).to_list()
    if not buyers or not products:
        raise Conflict("There is no other shopper, or no product in stock, to buy with."
                       if customers else
                       "There is no customer, or no product in stock, to simulate an order with.")
    rng = random.Random()
    picks = rng.sample(products, min(len(products), rng.randint(1, most)))
    order, _ = await order_ops.place_order(
        db, engine, user_id=str(rng.choice(buyers)["_id"]),
        items=[(str(p["_id"]), rng.randint(1, 2)) for p in picks],
        correlation=order_ops.correlation_id(None), actor=actor)
    return order


async def new_order(db: AsyncDatabase[Document], engine: ChangeEngine, admin: User) -> Document:
    return await _random_order(db, engine, {}, most=3, actor=admin.role)


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


async def another_shopper_buys(db: AsyncDatabase[Document], engine: ChangeEngine,
                               user: User) -> Document:
    """An order by some other customer: the viewer sees stock drop under their eyes."""
    return await _random_order(db, engine, {"_id": {"$ne": user.id}}, most=2, actor="customer")


RESTOCK_UNITS = 25


async def restock(db: AsyncDatabase[Document], engine: ChangeEngine, user: User) -> Document:
    """The product with the least stock gets a delivery."""
    lowest = await db.products.find({}, {"_id": 1}).sort([("stock", 1), ("_id", 1)]) \
        .limit(1).to_list()
    if not lowest:
        raise Conflict("There are no products to restock.")
    return await stock.change_stock(db, engine, str(lowest[0]["_id"]), delta=RESTOCK_UNITS)


async def advance_mine(db: AsyncDatabase[Document], engine: ChangeEngine,
                       user: User) -> Document:
    """The viewer's latest order that waits for the shop (being prepared, shipped) moves on,
    as if an admin did it."""
    mine = await db.orders.find({"user_id": user.id, "status": {"$in": list(order_ops.ADMIN_NEXT)}},
                                {"_id": 1, "status": 1}).sort([("created_at", -1)]) \
        .limit(1).to_list()
    if not mine:
        raise Conflict("None of your orders is waiting for the shop right now; place one "
                       "and wait until it is being prepared.")
    order = mine[0]
    return await order_ops.transition(db, engine, order["_id"],
                                      order_ops.ADMIN_NEXT[order["status"]], actor="demo",
                                      expected=order["status"])


SIMULATIONS: dict[str, Simulation] = {"new-order": new_order, "update-stock": update_stock,
                                      "status-update": status_update}
KINDS = tuple(SIMULATIONS)
SHOPPER_SIMULATIONS: dict[str, Simulation] = {"shopper-buys": another_shopper_buys,
                                              "restock": restock, "advance-mine": advance_mine}
DEMO_LIMIT = 20
DEMO_WINDOW_S = 60.0


class DemoLimiter:
    """At most ``limit`` demo actions per session in any ``window`` seconds."""

    def __init__(self, *, limit: int = DEMO_LIMIT, window: float = DEMO_WINDOW_S) -> None:
        self.limit = limit
        self._used = SlidingWindow(window, max_keys=20_000)

    def spend(self, session: str) -> None:
        """Count one action of ``session``, or raise Throttled (nothing counted)."""
        if len(self._used.recent(session)) >= self.limit:
            raise Throttled(f"That is {self.limit} demo actions in a minute; wait a moment "
                            "before the next.", retry_after=self._used.retry_after(session))
        self._used.add(session)
