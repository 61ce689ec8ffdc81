"""A small Server-Sent Events reader for tests (real HTTP over loopback)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import aiohttp


@dataclass
class SseMessage:
    event: str
    id: str | None
    data: dict


class SseReader:
    """Collects messages from an SSE URL in a background task (bounded by `max_messages`)."""

    def __init__(self, session: aiohttp.ClientSession, url: str, max_messages: int = 5000) -> None:
        self.session = session
        self.url = url
        self.messages: list[SseMessage] = []
        self.receive_times: list[float] = []
        self.max_messages = max_messages
        self.ended = asyncio.Event()
        self.connected = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> SseReader:
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with self.session.get(self.url, timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as resp:
                assert resp.status == 200, await resp.text()
                self.connected.set()
                event, ident, data = "message", None, []
                async for raw in resp.content:
                    line = raw.decode().rstrip("\n").rstrip("\r")
                    if not line:
                        if data:
                            self.messages.append(SseMessage(event, ident, json.loads("\n".join(data))))
                            self.receive_times.append(loop.time())
                            if len(self.messages) >= self.max_messages:
                                return
                        event, ident, data = "message", None, []
                        continue
                    if line.startswith(":"):
                        continue
                    field, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if field == "event":
                        event = value
                    elif field == "id":
                        ident = value
                    elif field == "data":
                        data.append(value)
        finally:
            self.connected.set()
            self.ended.set()

    def of(self, event: str) -> list[SseMessage]:
        return [m for m in self.messages if m.event == event]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
