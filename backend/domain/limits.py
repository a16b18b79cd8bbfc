"""How often something happened per key, over a sliding window, in bounded memory."""

from __future__ import annotations

import time
from collections import OrderedDict, deque

from streaming.types import Clock


class SlidingWindow:
    """The times of events per key over the last ``window`` seconds; at most ``max_keys``
    keys are kept, the least recently used go first."""

    def __init__(self, window: float, *, max_keys: int = 100_000,
                 clock: Clock = time.monotonic) -> None:
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._events: OrderedDict[str, deque[float]] = OrderedDict()

    def now(self) -> float:
        return self._clock()

    def recent(self, key: str) -> deque[float]:
        """The times of ``key``'s events still inside the window, oldest first."""
        entries = self._events.get(key)
        if entries is None:
            entries = self._events[key] = deque()
        self._events.move_to_end(key)
        cutoff = self._clock() - self.window
        while entries and entries[0] < cutoff:
            entries.popleft()
        return entries

    def add(self, *keys: str) -> None:
        """One event now, for each of ``keys``."""
        now = self._clock()
        for key in keys:
            self.recent(key).append(now)
        while len(self._events) > self.max_keys:  # bounded memory under a spray
            self._events.popitem(last=False)

    def retry_after(self, key: str) -> int:
        """Whole seconds until the oldest of ``key``'s events leaves the window (at least 1)."""
        entries = self.recent(key)
        return max(1, round(entries[0] + self.window - self._clock())) if entries else 1
