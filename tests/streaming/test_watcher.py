from __future__ import annotations

import asyncio
import collections
import contextlib
import random
from typing import Any

import pytest
from pymongo.errors import AutoReconnect, OperationFailure, ServerSelectionTimeoutError

from streaming.breaker import BreakerState, CircuitBreaker
from streaming.watcher import CollectionWatcher, MemoryCheckpoints, WatcherState, WatchOptions
from tests.streaming.fakes import ENDED, FakeCollection, change

pytestmark = pytest.mark.timeout(10)


class Harness:
    def __init__(self, collection: FakeCollection, *, expect: int, mode: str = "await",
                 **kwargs: Any) -> None:
        self.seen: list[dict[str, Any]] = []
        self.lost: list[str] = []
        self.delays: list[float] = []
        self.expect = expect
        self.done = asyncio.Event()
        self.checkpoints = kwargs.pop("checkpoints", MemoryCheckpoints())

        async def sleep(delay: float) -> None:
            self.delays.append(delay)
            await asyncio.sleep(0)

        runtime = {k: kwargs.pop(k) for k in ("breaker", "clock") if k in kwargs}
        options = WatchOptions(mode=mode, checkpoint_interval=0, **kwargs)  # type: ignore[arg-type]
        self.watcher = CollectionWatcher(
            collection, handler=self.handle, on_history_lost=self.on_lost,  # type: ignore[arg-type]
            options=options, checkpoints=self.checkpoints, sleep=sleep, rng=random.Random(1),
            **runtime)

    def handle(self, name: str, raw: dict[str, Any]) -> int | None:
        self.seen.append(raw)
        self.check()
        return None

    def on_lost(self, name: str, reason: str) -> None:
        self.lost.append(reason)
        self.check()

    def check(self) -> None:
        if len(self.seen) + len(self.lost) >= self.expect:
            self.done.set()

    async def run(self) -> None:
        await self.watcher.start(wait=False)
        await asyncio.wait_for(self.done.wait(), 5)
        await self.watcher.stop()


async def test_watcher_resumes_from_last_token_after_a_network_error() -> None:
    coll = FakeCollection("orders", [[change(1), change(2), AutoReconnect("reset")],
                                     [change(3)]])
    h = Harness(coll, expect=3)
    await h.run()
    assert [c["documentKey"]["_id"] for c in h.seen] == ["k1", "k2", "k3"]
    assert coll.calls[1]["resume_after"] == {"_data": "T0002"}
    assert h.watcher.reconnects == 1 and len(h.delays) == 1
    assert await h.checkpoints.load("orders") == {"_data": "T0003"}


async def test_watcher_resumes_when_the_server_ends_the_cursor_without_an_error() -> None:
    # NX-27017 closes a stream with the connection that opened it; the driver then reports
    # a dead cursor by returning None forever. Without a check the watcher would idle on it.
    coll = FakeCollection("orders", [[change(1, nx=True), ENDED], [change(2, nx=True)]],
                          poll=True, head={"_data": "nx:1"})
    h = Harness(coll, expect=2, mode="poll")
    await h.run()
    assert [c["documentKey"]["_id"] for c in h.seen] == ["k1", "k2"]
    assert coll.calls[-1]["resume_after"] == {"_data": "nx:1"}  # from where it was
    assert h.watcher.cursor_ends == 1 and h.lost == [] and h.delays == []


async def test_watcher_a_change_of_another_collection_is_history_lost_not_a_change() -> None:
    # After an NX-27017 restart an old cursor id may name another collection's new stream.
    coll = FakeCollection("orders", [[change(1), change(2, coll="products")], [change(3)]])
    h = Harness(coll, expect=3)
    await h.run()
    assert [c["documentKey"]["_id"] for c in h.seen] == ["k1", "k3"]
    assert len(h.lost) == 1 and "change of t.products" in h.lost[0]
    assert h.watcher.foreign_changes == 1
    assert "resume_after" not in coll.calls[1]  # from now: what came in between is unknown


