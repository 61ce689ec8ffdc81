"""A real TCP listener that counts the connections it receives (and answers nothing useful), for
checking that the server never contacts a denied address."""

from __future__ import annotations

import asyncio


class CountingListener:
    def __init__(self, host: str) -> None:
        self.host = host
        self.port = 0
        self.connections = 0
        self._server: asyncio.base_events.Server | None = None

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()

    async def __aenter__(self) -> CountingListener:
        self._server = await asyncio.start_server(self._on_connect, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def url(self, path: str = "/ai/trickle/ch", host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"
