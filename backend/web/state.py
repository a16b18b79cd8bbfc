"""What every request and socket of one app shares: one frozen, typed object.

The lifespan builds it (``backend.web.app``) and Starlette hands it to each
connection as ``conn.state.app``; :func:`app_state` is the typed way to read it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, cast

from pymongo.asynchronous.database import AsyncDatabase
from starlette.requests import HTTPConnection
from starlette.templating import Jinja2Templates

from backend.domain.analytics import LiveAnalytics
from backend.domain.batching import ByIdReader, DocumentInserter
from backend.domain.demo import DemoLimiter
from backend.domain.passwords import PasswordPool
from backend.domain.users import LoginThrottle
from backend.infra.database import Database
from backend.infra.history import HistoryMonitor
from backend.infra.reachability import Reachability
from backend.infra.settings import Settings
from backend.pipeline import Pipeline
from streaming import ChangeEngine, Document

if TYPE_CHECKING:
    from backend.web.live.presence import Presence

STATE_KEY = "app"


class LiveConnection(Protocol):
    """What the shared state asks of an open socket (``backend.web.live.session.Session``
    is one): said here so this module needs nothing from the sockets that read it."""

    def holds_session_of(self, user_id: str) -> bool: ...

    def session_still_valid(self, doc: Document | None) -> bool: ...

    def end(self, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class AppState:
    """The app's database, engine, workers and per-process helpers."""

    settings: Settings
    database: Database
    engine: ChangeEngine
    analytics: LiveAnalytics
    pipeline: Pipeline | None
    templates: Jinja2Templates
    history: HistoryMonitor
    reachability: Reachability
    presence: Presence
    products: ByIdReader  # place_order's reads of prices, shared by the orders of a moment
    orders: DocumentInserter  # and its inserts
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    demo_limiter: DemoLimiter = field(default_factory=DemoLimiter)
    passwords: PasswordPool = field(default_factory=PasswordPool)
    connections: set[LiveConnection] = field(default_factory=set)
    started: float = field(default_factory=time.monotonic)

    @property
    def db(self) -> AsyncDatabase[Document]:
        """The application database."""
        return self.database.db

    @property
    def placement_claim(self) -> Callable[[str], Document] | None:
        """What ``place_order(claim=...)`` takes: new orders go to this instance's pipeline
        as they are written (None when this instance runs none)."""
        return self.pipeline.claim_placed if self.pipeline is not None else None


def app_state(conn: HTTPConnection) -> AppState:
    """The shared state of the app serving ``conn``."""
    return cast(AppState, getattr(conn.state, STATE_KEY))
