"""A small terminal progress bar (no dependency), for seeding and the load generator."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from streaming.types import Clock


class ProgressBar:
    """Draws ``label [#####.....] done/total unit  note`` on ``stream``.

    On a terminal the line is redrawn in place (at most every ``redraw_s``); elsewhere
    (a log file, CI) a line is written every ``log_every_s`` and at the end.
    """

    def __init__(self, total: float, *, label: str = "", unit: str = "", width: int = 30,
                 stream: TextIO | None = None, redraw_s: float = 0.0,
                 log_every_s: float = 5.0, clock: Clock = time.monotonic) -> None:
        self.total = max(total, 1)
        self.label = label
        self.unit = unit
        self.width = width
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.redraw_s = redraw_s
        self.log_every_s = log_every_s
        self._clock = clock
        self._drawn_at = -float("inf")
        self.done: float = 0

    def advance(self, amount: int = 1) -> None:
        """Record ``amount`` more units of work and redraw."""
        self.update(self.done + amount)

    def update(self, done: float, *, note: str = "") -> None:
        """Set how much is done; the line is drawn when due, and always at the end."""
        self.done = min(self.total, done)
        final = self.done >= self.total
        now = self._clock()
        if not final and now - self._drawn_at < (self.redraw_s if self.tty else self.log_every_s):
            return
        self._drawn_at = now
        filled = int(self.width * self.done / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        line = f"{self.label:<10} [{bar}] {self.done:g}/{self.total:g}{self.unit}"
        if note:
            line += f"  {note}"
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