async def test_watcher_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    failures: list[Any] = [ServerSelectionTimeoutError("no server") for _ in range(8)]
    coll = FakeCollection("orders", [*failures, [change(1)]])
    h = Harness(coll, expect=1, breaker=CircuitBreaker(failure_threshold=100),
                backoff_initial=0.1, backoff_max=1.0)
    await h.run()
    assert len(h.delays) == 8
    for attempt, delay in enumerate(h.delays):
        ceiling = min(1.0, 0.1 * 2 ** attempt)
        assert ceiling * 0.5 <= delay <= ceiling
    assert h.watcher.errors == 8


async def test_watcher_opens_through_the_breaker_which_fails_fast_when_open() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=10, clock=lambda: now[0])
    coll = FakeCollection("orders", [ServerSelectionTimeoutError("x"),
                                     ServerSelectionTimeoutError("x"), [change(1)]])
    h = Harness(coll, expect=1, breaker=breaker)
    await h.watcher.start(wait=False)
    while len(h.delays) < 5:  # attempts 3..5 are refused by the open breaker
        await asyncio.sleep(0)
    assert breaker.state is BreakerState.OPEN
    assert len(coll.calls) == 2
    now[0] = 11.0  # past the reset timeout: one trial goes through
    await asyncio.wait_for(h.done.wait(), 5)
    await h.watcher.stop()
    assert breaker.state is BreakerState.CLOSED and len(coll.calls) == 3


async def test_watcher_history_lost_error_resyncs_and_continues_from_now() -> None:
    coll = FakeCollection("orders", [
        [change(1), OperationFailure("resume point lost", code=286)], [change(2)]])
    h = Harness(coll, expect=3)
    await h.run()
    assert len(h.lost) == 1 and "resume point lost" in h.lost[0]
    assert "resume_after" not in coll.calls[1]
    assert [c["documentKey"]["_id"] for c in h.seen] == ["k1", "k2"]


async def test_watcher_drop_is_history_lost_and_invalidate_reopens() -> None:
    drop = {"_id": {"_data": "T9"}, "operationType": "drop"}
    invalidate = {"_id": {"_data": "T10"}, "operationType": "invalidate"}
    coll = FakeCollection("orders", [[change(1), drop], [invalidate], [change(2)]])
    h = Harness(coll, expect=3)
    await h.run()
    assert len(h.lost) == 1 and "drop" in h.lost[0]
    assert len(coll.calls) == 3 and "resume_after" not in coll.calls[2]


async def test_watcher_starts_from_the_checkpoint_and_saves_after_hand_off() -> None:
    checkpoints = MemoryCheckpoints()
    await checkpoints.save("orders", {"_data": "T0005"})
    coll = FakeCollection("orders", [[change(6), change(7)]])
    saved_when_handled: list[Any] = []
    h = Harness(coll, expect=2, checkpoints=checkpoints)
    original = h.handle

    def handle(name: str, raw: dict[str, Any]) -> None:
        saved_when_handled.append(checkpoints.tokens["orders"])
        original(name, raw)

    h.watcher.handler = handle
    await h.run()
    assert coll.calls[0]["resume_after"] == {"_data": "T0005"}
    # The token of a change is saved only after the change was handed off.
    assert saved_when_handled == [{"_data": "T0005"}, {"_data": "T0006"}]
    assert checkpoints.tokens["orders"] == {"_data": "T0007"}
    assert h.watcher.state is WatcherState.STOPPED


async def test_watcher_nx_gap_after_pruning_is_history_lost() -> None:
    checkpoints = MemoryCheckpoints()
    await checkpoints.save("orders", {"_data": "nx:10"})
    replay = [change(n, nx=True) for n in range(3_000, 4_000)]
    coll = FakeCollection("orders", [replay], poll=True, head={"_data": "nx:3999"})
    h = Harness(coll, expect=1_001, mode="poll", checkpoints=checkpoints)
    await h.run()
    assert len(h.seen) == 1_000 and len(h.lost) == 1 and "pruned" in h.lost[0]


