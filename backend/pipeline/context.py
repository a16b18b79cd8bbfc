"""What every part of one instance's pipeline shares: the database, the engine, the
instance's name, its counters and stage timings, and its background tasks."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from streaming import ChangeEngine, Document, percentile

# Statuses the pipeline moves on by itself.
AUTOMATIC = frozenset({"pending", "reserved", "paid"})


@dataclass(slots=True)
class Counters:
    """What one instance's pipeline has done since start."""

    transitions: int = 0
    claims_lost: int = 0
    reconciled: int = 0
    reconcile_sweeps: int = 0
    stock_repairs: int = 0
    refunds: int = 0
    errors: int = 0


@dataclass(frozen=True, slots=True)
class StageStats:
    """How long one pipeline stage took: count, mean and p95 over the recent samples."""

    count: int
    avg_ms: float
    p95_ms: float


class StageTimes:
    """Durations per stage (the most recent few thousand of each)."""

    def __init__(self, keep: int = 10_000) -> None:
        self.keep = keep
        self._samples: dict[str, list[float]] = {}

    def record(self, stage: str, started: float) -> None:
        """``stage`` took from ``started`` (a ``time.perf_counter()``) until now."""
        samples = self._samples.setdefault(stage, [])
        samples.append((time.perf_counter() - started) * 1000)
        if len(samples) > self.keep:
            del samples[:self.keep // 2]

    def summary(self) -> dict[str, StageStats]:
        result = {}
        for stage, samples in self._samples.items():
            ordered = sorted(samples[-2000:])
            p95 = percentile(ordered, 95) or 0.0
            result[stage] = StageStats(len(samples), round(sum(ordered) / len(ordered), 1),
                                       round(p95, 1))
        return result


@dataclass(slots=True)
class Work:
    """The shared part of one instance's pipeline."""

    db: AsyncDatabase[Document]
    engine: ChangeEngine
    reconcile_after_s: float = 30.0
    instance: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    counters: Counters = field(default_factory=Counters)
    stages: StageTimes = field(default_factory=StageTimes)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in the background; it is cancelled when the pipeline stops."""
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def stale_ms(self) -> int:
        """Epoch ms before which a claim is old enough to be taken over."""
        return int((time.time() - self.reconcile_after_s) * 1000)
