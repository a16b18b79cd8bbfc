"""A command listener for tests that count what a piece of code sends the database."""

from __future__ import annotations

from typing import Any

from pymongo import monitoring

COUNTED = ("update", "find", "findAndModify", "insert", "delete")


class Commands(monitoring.CommandListener):
    """The names of the reads and writes a client sent, in order, as ``(name, collection)``
    in ``sent`` and as names alone in ``names``."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.sent]

    def clear(self) -> None:
        self.sent.clear()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name in COUNTED:
            self.sent.append((event.command_name, str(event.command.get(event.command_name))))

    def succeeded(self, event: Any) -> None: ...

    def failed(self, event: Any) -> None: ...