async def test_watcher_nx_contiguous_resume_is_not_a_loss() -> None:
    checkpoints = MemoryCheckpoints()
    await checkpoints.save("orders", {"_data": "nx:10"})
    replay = [change(n, nx=True) for n in range(11, 1_100)]
    coll = FakeCollection("orders", [replay], poll=True, head={"_data": "nx:1099"})
    h = Harness(coll, expect=len(replay), mode="poll", checkpoints=checkpoints)
    await h.run()
    assert h.lost == []


async def test_watcher_nx_token_past_the_head_means_a_reset_database() -> None:
    checkpoints = MemoryCheckpoints()
    await checkpoints.save("orders", {"_data": "nx:500"})
    coll = FakeCollection("orders", [[change(1, nx=True)]], poll=True, head={"_data": "nx:3"})
    h = Harness(coll, expect=2, mode="poll", checkpoints=checkpoints)
    await h.run()
    assert "past the head" in h.lost[0]
    assert "resume_after" not in coll.calls[-1]


async def test_watcher_silent_after_our_writes_is_reopened_with_a_resync() -> None:
    now = [0.0]
    coll = FakeCollection("orders", [[], [change(1, nx=True)]], poll=True, head={"_data": "nx:0"})
    h = Harness(coll, expect=2, mode="poll", clock=lambda: now[0], stall_after=3.0)
    await h.watcher.start()
    for _ in range(3):
        h.watcher.nudge()  # three writes of ours, and nothing comes back
    now[0] = 4.0
    await asyncio.wait_for(h.done.wait(), 5)
    await h.watcher.stop()
    assert len(h.lost) == 1 and "no change arrived" in h.lost[0]
    assert h.watcher.stalls == 1 and len(coll.calls) >= 2
    assert [c["documentKey"]["_id"] for c in h.seen] == ["k1"]


async def test_watcher_change_log_going_backwards_is_history_lost() -> None:
    checkpoints = MemoryCheckpoints()
    await checkpoints.save("orders", {"_data": "nx:40"})
    coll = FakeCollection("orders", [[], [change(41, nx=True)]], poll=True,
                          head={"_data": "nx:40"})
    h = Harness(coll, expect=2, mode="poll", checkpoints=checkpoints)
    original = coll.watch

    async def regressing_watch(*args: Any, **kwargs: Any) -> Any:
        stream = await original(*args, **kwargs)
        if kwargs and len(coll.calls) == 2:  # the first real stream reports a reset log
            stream.resume_token = {"_data": "nx:3"}
        return stream

    coll.watch = regressing_watch  # type: ignore[method-assign]
    await h.run()
    assert any("went back from 40 to 3" in reason for reason in h.lost)


async def test_watcher_reset_reopens_from_now_then_announces_the_loss() -> None:
    coll = FakeCollection("orders", [[change(1, nx=True)], [change(2, nx=True)]], poll=True,
                          head={"_data": "nx:0"})
    h = Harness(coll, expect=1, mode="poll")
    await h.watcher.start()
    await asyncio.wait_for(h.done.wait(), 5)
    h.expect = 3
    h.done.clear()
    h.watcher.reset("the server restarted")
    await asyncio.wait_for(h.done.wait(), 5)
    await h.watcher.stop()
    assert h.lost == ["the server restarted"]
    reopened = [c for c in coll.calls if c][-1]
    assert "resume_after" not in reopened  # from now, not from the distrusted token
    assert [c["_id"] for c in h.seen] == [{"_data": "nx:1"}, {"_data": "nx:2"}]


async def test_watcher_a_non_resumable_error_reopens_from_now_with_a_resync() -> None:
    # Resuming from the token would meet the same error again (a change nobody can take,
    # a token the server refuses): the watcher drops the token and subscribers resync.
    coll = FakeCollection("orders", [[change(1), OperationFailure("unauthorized", code=13)],
                                     [change(2)]])
    h = Harness(coll, expect=3)
    await h.run()
    assert [c["documentKey"]["_id"] for c in h.seen] == ["k1", "k2"]
    assert len(h.lost) == 1 and "unauthorized" in h.lost[0]
    assert "resume_after" not in coll.calls[1]
    assert h.watcher.errors == 1


