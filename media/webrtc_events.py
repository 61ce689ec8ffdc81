"""A WebRTC data channel bound to a stream: events out, control messages in.

Out (JSON text, each < 64 KiB): every event on the stream's bus as `event.to_dict()` plus
`"type": event.kind` (captions, tags, errors, ...), and a `status` message about once a second
(state, fps in/out, frames in/out/dropped, latency p50/p95). In: `{"type": "params", ...}` is a
JSON merge patch of the stream's params (RFC 7396: absent keys keep their value, null removes one;
`"replace": true` replaces them all); `{"type": "ping"}`.
Errors are answered on the channel as `{"type": "error", "code", "message"}`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from aiortc import RTCDataChannel

from httpapi.json_body import JSONBodyError, loads_limited
from media.events import Subscription
from media.stream import Stream

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 60 * 1024  # peers accept 64 KiB by default; stay under it
MAX_BUFFERED_BYTES = 1 << 20  # beyond this the peer is not reading: drop (and count) messages


def status_message(stream: Stream) -> dict[str, Any]:
    status = stream.status()
    return {
        "type": "status",
        "manifest_id": stream.manifest_id,
        "state": status["state"],
        "fps_in": status["input_fps"],
        "fps_out": status["output_fps"],
        "frames_in": status["frames_in"],
        "frames_out": status["frames_out"],
        "frames_dropped": status["frames_dropped"],
        "latency_ms": status["latency_ms"],
        "t_server_ms": int(time.time() * 1000),
    }


class EventChannel:
    """Bridges one data channel to one stream until either closes."""

    def __init__(
        self,
        channel: RTCDataChannel,
        stream: Stream,
        allow_control: bool = True,
        status_interval: float = 1.0,
        queue_size: int = 256,
    ) -> None:
        self.channel = channel
        self.stream = stream
        self.allow_control = allow_control
        self.status_interval = status_interval
        self.queue_size = queue_size
        self._subscription: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.sent = 0
        self.dropped = 0
        self.received = 0
        self.closed = False

    def start(self) -> bool:
        """False (and the channel closed) when the stream cannot take another subscriber."""
        try:
            self._subscription = self.stream.events.subscribe(maxsize=self.queue_size)
        except RuntimeError as exc:
            log.info("[%s] data channel refused: %s", self.stream.manifest_id, exc)
            self.closed = True
            self.channel.close()
            return False
        label = self.stream.manifest_id
        self._tasks = [
            asyncio.create_task(self._forward_events(), name=f"dc-events-{label}"),
            asyncio.create_task(self._send_status(), name=f"dc-status-{label}"),
        ]
        self.channel.on("message", self._on_message)
        self.channel.on("close", self.close)
        return True

    # -- out ----------------------------------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> bool:
        if self.closed or self.channel.readyState != "open":
            return False
        text = json.dumps(message, default=str, ensure_ascii=False)
        if len(text.encode()) > MAX_MESSAGE_BYTES:
            self.dropped += 1
            log.info(
                "[%s] %s message of %d bytes not sent (limit %d)",
                self.stream.manifest_id,
                message.get("type"),
                len(text.encode()),
                MAX_MESSAGE_BYTES,
            )
            return False
        if self.channel.bufferedAmount > MAX_BUFFERED_BYTES:
            self.dropped += 1
            return False
        try:
            self.channel.send(text)
        except Exception as exc:  # the transport went away between the check and the send
            log.debug("[%s] data channel send failed: %s", self.stream.manifest_id, exc)
            return False
        self.sent += 1
        return True

    async def _forward_events(self) -> None:
        assert self._subscription is not None
        async for event in self._subscription:
            message = event.to_dict()
            message["type"] = event.kind
            self.send(message)
        self.close()  # the stream ended

    async def _send_status(self) -> None:
        while not self.closed:
            if self.channel.readyState == "open":
                self.send(status_message(self.stream))
            await asyncio.sleep(self.status_interval)

    # -- in -----------------------------------------------------------------------------------------
    def _on_message(self, data: Any) -> None:
        self.received += 1
        if isinstance(data, bytes):
            try:
                data = data.decode()
            except UnicodeDecodeError:
                self._error("bad_message", "messages must be UTF-8 JSON text")
                return
        if len(data) > MAX_MESSAGE_BYTES:
            self._error("too_large", f"messages must be under {MAX_MESSAGE_BYTES} bytes")
            return
        try:
            message = loads_limited(data)
        except JSONBodyError as exc:
            self._error("bad_json", str(exc))
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            self._error("bad_message", 'a message is a JSON object with a string "type"')
            return
        kind = message["type"]
        if kind == "ping":
            self.send({"type": "pong", "id": message.get("id"), "t_server_ms": int(time.time() * 1000)})
        elif kind == "params":
            self._apply_params(message)
        else:
            self._error("unknown_type", f"unknown message type {kind!r} (expected 'params' or 'ping')")

    def _apply_params(self, message: dict[str, Any]) -> None:
        if not self.allow_control:
            self._error("forbidden", "this channel is read-only (a viewer cannot change the stream)")
            return
        if "params" in message:
            given = message["params"]
            if not isinstance(given, dict):
                self._error("bad_params", "params must be an object")
                return
        else:
            given = {k: v for k, v in message.items() if k not in ("type", "replace", "id")}
        try:
            if message.get("replace"):
                self.stream.replace_params(given)
            else:
                self.stream.update_params(given)
        except ValueError as exc:
            self._error("bad_params", str(exc), message.get("id"))
            return
        self.send({"type": "params_applied", "id": message.get("id"), "params": self.stream.params})

    def _error(self, code: str, message: str, request_id: Any = None) -> None:
        self.send({"type": "error", "code": code, "message": message, "id": request_id})

    # -- lifecycle -------------------------------------------------------------------------------------
    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._subscription is not None:
            self._subscription.close()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()

    def stats(self) -> dict[str, Any]:
        return {"label": self.channel.label, "sent": self.sent, "dropped": self.dropped, "received": self.received}
