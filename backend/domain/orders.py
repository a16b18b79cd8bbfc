"""Orders: creation with server-side prices and the status state machine.

Every transition is one conditional update on the current status, so two
workers or two app instances can never apply the same transition twice. No
multi-document transactions: stock moves (``backend.domain.stock``) are per-item
conditional updates with markers that make them exactly once.
"""

from __future__ import annotations

import hashlib
import random
import re
import string
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from backend.domain import stock
from backend.domain.batching import ByIdReader, DocumentInserter, Spawn
from backend.domain.clock import now_iso
from backend.domain.errors import Conflict, Invalid, NotFound
from backend.domain.stock import SETTLE_S
from streaming import ChangeEngine, Document

TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"reserved", "rejected", "cancelled"}),
    "reserved": frozenset({"paid", "payment_failed", "cancelled"}),
    "paid": frozenset({"processing", "cancelled"}),
    "processing": frozenset({"shipped", "cancelled"}),
    "shipped": frozenset({"delivered"}),
    "delivered": frozenset(),
    "rejected": frozenset(),
    "payment_failed": frozenset(),
    "cancelled": frozenset(),
}
STATUSES = tuple(TRANSITIONS)
FINAL = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)
# Statuses in which the order holds reserved stock.
HOLDS_STOCK = frozenset({"reserved", "paid", "processing"})
ADMIN_NEXT = {"paid": "processing", "processing": "shipped", "shipped": "delivered"}
# The pipeline's bookkeeping on an order: kept out of events and answers.
INTERNAL = ("claim", "claim_at", "transition_id", "refund_at", stock.RESTOCKED_AT)
# Fields that never leave the server: the engine keeps them out of its cache and events,
# and the API out of its answers (secrets, and the pipeline's own bookkeeping: a claim
# alone is not news to anybody).
HIDDEN_FIELDS = {"users": ("password_hash",), "orders": INTERNAL, **stock.HIDDEN}
ID_ALPHABET = string.ascii_uppercase + string.digits
_SYSTEM_RANDOM = random.SystemRandom()
_CORRELATION = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
MAX_ITEMS = 50
MAX_QUANTITY = 1_000


def new_order_id(rng: random.Random | None = None) -> str:
    """``ORD-`` and 8 random characters (from ``rng`` when given: the seed's are
    deterministic; otherwise from the system's secure source)."""
    return "ORD-" + "".join((rng or _SYSTEM_RANDOM).choices(ID_ALPHABET, k=8))


def correlation_id(header: str | None) -> str:
    """The client's X-Correlation-ID when it is sane, else a fresh one."""
    if header and _CORRELATION.match(header):
        return header
    return uuid.uuid4().hex


def idempotent_order_id(user_id: str, key: str) -> str:
    """The order id an ``Idempotency-Key`` stands for (per user): a retry lands on it."""
    digest = int.from_bytes(hashlib.sha256(f"{user_id}\0{key}".encode()).digest()[:8], "big")
    chars = []
    for _ in range(8):
        digest, index = divmod(digest, len(ID_ALPHABET))
        chars.append(ID_ALPHABET[index])
    return "ORD-" + "".join(chars)


# How a transition's conditional update can be sent: (query, update, token) -> applied.
ConditionalUpdate = Callable[[Document, Document, str], Awaitable[bool]]


def product_reader(db: AsyncDatabase[Document], *, spawn: Spawn | None = None) -> ByIdReader:
    """What :func:`place_order` reads products' names and prices through; one per process
    lets the orders placed at the same moment share one read."""
    return ByIdReader(db.products, {"name": 1, "price_cents": 1}, spawn=spawn)


def order_writer(db: AsyncDatabase[Document], *, spawn: Spawn | None = None) -> DocumentInserter:
    """What :func:`place_order` inserts orders through; one per process lets the orders
    placed at the same moment go in one ``insert_many``."""
    return DocumentInserter(db.orders, spawn=spawn)


