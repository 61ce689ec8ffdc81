"""Play the Livepeer gateway/orchestrator side of a BYOC stream in tests, with real trickle I/O.

The orchestrator creates a stream's channels before it calls the worker; `LivepeerGateway` does the
same on a trickle server (the worker's built-in one, or an `OrchestratorTrickle`: a trickle server
of its own on another loopback port, as an orchestrator hosts the channels), then reads the events
and data channels as the Go gateway does (one JSON value per events segment; JSON lines on the
data channel) and writes the control channel.

With tokens set, the worker's built-in trickle server needs TRICKLE_TOKEN (or its fallbacks): the
gateway's own clients (collectors, control publisher) present `server.token("trickle")` there, as a
gateway configured with that token does; an `OrchestratorTrickle` takes none.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from server.keys import TRICKLE_KEY
from tests.trickle_helpers import token_policy
from trickle.client import TricklePublisher, TrickleSubscriber
from trickle.server import TrickleServer

MAX_ITEMS = 2000  # collectors are bounded like everything else


class JsonSegmentCollector:
    """Reads every segment of a channel to its end and keeps what it parses (bounded)."""

    def __init__(self, url: str, lines: bool = False, token: str | None = None) -> None:
        self.url = url
        self.token = token
        self.lines = lines
        self.items: list[tuple[float, Any]] = []  # (loop time received, parsed value)
        self.raw_segments: list[bytes] = []
        self.ended = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.new_item = asyncio.Event()

    def start(self) -> JsonSegmentCollector:
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        subscriber = TrickleSubscriber(self.url, policy=token_policy(self.token))
        try:
            while len(self.items) < MAX_ITEMS:
                segment = await subscriber.next_segment()
                if segment is None:
                    return
                parts = []
                while chunk := await segment.read():
                    parts.append(chunk)
                data = b"".join(parts)
                if not data:
                    continue
                self.raw_segments.append(data)
                values = (
                    [json.loads(line) for line in data.splitlines() if line.strip()]
                    if self.lines
                    else [json.loads(data)]
                )
                for value in values:
                    self.items.append((loop.time(), value))
                self.new_item.set()
        finally:
            await subscriber.close()
            self.ended.set()

    def values(self) -> list[Any]:
        return [value for _, value in self.items]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class EventsCollector(JsonSegmentCollector):
    def events(self, event_type: str | None = None, queue: str | None = None) -> list[dict[str, Any]]:
        found = []
        for value in self.values():
            event = value.get("event", value)
            if event_type is not None and event.get("type") != event_type:
                continue
            if queue is not None and value.get("queue_event_type") != queue:
                continue
            found.append(event)
        return found

    def timed(self, event_type: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, v["event"]) for t, v in self.items if v.get("event", {}).get("type") == event_type]


class OrchestratorTrickle:
    """A trickle server on its own loopback port, as the orchestrator runs it (no tokens)."""

    def __init__(self) -> None:
        self.app = web.Application()
        self.trickle = TrickleServer()
        self.trickle.add_routes(self.app)
        # A remote server that goes away does not wait for its clients: aiohttp's default (60 s) held
        # every test whose stream still had a request on it (streams are stopped after this server).
        self.runner = web.AppRunner(self.app, shutdown_timeout=1.0)
        self.base_url = ""

    async def start(self) -> OrchestratorTrickle:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    def trickle_url(self, channel: str) -> str:
        return f"{self.base_url}/ai/trickle/{channel}"

    async def stop(self) -> None:
        await self.runner.cleanup()


class LivepeerGateway:
    """Channels `{mid}`, `{mid}-out`, `{mid}-control`, `{mid}-events`, `{mid}-data` on the server
    (or on `trickle_host`, an `OrchestratorTrickle`)."""

    def __init__(
        self,
        server: Any,
        mid: str,
        *,
        video_in: bool = True,
        video_out: bool = True,
        data: bool = True,
        trickle_host: OrchestratorTrickle | None = None,
    ) -> None:
        self.server = server
        self.mid = mid
        host = trickle_host or server
        self.trickle_host = host
        # the worker's own trickle server needs its trickle token (None in open mode)
        self.trickle_token: str | None = server.token("trickle") if trickle_host is None else None
        trickle = host.trickle if trickle_host is not None else server.app[TRICKLE_KEY]
        trickle.create_channel(f"{mid}-control", "application/json")
        trickle.create_channel(f"{mid}-events", "application/json")
        self.body: dict[str, Any] = {
            "gateway_request_id": mid,
            "control_url": host.trickle_url(f"{mid}-control"),
            "events_url": host.trickle_url(f"{mid}-events"),
        }
        if video_in:
            trickle.create_channel(mid, "video/MP2T")
            self.body["subscribe_url"] = host.trickle_url(mid)
        if video_out:
            trickle.create_channel(f"{mid}-out", "video/MP2T")
            self.body["publish_url"] = host.trickle_url(f"{mid}-out")
        if data:
            trickle.create_channel(f"{mid}-data", "application/jsonl")
            self.body["data_url"] = host.trickle_url(f"{mid}-data")
        self.events = EventsCollector(host.trickle_url(f"{mid}-events"), token=self.trickle_token)
        self.data = (
            JsonSegmentCollector(host.trickle_url(f"{mid}-data"), lines=True, token=self.trickle_token)
            if data
            else None
        )
        self._control: TricklePublisher | None = None

    def start_collectors(self) -> LivepeerGateway:
        """Subscribe before the start call, as the gateway does, so no early event is missed."""
        self.events.start()
        if self.data is not None:
            self.data.start()
        return self

    def headers(self, token: str | None = None) -> dict[str, str]:
        headers = {"X-Stream-Id": self.mid}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def send_control(self, message: dict[str, Any]) -> None:
        if self._control is None:
            self._control = TricklePublisher(
                self.trickle_host.trickle_url(f"{self.mid}-control"),
                mime="application/json",
                policy=token_policy(self.trickle_token),
            )
        writer = await self._control.next_segment()
        data = json.dumps(message).encode()
        # split in two writes: the worker must read a control segment to its end
        await writer.write(data[: len(data) // 2])
        await writer.write(data[len(data) // 2 :])
        await writer.close()

    async def close(self) -> None:
        if self._control is not None:
            await self._control.close(delete_channel=False)
        await self.events.stop()
        if self.data is not None:
            await self.data.stop()