async def test_watcher_saves_an_idle_streams_advancing_token_every_few_seconds() -> None:
    # A quiet collection's stream still advances its resume token (postBatchResumeToken)
    # while other collections are busy; saving only after changes let the stored token fall
    # behind the oplog, and a restart then lost history (code 286) and resynced everyone.
    from tests.streaming.fakes import FakeStream

    now = [0.0]

    class Advancing(FakeStream):
        def __init__(self) -> None:
            super().__init__([], poll=True)
            self.n = 0

        async def try_next(self) -> dict[str, Any] | None:
            self.n += 1
            self.resume_token = {"_data": f"T{self.n:04d}"}
            await asyncio.sleep(0)
            return None

    stream = Advancing()

    class Quiet(FakeCollection):
        async def watch(self, *args: Any, **kwargs: Any) -> FakeStream:
            self.calls.append(kwargs)
            return stream

    async def polls(count: int) -> None:  # until the watcher has polled `count` more times
        target = stream.n + count
        async with asyncio.timeout(5):
            while stream.n < target:
                await asyncio.sleep(0)

    checkpoints = MemoryCheckpoints()
    h = Harness(Quiet("orders", []), expect=1, mode="poll", checkpoints=checkpoints,
                clock=lambda: now[0], idle_checkpoint_interval=5.0, idle_interval=0.001)
    await h.watcher.start(wait=True)
    now[0] = 5.0
    await polls(3)
    first = await checkpoints.load("orders")
    assert first is not None  # saved once its interval had passed
    now[0] = 7.0
    await polls(3)  # more empty batches, under 5 s later: not saved again
    assert await checkpoints.load("orders") == first
    now[0] = 10.5
    await polls(3)
    assert (await checkpoints.load("orders"))["_data"] > first["_data"]
    await h.watcher.stop()
    assert h.watcher.stats().checkpoint_age_s is not None


def test_a_quiet_poll_mode_stream_backs_off_and_a_write_or_change_brings_it_back() -> None:
    options = WatchOptions(mode="poll", idle_interval=0.025, idle_max_interval=1.0,
                           quiet_polls=4)
    watcher = CollectionWatcher(FakeCollection("products", []), handler=lambda *_: None,  # type: ignore[arg-type]
                                on_history_lost=lambda *_: None, options=options)
    waits = []
    for _ in range(12):
        waits.append(watcher.poll_wait())
        watcher._empty_polls += 1  # as _consume counts an empty poll
    assert waits[:5] == [0.025] * 5  # the busy pace while changes may still follow
    assert waits[5:8] == [0.05, 0.1, 0.2] and waits[-1] == 1.0  # then doubling, capped
    watcher.writing()  # a write is being sent (it may change nothing): read now, still quiet
    assert watcher._nudged.is_set() and watcher.poll_wait() == 1.0
    watcher._nudged.clear()
    watcher.wake()  # this process wrote: at once, and the busy pace again
    assert watcher._nudged.is_set() and watcher.poll_wait() == 0.025
    assert watcher.stalls == 0


def test_watch_options_refuse_a_quiet_cap_below_the_busy_pace() -> None:
    with pytest.raises(ValueError, match="idle_max_interval"):
        WatchOptions(mode="poll", idle_interval=0.1, idle_max_interval=0.05)


class ReadsInBatches:
    """A change stream whose server hands over changes a batch per read, kept in a driver
    buffer as PyMongo keeps them (``_cursor._data``); every read is logged."""

    def __init__(self, reads: list[list[dict[str, Any]]], log: list[str]) -> None:
        self.reads = list(reads)
        self.log = log
        self._cursor = type("Cursor", (), {})()
        self._cursor._data = collections.deque()  # type: ignore[attr-defined]
        self.resume_token: Any = None
        self.alive = True

    async def try_next(self) -> dict[str, Any] | None:
        data = self._cursor._data  # type: ignore[attr-defined]
        if not data:
            if not self.reads:
                await asyncio.Event().wait()  # await mode: the server holds the read
            self.log.append("read")
            data.extend(self.reads.pop(0))
        item: dict[str, Any] = data.popleft()
        self.resume_token = item["_id"]
        return item

    async def close(self) -> None:
        pass


