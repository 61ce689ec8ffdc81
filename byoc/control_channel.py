"""The control channel (`control_url`): params updates from the gateway.

One JSON object per trickle segment, read to its end (a segment may arrive in several chunks).
`{"keep": "alive"}` (sent every 10 s) is ignored; anything else is params, handed to a
`ParamsApplier` so only the newest pending update is applied. The subscriber starts at `-2`, so
the params the gateway cached before we connected are read first.

When the channel ends (404 or `Lp-Trickle-Closed`: the orchestrator tore the stream down), the
stream is stopped, as ai-runner's streamer stops when its control loop ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from byoc.params import ParamsApplier, normalize_params_body
from httpapi.json_body import JSONBodyError, loads_limited
from httpapi.outbound import OutboundPolicy
from httpapi.redact import redact_text, redact_url
from trickle.client import TrickleSubscriber

log = logging.getLogger(__name__)

KEEPALIVE = {"keep": "alive"}
# Largest control message kept; larger ones are read to their end and dropped (counted).
MAX_MESSAGE_BYTES = 4 << 20


class ControlReader:
    def __init__(
        self,
        url: str,
        label: str,
        applier: ParamsApplier,
        *,
        on_end: Callable[[str], None] | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        policy: OutboundPolicy | None = None,
    ) -> None:
        self.url = url
        self.policy = policy  # outbound URL policy + TLS (None: the built-in one)
        self.label = label
        self.applier = applier
        self.on_end = on_end
        self.max_message_bytes = max_message_bytes
        self._subscriber: TrickleSubscriber | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        self.messages = 0
        self.keepalives = 0
        self.invalid = 0
        self.oversize = 0
        self.end_reason: str | None = None

    def start(self) -> None:
        self._subscriber = TrickleSubscriber(self.url, start_seq=-2, policy=self.policy)
        self._task = asyncio.create_task(self._run(), name=f"control-{self.label}")

    async def _read_message(self, segment) -> bytes | None:
        parts: list[bytes] = []
        size = 0
        while chunk := await segment.read():
            size += len(chunk)
            if size <= self.max_message_bytes:
                parts.append(chunk)
        if segment.error:
            self.invalid += 1
            log.warning("[%s] control segment %d broke off; ignored", self.label, segment.seq)
            return None
        if size > self.max_message_bytes:
            self.oversize += 1
            log.warning(
                "[%s] control message of %d bytes over the %d byte limit; dropped",
                self.label,
                size,
                self.max_message_bytes,
            )
            return None
        return b"".join(parts)

    def handle_message(self, raw: bytes) -> None:
        """Parse one control message and submit its params (public for tests of the parsing)."""
        if not raw.strip():
            return
        try:
            message: Any = loads_limited(raw)
        except JSONBodyError:
            self.invalid += 1
            log.warning("[%s] control message is not JSON; ignored", self.label)
            return
        if message == KEEPALIVE:
            self.keepalives += 1
            return
        if not isinstance(message, dict):
            self.invalid += 1
            log.warning("[%s] control message is not a JSON object; ignored", self.label)
            return
        try:
            params = normalize_params_body(message)
        except ValueError as exc:
            self.invalid += 1
            log.warning("[%s] control message ignored: %s", self.label, exc)
            return
        self.messages += 1
        self.applier.submit(params)

    async def _run(self) -> None:
        subscriber = self._subscriber
        assert subscriber is not None  # made by start() before this task
        reason = "ended"
        try:
            while True:
                segment = await subscriber.next_segment()
                if segment is None:
                    reason = subscriber.end_reason or "ended"
                    break
                try:
                    raw = await self._read_message(segment)
                finally:
                    await segment.close()
                if raw is not None:
                    self.handle_message(raw)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # beyond the subscriber's own retries
            reason = f"failed: {redact_text(str(exc))}"
            log.warning("[%s] control channel %s", self.label, reason)
        self.end_reason = reason
        if not self._closing and self.on_end is not None:
            log.info("[%s] control channel ended (%s)", self.label, reason)
            self.on_end(reason)

    async def close(self) -> None:
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._subscriber is not None:
            await self._subscriber.close()

    def stats(self) -> dict[str, Any]:
        return {
            "url": redact_url(self.url),
            "messages": self.messages,
            "keepalives": self.keepalives,
            "invalid": self.invalid,
            "oversize": self.oversize,
            "end_reason": self.end_reason,
            "params": self.applier.stats(),
        }
