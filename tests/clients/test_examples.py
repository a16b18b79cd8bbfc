"""The examples in examples/ run as a user would run them, against a real server: each lists
the low-stock products, then prints a product that drops below the line and leaves it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.clients.drivers import node_command
from tests.conftest import ROOT
from tests.support.server import serve_site

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


async def line_with(proc: asyncio.subprocess.Process, text: str, seen: list[str]) -> str:
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        while True:
            raw = await proc.stdout.readline()
            assert raw, f"the example exited; it printed {seen}"
            seen.append(raw.decode().rstrip())
            if text in seen[-1]:
                return seen[-1]


@contextlib.asynccontextmanager
async def script(*command: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """A program run as a user would (its output piped here), stopped at the end."""
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        yield proc
    finally:
        proc.terminate()
        await proc.wait()


async def low_stock_product(db: Any) -> str:
    """A product above the line, now put below it: its id."""
    product = await db.products.find_one({"stock": {"$gte": 10}})
    assert product is not None
    await db.products.update_one({"_id": product["_id"]}, {"$set": {"stock": 2}})
    return str(product["_id"])


@pytest.mark.parametrize("language", ["python", "js"])
async def test_watch_low_stock_example_prints_the_list_then_each_change(
    nx_uri: str, tmp_path: Path, language: str
) -> None:
    async with serve_site(nx_uri, tmp_path / "site", pipeline_enabled=False) as (base, db):
        low = await db.products.count_documents({"stock": {"$lt": 10}})
        command = [sys.executable, str(ROOT / "examples" / "watch_low_stock.py")] \
            if language == "python" else [*node_command(), str(ROOT / "examples" / "watch_low_stock.mjs")]
        seen: list[str] = []
        async with script(*command, base, "10") as proc:
            assert await line_with(proc, "products below 10:", seen) == f"{low} products below 10:"
            product = await low_stock_product(db)
            assert (await line_with(proc, product, seen)).startswith(f"! {product} stock 2")
            await db.products.update_one({"_id": product}, {"$set": {"stock": 50}})
            assert await line_with(proc, "stocked again", seen) == f"- {product} is stocked again"


async def test_the_readme_python_example_runs_as_printed(nx_uri: str, tmp_path: Path) -> None:
    """The README's client example, cut out of README.md and pointed at a real server."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Clients"):]
    code = section[section.index("```python\n") + 10:section.index("```", section.index("```python") + 9)]
    assert len(code.strip().splitlines()) <= 10  # the limit
    async with serve_site(nx_uri, tmp_path / "site", pipeline_enabled=False) as (base, db):
        example = tmp_path / "readme_example.py"
        example.write_text(code.replace("http://127.0.0.1:8000", base))
        low = await db.products.count_documents({"stock": {"$lt": 10}})
        seen: list[str] = []
        async with script(sys.executable, str(example)) as proc:
            assert await line_with(proc, "products low", seen) == f"Snapshot {low} products low"
            await low_stock_product(db)
            assert await line_with(proc, "Change", seen) == f"Change {low + 1} products low"
