"""Exponential backoff with jitter, for anything that reconnects or restarts."""

from __future__ import annotations

import random


class Backoff:
    """Delays that double from ``initial`` up to ``maximum``, each scaled by a random factor
    in [0.5, 1.0] so that many clients retrying together spread out (no thundering herd)."""

    def __init__(self, *, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError(f"expected 0 < initial <= maximum, got {initial!r} and {maximum!r}")
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """The delay before the next attempt (and count this attempt)."""
        delay = min(self.maximum, self.initial * 2 ** self.attempt)
        self.attempt += 1
        return float(delay * self._rng.uniform(0.5, 1.0))

    def reset(self) -> None:
        """The last attempt succeeded: start again from ``initial``."""
        self.attempt = 0
