"""A TCP proxy in front of a server, whose network a test can cut: ``cut()`` drops every
connection at once (the client sees its socket die), ``stall()`` keeps them open and stops
passing bytes (a dead network neither end hears about; only a heartbeat finds it)."""

from __future__ import annotations

import asyncio
import contextlib


class Proxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.connections = 0
        self._pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter, asyncio.Event]] = []
        self._stalled: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter, asyncio.Event]] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.connections += 1
        flowing = asyncio.Event()
        flowing.set()
        self._pairs.append((writer, up_writer, flowing))
        await asyncio.gather(self._pipe(reader, up_writer, flowing),
                             self._pipe(up_reader, writer, flowing), return_exceptions=True)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                    flowing: asyncio.Event) -> None:
        try:
            while data := await source.read(65536):
                await flowing.wait()
                sink.write(data)
                await sink.drain()
        finally:
            with contextlib.suppress(Exception):
                sink.close()

    def cut(self) -> int:
        """Drop every open connection (an RST, no close frame); returns how many."""
        pairs, self._pairs = self._pairs, []
        for client, upstream, _ in pairs:
            for writer in (client, upstream):
                with contextlib.suppress(Exception):
                    writer.transport.abort()
        return len(pairs)

    def stall(self) -> int:
        """Stop passing bytes on every open connection, without closing any (new ones
        flow); returns how many."""
        for _, _, flowing in self._pairs:
            flowing.clear()
        self._stalled.extend(self._pairs)
        stalled, self._pairs = len(self._pairs), []
        return stalled

    async def close(self) -> None:
        self._pairs.extend(self._stalled)
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