async def test_the_fan_out_of_a_read_goes_out_before_the_next_read() -> None:
    """What a read brought is handed over together (one fan-out pass), and that pass runs
    before the watcher sends its next read: the write's frame is not held behind it."""
    log: list[str] = []
    stream = ReadsInBatches([[change(1), change(2)], [change(3)]], log)

    class Collection:
        name = "orders"

        async def watch(self, **kwargs: Any) -> ReadsInBatches:
            return stream

    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    pending: list[bool] = []

    def handle(name: str, raw: dict[str, Any]) -> int | None:
        n = raw["fullDocument"]["n"]
        log.append(f"change {n}")
        if not pending:  # as the hub does: one pass for what comes before it runs
            pending.append(True)
            loop.call_soon(fan_out)
        if n == 3:
            loop.call_soon(done.set)
        return None

    def fan_out() -> None:
        pending.clear()
        log.append("pass")

    watcher = CollectionWatcher(Collection(), handler=handle,  # type: ignore[arg-type]
                                on_history_lost=lambda *_: None)
    await watcher.start()
    await asyncio.wait_for(done.wait(), 5)
    await watcher.stop()
    assert log == ["read", "change 1", "change 2", "pass", "read", "change 3", "pass"]


async def test_a_nudge_in_the_same_moment_as_stop_does_not_keep_the_watcher_running() -> None:
    # Python 3.11's asyncio.wait_for returns the inner result when the cancel arrives just
    # as the inner wait finished, swallowing the cancel: a nudge (any write of the pipeline)
    # landing with stop() left the poll loop running and stop() waiting for it for good.
    coll = FakeCollection("orders", [[]], poll=True, head={"_data": "nx:1"})
    h = Harness(coll, expect=1, mode="poll", idle_interval=1.0, idle_max_interval=10.0)
    await h.watcher.start(wait=True)
    for _ in range(5):  # into the wait between two polls
        await asyncio.sleep(0)
    task = h.watcher._task
    assert task is not None
    h.watcher.nudge()
    await asyncio.sleep(0)  # the nudge's wait has ended; the poll loop has not resumed yet
    stopping = asyncio.create_task(h.watcher.stop())
    done, _ = await asyncio.wait({stopping}, timeout=2)
    if not done:  # the bug: the loop polls on; end it so that the test can fail cleanly
        task.cancel()
        await stopping
    assert done and task.cancelled(), "stop() waited on a watcher that kept running"


async def test_cancel_does_not_swallow_a_cancel_of_its_caller() -> None:
    from streaming.tasks import cancel

    async def stubborn() -> None:  # takes a while to end once cancelled
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.05)

    inner = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    outer = asyncio.create_task(cancel(inner))
    await asyncio.sleep(0.01)
    outer.cancel()  # the caller is cancelled while it waits for the task to end
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert outer.cancelled()


async def test_a_stream_that_swallows_the_cancel_still_lets_stop_return() -> None:
    # Whatever loses the cancel on its way (a driver that catches CancelledError to clean
    # up and forgets to raise it), stop() returns and the loop ends.
    from tests.streaming.fakes import FakeStream

    class Swallowing(FakeStream):
        async def try_next(self) -> dict[str, Any] | None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()
            return None

    class Coll(FakeCollection):
        async def watch(self, *args: Any, **kwargs: Any) -> FakeStream:
            self.calls.append(kwargs)
            return Swallowing([], poll=True)

    h = Harness(Coll("orders", []), expect=1, mode="poll", idle_interval=1.0)
    await h.watcher.start(wait=True)
    task = h.watcher._task
    assert task is not None
    stopping = asyncio.create_task(h.watcher.stop())
    done, _ = await asyncio.wait({stopping}, timeout=2)
    assert done, "stop() waited on a watcher whose stream swallowed the cancel"
    assert task.done() and h.watcher.state is WatcherState.STOPPED
