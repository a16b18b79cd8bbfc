"""The Starlette application factory and its lifespan, which builds the shared state."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from backend.domain import orders as order_ops
from backend.domain.analytics import LiveAnalytics
from backend.domain.passwords import PasswordPool
from backend.infra.database import Database, open_database
from backend.infra.history import HistoryMonitor
from backend.infra.reachability import Reachability
from backend.infra.settings import Settings
from backend.pipeline import PaymentGateway, Pipeline
from backend.web.http import api
from backend.web.http.errors import HANDLERS
from backend.web.http.health import health
from backend.web.http.metrics import metrics, metrics_text
from backend.web.http.openapi import openapi
from backend.web.http.security import GuardMiddleware
from backend.web.live.json_socket import websocket_endpoint
from backend.web.live.page_socket import live_endpoint
from backend.web.live.presence import Presence
from backend.web.live.session import end_revoked_sessions
from backend.web.pages import routes as pages
from backend.web.pages.templates import STATIC_DIR, make_templates
from backend.web.state import STATE_KEY, AppState
from seed.loader import is_seeded, seed_database
from streaming import DEFAULT_COLLECTIONS, ChangeEngine, MongoCheckpoints

GC_THRESHOLDS = (7_000, 20, 100)  # CPython's defaults: 700, 10, 10

logger = logging.getLogger("changecast.app")


# Watched: the engine's defaults and who has the admin console open.
COLLECTIONS = (*DEFAULT_COLLECTIONS, "presence")


def build_engine(database: Database, settings: Settings) -> ChangeEngine:
    """One change stream per watched collection; polling on the embedded server."""
    return ChangeEngine(
        database.db, collections=COLLECTIONS,
        mode="poll" if database.kind == "embedded" else "await",
        cache_size=settings.cache_size, hidden=order_ops.HIDDEN_FIELDS,
        idle_max_interval=settings.idle_poll_max_s,
        full_document="whenAvailable" if database.features.post_images else "updateLookup",
        checkpoints=MongoCheckpoints(database.db.stream_checkpoints,
                                     instance_id=database.instance_id),
    )


def routes() -> list[BaseRoute]:
    """Every HTTP route and WebSocket of the app (docs/api.md)."""
    return [
        Route("/api/health", health, methods=["GET"]),
        Route("/api/metrics", metrics, methods=["GET"]),
        Route("/api/login", api.login, methods=["POST"]),
        Route("/api/logout", api.logout, methods=["POST"]),
        Route("/api/me", api.me, methods=["GET"]),
        Route("/api/products", api.list_products, methods=["GET"]),
        Route("/api/products/{product_id}", api.get_product, methods=["GET"]),
        Route("/api/products/{product_id}/stock", api.put_stock, methods=["PUT"]),
        Route("/api/orders", api.Orders),
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
        Route("/ui/orders", pages.orders_page, methods=["GET"], include_in_schema=False),
        Route("/ui/orders/{order_id}", pages.order_detail, methods=["GET"],
              include_in_schema=False),
        Route("/ui/orders/{order_id}/status", pages.order_status, methods=["POST"],
              include_in_schema=False),
        Route("/ui/products/{product_id}/stock", pages.product_stock, methods=["POST"],
              include_in_schema=False),
        Route("/ui/simulate/{kind}", pages.simulate, methods=["POST"], include_in_schema=False),
        Mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static"),
        WebSocketRoute("/ws", websocket_endpoint),
        WebSocketRoute("/ws/live/{view}", live_endpoint),
    ]


_gc_tuned = False


def tune_gc() -> None:
    """Freeze what exists and space out collections, once per process."""
    global _gc_tuned
    if not _gc_tuned:
        _gc_tuned = True
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)


async def ensure_seeded(db: Database, settings: Settings) -> None:
    """Load the demo data into an empty database."""
    if not await is_seeded(db.db):
        report = await seed_database(db.db, admin_password=settings.admin_password,
                                     demo_password=settings.demo_password)
        if not report.skipped:
            logger.info("seeded demo data: %s products, %s users, %s orders",
                        report.products, report.users, report.orders)


def create_app(settings: Settings, *, database: Database | None = None) -> Starlette:
    """Build the app; it opens its own database unless one is handed in."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, AppState]]:
        async with contextlib.AsyncExitStack() as stack:
            db = database if database is not None else \
                await stack.enter_async_context(open_database(settings))
            await ensure_seeded(db, settings)
            engine = build_engine(db, settings)
            await engine.start()
            stack.push_async_callback(engine.stop)
            if db.kind == "embedded":  # polled streams: our own writes wake them at once
                db.writes.on_write = engine.wake
                db.writes.on_send = engine.writing  # the read overlaps the write's round trip
                stack.callback(setattr, db.writes, "on_write", None)
                stack.callback(setattr, db.writes, "on_send", None)
            if db.embedded is not None:
                # NX-27017 was seen to rewind or skip its change log across a kill -9: after a
                # restart every stream reopens from now and every subscriber resyncs.
                db.embedded.on_restart(lambda: engine.reset("the embedded database restarted"))
            await engine.prime("products")
            await engine.prime("users")
            await engine.prime("presence")
            analytics = LiveAnalytics(engine, db.db)
            await analytics.start()
            stack.callback(analytics.stop)
            pipeline: Pipeline | None = None
            if settings.pipeline_enabled:
                pipeline = Pipeline(db.db, engine, gateway=PaymentGateway(
                    success_rate=settings.payment_success_rate,
                    latency_ms=settings.payment_latency_ms,
                    concurrency=settings.payment_concurrency),
                    reconcile_after_s=settings.reconcile_after_s)
                await pipeline.start()
                stack.push_async_callback(pipeline.stop)
            passwords = PasswordPool()
            stack.callback(passwords.close)
            history = HistoryMonitor(
                db.client, replica_set=db.kind == "replicaset",
                checkpoint_ages=engine.checkpoint_ages)
            await history.start()
            stack.push_async_callback(history.stop)
            reachability = Reachability(db)
            await reachability.start()
            stack.push_async_callback(reachability.stop)
            presence = Presence(db.db)
            await presence.start()
            stack.push_async_callback(presence.stop)
            state = AppState(settings=settings, database=db, engine=engine,
                             analytics=analytics, pipeline=pipeline, templates=make_templates(),
                             passwords=passwords, history=history, reachability=reachability,
                             presence=presence, products=order_ops.product_reader(db.db),
                             orders=order_ops.order_writer(db.db))
            stack.callback(engine.listen(end_revoked_sessions(state)))
            # The cyclic collector's full collections stop the event loop for as long as
            # they walk every object (measured: 70-110 ms with 1,000 sockets open: the
            # fan-out's p99 tail). What start-up built (modules, templates, the primed
            # cache) lives as long as the process: out of their way. And they run less
            # often: little here is cyclic garbage (reference counting frees the rest).
            tune_gc()
            yield {STATE_KEY: state}

    middleware = [
        Middleware(GuardMiddleware, settings=settings),
        Middleware(SessionMiddleware, secret_key=settings.secret_key,
                   session_cookie="changecast_session", same_site="lax",
                   https_only=settings.secure_cookies, max_age=14 * 24 * 3600),
    ]
    return Starlette(routes=routes(), middleware=middleware, lifespan=lifespan,
                     exception_handlers=HANDLERS)
