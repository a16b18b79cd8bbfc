"""Shared by the benchmarks: machine facts and writing the JSON result."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from loadtest.runner import percentile, spread

__all__ = ["chart_bars", "machine", "percentile", "percents", "spread", "write"]


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count()}


def point(rows: list[dict[str, Any]], server: str, clients: int,
          rate: int) -> dict[str, Any] | None:
    """The row of ``server`` at ``clients`` x ``rate``, if it was measured."""
    return next((r for r in rows if (r["server"], r["clients"], r["rate"])
                 == (server, clients, rate)), None)


def percents(shares: list[float]) -> str:
    """Shares (0.712) as the tables print them: "71, 62, 77"."""
    return ", ".join(f"{100 * share:.0f}" for share in shares)


def write(path: Path, report: dict[str, Any]) -> None:
    """Write ``report`` as JSON to ``path`` and say so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**report, "machine": machine()}, indent=2) + "\n")
    print(f"wrote {path}")


def chart_bars(path: Path, title: str, labels: list[str], series: dict[str, list[Any]], *,
               log: bool = False, unit: str = "") -> None:
    """A grouped bar chart as PNG (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(labels) + 2), 4.2), dpi=110)
    width = 0.8 / max(1, len(series))
    for index, (name, values) in enumerate(series.items()):
        xs = [n + (index - (len(series) - 1) / 2) * width for n in range(len(labels))]
        ys = [v if isinstance(v, int | float) else 0 for v in values]
        bars = ax.bar(xs, ys, width, label=name)
        ax.bar_label(bars, labels=[_short(v) for v in values], fontsize=7, padding=2)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    if log:
        ax.set_yscale("log")
    ax.set_title(title)
    if unit:
        ax.set_ylabel(unit)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    print(f"wrote {path}")


def _short(value: Any) -> str:
    if not isinstance(value, int | float):
        return "n/a"
    if value >= 100_000:
        return f"{value / 1000:,.0f}k"
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"
