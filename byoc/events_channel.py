"""The events channel (`events_url`): what the gateway knows about a running stream.

Each event is one trickle segment holding one JSON object, `{"event": {...}, "queue_event_type":
"ai_stream_events"}` (ai-runner's envelope; `stream_trace` events use `"stream_trace"`). Sent:

- a `status` event (ai-runner shape, byoc/status.py) at once, then every `interval` seconds — the
  gateway drops a stream after 30 s without any event — and a final one when the stream stops;
- `stream_trace` events `runner_receive_stream_request`, `runner_receive_first_ingest_segment`,
  `runner_send_first_processed_segment`;
- `error` events `{"type": "error", "pipeline", "message", "time"}` for errors the stream reports,
  at most one per `error_min_interval` (the newest wins; ai-runner's guardian also reports at most
  one per second). `time` is epoch seconds as ai-runner sends it; every event also gets
  `timestamp` (epoch ms).

Outgoing events wait in a bounded queue (oldest dropped and counted) drained by one sender task,
so a slow orchestrator never blocks the stream or grows memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from byoc.status import StreamStatusTracker, timestamp_ms
from httpapi.outbound import OutboundPolicy
from httpapi.redact import redact_url
from media.events import Subscription
from media.mailbox import DropOldestMailbox
from trickle.client import TrickleChannelClosedError, TricklePublisher

log = logging.getLogger(__name__)

QUEUE_AI_STREAM_EVENTS = "ai_stream_events"
QUEUE_STREAM_TRACE = "stream_trace"
EVENT_QUEUE_SIZE = 32
# Writing one event segment should take milliseconds; past this the orchestrator is stuck.
SEGMENT_TIMEOUT_S = 10.0


class EventsReporter:
    def __init__(
        self,
        url: str,
        stream: Any,
        tracker: StreamStatusTracker,
        *,
        interval: float = 10.0,
        error_min_interval: float = 1.0,
        queue_size: int = EVENT_QUEUE_SIZE,
        policy: OutboundPolicy | None = None,
    ) -> None:
        self.url = url
        self.policy = policy  # outbound URL policy + TLS (None: the built-in one)
        self.stream = stream
        self.tracker = tracker
        self.interval = interval
        self.error_min_interval = error_min_interval
        self.label = stream.manifest_id
        self._queue: DropOldestMailbox[bytes | None] = DropOldestMailbox(queue_size)
        self._publisher: TricklePublisher | None = None
        self._sender: asyncio.Task | None = None
        self._status_loop: asyncio.Task | None = None
        self._error_loop: asyncio.Task | None = None
        self._errors: Subscription | None = None
        self._closing = False
        self._held_error: tuple[str, float] | None = None  # newest error waiting for the rate limit
        self.sent = 0
        self.failed = 0
        self.errors_suppressed = 0
        self.channel_gone = False

    @property
    def dropped(self) -> int:
        return self._queue.dropped

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._publisher = TricklePublisher(self.url, mime="application/json", policy=self.policy)
        self._errors = self.stream.events.subscribe(maxsize=16, kinds={"error"})
        self._sender = asyncio.create_task(self._send_loop(), name=f"events-send-{self.label}")
        self._status_loop = asyncio.create_task(self._report_loop(), name=f"events-status-{self.label}")
        self._error_loop = asyncio.create_task(self._watch_errors(), name=f"events-errors-{self.label}")

    async def close(self, final_status: bool = True, timeout: float = 5.0) -> None:
        """Send the final status (and any error still held back), then close and DELETE the channel."""
        if self._closing:
            return
        self._closing = True
        if self._status_loop is not None:
            self._status_loop.cancel()
            await asyncio.gather(self._status_loop, return_exceptions=True)
        if self._error_loop is not None:
            if self.stream.events.closed:
                # the bus closed (the stream stopped): the watcher drains what is left, then ends
                try:
                    await asyncio.wait_for(asyncio.shield(self._error_loop), 1.0)
                except (TimeoutError, Exception):
                    pass
            self._error_loop.cancel()
            await asyncio.gather(self._error_loop, return_exceptions=True)
            if self._errors is not None:
                self._errors.close()
            if self._held_error is not None:
                self.emit_error(*self._held_error)
                self._held_error = None
        if final_status:
            self.emit(self.tracker.snapshot(clear_transient=True))
        self._enqueue(None)  # the sender stops after everything queued before it
        if self._sender is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._sender), timeout)
            except (TimeoutError, Exception):
                self._sender.cancel()
                await asyncio.gather(self._sender, return_exceptions=True)
        if self._publisher is not None:
            await self._publisher.close(delete_channel=True)

    # -- emitting -------------------------------------------------------------------------------
    def emit(self, event: dict[str, Any], queue_event_type: str = QUEUE_AI_STREAM_EVENTS) -> None:
        """Queue one event (non-blocking). `timestamp` (epoch ms) is added when missing."""
        event = dict(event)
        event.setdefault("timestamp", timestamp_ms(time.time()))
        payload = json.dumps({"event": event, "queue_event_type": queue_event_type}, default=str).encode()
        self._enqueue(payload)

    def trace(self, trace_type: str, when: float | None = None) -> None:
        self.emit({"type": trace_type, "timestamp": timestamp_ms(when or time.time())}, QUEUE_STREAM_TRACE)

    def emit_error(self, message: str, when: float) -> None:
        self.emit({"type": "error", "pipeline": self.tracker.pipeline, "message": message, "time": when})

    def _enqueue(self, payload: bytes | None) -> None:
        self._queue.offer(payload)

    # -- tasks ----------------------------------------------------------------------------------
    async def _report_loop(self) -> None:
        while True:
            self.emit(self.tracker.snapshot(clear_transient=True))
            await asyncio.sleep(self.interval)

    async def _watch_errors(self) -> None:
        sub = self._errors
        assert sub is not None  # subscribed by start() before this task
        last_sent = float("-inf")
        while True:
            wait = None
            if self._held_error is not None:
                wait = max(0.0, last_sent + self.error_min_interval - time.monotonic())
            event = await sub.get(timeout=wait)
            if event is not None:
                if self._held_error is not None:
                    self.errors_suppressed += 1
                message = getattr(event, "message", "") or str(event)
                self._held_error = (message, getattr(event, "emitted_at", time.time()))
            due = time.monotonic() - last_sent >= self.error_min_interval
            if self._held_error is not None and (due or sub.closed):
                self.emit_error(*self._held_error)
                self._held_error = None
                last_sent = time.monotonic()
            if sub.closed and event is None:
                return

    async def _send_loop(self) -> None:
        publisher = self._publisher
        assert publisher is not None  # made by start() before this task
        while True:
            payload = await self._queue.get()
            if payload is None:
                return
            if self.channel_gone:
                self.failed += 1
                continue
            try:
                async with asyncio.timeout(SEGMENT_TIMEOUT_S):
                    writer = await publisher.next_segment()
                    await writer.write(payload)
                    status = await writer.close()
            except TrickleChannelClosedError:
                status = None
            except TimeoutError:
                log.warning("[%s] events segment timed out", self.label)
                status = None
            if status == 200:
                self.sent += 1
            else:
                self.failed += 1
                if publisher.closed and publisher.end_reason != "client_closed":
                    # 404: the orchestrator removed the channel; the stream is going away
                    log.info("[%s] events channel gone (%s); no more events", self.label, publisher.end_reason)
                    self.channel_gone = True

    def stats(self) -> dict[str, Any]:
        return {
            "url": redact_url(self.url),
            "sent": self.sent,
            "failed": self.failed,
            "dropped": self.dropped,
            "errors_suppressed": self.errors_suppressed,
            "channel_gone": self.channel_gone,
            "status_reports": self.tracker.reports,
        }
