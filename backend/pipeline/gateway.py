"""The bank, as the pipeline sees it: charge a total, refund a transaction.

``PaymentGateway`` is a simulator with a success rate, a delay distribution and
a slower fraud check above $1,000, running at most ``concurrency`` calls at once
without holding up other orders.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

FRAUD_CHECK_ABOVE_CENTS = 100_000


@dataclass(frozen=True, slots=True)
class PaymentResult:
    ok: bool
    transaction_id: str | None
    reason: str | None
    duration_ms: float


class PaymentGateway:
    """A bank stand-in: success rate, a delay distribution, a slower fraud check on big totals."""

    def __init__(self, *, success_rate: float = 0.9, latency_ms: tuple[int, int] = (100, 800),
                 concurrency: int = 64, rng: random.Random | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        if not 0 <= success_rate <= 1:
            raise ValueError(f"success_rate must be within 0..1, got {success_rate!r}")
        self.success_rate = success_rate
        self.latency_ms = latency_ms
        self.concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        self._rng = rng or random.Random()
        self._sleep = sleep
        self.in_flight = 0
        self.refunds: dict[str, str] = {}  # transaction id -> refund id

    async def charge(self, total_cents: int, *,
                     ready: Callable[[], Awaitable[bool]] | None = None) -> PaymentResult | None:
        """Charge ``total_cents``; waits like a bank would, never blocking other orders.

        ``ready``: asked once one of the ``concurrency`` slots is free, just before the
        bank is; when it says False nothing is charged and the answer is None (the wait
        for a slot can be long, and what was to be paid may have gone elsewhere)."""
        async with self._slots:
            if ready is not None and not await ready():
                return None
            self.in_flight += 1
            started = time.perf_counter()
            try:
                delay = self._rng.uniform(*self.latency_ms)
                if total_cents > FRAUD_CHECK_ABOVE_CENTS:
                    delay += self._rng.uniform(500, 1_500)
                await self._sleep(delay / 1000)
                ok = self._rng.random() < self.success_rate
            finally:
                self.in_flight -= 1
        duration = (time.perf_counter() - started) * 1000
        if ok:
            return PaymentResult(True, "TXN-" + uuid.uuid4().hex[:12].upper(), None, duration)
        return PaymentResult(False, None, "card declined", duration)

    async def refund(self, transaction_id: str, total_cents: int) -> str:
        """Refund a captured payment; the bank's answer is the refund id. Idempotent on the
        transaction id, as a real gateway's refund call is with an idempotency key."""
        if transaction_id not in self.refunds:
            async with self._slots:
                await self._sleep(self._rng.uniform(*self.latency_ms) / 1000)
            self.refunds.setdefault(transaction_id, "RFD-" + uuid.uuid4().hex[:12].upper())
        return self.refunds[transaction_id]
