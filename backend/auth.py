"""Sign-in, sessions, roles and login throttling."""

from __future__ import annotations

import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection

from backend.errors import ApiError
from backend.passwords import verify_password_async

THROTTLE_LIMIT = 10
THROTTLE_WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class User:
    """The signed-in user, as the server knows it (never the password hash)."""

    id: str
    email: str
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "email": self.email, "name": self.name, "role": self.role}


def user_from_doc(doc: dict[str, Any]) -> User:
    return User(id=str(doc["_id"]), email=doc["email"], name=doc.get("name", ""),
                role=doc.get("role", "customer"))


class LoginThrottle:
    """Counts failed logins per account and per client address over a sliding minute."""

    def __init__(self, *, limit: int = THROTTLE_LIMIT, window: float = THROTTLE_WINDOW_S,
                 clock: Any = time.monotonic) -> None:
        self.limit, self.window, self._clock = limit, window, clock
        self._failures: dict[str, deque[float]] = defaultdict(deque)

    def _recent(self, key: str) -> deque[float]:
        entries = self._failures[key]
        cutoff = self._clock() - self.window
        while entries and entries[0] < cutoff:
            entries.popleft()
        return entries

    def check(self, *keys: str) -> None:
        """Raise 429 when any key has failed ``limit`` times within the window."""
        for key in keys:
            entries = self._recent(key)
            if len(entries) >= self.limit:
                retry = max(1, round(entries[0] + self.window - self._clock()))
                raise ApiError(429, "too many failed sign-ins; try again later",
                               headers={"Retry-After": str(retry)})

    def fail(self, *keys: str) -> None:
        now = self._clock()
        for key in keys:
            self._recent(key).append(now)
        if len(self._failures) > 100_000:  # bounded memory under a spray of addresses
            self._failures.clear()


async def sign_in(conn: HTTPConnection, email: str, password: str) -> User:
    """Check credentials (throttled per account and client address) and start a fresh session."""
    email = email.strip().lower()
    client = conn.client.host if conn.client else "unknown"
    keys = (f"email:{email}", f"ip:{client}")
    throttle: LoginThrottle = conn.state.throttle
    throttle.check(*keys)
    doc = await conn.state.db.users.find_one({"email": email})
    if doc is None or not await verify_password_async(doc.get("password_hash", ""), password):
        throttle.fail(*keys)
        raise ApiError(401, "wrong email or password")
    return start_session(conn, doc)


def start_session(conn: HTTPConnection, doc: dict[str, Any]) -> User:
    """A fresh session for the user ``doc`` (never reuse the previous one)."""
    conn.session.clear()
    conn.session.update({"user_id": str(doc["_id"]), "at": int(time.time())})
    return user_from_doc(doc)


async def current_user(conn: HTTPConnection) -> User | None:
    """The session's user, re-read through the engine cache (role changes apply at once)."""
    user_id = conn.session.get("user_id") if "session" in conn.scope else None
    if not isinstance(user_id, str):
        return None
    doc = await conn.state.engine.get("users", user_id)
    if doc is None:
        return None
    return user_from_doc(doc)


async def require_user(conn: HTTPConnection) -> User:
    user = await current_user(conn)
    if user is None:
        raise ApiError(401, "sign in first")
    return user


async def require_admin(conn: HTTPConnection) -> User:
    user = await require_user(conn)
    if not user.is_admin:
        raise ApiError(403, "admins only")
    return user
