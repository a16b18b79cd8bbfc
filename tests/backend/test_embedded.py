from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient

from backend.infra.embedded import EmbeddedError, EmbeddedServer, EmbeddedState
from tests.support.procs import alive

pytestmark = [
    pytest.mark.embedded_only(reason="it is the embedded server's launcher and supervisor"),
    pytest.mark.timeout(60),
]


async def wait_for(predicate: object, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_embedded_starts_answers_and_stops_without_orphans(tmp_path: Path) -> None:
    server = EmbeddedServer(data_dir=tmp_path)
    await server.start()
    pid = server.pid
    assert pid is not None and alive(pid)
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(server.uri)
    await client.app.things.insert_one({"_id": "kept"})
    await client.close()
    assert list((tmp_path / "nx").glob("app*")), "the database lives in a file, not in memory"
    await server.stop()
    assert server.state is EmbeddedState.STOPPED
    assert not alive(pid)


async def test_embedded_restarts_after_kill_9_on_the_same_file(tmp_path: Path) -> None:
    async with EmbeddedServer(data_dir=tmp_path, backoff_initial=0.05) as server:
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
            server.uri, serverSelectionTimeoutMS=5000
        )
        await client.app.things.insert_one({"_id": "before"})
        old_pid = server.pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        await wait_for(lambda: server.restarts == 1 and server.state is EmbeddedState.RUNNING, 15)
        assert server.pid != old_pid
        assert await client.app.things.find_one({"_id": "before"}) == {"_id": "before"}
        await client.close()


async def test_embedded_unwritable_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(EmbeddedError, match="not writable"):
        await EmbeddedServer(data_dir=blocker).start()


async def test_embedded_corrupt_database_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "nx").mkdir()
    (tmp_path / "nx" / "app.db").write_bytes(b"this is not sqlite" * 100)
    async with EmbeddedServer(data_dir=tmp_path) as server:
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
            server.uri, serverSelectionTimeoutMS=2000
        )
        with pytest.raises(Exception, match=r"(?i)not a database|malformed|corrupt|file"):
            await client.app.things.insert_one({"_id": 1})
        await client.close()
