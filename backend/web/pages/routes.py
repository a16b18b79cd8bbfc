"""HTML pages (``/``, ``/admin``, ``/dashboard``, ``/login``) and the small ``/ui/*`` actions
their htmx controls post to.

Actions answer with HTML: the fragment to swap (the cart), or a toast for an
error (re-targeted to ``#toasts``), or nothing at all, because the change
itself comes back to every open page over its live socket. They call the same
functions as the JSON API, so rules and messages are the same.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from backend.domain import demo
from backend.domain import orders as order_ops
from backend.domain import stock as stock_ops
from backend.domain.errors import Conflict, Forbidden, Invalid, NotFound, StaleStock
from backend.domain.users import User
from backend.web.http.api import change_status, order_audit, visible_order
from backend.web.http.auth import (
    current_user,
    demo_admin,
    end_session,
    require_admin,
    require_user,
    sign_in,
    start_session,
)
from backend.web.http.errors import CLIENT_ERRORS, ApiError, error_page, headers_of, status_of
from backend.web.http.security import is_loopback
from backend.web.live.presence import viewers
from backend.web.pages.fragments import STATUS_LABELS
from backend.web.pages.templates import make_fragments
from backend.web.pages.views import VIEWS, AdminView, search_params, status_filter
from backend.web.state import app_state
from streaming import Document

MAX_FORM = 16 * 1024
MAX_CART_LINES = order_ops.MAX_ITEMS


def _html(text: str, status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    return HTMLResponse(text, status_code=status, headers=headers)


# ---- sign-in ---------------------------------------------------------------------------------

def demo_login_offered(request: Request) -> bool:
    """One-click sign-in (no password) is a demo convenience for whoever sits at this
    machine: offered in demo mode to loopback clients, or to all with CHANGECAST_DEMO_LOGIN=on."""
    settings = app_state(request).settings
    if not settings.demo or settings.demo_login == "off":
        return False
    return settings.demo_login == "on" or is_loopback(request.client.host if request.client
                                                      else None)


async def _login_context(request: Request) -> dict[str, Any]:
    demo_users: list[Document] = []
    state = app_state(request)
    if demo_login_offered(request):
        demo_users = await state.db.users.find(
            {}, {"_id": 0, "email": 1, "name": 1, "role": 1}).sort([("role", 1), ("email", 1)]) \
            .to_list()
    return {"error": None, "email": "", "demo_users": demo_users}


async def login_page(request: Request) -> Response:
    return app_state(request).templates.TemplateResponse(request, "login.html",
                                                         await _login_context(request))


def _landing(user: User) -> RedirectResponse:
    return RedirectResponse("/admin" if user.is_admin else "/", status_code=303)


async def login_form(request: Request) -> Response:
    form = await _form(request)
    email = str(form.get("email", ""))
    try:
        user = await sign_in(request, email, str(form.get("password", "")))
    except CLIENT_ERRORS as exc:
        context = await _login_context(request)
        context.update(error=exc.message, email=email.strip().lower())
        return app_state(request).templates.TemplateResponse(request, "login.html", context,
                                                             status_code=status_of(exc))
    return _landing(user)


async def login_demo(request: Request) -> Response:
    """Demo mode only: one click signs in as the chosen seeded user, no password."""
    state = app_state(request)
    if not demo_login_offered(request):
        raise Forbidden("one-click sign-in is only offered in demo mode, to this machine "
                        "(CHANGECAST_DEMO_LOGIN=on offers it to everyone)")
    form = await _form(request)
    email = str(form.get("email", "")).strip().lower()
    doc = await state.db.users.find_one({"email": email})
    if doc is None:
        raise NotFound(f"no demo user {email!r}")
    return _landing(start_session(request, doc))


async def logout_form(request: Request) -> Response:
    await end_session(request)
    return RedirectResponse("/login", status_code=303)


# ---- pages -----------------------------------------------------------------------------------

def page(view_name: str) -> Callable[[Request], Awaitable[Response]]:
    view_cls = VIEWS[view_name]

    async def endpoint(request: Request) -> Response:
        user = await current_user(request)
        if user is None:
            return RedirectResponse("/login", status_code=303)
        state = app_state(request)
        if not view_cls.allows(user):
            return error_page(request.scope, 403, "this page is for administrators; you are "
                              f"signed in as {user.name}, a customer.")
        seq = state.engine.seq  # before the snapshot: the socket resumes from here
        query = request.query_params
        try:
            view = view_cls(state, user, make_fragments(state),
                            {"status": query.get("status", ""),
                             **search_params(query.get("q"), query.get("category"))})
            context = await view.context()
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        context.update(view=view, user=user, seq=seq, name_of=view.fragments.name_of,
                       demo_controls=state.settings.demo,
                       heartbeat_s=state.settings.heartbeat_s)
        if view.name == "portal":
            context.update(await cart_context(request))
        return state.templates.TemplateResponse(request, f"{view.name}.html", context,
                                                headers={"Cache-Control": "no-store"})

    endpoint.__name__ = f"{view_name}_page"
    return endpoint


# ---- the cart (kept in the signed session cookie) --------------------------------------------

def _cart(request: Request) -> dict[str, int]:
    raw = request.session.get("cart")
    if not isinstance(raw, dict):
        return {}
    return {str(k): int(v) for k, v in raw.items() if isinstance(v, int) and v > 0}


async def cart_context(request: Request, message: dict[str, str] | None = None) -> dict[str, Any]:
    lines = []
    engine = app_state(request).engine
    for product_id, quantity in _cart(request).items():
        product = await engine.get("products", product_id)
        if product is None:
            continue
        lines.append({"product_id": product_id, "name": product["name"], "quantity": quantity,
                      "total_cents": quantity * int(product["price_cents"])})
    return {"cart_lines": lines, "cart_total": sum(line["total_cents"] for line in lines),
            "cart_message": message}


async def _render_cart(request: Request, message: dict[str, str] | None = None,
                       status: int = 200) -> Response:
    context = await cart_context(request, message)
    return app_state(request).templates.TemplateResponse(request, "_cart.html", context,
                                                         status_code=status)


def _quantity(value: Any) -> int:
    quantity = _whole(value, "quantity")
    if not 1 <= quantity <= order_ops.MAX_QUANTITY:
        raise Invalid(f"Choose a quantity from 1 to {order_ops.MAX_QUANTITY:,} (you asked for "
                      f"{quantity:,}).")
    return quantity


def _short_of_stock(product: Document, wanted: int) -> str | None:
    stock = int(product.get("stock", 0))
    if stock <= 0:
        return f"{product['name']} is out of stock."
    if wanted > stock:
        return f"Only {stock} of {product['name']} left in stock (you asked for {wanted})."
    return None


def to_sign_in() -> Response:
    """What an htmx action answers a signed-out user: go to the sign-in page."""
    return Response(status_code=401, headers={"HX-Redirect": "/login"})


async def cart_add(request: Request) -> Response:
    if await current_user(request) is None:
        return to_sign_in()
    form = await _form(request)
    cart = _cart(request)
    try:
        product_id = str(form.get("product_id", ""))
        product = await app_state(request).engine.get("products", product_id)
        if product is None:
            raise Invalid(f"There is no product {product_id[:40]!r} in the shop.")
        quantity = _quantity(form.get("quantity", "1"))
        wanted = cart.get(product_id, 0) + quantity
        short = _short_of_stock(product, wanted)
        if short:
            raise Conflict(short)
        if product_id not in cart and len(cart) >= MAX_CART_LINES:
            raise Invalid(f"A cart holds at most {MAX_CART_LINES} different products; "
                          "place this order first.")
    except CLIENT_ERRORS as exc:
        return await _render_cart(request, {"kind": "error", "text": exc.message},
                                  status_of(exc))
    cart[product_id] = wanted
    request.session["cart"] = cart
    text = f"Added {quantity} of {product['name']} to your cart."
    return await _render_cart(request, {"kind": "ok", "text": text})


async def cart_remove(request: Request) -> Response:
    if await current_user(request) is None:
        return to_sign_in()
    form = await _form(request)
    cart = _cart(request)
    cart.pop(str(form.get("product_id", "")), None)
    request.session["cart"] = cart
    return await _render_cart(request)


async def checkout(request: Request) -> Response:
    user = await current_user(request)
    if user is None:
        return to_sign_in()
    cart = _cart(request)
    state = app_state(request)
    try:
        if not cart:
            raise Invalid("Your cart is empty.")
        for product_id, quantity in cart.items():
            product = await state.engine.get("products", product_id)
            if product is None:
                raise Invalid(f"{product_id} is no longer sold; remove it from the cart.")
            short = _short_of_stock(product, quantity)
            if short:
                raise Conflict(short)
        order, _ = await order_ops.place_order(
            state.db, state.engine, user_id=user.id, items=list(cart.items()),
            correlation=order_ops.correlation_id(None), actor=user.role,
            claim=state.placement_claim, products=state.products,
            writer=state.orders)
    except CLIENT_ERRORS as exc:
        return await _render_cart(request, {"kind": "error", "text": exc.message},
                                  status_of(exc))
    request.session["cart"] = {}
    return await _render_cart(request, {"kind": "ok", "text": f"Order {order['_id']} placed. "
                                        "Follow it under My orders."}, 201)


# ---- admin and customer actions --------------------------------------------------------------

def toast_response(request: Request, message: str, kind: str, status: int) -> Response:
    """A toast appended to ``#toasts``, whatever the control's own target was."""
    html = make_fragments(app_state(request)).render("_toast.html", None, message=message,
                                                     kind=kind)
    return _html(html, status, {"HX-Retarget": "#toasts", "HX-Reswap": "beforeend"})


