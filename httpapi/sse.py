"""The one Server-Sent Events writer: it prepares the response, writes `id:`/`event:`/`data:`
messages and keep-alive comments, and tells a route when its client went away.

Routes wait for their next message with a short timeout (`DISCONNECT_CHECK_SECONDS`) and call
`idle()` whenever the wait timed out, so a client that left frees its place within a second."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

KEEPALIVE_SECONDS = 15.0
DISCONNECT_CHECK_SECONDS = 1.0


def sse_message(event: str | None, data: Any, event_id: int | str | None = None) -> bytes:
    """One SSE message; `data` is sent as is when a string, else as compact JSON."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), default=str)
    head = f"id: {event_id}\n" if event_id is not None else ""
    if event is not None:
        head += f"event: {event}\n"
    # a line break inside data would end the field: each line goes as its own `data:` line
    body = "".join(f"data: {line}\n" for line in text.split("\n"))
    return f"{head}{body}\n".encode()


class SseWriter:
    """One event-stream response. `prepare` raises when the client already left; `send` and
    `idle` raise ConnectionResetError when it leaves mid-write."""

    def __init__(
        self, request: web.Request, headers: dict[str, str] | None = None, keepalive: float = KEEPALIVE_SECONDS
    ) -> None:
        self.request = request
        self.keepalive = keepalive
        self.response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # proxies (nginx) must not hold events back
                **(headers or {}),
            }
        )
        self._loop = asyncio.get_running_loop()
        self._last_write = self._loop.time()

    async def prepare(self, preamble: bytes = b"") -> None:
        await self.response.prepare(self.request)
        if preamble:
            await self._write(preamble)

    async def send(self, event: str | None, data: Any, event_id: int | str | None = None) -> None:
        await self._write(sse_message(event, data, event_id))

    def client_gone(self) -> bool:
        transport = self.request.transport
        return transport is None or transport.is_closing()

    async def idle(self) -> bool:
        """After a wait that brought nothing: False when the client went away, else True (with a
        keep-alive comment written when the stream was quiet for `keepalive` seconds)."""
        if self.client_gone():
            return False
        if self._loop.time() - self._last_write >= self.keepalive:
            await self._write(b": keep-alive\n\n")
        return True

    async def _write(self, data: bytes) -> None:
        await self.response.write(data)
        self._last_write = self._loop.time()
