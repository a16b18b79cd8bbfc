"""A small terminal progress bar (no dependency)."""

from __future__ import annotations

import sys
from typing import TextIO


class ProgressBar:
    """Draws ``label [#####.....] done/total`` on one line of ``stream``."""

    def __init__(self, total: int, *, label: str = "", width: int = 30,
                 stream: TextIO | None = None) -> None:
        self.total = max(total, 1)
        self.label = label
        self.width = width
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0

    def advance(self, amount: int = 1) -> None:
        """Record ``amount`` more units of work and redraw."""
        self.done = min(self.total, self.done + amount)
        filled = self.width * self.done // self.total
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r{self.label:<10} [{bar}] {self.done}/{self.total}")
        if self.done == self.total:
            self.stream.write("\n")
        self.stream.flush()
