"""REST handlers of the HTTP contract."""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable
from typing import Any, TypeVar

import msgspec
from pymongo.asynchronous.database import AsyncDatabase
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import Response

from backend.domain import access, demo, stock
from backend.domain import orders as order_ops
from backend.domain.errors import Invalid, NotFound
from backend.domain.users import User
from backend.web.http.auth import (
    current_user,
    demo_admin,
    end_session,
    require_admin,
    require_user,
    sign_in,
)
from backend.web.http.errors import ApiError
from backend.web.http.security import MAX_BODY
from backend.web.jsonio import JSON
from backend.web.state import app_state
from streaming import Document, Filter, compile_filter

T = TypeVar("T")
MAX_LIMIT = 500
MAX_CURSOR = 1_000_000_000
PRODUCT_SORTS = {"_id", "name", "category", "price_cents", "stock", "updated_at"}
ORDER_SORTS = {"_id", "created_at", "updated_at", "total_cents", "status", "user_id"}


class LoginBody(msgspec.Struct, forbid_unknown_fields=True):
    email: str
    password: str


class StockBody(msgspec.Struct, forbid_unknown_fields=True):
    stock: int | None = None
    delta: int | None = None
    expected: int | None = None


class ItemBody(msgspec.Struct, forbid_unknown_fields=True):
    product_id: str
    quantity: int


class OrderBody(msgspec.Struct, forbid_unknown_fields=True):
    items: list[ItemBody]
    user_id: str | None = None


class StatusBody(msgspec.Struct, forbid_unknown_fields=True):
    status: str


