"""The business rules: orders, stock, users and access, analytics, demo simulations.

Pure of any web framework: functions take the database and the engine, raise
:mod:`backend.domain.errors`, and return documents.
"""

from __future__ import annotations

from streaming import Document

__all__ = ["Document"]
