"""Sessions over HTTP and WebSocket connections: who is signed in, signing in and out."""

from __future__ import annotations

import asyncio
import contextlib
import time

from starlette.requests import HTTPConnection

from backend.domain import access
from backend.domain.errors import Forbidden, NotFound
from backend.domain.users import (
    User,
    authenticate,
    end_sessions,
    session_valid,
    session_version,
    user_from_doc,
)
from backend.web.http.deadline import off_the_clock
from backend.web.state import app_state
from streaming import Document


async def sign_in(conn: HTTPConnection, email: str, password: str) -> User:
    """Check credentials (throttled per account and client address) and start a fresh session."""
    state = app_state(conn)
    client = conn.client.host if conn.client else "unknown"

    async def verify(password_hash: str, candidate: str) -> bool:
        return await off_the_clock(state.passwords.verify(password_hash, candidate))

    async def pause(seconds: float) -> None:
        await off_the_clock(asyncio.sleep(seconds))

    doc = await authenticate(state.db, state.throttle, email=email, password=password,
                             client=client, verify=verify, pause=pause)
    return start_session(conn, doc)


def start_session(conn: HTTPConnection, doc: Document) -> User:
    """A fresh session for the user ``doc`` (never reuse the previous one). It is valid
    while the user keeps this role and session version (see ``session_valid``)."""
    user = user_from_doc(doc)
    conn.session.clear()
    conn.session.update({"user_id": user.id, "role": user.role, "sv": session_version(doc),
                         "at": int(time.time())})
    return user


async def end_session(conn: HTTPConnection) -> None:
    """Sign out: this and every other session of the user end, server-side (a copy of
    the cookie no longer works), and their open sockets close."""
    user_id = conn.session.get("user_id") if "session" in conn.scope else None
    conn.session.clear()
    if isinstance(user_id, str):
        state = app_state(conn)
        with contextlib.suppress(NotFound):
            await end_sessions(state.db, state.engine, user_id)


async def current_user(conn: HTTPConnection) -> User | None:
    """The session's user, re-read through the engine cache (role changes apply at once);
    None when the session has ended."""
    session = conn.session if "session" in conn.scope else {}
    user_id = session.get("user_id")
    if not isinstance(user_id, str):
        return None
    doc = await app_state(conn).engine.get("users", user_id)
    if doc is None or not session_valid(session, doc):
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
