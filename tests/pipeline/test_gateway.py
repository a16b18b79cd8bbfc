from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import pytest

from backend.pipeline.gateway import PaymentGateway


async def test_gateway_fraud_check_slows_big_totals_and_refunds_are_idempotent() -> None:
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    gateway = PaymentGateway(success_rate=1.0, latency_ms=(100, 100), rng=random.Random(1),
                             sleep=sleep)
    small = await gateway.charge(5_000)
    big = await gateway.charge(200_000)
    assert small is not None and big is not None
    assert small.ok and big.ok and small.transaction_id != big.transaction_id
    assert delays[0] == pytest.approx(0.1) and delays[1] >= 0.6
    assert small.transaction_id is not None
    first = await gateway.refund(small.transaction_id, 5_000)
    assert await gateway.refund(small.transaction_id, 5_000) == first
    assert len(delays) == 3  # the second refund did not call the bank again
    assert gateway.in_flight == 0


def test_gateway_refuses_a_success_rate_outside_0_1() -> None:
    with pytest.raises(ValueError, match="success_rate"):
        PaymentGateway(success_rate=1.5)


async def test_a_charge_is_confirmed_once_a_slot_is_free_and_dropped_when_it_is_not() -> None:
    calls: list[str] = []
    release = asyncio.Event()

    async def sleep(seconds: float) -> None:
        calls.append("bank")
        await release.wait()

    def ready(answer: bool) -> Callable[[], Awaitable[bool]]:
        async def ask() -> bool:
            calls.append(f"ready {answer}")
            return answer
        return ask

    gateway = PaymentGateway(success_rate=1.0, concurrency=1, sleep=sleep)
    busy = asyncio.ensure_future(gateway.charge(100))
    waiting = [asyncio.ensure_future(gateway.charge(100, ready=ready(answer)))
               for answer in (False, True)]
    while calls != ["bank"]:
        await asyncio.sleep(0)
    # Neither waiting charge is asked while the one slot is taken.
    assert calls == ["bank"]
    release.set()
    dropped, charged = await asyncio.gather(*waiting)
    assert (await busy) is not None
    assert dropped is None and charged is not None and charged.ok
    assert calls == ["bank", "ready False", "ready True", "bank"]
    assert gateway.in_flight == 0