async def read_body(request: Request, kind: type[T]) -> T:
    """Decode and validate a JSON body; 400/413 with a message on bad input."""
    body = await request.body()
    if len(body) > MAX_BODY:
        raise ApiError(413, f"request body is {len(body)} bytes; the limit is {MAX_BODY}")
    if not body:
        raise ApiError(400, "expected a JSON body")
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise ApiError(422, f"invalid body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"malformed JSON: {exc}") from None


def _paging(request: Request, sorts: set[str], default: str) -> tuple[int, int, list[tuple[str, int]]]:
    params = request.query_params
    try:
        limit = int(params.get("limit", "100"))
        offset = int(params.get("cursor", "0") or "0")
    except ValueError:
        raise ApiError(400, "limit and cursor must be whole numbers") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise ApiError(400, f"limit must be 1..{MAX_LIMIT}, got {limit}")
    if not 0 <= offset <= MAX_CURSOR:
        raise ApiError(400, f"cursor must be 0..{MAX_CURSOR}, got {offset}")
    sort = params.get("sort", default)
    field, direction = (sort[1:], -1) if sort.startswith("-") else (sort, 1)
    if field not in sorts:
        raise ApiError(400, f"sort must be one of {', '.join(sorted(sorts))} (prefix - for "
                            f"descending), got {sort!r}")
    order = [(field, direction)] if field == "_id" else [(field, direction), ("_id", 1)]
    return limit, offset, order


def _after(request: Request, order: list[tuple[str, int]]) -> str | None:
    """``after``: keyset paging (the ``_id`` the previous page ended with), which a change
    between two pages cannot shift; only with ``sort=_id`` and without ``cursor``."""
    after = request.query_params.get("after")
    if after is None:
        return None
    if order != [("_id", 1)]:
        raise ApiError(400, "after pages by _id: use it with sort=_id (the default for products)")
    if request.query_params.get("cursor"):
        raise ApiError(400, "give either cursor (an offset) or after (an _id), not both")
    if not 1 <= len(after) <= 200:
        raise ApiError(400, "after must be an _id of 1..200 characters")
    return after


def _where(request: Request) -> Filter | None:
    text = request.query_params.get("where")
    return compile_filter(text) if text else None


def _page(items: list[Any], seq: int, offset: int, limit: int, more: bool) -> Response:
    body = {"items": items, "seq": seq,
            "next_cursor": str(offset + limit) if more else None}
    return JSON(body, headers={"X-Stream-Seq": str(seq)})


async def list_products(request: Request) -> Response:
    """
    summary: List products (served from the change-coherent cache)
    parameters: [{name: where, in: query, schema: {type: string, maxLength: 1000}}, {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 500, default: 100}}, {name: cursor, in: query, schema: {type: string, pattern: "^[0-9]{0,9}$"}}, {name: after, in: query, description: 'keyset paging: the _id the previous page ended with (only with sort=_id)', schema: {type: string, minLength: 1, maxLength: 200}}, {name: sort, in: query, schema: {type: string, enum: [_id, "-_id", name, "-name", category, "-category", price_cents, "-price_cents", stock, "-stock", updated_at, "-updated_at"]}}]
    responses: {200: {description: a page of products, headers: {X-Stream-Seq: {schema: {type: integer}}}}, 400: {description: bad where or paging}}
    """
    state = app_state(request)
    engine = state.engine
    limit, offset, order = _paging(request, PRODUCT_SORTS, "_id")
    after = _after(request, order)
    where = _where(request)
    seq = engine.seq  # read before the snapshot: a resume from here never leaves a gap
    docs = engine.documents("products")
    if docs is None:
        query = where.mongo if where else {}
        if after is not None:
            query = {"$and": [query, {"_id": {"$gt": after}}]}
        docs = await state.db.products.find(query, engine.hidden_projection("products")) \
            .sort(order).skip(offset).limit(limit + 1).to_list()
        return _page(docs[:limit], seq, offset, limit, len(docs) > limit)
    if where is not None:
        docs = [d for d in docs if where.matches(d)]
    if after is not None:
        docs = [d for d in docs if d["_id"] > after]
    for field, direction in reversed(order):
        docs.sort(key=_key_of(field), reverse=direction < 0)
    return _page(docs[offset:offset + limit], seq, offset, limit, len(docs) > offset + limit)


def _key_of(field: str) -> Callable[[Document], tuple[int, Any]]:
    return lambda doc: _sort_key(doc.get(field))


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None:
        return (0, 0)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (1, value)
    return (2, str(value))


async def get_product(request: Request) -> Response:
    """
    summary: One product (from the cache)
    parameters: [{name: product_id, in: path, required: true, schema: {type: string}}]
    responses: {200: {description: the product}, 404: {description: no such product}}
    """
    product_id = request.path_params["product_id"]
    doc = await app_state(request).engine.get("products", product_id)
    if doc is None:
        raise NotFound(f"no product {product_id!r}")
    return JSON(doc)


async def put_stock(request: Request) -> Response:
    """
    summary: Set or shift a product's stock (admin)
    parameters: [{name: product_id, in: path, required: true, schema: {type: string}}]
    description: 'With `expected` (the stock the admin saw), the set happens only if the stock is still that; otherwise 409 with code `stock_changed` and the `current` stock, and nothing is written.'
    requestBody: {required: true, content: {application/json: {schema: {type: object, additionalProperties: false, oneOf: [{required: [stock]}, {required: [delta]}], properties: {stock: {type: integer, minimum: 0, maximum: 1000000000}, delta: {type: integer, minimum: -1000000000, maximum: 1000000000}, expected: {type: integer, description: 'only with stock: the stock the admin saw'}}}}}}
    responses: {200: {description: the product}, 401: {description: not signed in}, 403: {description: not an admin}, 404: {description: no such product}, 409: {description: 'would go below 0 or above the limit; or (code stock_changed, with current) the stock is no longer expected'}, 422: {description: invalid body}}
    """
    await require_admin(request)
    body = await read_body(request, StockBody)
    state = app_state(request)
    doc = await stock.change_stock(state.db, state.engine, request.path_params["product_id"],
                                   stock=body.stock, delta=body.delta, expected=body.expected)
    return JSON(doc)


async def list_orders(request: Request) -> Response:
    """
    summary: List orders (customers see their own)
    parameters: [{name: where, in: query, schema: {type: string, maxLength: 1000}}, {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 500, default: 100}}, {name: cursor, in: query, schema: {type: string, pattern: "^[0-9]{0,9}$"}}, {name: after, in: query, description: 'keyset paging: the _id the previous page ended with (only with sort=_id)', schema: {type: string, minLength: 1, maxLength: 200}}, {name: sort, in: query, schema: {type: string, enum: [_id, "-_id", created_at, "-created_at", updated_at, "-updated_at", total_cents, "-total_cents", status, "-status", user_id, "-user_id"]}}]
    responses: {200: {description: a page of orders, headers: {X-Stream-Seq: {schema: {type: integer}}}}, 400: {description: bad where or paging}, 401: {description: not signed in}}
    """
    user = await require_user(request)
    limit, offset, order = _paging(request, ORDER_SORTS, "-created_at")
    after = _after(request, order)
    where = _where(request)
    state = app_state(request)
    own: dict[str, Any] = {} if user.is_admin else {"user_id": user.id}
    if after is not None:
        own["_id"] = {"$gt": after}
    seq = state.engine.seq
    projection = state.engine.hidden_projection("orders")
    if where is not None and state.database.kind == "embedded":
        # NX-27017 does not look into arrays for $in, $nin, $lt… nor treat a missing field
        # as null for $ne: the engine's own predicate (MongoDB's rules, the same a live view
        # uses) filters the sorted collection instead.
        cursor = state.db.orders.find(own, projection).sort(order)
        try:
            docs = await _matching(cursor, where, offset, limit + 1)
        finally:
            await cursor.close()
    else:
        query = {"$and": [where.mongo, own]} if where is not None else own
        docs = await state.db.orders.find(query, projection).sort(order).skip(offset) \
            .limit(limit + 1).to_list()
    return _page(docs[:limit], seq, offset, limit, len(docs) > limit)


async def _matching(cursor: AsyncIterable[Document], where: Filter, offset: int,
                    count: int) -> list[Document]:
    """Up to ``count`` documents of ``cursor`` that ``where`` matches, after ``offset``."""
    found: list[Document] = []
    async for doc in cursor:
        if where.matches(doc):
            if offset:
                offset -= 1
                continue
            found.append(doc)
            if len(found) == count:
                break
    return found


async def visible_order(request: Request, order_id: str) -> tuple[User, Document]:
    """The signed-in user and the order, if they may see it (404 otherwise)."""
    user = await require_user(request)
    state = app_state(request)
    doc = access.check_order_visible(user, await state.db.orders.find_one({"_id": order_id}),
                                     order_id)
    return user, state.engine.visible("orders", doc)


async def change_status(request: Request, order_id: str, status: str) -> Document:
    """An admin moves any order; a customer may only cancel their own."""
    user, doc = await visible_order(request, order_id)
    access.check_status_change(user, status)
    state = app_state(request)
    return await order_ops.transition(state.db, state.engine, doc["_id"], status,
                                      actor=user.role)


async def get_order(request: Request) -> Response:
    """
    summary: One order (a customer sees only their own)
    parameters: [{name: order_id, in: path, required: true, schema: {type: string}}]
    responses: {200: {description: the order}, 401: {description: not signed in}, 404: {description: no such order}}
    """
    _, doc = await visible_order(request, request.path_params["order_id"])
    return JSON(doc)


async def order_audit(db: AsyncDatabase[Document], order_id: str) -> list[Document]:
    """An order's audit entries, oldest first."""
    return await db.audit.find({"order_id": order_id}).sort([("at", 1), ("_id", 1)]).to_list()


async def get_order_audit(request: Request) -> Response:
    """
    summary: An order's audit trail, oldest first (a customer sees only their own)
    parameters: [{name: order_id, in: path, required: true, schema: {type: string}}]
    responses: {200: {description: the audit entries}, 401: {description: not signed in}, 404: {description: no such order}}
    """
    _, doc = await visible_order(request, request.path_params["order_id"])
    entries = await order_audit(app_state(request).db, doc["_id"])
    return JSON({"order_id": doc["_id"], "correlation_id": doc.get("correlation_id"),
                 "items": entries})


async def post_order(request: Request) -> Response:
    """
    summary: Place an order (priced from the database)
    requestBody: {required: true, content: {application/json: {schema: {type: object, additionalProperties: false, required: [items], properties: {items: {type: array, minItems: 1, maxItems: 50, items: {type: object, additionalProperties: false, required: [product_id, quantity], properties: {product_id: {type: string}, quantity: {type: integer, minimum: 1, maximum: 1000}}}}, user_id: {type: string}}}}}}
    parameters: [{name: Idempotency-Key, in: header, required: false, schema: {type: string, pattern: "^[A-Za-z0-9._:-]{1,64}$"}, description: "retry-safe: the same key (per user) with the same items returns the order it placed (200, Idempotent-Replayed: true) instead of placing another"}]
    responses: {200: {description: a retry of an Idempotency-Key; the order it placed}, 201: {description: the pending order}, 401: {description: not signed in}, 422: {description: invalid items, or an Idempotency-Key already used for another order}}
    """
    user = await require_user(request)
    body = await read_body(request, OrderBody)
    state = app_state(request)
    access.check_order_owner(user, body.user_id)
    owner = user.id if body.user_id is None else body.user_id
    if owner != user.id and await state.engine.get("users", owner) is None:
        raise Invalid(f"unknown user {owner!r}")
    correlation = order_ops.correlation_id(request.headers.get("x-correlation-id"))
    order, created = await order_ops.place_order(
        state.db, state.engine, user_id=owner,
        items=[(i.product_id, i.quantity) for i in body.items], correlation=correlation,
        actor=user.role, idempotency_key=request.headers.get("idempotency-key"),
        claim=state.placement_claim, products=state.products,
        writer=state.orders)
    headers = {"X-Correlation-ID": str(order["correlation_id"])}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return JSON(order, status_code=201 if created else 200, headers=headers)


async def put_order_status(request: Request) -> Response:
    """
    summary: Change an order's status (admin; customers may cancel their own before shipping)
    parameters: [{name: order_id, in: path, required: true, schema: {type: string}}]
    requestBody: {required: true, content: {application/json: {schema: {type: object, additionalProperties: false, required: [status], properties: {status: {type: string, enum: [pending, reserved, paid, processing, shipped, delivered, rejected, payment_failed, cancelled]}}}}}}
    responses: {200: {description: the order}, 401: {description: not signed in}, 403: {description: not allowed}, 404: {description: no such order}, 409: {description: illegal transition}, 422: {description: invalid body}}
    """
    order_id = request.path_params["order_id"]
    body = await read_body(request, StatusBody)
    updated = await change_status(request, order_id, body.status)
    return JSON(updated, headers={"X-Correlation-ID": str(updated.get("correlation_id", ""))})


async def login(request: Request) -> Response:
    """
    summary: Sign in; sets the session cookie
    requestBody: {required: true, content: {application/json: {schema: {type: object, additionalProperties: false, required: [email, password], properties: {email: {type: string}, password: {type: string}}}}}}
    responses: {200: {description: signed in}, 401: {description: bad credentials}, 429: {description: throttled}}
    """
    body = await read_body(request, LoginBody)
    user = await sign_in(request, body.email, body.password)
    return JSON({"user": user.public()})


async def logout(request: Request) -> Response:
    """
    summary: Sign out
    responses: {200: {description: signed out}}
    """
    await end_session(request)
    return JSON({"ok": True})


async def me(request: Request) -> Response:
    """
    summary: The signed-in user
    responses: {200: {description: the user or null}}
    """
    user = await current_user(request)
    return JSON({"user": user.public() if user else None})


async def simulate_new_order(request: Request) -> Response:
    """
    summary: Demo - place a random order for a random customer (admin)
    responses: {201: {description: the order}, 403: {description: admins only / demo mode only}}
    """
    admin = await demo_admin(request)
    state = app_state(request)
    return JSON(await demo.new_order(state.db, state.engine, admin), status_code=201)


async def simulate_update_stock(request: Request) -> Response:
    """
    summary: Demo - change a random product's stock (admin)
    responses: {200: {description: the product}, 403: {description: admins only / demo mode only}}
    """
    admin = await demo_admin(request)
    state = app_state(request)
    return JSON(await demo.update_stock(state.db, state.engine, admin))


async def simulate_status_update(request: Request) -> Response:
    """
    summary: Demo - advance a random order that an admin can advance (admin)
    responses: {200: {description: the order}, 403: {description: admins only / demo mode only}, 409: {description: nothing to advance}}
    """
    admin = await demo_admin(request)
    state = app_state(request)
    return JSON(await demo.status_update(state.db, state.engine, admin))


class Orders(HTTPEndpoint):
    """``/api/orders``: one route for both methods, so ``OPTIONS`` and a 405 name both."""

    get = staticmethod(list_orders)
    post = staticmethod(post_order)