async def place_order(db: AsyncDatabase[Document], engine: ChangeEngine, *, user_id: str,
                      items: list[tuple[str, int]], correlation: str, actor: str,
                      idempotency_key: str | None = None,
                      claim: Callable[[str], Document] | None = None,
                      products: ByIdReader | None = None,
                      writer: DocumentInserter | None = None) -> tuple[Document, bool]:
    """Insert a ``pending`` order priced from the database; returns (order, created).

    With ``idempotency_key`` the order id is derived from it, so a retry of the same
    request (say after a 503 whose write did complete) returns the order it placed,
    with ``created`` False, instead of placing a second one. ``claim``: given the new
    order's id, the fields that give it to this instance's pipeline as it is written
    (``Pipeline.claim_placed``), which saves that pipeline a write to claim it.
    ``products``: a reader of products' names and prices (:func:`product_reader`) that
    reads them for every order being placed at that moment in one ``find``; ``writer``
    (:func:`order_writer`), the same for their inserts.
    """
    if not items:
        raise Invalid("an order needs at least one item")
    if len(items) > MAX_ITEMS:
        raise Invalid(f"an order takes at most {MAX_ITEMS} items, got {len(items)}")
    merged: dict[str, int] = {}
    for product_id, quantity in items:
        if quantity < 1:
            raise Invalid(f"quantity of {product_id!r} must be 1..{MAX_QUANTITY}, "
                          f"got {quantity}")
        merged[product_id] = merged.get(product_id, 0) + quantity
    for product_id, quantity in merged.items():  # lines of one product count together
        if quantity > MAX_QUANTITY:
            raise Invalid(f"quantity of {product_id!r} must be 1..{MAX_QUANTITY}, "
                          f"got {quantity}")
    # Prices from the database itself, read after this request came: the cache may be a
    # few milliseconds behind a change.
    if products is None:
        products = product_reader(db)
    found = await products.read(list(merged))
    lines = []
    for product_id, quantity in merged.items():
        product = found.get(product_id)
        if product is None:
            raise Invalid(f"unknown product {product_id!r}")
        lines.append({"product_id": product_id, "name": product["name"], "quantity": quantity,
                      "price_cents": int(product["price_cents"])})
    if idempotency_key is not None and not _CORRELATION.match(idempotency_key):
        raise Invalid("Idempotency-Key must be 1..64 characters of A-Z a-z 0-9 . _ : -")
    at = now_iso()
    order = {
        "_id": (idempotent_order_id(user_id, idempotency_key) if idempotency_key
                else new_order_id()), "user_id": user_id, "items": lines,
        "total_cents": sum(line["quantity"] * line["price_cents"] for line in lines),
        "status": "pending", "history": [{"status": "pending", "at": at, "by": actor}],
        "correlation_id": correlation, "created_at": at, "updated_at": at, "payment": None,
    }
    if idempotency_key is not None:
        order["idempotency_key"] = idempotency_key
    if claim is not None:
        order.update(claim(str(order["_id"])))
    try:
        if writer is None:
            await db.orders.insert_one(order)
        else:
            await writer.insert(order)
    except DuplicateKeyError:
        if idempotency_key is None:
            raise
        placed = await db.orders.find_one({"_id": order["_id"], "user_id": user_id,
                                           "idempotency_key": idempotency_key})
        if placed is None or [(i["product_id"], i["quantity"]) for i in placed["items"]] \
                != list(merged.items()):
            raise Invalid(f"Idempotency-Key {idempotency_key!r} was already used for "
                                "another order") from None
        return engine.visible("orders", placed), False
    await engine.settle("orders", order["_id"], order, timeout=SETTLE_S)
    return engine.visible("orders", order), True


async def transition(db: AsyncDatabase[Document], engine: ChangeEngine, order_id: str,
                     target: str, *,
                     actor: str, expected: str | None = None,
                     extra: dict[str, Any] | None = None) -> Document:
    """Move an order to ``target`` if legal; one conditional update; 409 otherwise."""
    if target not in TRANSITIONS:
        raise Invalid(f"unknown status {target!r}; expected one of {', '.join(STATUSES)}")
    current = await db.orders.find_one({"_id": order_id})
    if current is None:
        raise NotFound(f"no order {order_id!r}")
    status = current["status"]
    if expected is not None and status != expected:
        raise Conflict(f"Order {order_id} is {status} now, not {expected}: someone moved it "
                       "meanwhile.")
    if target not in TRANSITIONS[status]:
        allowed = " or ".join(sorted(TRANSITIONS[status])) or "nothing (it is final)"
        raise Conflict(f"Order {order_id} is {status}; it can move to {allowed} from here, "
                       f"not to {target}.")
    # Units of a reserved order go back, exactly once (see backend.domain.stock).
    restocks = target == "cancelled" and status in HOLDS_STOCK
    if restocks:
        extra = {**(extra or {}), "restock": "due"}
    if target == "cancelled" and (current.get("payment") or {}).get("status") == "captured":
        extra = {**(extra or {}), "refund": "due"}  # the pipeline refunds it (once)
    updated = await apply_transition(db, current, target, actor=actor, extra=extra)
    if updated is None:
        fresh = await db.orders.find_one({"_id": order_id}, {"status": 1}) or {}
        raise Conflict(f"Order {order_id} changed meanwhile; it is {fresh.get('status')} now.")
    await engine.settle("orders", order_id, updated, timeout=SETTLE_S)
    if restocks:
        await stock.restock(db, engine, updated, wait=True)
    elif target == "cancelled":  # takes of a reservation that was still in flight
        await stock.settle_takes(db, order_id, updated["items"], order=updated)
    return engine.visible("orders", updated)


async def apply_transition(db: AsyncDatabase[Document], current: Document, target: str, *,
                           actor: str, extra: dict[str, Any] | None = None,
                           condition: dict[str, Any] | None = None,
                           send: ConditionalUpdate | None = None) -> Document | None:
    """The conditional update behind every transition; None when the order moved meanwhile.

    ``send``: how the update goes out, given (query, update, token) and saying whether it
    was applied (the pipeline's ``UpdateBatcher``, which sends many orders' transitions in
    one command). Then the order returned is ``current`` with this update applied, not
    read back from the database (a field somebody else changed meanwhile, outside the
    status and ``condition``, may be older there): the pipeline's steps need no more."""
    at = now_iso()
    # The whole history array is written with $set (NX-27017 mangles $push of documents);
    # the status condition makes the read-modify-write safe.
    history = [*current.get("history", []), {"status": target, "at": at, "by": actor}]
    # A token of this very attempt: when the connection drops after the server applied the
    # update, the driver's retry finds the status already moved and answers None; the token
    # tells "it was us" from "somebody else got there first".
    token = uuid.uuid4().hex
    changes = {"status": target, "history": history, "updated_at": at, "transition_id": token,
               **(extra or {})}
    query = {"_id": current["_id"], "status": current["status"], **(condition or {})}
    if send is not None:
        return {**current, **changes} if await send(query, {"$set": changes}, token) else None
    result: Document | None = await db.orders.find_one_and_update(
        query, {"$set": changes}, return_document=ReturnDocument.AFTER)
    if result is None:
        result = await db.orders.find_one({"_id": current["_id"], "transition_id": token})
    return result
