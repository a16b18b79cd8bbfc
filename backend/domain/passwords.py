"""Password hashing with argon2 (argon2-cffi); hashes never leave the server."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_HASHER = PasswordHasher()
# The hash of a password nobody knows, with the hasher's parameters: checking a sign-in for
# an unknown email against it costs what a known one costs, so timing tells nothing.
DUMMY_HASH = ("$argon2id$v=19$m=65536,t=3,p=4$n1lsaykncroEafy8Wg+xNQ$"
              "aMR+Q/2dFSYZ7PDjZOVnmvKFsL6i+YpGWXC/L0hzPag")


def hash_password(password: str) -> str:
    """An argon2id hash of ``password``."""
    return _HASHER.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True when ``password`` matches ``password_hash``."""
    try:
        return _HASHER.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


class PasswordPool:
    """argon2 off the event loop, in threads of its own (argon2 releases the GIL): as many
    as there are cores, so that a burst of sign-ins queues here instead of taking the
    threads the rest of the process uses, or every core."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 2
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="argon2")

    async def verify(self, password_hash: str, password: str) -> bool:
        """``verify_password`` in the pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, verify_password, password_hash, password)

    async def hash(self, password: str) -> str:
        """``hash_password`` in the pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, hash_password, password)

    def close(self) -> None:
        """Stop the threads (queued work is dropped)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
