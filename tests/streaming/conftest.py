"""Fixtures for the streaming unit tests."""

from __future__ import annotations

from typing import Any

import pytest

from streaming.hub import Group


@pytest.fixture
def group_routes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times a group decided what a change means (one count per call)."""
    calls: list[int] = []
    original = Group.route

    def counting(self: Group, event: Any) -> Any:
        calls.append(1)
        return original(self, event)

    monkeypatch.setattr(Group, "route", counting)
    return calls
