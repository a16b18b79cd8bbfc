"""Users as the server knows them, and signing in (throttled, argon2-checked)."""

from __future__ import annotations

import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from backend.domain.errors import Throttled, Unauthenticated
from backend.domain.passwords import verify_password_async
from streaming import Document
from streaming.types import Clock

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


def user_from_doc(doc: Document) -> User:
    """The ``User`` a ``users`` document describes."""
    return User(id=str(doc["_id"]), email=doc["email"], name=doc.get("name", ""),
                role=doc.get("role", "customer"))


class LoginThrottle:
    """Counts failed logins per account and per client address over a sliding minute."""

    def __init__(self, *, limit: int = THROTTLE_LIMIT, window: float = THROTTLE_WINDOW_S,
                 clock: Clock = time.monotonic) -> None:
        self.limit, self.window, self._clock = limit, window, clock
        self._failures: dict[str, deque[float]] = defaultdict(deque)

    def _recent(self, key: str) -> deque[float]:
        entries = self._failures[key]
        cutoff = self._clock() - self.window
        while entries and entries[0] < cutoff:
            entries.popleft()
        return entries

    def check(self, *keys: str) -> None:
        """Raise Throttled when any key has failed ``limit`` times within the window."""
        for key in keys:
            entries = self._recent(key)
            if len(entries) >= self.limit:
                retry = max(1, round(entries[0] + self.window - self._clock()))
                raise Throttled("too many failed sign-ins; try again later", retry_after=retry)

    def fail(self, *keys: str) -> None:
        now = self._clock()
        for key in keys:
            self._recent(key).append(now)
        if len(self._failures) > 100_000:  # bounded memory under a spray of addresses
            self._failures.clear()


async def authenticate(db: AsyncDatabase[Document], throttle: LoginThrottle, *, email: str,
                       password: str, client: str) -> Document:
    """The user document for these credentials (throttled per account and client address)."""
    email = email.strip().lower()
    keys = (f"email:{email}", f"ip:{client}")
    throttle.check(*keys)
    doc = await db.users.find_one({"email": email})
    if doc is None or not await verify_password_async(doc.get("password_hash", ""), password):
        throttle.fail(*keys)
        raise Unauthenticated("wrong email or password")
    return doc
