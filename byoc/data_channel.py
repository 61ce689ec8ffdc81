"""The data channel (`data_url`, BYOC only): the stream's events as JSON lines.

Every event on the stream's bus (captions, tags, status, errors, …) becomes one line: the event's
`to_dict()` plus `"type": event.kind`. The gateway splits each segment into lines with Go's
`bufio.Scanner` (64 KB per line) and re-serves every line as an SSE `data:` message, so:

- a line is at most `MAX_LINE_BYTES` (65535 bytes + newline; a longer one would make the scanner
  fail and re-read the segment). A longer event is dropped, counted, and replaced by a short
  `{"type": "dropped", "kind", "id", "bytes", "reason"}` line so readers know something was lost;
- lines are batched: one segment (`application/jsonl`, newline-terminated lines) at most every
  `flush_interval` (0.333 s, as pytrickle) when there is something to send;
- with nothing to send for `keepalive_interval` (25 s, as pytrickle) a keepalive line
  `{"type": "keepalive", "timestamp": <epoch ms>}` is sent. pytrickle sends `[]` instead; a JSON
  object with a `type` matches every other line, so clients can filter on `type` alone.

Buffers are bounded: at most `max_lines` lines wait (oldest dropped, counted) and one segment
carries at most `MAX_SEGMENT_BYTES`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from typing import Any

from httpapi.outbound import OutboundPolicy
from httpapi.redact import redact_url
from media.events import Subscription
from trickle.client import TrickleChannelClosedError, TricklePublisher

log = logging.getLogger(__name__)

MIME_JSONL = "application/jsonl"
MAX_LINE_BYTES = 64 * 1024 - 1
MAX_SEGMENT_BYTES = 1 << 20
MAX_PENDING_LINES = 1000
SEGMENT_TIMEOUT_S = 10.0


def event_line(event: Any) -> bytes:
    """One JSON line (without the newline) for a bus event."""
    body = event.to_dict()
    body["type"] = event.kind
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), default=str).encode()


def keepalive_line() -> bytes:
    return json.dumps({"type": "keepalive", "timestamp": int(time.time() * 1000)}).encode()


class DataPublisher:
    def __init__(
        self,
        url: str,
        stream: Any,
        *,
        flush_interval: float = 0.333,
        keepalive_interval: float = 25.0,
        max_lines: int = MAX_PENDING_LINES,
        policy: OutboundPolicy | None = None,
    ) -> None:
        self.url = url
        self.policy = policy  # outbound URL policy + TLS (None: the built-in one)
        self.stream = stream
        self.label = stream.manifest_id
        self.flush_interval = flush_interval
        self.keepalive_interval = keepalive_interval
        self._lines: deque[bytes] = deque(maxlen=max_lines)
        self._has_lines = asyncio.Event()
        self._publisher: TricklePublisher | None = None
        self._subscription: Subscription | None = None
        self._collector: asyncio.Task | None = None
        self._flusher: asyncio.Task | None = None
        self._last_sent = time.monotonic()
        self._closing = False
        self._final = False
        self._stop = asyncio.Event()
        self.lines_sent = 0
        self.segments_sent = 0
        self.keepalives_sent = 0
        self.lines_dropped = 0  # buffer overflow
        self.oversize = 0
        self.failed = 0
        self.channel_gone = False

    def start(self) -> None:
        self._publisher = TricklePublisher(self.url, mime=MIME_JSONL, policy=self.policy)
        self._subscription = self.stream.events.subscribe(maxsize=256)
        self._collector = asyncio.create_task(self._collect(), name=f"data-collect-{self.label}")
        self._flusher = asyncio.create_task(self._flush_loop(), name=f"data-flush-{self.label}")

    # -- lines ----------------------------------------------------------------------------------
    def add_event(self, event: Any) -> None:
        try:
            line = event_line(event)
        except Exception as exc:  # an event that cannot be encoded must not stop the others
            log.warning("[%s] data event not encodable: %s", self.label, exc)
            return
        if len(line) > MAX_LINE_BYTES:
            self.oversize += 1
            log.warning(
                "[%s] %s event of %d bytes over the %d byte line limit; dropped",
                self.label,
                event.kind,
                len(line),
                MAX_LINE_BYTES,
            )
            line = json.dumps(
                {
                    "type": "dropped",
                    "kind": event.kind,
                    "id": getattr(event, "id", None),
                    "bytes": len(line),
                    "reason": f"line over {MAX_LINE_BYTES} bytes",
                }
            ).encode()
        self.add_line(line)

    def add_line(self, line: bytes) -> None:
        if len(self._lines) == self._lines.maxlen:
            self.lines_dropped += 1  # the deque drops the oldest line
        self._lines.append(line)
        self._has_lines.set()

    async def _collect(self) -> None:
        assert self._subscription is not None  # subscribed by start() before this task
        async for event in self._subscription:
            self.add_event(event)

    # -- publishing -----------------------------------------------------------------------------
    def _take_batch(self) -> bytes:
        parts: list[bytes] = []
        size = 0
        while self._lines and size + len(self._lines[0]) + 1 <= MAX_SEGMENT_BYTES:
            line = self._lines.popleft()
            parts.append(line)
            size += len(line) + 1
        if not self._lines:
            self._has_lines.clear()
        return b"".join(line + b"\n" for line in parts)

    async def _publish(self, data: bytes, lines: int) -> None:
        if self.channel_gone:
            self.failed += 1
            return
        publisher = self._publisher
        assert publisher is not None  # made by start() before the flusher
        try:
            async with asyncio.timeout(SEGMENT_TIMEOUT_S):
                writer = await publisher.next_segment()
                await writer.write(data)
                status = await writer.close()
        except (TrickleChannelClosedError, TimeoutError):
            status = None
        self._last_sent = time.monotonic()
        if status == 200:
            self.segments_sent += 1
            self.lines_sent += lines
            return
        self.failed += 1
        if publisher.closed and publisher.end_reason != "client_closed":
            log.info("[%s] data channel gone (%s); no more data", self.label, publisher.end_reason)
            self.channel_gone = True

    async def _flush_once(self) -> None:
        while self._lines:
            count_before = len(self._lines)
            batch = self._take_batch()
            await self._publish(batch, count_before - len(self._lines))

    async def _flush_loop(self) -> None:
        while not self._final:
            wait = max(0.0, self._last_sent + self.keepalive_interval - time.monotonic())
            try:
                await asyncio.wait_for(self._has_lines.wait(), wait)
            except TimeoutError:
                await self._publish(keepalive_line() + b"\n", 0)
                self.keepalives_sent += 1
                continue
            await self._flush_once()
            try:  # batch what arrives meanwhile; close() cuts the pause short
                await asyncio.wait_for(self._stop.wait(), self.flush_interval)
            except TimeoutError:
                pass
        await self._flush_once()

    async def close(self, timeout: float = 5.0) -> None:
        """Send what is still buffered, then close and DELETE the channel."""
        if self._closing:
            return
        self._closing = True
        if self._collector is not None:
            if self.stream.events.closed:
                try:  # the bus closed: the collector drains the subscription, then ends
                    await asyncio.wait_for(asyncio.shield(self._collector), 1.0)
                except (TimeoutError, Exception):
                    pass
            self._collector.cancel()
            await asyncio.gather(self._collector, return_exceptions=True)
        if self._subscription is not None:
            self._subscription.close()
        self._final = True  # the flusher sends what is left and ends
        self._stop.set()
        self._has_lines.set()
        if self._flusher is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._flusher), timeout)
            except (TimeoutError, Exception):
                log.warning("[%s] data channel: final flush did not finish in %.0f s", self.label, timeout)
                self._flusher.cancel()
                await asyncio.gather(self._flusher, return_exceptions=True)
        if self._publisher is not None:
            await self._publisher.close(delete_channel=True)

    def stats(self) -> dict[str, Any]:
        return {
            "url": redact_url(self.url),
            "lines_sent": self.lines_sent,
            "segments_sent": self.segments_sent,
            "keepalives_sent": self.keepalives_sent,
            "lines_dropped": self.lines_dropped,
            "oversize": self.oversize,
            "failed": self.failed,
            "pending": len(self._lines),
            "channel_gone": self.channel_gone,
        }
