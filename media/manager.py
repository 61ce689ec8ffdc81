"""Owns the streams: admission (capacity), lookup by manifest id, and stopping."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from media.captions import CaptionLog
from media.events import EventBus
from media.lru import LRU
from media.stats import RateMeter
from media.stream import Stream, StreamState

log = logging.getLogger(__name__)


class AdmissionError(Exception):
    """The server cannot take another stream now (→ 503)."""


class DuplicateStreamError(Exception):
    """A stream with this manifest id is already running (→ 409)."""


class StoppedStream:
    """What is kept of a stream after it stopped: its final status and summary, its (bounded,
    text-only) caption log and closed event history for late readers (WebVTT, SSE replay).
    The stream itself — stages with their ASR buffers, sinks, queued and last decoded frames —
    is released."""

    active = False

    def __init__(self, stream: Stream) -> None:
        self.manifest_id = stream.manifest_id
        self.state: StreamState = stream.state
        self.end_reason = stream.end_reason
        self.params = stream.params
        self.metadata = stream.metadata
        self._status = stream.status()
        self._summary = stream.summary()
        self.captions: CaptionLog = stream.captions
        self.events: EventBus = stream.events
        # what status reports read (byoc/status.py): the times, not the stream's buffers
        self.created_at = stream.created_at
        self.state_changed_at = stream.state_changed_at
        self.params_updated_at = stream.params_updated_at
        self.last_error = stream.last_error
        self.last_error_time = stream.last_error_time
        self.in_meter = _final_meter(stream.in_meter)
        self.out_meter = _final_meter(stream.out_meter)

    def status(self) -> dict[str, Any]:
        return dict(self._status)

    def summary(self) -> dict[str, Any]:
        return dict(self._summary)

    async def stop(self, reason: str = "", error: bool = False) -> None:
        """Already stopped: nothing to do."""


def _final_meter(meter: RateMeter) -> RateMeter:
    """An empty meter that remembers when `meter` last counted: a stopped stream's rate is 0."""
    final = RateMeter(window=meter.window, max_events=1)
    final.count, final.last_time = meter.count, meter.last_time
    return final


class StreamManager:
    def __init__(self, capacity: int, history: int = 64) -> None:
        self.capacity = capacity
        self._active: dict[str, Stream] = {}
        self._reserved: set[str] = set()
        # summaries of recently stopped streams, bounded by `history`
        self._recent: LRU[str, StoppedStream] = LRU(history)
        # extra admission rules, e.g. GPU memory: each returns (ok, reason)
        self.admission_checks: list[Callable[[], tuple[bool, str]]] = []
        # told (stream, its summary) when a stream stops, e.g. to move what is keyed by the stream
        self.summary_hooks: list[Callable[[Stream, StoppedStream], None]] = []
        self.started_total = 0

    # -- admission ------------------------------------------------------------------------------
    def load(self) -> int:
        return len(self._active) + len(self._reserved)

    def can_accept(self) -> tuple[bool, str]:
        if self.load() >= self.capacity:
            return False, f"at capacity: {self.load()} of {self.capacity} streams running"
        for check in self.admission_checks:
            ok, reason = check()
            if not ok:
                return False, reason
        return True, ""

    def reserve(self, manifest_id: str) -> None:
        """Hold a slot while a stream is being built; raises AdmissionError or DuplicateStreamError."""
        if manifest_id in self._active or manifest_id in self._reserved:
            raise DuplicateStreamError(f"stream '{manifest_id}' is already running")
        ok, reason = self.can_accept()
        if not ok:
            raise AdmissionError(reason)
        self._reserved.add(manifest_id)

    def release(self, manifest_id: str) -> None:
        self._reserved.discard(manifest_id)

    async def start(self, stream: Stream) -> Stream:
        """Start a stream whose id was reserved; the slot is released if the start fails."""
        try:
            stream.on_stop(self._forget)
            self._active[stream.manifest_id] = stream
            await stream.start()
            self.started_total += 1
            return stream
        except BaseException:
            self._active.pop(stream.manifest_id, None)
            raise
        finally:
            self._reserved.discard(stream.manifest_id)

    def _forget(self, stream: Stream) -> None:
        if self._active.get(stream.manifest_id) is stream:
            del self._active[stream.manifest_id]
        summary = StoppedStream(stream)
        for hook in self.summary_hooks:
            try:
                hook(stream, summary)
            except Exception:
                log.exception("stream summary hook failed")
        self._recent.put(stream.manifest_id, summary)

    # -- lookup ---------------------------------------------------------------------------------
    def get(self, manifest_id: str) -> Stream | StoppedStream | None:
        """A running stream, or the summary of a recently stopped one."""
        return self._active.get(manifest_id) or self._recent.get(manifest_id)

    def get_active(self, manifest_id: str) -> Stream | None:
        return self._active.get(manifest_id)

    def active(self) -> list[Stream]:
        return list(self._active.values())

    # -- stopping -------------------------------------------------------------------------------
    async def stop(self, manifest_id: str, reason: str = "stopped by request") -> Stream | None:
        stream = self._active.get(manifest_id)
        if stream is None:
            return None
        await stream.stop(reason)
        return stream

    async def stop_all(self, reason: str = "server shutting down") -> None:
        streams = self.active()
        if streams:
            log.info("stopping %d stream(s): %s", len(streams), reason)
            await asyncio.gather(*(s.stop(reason) for s in streams), return_exceptions=True)


# the app's stream table (server/app.py); beside its type because server/access.py, which
# server/keys.py imports, reads it
STREAMS_KEY = web.AppKey("streams", StreamManager)
