"""The Starlette application factory and its lifespan."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.schemas import SchemaGenerator
from starlette.staticfiles import StaticFiles

from backend import api, pages, stock
from backend import orders as order_ops
from backend.analytics import LiveAnalytics
from backend.auth import LoginThrottle
from backend.database import Database, open_database
from backend.errors import HANDLERS
from backend.jsonio import JSON
from backend.live import RenderCache, live_endpoint
from backend.pipeline import PaymentGateway, Pipeline
from backend.prometheus import metrics_text
from backend.security import GuardMiddleware
from backend.settings import Settings
from backend.ws import websocket_endpoint
from seed.loader import is_seeded, seed_database
from streaming import ChangeEngine, MongoCheckpoints

logger = logging.getLogger("changecast.app")

SCHEMAS = SchemaGenerator({"openapi": "3.0.3",
                           "info": {"title": "ChangeCast API", "version": "0.1.0"}})


async def health(request: Request) -> JSONResponse:
    """
    summary: Is the database reachable
    responses: {200: {description: ok}, 503: {description: the database is down}}
    """
    database: Database = request.state.database
    reachable = await database.ping(timeout=0.75)
    body: dict[str, Any] = {
        "status": "ok" if reachable else "down",
        "database": {"kind": database.kind, "reachable": reachable},
        "uptime_s": round(time.monotonic() - request.state.started, 3),
    }
    if database.embedded is not None:
        body["database"]["embedded"] = {
            "state": database.embedded.state.value,
            "restarts": database.embedded.restarts,
        }
    return JSONResponse(body, status_code=200 if reachable else 503)


ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}
COMMON_ERRORS = {400: "bad input (malformed JSON, bad where, bad paging)",
                 403: "forbidden, or a cross-origin write",
                 503: "the database is unavailable; retry after Retry-After seconds"}
BODY_ERRORS = {413: "body over 64 KiB", 422: "body does not match the schema"}


async def openapi(request: Request) -> Response:
    """The OpenAPI document, with the error shape every endpoint may answer with."""
    schema = SCHEMAS.get_schema(routes=request.app.routes)
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            extra = {**COMMON_ERRORS, **(BODY_ERRORS if "requestBody" in operation else {})}
            for status, description in extra.items():
                responses.setdefault(status, {"description": description})
            for status, response in responses.items():
                if int(status) >= 400:
                    response["content"] = {"application/json": {"schema": ERROR_SCHEMA}}
    return JSON(schema)


# Fields that never leave the server: the engine keeps them out of its cache and events,
# and the API out of its answers (secrets, and the pipeline's own bookkeeping: a claim
# alone is not news to anybody).
HIDDEN_FIELDS = {"users": ("password_hash",), "orders": order_ops.INTERNAL, **stock.HIDDEN}


def build_engine(database: Database, settings: Settings) -> ChangeEngine:
    """One change stream per watched collection; polling on the embedded server."""
    return ChangeEngine(
        database.db, mode="poll" if database.kind == "embedded" else "await",
        cache_size=settings.cache_size, hidden=HIDDEN_FIELDS,
        checkpoints=MongoCheckpoints(database.db.stream_checkpoints,
                                     instance_id=database.instance_id),
    )


def create_app(settings: Settings, *, database: Database | None = None) -> Starlette:
    """Build the app; it opens its own database unless one is handed in."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with contextlib.AsyncExitStack() as stack:
            db = database or await stack.enter_async_context(open_database(settings))
            if not await is_seeded(db.db):
                report = await seed_database(
                    db.db, admin_password=settings.admin_password,
                    demo_password=settings.demo_password,
                )
                if not report.skipped:
                    logger.info("seeded demo data: %s products, %s users, %s orders",
                                report.products, report.users, report.orders)
            engine = build_engine(db, settings)
            await engine.start()
            stack.push_async_callback(engine.stop)
            if db.embedded is not None:
                # NX-27017 was seen to rewind or skip its change log across a kill -9: after a
                # restart every stream reopens from now and every subscriber resyncs.
                db.embedded.on_restart(lambda: engine.reset("the embedded database restarted"))
            await engine.prime("products")
            await engine.prime("users")
            analytics = LiveAnalytics(engine, db.db)
            await analytics.start()
            stack.callback(analytics.stop)
            pipeline = None
            if settings.pipeline_enabled:
                pipeline = Pipeline(db.db, engine, gateway=PaymentGateway(
                    success_rate=settings.payment_success_rate,
                    latency_ms=settings.payment_latency_ms,
                    concurrency=settings.payment_concurrency),
                    reconcile_after_s=settings.reconcile_after_s)
                await pipeline.start()
                stack.push_async_callback(pipeline.stop)
            yield {"database": db, "db": db.db, "engine": engine, "settings": settings,
                   "started": time.monotonic(), "throttle": LoginThrottle(),
                   "templates": pages.make_templates(), "connections": set(),
                   "pipeline": pipeline, "analytics": analytics, "renders": RenderCache()}

    routes = [
        Route("/api/health", health, methods=["GET"]),
        Route("/api/metrics", api.metrics, methods=["GET"]),
        Route("/api/login", api.login, methods=["POST"]),
        Route("/api/logout", api.logout, methods=["POST"]),
        Route("/api/me", api.me, methods=["GET"]),
        Route("/api/products", api.list_products, methods=["GET"]),
        Route("/api/products/{product_id}", api.get_product, methods=["GET"]),
        Route("/api/products/{product_id}/stock", api.put_stock, methods=["PUT"]),
        Route("/api/orders", api.list_orders, methods=["GET"]),
        Route("/api/orders", api.post_order, methods=["POST"]),
        Route("/api/orders/{order_id}", api.get_order, methods=["GET"]),
        Route("/api/orders/{order_id}/status", api.put_order_status, methods=["PUT"]),
        Route("/api/orders/{order_id}/audit", api.get_order_audit, methods=["GET"]),
        Route("/api/simulate/new-order", api.simulate_new_order, methods=["POST"]),
        Route("/api/simulate/update-stock", api.simulate_update_stock, methods=["POST"]),
        Route("/api/simulate/status-update", api.simulate_status_update, methods=["POST"]),
        Route("/metrics", metrics_text, methods=["GET"], include_in_schema=False),
        Route("/openapi.json", openapi, methods=["GET"], include_in_schema=False),
        Route("/", pages.page("portal"), methods=["GET"], include_in_schema=False),
        Route("/admin", pages.page("admin"), methods=["GET"], include_in_schema=False),
        Route("/dashboard", pages.page("dashboard"), methods=["GET"], include_in_schema=False),
        Route("/login", pages.login_page, methods=["GET"], include_in_schema=False),
        Route("/login", pages.login_form, methods=["POST"], include_in_schema=False),
        Route("/login/demo", pages.login_demo, methods=["POST"], include_in_schema=False),
        Route("/logout", pages.logout_form, methods=["POST"], include_in_schema=False),
        Route("/ui/cart", pages.cart_add, methods=["POST"], include_in_schema=False),
        Route("/ui/cart/remove", pages.cart_remove, methods=["POST"], include_in_schema=False),
        Route("/ui/checkout", pages.checkout, methods=["POST"], include_in_schema=False),
        Route("/ui/orders/{order_id}", pages.order_detail, methods=["GET"],
              include_in_schema=False),
        Route("/ui/orders/{order_id}/status", pages.order_status, methods=["POST"],
              include_in_schema=False),
        Route("/ui/products/{product_id}/stock", pages.product_stock, methods=["POST"],
              include_in_schema=False),
        Route("/ui/simulate/{kind}", pages.simulate, methods=["POST"], include_in_schema=False),
        Mount("/static", StaticFiles(directory=str(pages.STATIC_DIR)), name="static"),
        WebSocketRoute("/ws", websocket_endpoint),
        WebSocketRoute("/ws/live/{view}", live_endpoint),
    ]
    middleware = [
        Middleware(GuardMiddleware),
        Middleware(SessionMiddleware, secret_key=settings.secret_key,
                   session_cookie="changecast_session", same_site="lax",
                   https_only=settings.secure_cookies, max_age=14 * 24 * 3600),
    ]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                     exception_handlers=HANDLERS)  # type: ignore[arg-type]
