"""Every stock movement, exactly once across crashes, without transactions.

An order's units move between two documents (the product and the order) that
cannot be updated together. So each move leaves a marker in the product's
hidden ``holds`` list, written in the same single-document update as the
``$inc``, and the order document says what the marker means:

- ``take``: ``stock -= q`` and ``holds += [order_id]``, only while the marker
  is absent. A reservation that is re-driven after a crash finds its marker
  and does not take twice.
- ``give back`` (the order was never reserved: rejected, or cancelled while
  pending): ``stock += q`` and the marker goes, only while it is there.
- ``commit`` (the order reached ``reserved``): the units stay sold; the marker
  goes once the reservation is older than the reconcile timeout (the sweep drops it),
  so that a worker which stalled mid-reservation and lost its claim cannot take again.
- ``restock`` (a reserved order failed payment or was cancelled): the order
  gets ``restock: "due"`` in its transition; each product gets
  ``stock += q`` with the marker ``<order_id>:back``, only while absent; the
  order then says ``restock: "done"`` (with ``restocked_at``), and the sweep drops the
  markers once that is older than the reconcile timeout. A restock re-reads the order
  first, so a worker that stalled after the transition does not restock a second time.

Whatever dies in between, :func:`sweep` finishes it from the order's state:
markers only exist for moves in flight or just finished, so the list stays
short. Like the pipeline's claims, this assumes no worker stalls for longer
than the reconcile timeout in the middle of a move. The
engine hides ``holds`` (other customers' order ids) from every cache, event
and API answer.
"""

from __future__ import annotations

import logging
from typing import Any

from pymongo import ReturnDocument, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase

from backend.domain.batching import GroupCommit, Spawn
from backend.domain.clock import now_iso
from backend.domain.errors import Conflict, Invalid, NotFound, StaleStock
from streaming import ChangeEngine, Document

logger = logging.getLogger("changecast.stock")
HOLDS = "holds"
RESTOCKED_AT = "restocked_at"  # on the order: when its restock was done (kept out of events)
HIDDEN = {"products": (HOLDS,)}
# What this module's writes hand back leaves the markers out (readers use the engine's
# hidden_projection).
NO_HOLDS = {HOLDS: 0}
# The most units of one product: far above any shelf, far below int64 (and exact in JSON).
MAX_STOCK = 1_000_000_000
# How long a write waits to see itself on the change stream (well inside the API's
# 0.8 s cap: the write has happened either way).
SETTLE_S = 0.25


def _back(order_id: str) -> str:
    return f"{order_id}:back"


def _unmarked(product_id: str, marker: str, condition: Document) -> Document:
    """The product, on ``condition``, while ``marker`` is not in its holds (see
    :func:`_unmarked_update` for why ``$nor``)."""
    return {"_id": product_id, **condition, "$nor": [{HOLDS: marker}]}


def _taking(order_id: str, item: Document) -> tuple[Document, Document]:
    """A take of ``item`` for the order: (the condition besides the mark, the update)."""
    quantity = int(item["quantity"])
    return ({"stock": {"$gte": quantity}},
            {"$inc": {"stock": -quantity}, "$push": {HOLDS: order_id},
             "$set": {"updated_at": now_iso()}})


async def _unmarked_update(db: AsyncDatabase[Document], product_id: str, marker: str,
                           condition: Document, update: Document,
                           **options: Any) -> Document | None:
    """``find_one_and_update`` of a product, only while ``marker`` is not in its holds.

    Written ``$nor: [{holds: marker}]``, which means ``$nin: [marker]``: NX-27017 cannot
    turn ``$nin`` into SQL and answers it by reading every product, the ``$nor`` it does.
    But its SQL for that matches no product that has no ``holds`` array at all (NULL
    logic), so such a product gets an empty one and the update is tried once more (also
    when a concurrent update gave it one first: that is why this one found nothing)."""
    query = _unmarked(product_id, marker, condition)
    found: Document | None = await db.products.find_one_and_update(query, update, **options)
    if found is None:
        await db.products.update_one({"_id": product_id, HOLDS: {"$exists": False}},
                                     {"$set": {HOLDS: []}})
        found = await db.products.find_one_and_update(query, update, **options)
    return found


async def take(db: AsyncDatabase[Document], order_id: str, item: Document) -> Document | None:
    """Take ``item``'s units for the order; None when taken (now or by an earlier attempt),
    else why not, as the order records it: ``failure_reason`` (a sentence naming the
    product), ``failure_code`` (``out_of_stock`` or ``unknown_product``) and
    ``failure_product`` (its id)."""
    return (await take_all(db, order_id, [item]))[0]


def _take_statements(order_id: str, items: list[Document]) -> list[UpdateOne]:
    """The order's takes, one conditional update of a product each."""
    return [UpdateOne(_unmarked(item["product_id"], order_id, condition), update)
            for item in items for condition, update in (_taking(order_id, item),)]


