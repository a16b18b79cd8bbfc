"""Users as the server knows them, and signing in (throttled, argon2-checked)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from backend.domain.errors import Invalid, NotFound, Throttled, Unauthenticated
from backend.domain.limits import SlidingWindow
from backend.domain.passwords import DUMMY_HASH
from backend.domain.stock import SETTLE_S
from streaming import ChangeEngine, Document
from streaming.types import Clock

ROLES = ("customer", "admin")
THROTTLE_LIMIT = 10
ADDRESS_LIMIT = 100
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


def role_of(doc: Document) -> str:
    """A user document's role (a user without one is a customer)."""
    return str(doc.get("role", "customer"))


def user_from_doc(doc: Document) -> User:
    """The ``User`` a ``users`` document describes."""
    return User(id=str(doc["_id"]), email=doc["email"], name=doc.get("name", ""),
                role=role_of(doc))


class LoginThrottle:
    """Failed sign-ins over a sliding window, so that nobody can lock an owner out:

    - per account *and* client address: ``limit`` failures, then 429 for that pair only;
    - per client address, over every account: ``address_limit`` failures, then 429;
    - per account, over every address: no lock, but each attempt past ``limit`` failures
      waits a little longer (``backoff``: 0.25 s doubling to 2 s), which slows a spray
      from many addresses without shutting the real owner out.

    At most ``max_keys`` keys are kept; the least recently used go first.
    """

    def __init__(self, *, limit: int = THROTTLE_LIMIT, address_limit: int = ADDRESS_LIMIT,
                 window: float = THROTTLE_WINDOW_S, max_keys: int = 100_000,
                 clock: Clock = time.monotonic) -> None:
        self.limit, self.address_limit, self.window = limit, address_limit, window
        self._failures = SlidingWindow(window, max_keys=max_keys, clock=clock)

    def check(self, email: str, client: str) -> float:
        """Raise Throttled when this pair or this address failed too often; else the seconds
        this attempt should wait first (0 unless the account is under a spray)."""
        for key, limit in ((f"pair:{email}\0{client}", self.limit),
                           (f"ip:{client}", self.address_limit)):
            if len(self._failures.recent(key)) >= limit:
                raise Throttled("Too many failed sign-ins. Wait a minute, then try again.",
                                retry_after=self._failures.retry_after(key))
        excess = len(self._failures.recent(f"email:{email}")) - self.limit
        return 0.0 if excess < 0 else min(2.0, 0.25 * 2 ** excess)

    def fail(self, email: str, client: str) -> None:
        self._failures.add(f"pair:{email}\0{client}", f"ip:{client}", f"email:{email}")


Verify = Callable[[str, str], Awaitable[bool]]
Pause = Callable[[float], Awaitable[None]]


async def authenticate(db: AsyncDatabase[Document], throttle: LoginThrottle, *, email: str,
                       password: str, client: str, verify: Verify,
                       pause: Pause = asyncio.sleep) -> Document:
    """The user document for these credentials (throttled, see ``LoginThrottle``).

    ``verify(hash, password)`` checks a password (argon2, off the event loop) and
    ``pause(seconds)`` waits out a backoff. An unknown email is checked against a dummy
    hash: the answer takes as long as for a known one.
    """
    email = email.strip().lower()
    delay = throttle.check(email, client)
    doc = await db.users.find_one({"email": email})  # the database first, then the waits
    if delay:
        await pause(delay)
    known = doc is not None and bool(doc.get("password_hash"))
    matches = await verify(doc["password_hash"] if doc is not None and known else DUMMY_HASH,
                           password)
    if doc is None or not known or not matches:
        throttle.fail(email, client)
        raise Unauthenticated("That email and password do not match an account. Check both and try again.")
    return doc


SESSION_VERSION = "session_version"  # on the user: bumped to end every session of theirs


def session_version(doc: Document | None) -> int:
    """The user's current session version (0 when never bumped)."""
    return int((doc or {}).get(SESSION_VERSION) or 0)


def session_valid(session: dict[str, Any], doc: Document | None) -> bool:
    """Whether a session (the cookie's ``role`` and ``sv``) still stands for the user
    ``doc``: the user exists, has the role the session was started with, and has not
    ended their sessions since. Here, not in the web layer, so the HTTP edge and the live
    sockets both ask it without importing each other."""
    if doc is None:
        return False
    role = session.get("role")
    if role is not None and role != role_of(doc):
        return False
    return int(session.get("sv") or 0) == session_version(doc)


async def end_sessions(db: AsyncDatabase[Document], engine: ChangeEngine, user_id: str, *,
                       changes: Document | None = None) -> None:
    """End every session of the user (sign-out, a new role, a new password), with
    ``changes`` applied in the same update; returns once the engine has seen it, so the
    next request of any of those sessions is refused and their sockets are closed."""
    updated = await db.users.find_one_and_update(
        {"_id": user_id}, {"$inc": {SESSION_VERSION: 1}, **({"$set": changes} if changes else {})},
        return_document=ReturnDocument.AFTER)
    if updated is None:
        raise NotFound(f"no user {user_id!r}")
    await engine.settle("users", user_id, updated, timeout=SETTLE_S)


async def set_role(db: AsyncDatabase[Document], engine: ChangeEngine, user_id: str,
                   role: str) -> None:
    """Give the user ``role``; their sessions end (they sign in again with the new rights)."""
    if role not in ROLES:
        raise Invalid(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    await end_sessions(db, engine, user_id, changes={"role": role})


async def set_password(db: AsyncDatabase[Document], engine: ChangeEngine, user_id: str,
                       password_hash: str) -> None:
    """Store a new password hash; every session of the user ends."""
    await end_sessions(db, engine, user_id, changes={"password_hash": password_hash})