def action(handler: Callable[[Request], Awaitable[str | None]]) \
        -> Callable[[Request], Awaitable[Response]]:
    """An htmx action: 200 with an optional confirmation toast, or an error toast; a
    signed-out user is sent to the sign-in page."""

    async def endpoint(request: Request) -> Response:
        try:
            done = await handler(request)
        except CLIENT_ERRORS as exc:
            status = status_of(exc)
            if status == 401:
                return to_sign_in()
            response = toast_response(request, exc.message, "error", status)
            response.headers.update(headers_of(exc))
            if isinstance(exc, StaleStock):  # the page asks again with this value
                response.headers["X-Current-Stock"] = str(exc.current)
            return response
        if done is None:
            return Response(status_code=204)
        return toast_response(request, done, "ok", 200)

    endpoint.__name__ = handler.__name__
    return endpoint


@action
async def order_status(request: Request) -> str | None:
    form = await _form(request)
    status = str(form.get("status", ""))
    await change_status(request, request.path_params["order_id"], status)
    return None


def _whole(value: Any, name: str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise Invalid(f"The {name} must be a whole number, not {str(value)[:20]!r}.") from None


@action
async def product_stock(request: Request) -> str | None:
    await require_admin(request)
    form = await _form(request)
    level = form.get("stock")
    delta = form.get("delta")
    expected = form.get("expected")
    state = app_state(request)
    await stock_ops.change_stock(
        state.db, state.engine, request.path_params["product_id"],
        stock=_whole(level, "stock") if level not in (None, "") else None,
        delta=_whole(delta, "delta") if delta not in (None, "") else None,
        expected=_whole(expected, "expected") if expected not in (None, "") else None)
    return None


@action
async def simulate(request: Request) -> str | None:
    """A demo button: an admin's simulations, or a shopper's (another shopper buys, a
    restock, the next step of their own order); demo mode only, rate-limited per session."""
    kind = request.path_params["kind"]
    state = app_state(request)
    shopper = demo.SHOPPER_SIMULATIONS.get(kind)
    if shopper is not None:
        user = await require_user(request)
        if not state.settings.demo:
            raise Forbidden("Demo controls are off (CHANGECAST_DEMO).")
        run = shopper
    else:
        user = await demo_admin(request)
        admin_run = demo.SIMULATIONS.get(kind)
        if admin_run is None:
            raise NotFound(f"There is no demo action {kind[:40]!r}; the choices are "
                           f"{', '.join([*demo.KINDS, *demo.SHOPPER_SIMULATIONS])}.")
        run = admin_run
    state.demo_limiter.spend(f"{user.id}:{request.session.get('at', '')}")
    doc = await run(state.db, state.engine, user)
    if kind in ("update-stock", "restock"):
        return f"Stock of {doc['name']} is now {doc['stock']}."
    if kind in ("new-order", "shopper-buys"):
        return f"Another shopper placed order {doc['_id']}." if shopper else \
            f"Simulated order {doc['_id']}."
    return f"Order {doc['_id']} is now {STATUS_LABELS.get(doc['status'], doc['status'])}."


async def orders_page(request: Request) -> Response:
    """The admin table's next rows (``after`` the last one shown), as upserts at its end."""
    state = app_state(request)
    user = await require_admin(request)
    try:
        status = status_filter(request.query_params.get("status")) or ""
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    view = AdminView(state, user, make_fragments(state), {"status": status})
    after_id = request.query_params.get("after", "")[:64]
    after = await state.db.orders.find_one({"_id": after_id}, {"created_at": 1}) \
        if after_id else None
    if after_id and after is None:
        raise NotFound(f"There is no order {after_id}.")
    orders = await view.orders(after)
    fragments = view.fragments
    html = "".join(fragments.order_row(order, {"upsert": "beforeend:#orders-body"})
                   for order in orders)
    return _html(html, headers={"Cache-Control": "no-store"})


async def order_detail(request: Request) -> Response:
    try:
        _, order = await visible_order(request, request.path_params["order_id"])
    except CLIENT_ERRORS as exc:
        return toast_response(request, exc.message, "error", status_of(exc))
    state = app_state(request)
    audit = await order_audit(state.db, order["_id"])
    watching = viewers(state.engine.documents("presence") or [], str(order["_id"]))
    html = make_fragments(state).order_detail(order, audit, watching)
    return _html(html, headers={"Cache-Control": "no-store"})


async def _form(request: Request) -> FormData:
    if int(request.headers.get("content-length") or 0) > MAX_FORM:
        raise ApiError(413, f"form is larger than {MAX_FORM} bytes")
    return await request.form(max_files=0, max_fields=50)