async def _products_of(db: AsyncDatabase[Document], items: list[Document]) -> dict[str, Document]:
    found = await db.products.find({"_id": {"$in": sorted({i["product_id"] for i in items})}},
                                   {HOLDS: 1, "name": 1, "stock": 1}).to_list()
    return {p["_id"]: p for p in found}


def _marked(product: Document | None, order_id: str) -> bool:
    return product is not None and order_id in (product.get(HOLDS) or ())


async def _after_a_shortfall(db: AsyncDatabase[Document], requests: list[tuple[str, list[Document]]]
                             ) -> list[tuple[Document | None, int]]:
    """After the takes of ``requests`` (order id, items) of which fewer applied than were
    sent: for each order, (None when each of its items is taken, now or by an earlier
    attempt, else why not for the first that is not; how many products a retry here took
    units from).

    One read of the products says which applied. Those that did not but could have (the
    product had no holds array yet, see :func:`_unmarked_update`, or stock came back
    since) go again, all in one ordered bulk write in the order they were asked, so that
    of two orders short of one product the one that asked first gets it, whatever the
    timing; one more read says which of those applied. So a batch costs at most four
    commands, however many of its products were never sold before."""
    found = await _products_of(db, [i for _, items in requests for i in items])
    # Per order: the first item (by position) that cannot be taken, and why.
    failures: list[tuple[int, Document] | None] = [None] * len(requests)
    retries: list[tuple[int, int, Document]] = []  # (order, item position, item)
    for n, (order_id, items) in enumerate(requests):
        for at, item in enumerate(items):
            product = found.get(item["product_id"])
            if _marked(product, order_id):
                continue  # taken, now or by an earlier attempt
            if product is None or int(product.get("stock") or 0) < int(item["quantity"]):
                failures[n] = (at, _why_not(item["product_id"], product))
                break
            retries.append((n, at, item))
    took = [0] * len(requests)
    if retries:
        bare = sorted({item["product_id"] for _, _, item in retries
                       if found[item["product_id"]].get(HOLDS) is None})
        if bare:
            await db.products.update_many({"_id": {"$in": bare}, HOLDS: {"$exists": False}},
                                          {"$set": {HOLDS: []}})
        await db.products.bulk_write(
            [s for n, _, item in retries for s in _take_statements(requests[n][0], [item])],
            ordered=True)
        after = await _products_of(db, [item for _, _, item in retries])
        for n, at, item in retries:
            product = after.get(item["product_id"])
            if _marked(product, requests[n][0]):
                took[n] += 1
            elif (failure := failures[n]) is None or at < failure[0]:
                failures[n] = (at, _why_not(item["product_id"], product))
    return [(None if failure is None else failure[1], moved)
            for failure, moved in zip(failures, took, strict=True)]


async def _take_batch(db: AsyncDatabase[Document], requests: list[tuple[str, list[Document]]]
                      ) -> tuple[int, list[tuple[Document | None, int]]]:
    """The takes of ``requests`` (order id, items) in one bulk write: (how many products it
    changed; for each order, what :func:`_after_a_shortfall` says, or (None, 0) when
    every take applied)."""
    statements = [s for order_id, items in requests for s in _take_statements(order_id, items)]
    if not statements:
        return 0, [(None, 0)] * len(requests)
    result = await db.products.bulk_write(statements, ordered=False)
    if result.matched_count == len(statements):
        return result.modified_count, [(None, 0)] * len(requests)
    # Some were not taken: taken before by an earlier attempt (marked), out of stock, gone,
    # or a product with no holds array yet. A re-drive is as short as it can be: its marks
    # are what keep a stalled worker from taking twice, and the sweep drops them once the
    # reservation is old.
    return result.modified_count, await _after_a_shortfall(db, requests)


async def take_all(db: AsyncDatabase[Document], order_id: str,
                   items: list[Document]) -> tuple[Document | None, int]:
    """Take every item's units for the order, all in one command; returns (None when every
    item's are taken, now or by an earlier attempt, else why not as :func:`take` says it,
    for the first item that could not be; how many products this call took units from).

    Every item is tried, not only those before one that fails: what was taken stays marked
    as the order's, and :func:`settle_takes` gives it back once the order is rejected."""
    changed, ((failure, took),) = await _take_batch(db, [(order_id, items)])
    return failure, changed + took


