"""Shared by the benchmarks: machine facts and writing the JSON result."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count()}


def write(path: Path, report: dict[str, Any]) -> None:
    """Write ``report`` as JSON to ``path`` and say so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**report, "machine": machine()}, indent=2) + "\n")
    print(f"wrote {path}")
