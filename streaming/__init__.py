"""ChangeCast's change-stream engine (filled in by the streaming issue)."""

from __future__ import annotations

__all__: list[str] = []