class TakeBatcher(GroupCommit[tuple[str, list[Document]], tuple[Document | None, bool]]):
    """``await take_all(order_id, items)``: :func:`take_all` for one order, its takes sent
    in one bulk write with those of every order waiting meanwhile (``batching``). Answers
    (None or why not, as :func:`take_all`; whether that command, or a retry for this order,
    changed any product: what a nudge of the engine may promise). When fewer applied than
    were sent, :func:`_after_a_shortfall` says, for each order, which, in a few commands
    for the whole batch."""

    def __init__(self, db: AsyncDatabase[Document], *, max_batch: int = 256,
                 spawn: Spawn | None = None) -> None:
        super().__init__(max_batch=max_batch, spawn=spawn)
        self.db = db

    async def take_all(self, order_id: str, items: list[Document]) -> tuple[Document | None, bool]:
        return await self.submit((order_id, items))

    async def send(self, requests: list[tuple[str, list[Document]]]
                   ) -> list[tuple[Document | None, bool]]:
        changed, answers = await _take_batch(self.db, requests)
        return [(failure, changed > 0 or took > 0) for failure, took in answers]


def _why_not(product_id: str, product: Document | None) -> Document:
    """What an order records when ``product`` (None: gone) could not give it units."""
    if product is None:
        return {"failure_reason": f"product {product_id} is not sold any more",
                "failure_code": "unknown_product", "failure_product": product_id}
    return {"failure_reason": f"{product.get('name') or product_id} is out of stock",
            "failure_code": "out_of_stock", "failure_product": product_id}


async def give_back(db: AsyncDatabase[Document], order_id: str, items: list[Document]) -> int:
    """Undo the takes of an order that was never reserved; returns how many moved."""
    moved = 0
    for item in items:
        result = await db.products.update_one(
            {"_id": item["product_id"], HOLDS: order_id},
            {"$inc": {"stock": int(item["quantity"])}, "$pull": {HOLDS: order_id},
             "$set": {"updated_at": now_iso()}})
        moved += result.modified_count
    return moved


async def commit(db: AsyncDatabase[Document], order_id: str, items: list[Document]) -> None:
    """The order is reserved: its takes are final (an invisible change: no event)."""
    for item in items:
        await db.products.update_one({"_id": item["product_id"], HOLDS: order_id},
                                     {"$pull": {HOLDS: order_id}})


async def settle_takes(db: AsyncDatabase[Document], order_id: str, items: list[Document], *,
                       order: Document | None = None, stale_before: str | None = None) -> str:
    """Commit, keep or give back an order's takes, as its state says; returns what it did.

    ``order``: the order as just written by the caller, else it is read. A pending order's
    takes belong to whoever drives it and are left alone. A reserved order's takes stay
    marked until the reservation is older than ``stale_before`` (None: they stay): a worker
    that lost its claim while stalled mid-reservation may still try to take, and the mark
    is what makes that a no-op instead of a second sale.
    """
    if order is None:
        order = await db.orders.find_one({"_id": order_id}, {"status": 1, "history": 1})
    if order is not None and order["status"] == "pending":
        return "left"
    reserved_at = next((h["at"] for h in (order or {}).get("history", ())
                        if h["status"] == "reserved"), None)
    if reserved_at is not None:
        if stale_before is None or str(reserved_at) > stale_before:
            return "kept"
        await commit(db, order_id, items)
        return "committed"
    await give_back(db, order_id, items)
    return "given_back"


async def restock(db: AsyncDatabase[Document], engine: ChangeEngine, order: Document, *,
                  wait: bool = False) -> int:
    """Return the units of a reserved order that failed or was cancelled, exactly once.

    The order must carry ``restock: "due"`` (set by its transition). Returns how many
    products got units back in this call (0 when an earlier call already did it).
    ``wait``: until the engine has seen each product change (read-your-writes for an API
    caller).
    """
    order_id, back = str(order["_id"]), _back(str(order["_id"]))
    # The caller's copy may be old (a worker that stalled after the transition): a restock
    # finished meanwhile is not done again, even once its marks are gone.
    current = await db.orders.find_one({"_id": order_id}, {"restock": 1})
    if current is None or current.get("restock") != "due":
        return 0
    moved = 0
    for item in order["items"]:
        product = await _unmarked_update(
            db, item["product_id"], back, {},
            {"$inc": {"stock": int(item["quantity"])}, "$push": {HOLDS: back},
             "$set": {"updated_at": now_iso()}},
            projection=NO_HOLDS, return_document=ReturnDocument.AFTER)
        if product is None:
            continue
        moved += 1
        if wait:
            await engine.settle("products", product["_id"], product, timeout=SETTLE_S)
        else:
            engine.nudge("products")
    await db.orders.update_one({"_id": order_id, "restock": "due"},
                               {"$set": {"restock": "done", RESTOCKED_AT: now_iso()}})
    # The marks stay until the sweep finds the restock done and old: a second call that
    # read "due" just before this one finished must still find them.
    return moved


