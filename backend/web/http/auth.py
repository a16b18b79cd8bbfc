"""Sessions over HTTP and WebSocket connections: who is signed in, signing in and out."""

from __future__ import annotations

import time

from starlette.requests import HTTPConnection

from backend.domain import access
from backend.domain.errors import Forbidden
from backend.domain.users import User, authenticate, user_from_doc
from backend.web.state import app_state
from streaming import Document


async def sign_in(conn: HTTPConnection, email: str, password: str) -> User:
    """Check credentials (throttled per account and client address) and start a fresh session."""
    state = app_state(conn)
    client = conn.client.host if conn.client else "unknown"
    doc = await authenticate(state.db, state.throttle, email=email, password=password,
                             client=client)
    return start_session(conn, doc)


def start_session(conn: HTTPConnection, doc: Document) -> User:
    """A fresh session for the user ``doc`` (never reuse the previous one)."""
    conn.session.clear()
    conn.session.update({"user_id": str(doc["_id"]), "at": int(time.time())})
    return user_from_doc(doc)


def end_session(conn: HTTPConnection) -> None:
    """Sign out: the session forgets its user."""
    conn.session.clear()


async def current_user(conn: HTTPConnection) -> User | None:
    """The session's user, re-read through the engine cache (role changes apply at once)."""
    user_id = conn.session.get("user_id") if "session" in conn.scope else None
    if not isinstance(user_id, str):
        return None
    doc = await app_state(conn).engine.get("users", user_id)
    if doc is None:
        return None
    return user_from_doc(doc)


async def require_user(conn: HTTPConnection) -> User:
    """The signed-in user (401 otherwise)."""
    return access.require_user(await current_user(conn))


async def require_admin(conn: HTTPConnection) -> User:
    """The signed-in admin (401 or 403 otherwise)."""
    return access.require_admin(await current_user(conn))


async def demo_admin(conn: HTTPConnection) -> User:
    """The signed-in admin, when demo controls are on (403 otherwise)."""
    admin = await require_admin(conn)
    if not app_state(conn).settings.demo:
        raise Forbidden("demo controls are off (CHANGECAST_DEMO)")
    return admin