async def sweep(db: AsyncDatabase[Document], engine: ChangeEngine, *, stale_before: str) -> dict[str, int]:
    """Finish every stock move a crash left half-done; safe to run anywhere, any time.

    ``stale_before``: restocks still ``due`` from before this ISO time are re-run, and
    the marks of restocks done and of reservations made before it are dropped (younger
    ones may still be in progress elsewhere).
    """
    done = {"committed": 0, "given_back": 0, "restocked": 0, "cleared": 0}
    for due in await db.orders.find({"restock": "due", "updated_at": {"$lte": stale_before}},
                                    {"items": 1}).to_list():
        done["restocked"] += await restock(db, engine, due)
    products = await db.products.find({}, {HOLDS: 1}).to_list()
    markers = {(str(p["_id"]), m) for p in products for m in p.get(HOLDS) or ()}
    if not markers:
        return done
    order_ids = sorted({m.removesuffix(":back") for _, m in markers})
    orders = {o["_id"]: o for o in await db.orders.find(
        {"_id": {"$in": order_ids}},
        {"status": 1, "history": 1, "items": 1, "restock": 1, "updated_at": 1,
         RESTOCKED_AT: 1}
    ).to_list()}
    for product_id, marker in sorted(markers):
        order_id = marker.removesuffix(":back")
        order = orders.get(order_id)
        if marker != order_id:  # a restock's marker: dropped once done for a while
            done_at = (order or {}).get(RESTOCKED_AT) or (order or {}).get("updated_at", "")
            if order is None or (order.get("restock") != "due"
                                 and str(done_at) <= stale_before):
                await db.products.update_one({"_id": product_id}, {"$pull": {HOLDS: marker}})
                done["cleared"] += 1
            continue
        lines = [i for i in (order or {}).get("items", []) if i["product_id"] == product_id]
        if order is None or not lines:
            # No order knows these units any more: the marker alone cannot say how many.
            logger.warning("stock marker of unknown order %s on %s dropped", order_id,
                           product_id)
            await db.products.update_one({"_id": product_id}, {"$pull": {HOLDS: marker}})
            continue
        outcome = await settle_takes(db, order_id, lines, order=order, stale_before=stale_before)
        if outcome in done:
            done[outcome] += 1
    if done["given_back"]:  # (restock nudges by itself)
        engine.nudge("products")
    if any(done.values()):
        logger.info("stock sweep: %s", done)
    return done


async def change_stock(db: AsyncDatabase[Document], engine: ChangeEngine, product_id: str, *,
                       stock: int | None = None, delta: int | None = None,
                       expected: int | None = None) -> Document:
    """Set or shift a product's stock atomically; never below 0 (409) nor above MAX_STOCK.

    With ``expected`` (the stock the admin saw), a set happens only if the stock is still
    that; else ``StaleStock`` (409) with the current value, and nothing is written."""
    if (stock is None) == (delta is None):
        raise Invalid('Send exactly one of "stock" (the new level) or "delta" (a change).')
    if expected is not None and stock is None:
        raise Invalid('"expected" goes with "stock": a delta applies to whatever the stock is.')
    at = now_iso()
    if stock is not None:
        if stock < 0:
            raise Conflict(f"Stock cannot go below 0 (you asked for {stock}).")
        if stock > MAX_STOCK:
            raise Invalid(f"Stock is at most {MAX_STOCK:,} (you asked for {stock:,}).")
        match: Document = {"_id": product_id}
        if expected is not None:
            match["stock"] = expected
        updated = await db.products.find_one_and_update(
            match, {"$set": {"stock": stock, "updated_at": at}},
            projection=NO_HOLDS, return_document=ReturnDocument.AFTER)
    elif delta is not None:
        if abs(delta) > MAX_STOCK:
            raise Invalid(f"a stock change is at most {MAX_STOCK:,} either way, got {delta}")
        updated = await db.products.find_one_and_update(
            {"_id": product_id, "stock": {"$gte": max(0, -delta),
                                          "$lte": MAX_STOCK - max(0, delta)}},
            {"$inc": {"stock": delta}, "$set": {"updated_at": at}},
            projection=NO_HOLDS, return_document=ReturnDocument.AFTER)
    if updated is None:
        product = await db.products.find_one({"_id": product_id}, {"stock": 1, "name": 1})
        if product is None:
            raise NotFound(f"There is no product {product_id}.")
        name, current = product.get("name") or product_id, int(product["stock"])
        if stock is not None:  # only an expected level can have missed
            raise StaleStock(f"The stock of {name} changed to {current} while you were "
                             f"editing it (you saw {expected}). Check it and set it again.",
                             current=current)
        if (delta or 0) < 0:
            raise Conflict(f"Only {current} of {name} in stock: removing {-(delta or 0):,} "
                           "would take it below 0.")
        raise Conflict(f"{name} has {current:,} in stock: adding {delta:,} would take it "
                       f"above the limit of {MAX_STOCK:,}.")
    await engine.settle("products", product_id, updated, timeout=SETTLE_S)
    return updated
