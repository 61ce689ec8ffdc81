"""Typed stream events and the per-stream event bus.

Every sink (overlay, SSE, WebVTT, WebRTC data channel, trickle data/events channels) formats the
same event objects, so a caption or a tag looks the same wherever it is read.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from media.mailbox import DropOldestMailbox

log = logging.getLogger(__name__)

_event_ids = itertools.count(1)


def next_event_id() -> int:
    """Process-wide increasing id; a partial caption and its final share one id."""
    return next(_event_ids)


@dataclass
class StreamEvent:
    """Base of every event on the bus. `pts` is the source media time in seconds."""

    kind: str = "event"
    id: int = field(default_factory=next_event_id)
    pts: float | None = None
    emitted_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CaptionEvent(StreamEvent):
    """One caption segment. Partials (final=False) may be replaced by a later event with the
    same id; a final's text never changes. `start`/`end` are seconds on the stream's media
    timeline.

    A final is published once (`revision` 0). Its translations arrive later as an *update* of
    the same caption: the same id, text and times with `revision` ≥ 1 and `translations` filled;
    consumers replace the caption they have (never add a second one). `lag` is how much of the
    stream's audio (seconds) was not decoded yet when the event was made; `burned_in` says the
    caption is also drawn into the video, so players should not draw it a second time."""

    kind: str = "caption"
    text: str = ""
    final: bool = False
    start: float = 0.0
    end: float = 0.0
    lang: str = "en"
    # probability of `lang` when the speech model detected it (captions.language "auto"); None: given
    lang_prob: float | None = None
    translations: dict[str, str] = field(default_factory=dict)
    untranslated: list[str] = field(default_factory=list)
    revision: int = 0
    lag: float = 0.0
    burned_in: bool = False
    # per target language, from the translator: 0..1, and what it noticed ("untranslated_words", ...)
    translation_confidence: dict[str, float] = field(default_factory=dict)
    translation_flags: dict[str, list[str]] = field(default_factory=dict)

    @property
    def is_update(self) -> bool:
        """A later revision of a final (e.g. its translations): replaces, never adds a caption."""
        return self.final and self.revision > 0

    @property
    def sse_event(self) -> str:
        """The SSE event name: "partial", "final" (once per caption) or "update"."""
        if not self.final:
            return "partial"
        return "update" if self.revision > 0 else "final"


@dataclass
class Tag:
    name: str
    confidence: float
    box: tuple[int, int, int, int] | None = None  # x, y, w, h in output-frame pixels


@dataclass
class VisionEvent(StreamEvent):
    """Result of one vision-model look at a frame: tags (with optional boxes) or a description."""

    kind: str = "tags"  # "tags" | "description"
    tags: list[Tag] = field(default_factory=list)
    text: str = ""
    model: str = ""
    latency_ms: float = 0.0
    frame_size: tuple[int, int] | None = None  # (width, height) the boxes refer to


@dataclass
class StatusEvent(StreamEvent):
    """A snapshot of a stream's state, sent periodically to data channels and event feeds."""

    kind: str = "status"
    state: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class ErrorEvent(StreamEvent):
    kind: str = "error"
    message: str = ""


class Subscription:
    """A bounded mailbox for one consumer. When full, the oldest event is dropped and counted,
    so a slow consumer never grows memory or blocks the publisher."""

    def __init__(self, bus: EventBus, maxsize: int, kinds: frozenset[str] | None) -> None:
        self._bus = bus
        self._queue: DropOldestMailbox[StreamEvent | None] = DropOldestMailbox(maxsize)
        self.kinds = kinds
        self.closed = False

    @property
    def dropped(self) -> int:
        return self._queue.dropped

    def _offer(self, event: StreamEvent | None) -> None:
        if self.closed:
            return
        if event is not None and self.kinds is not None and event.kind not in self.kinds:
            return
        self._queue.offer(event)

    async def get(self, timeout: float | None = None) -> StreamEvent | None:
        """Next event, or None when the bus closed (or the timeout passed)."""
        if self.closed and self._queue.empty():
            return None
        try:
            event = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None
        if event is None:
            self.closed = True
        return event

    def close(self) -> None:
        self._bus.unsubscribe(self)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> StreamEvent:
        event = await self.get()
        if event is None:
            raise StopAsyncIteration
        return event


class EventBus:
    """Fan-out of one stream's events. `publish` is safe from any thread; delivery happens on the
    event loop. A bounded history of recent events lets late joiners (SSE, WebVTT) catch up."""

    def __init__(self, loop: asyncio.AbstractEventLoop, history: int = 200, max_subscribers: int = 64) -> None:
        self._loop = loop
        self._subs: list[Subscription] = []
        self._max_subscribers = max_subscribers
        self._listeners: list[Any] = []
        # bounded: a ring of the newest events (deque with maxlen)
        from collections import deque

        self.history: deque[StreamEvent] = deque(maxlen=history)
        self.closed = False
        self.published = 0
        self._loop_thread = threading.get_ident()

    def subscribe(self, maxsize: int = 256, kinds: set[str] | None = None, replay: bool = False) -> Subscription:
        if len(self._subs) >= self._max_subscribers:
            raise RuntimeError(f"too many subscribers on this stream (max {self._max_subscribers})")
        sub = Subscription(self, maxsize, frozenset(kinds) if kinds else None)
        if replay:
            for event in self.history:
                sub._offer(event)
        if self.closed:
            sub._offer(None)
        else:
            self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        sub.closed = True
        if sub in self._subs:
            self._subs.remove(sub)

    def add_listener(self, callback: Any) -> None:
        """A synchronous callback run on the loop for every event (e.g. the overlay's text state).
        It must be cheap and must not raise."""
        self._listeners.append(callback)

    def publish(self, event: StreamEvent) -> None:
        if self.closed:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._deliver(event)
        else:
            try:
                self._loop.call_soon_threadsafe(self._deliver, event)
            except RuntimeError:  # loop closed during shutdown
                pass

    def _deliver(self, event: StreamEvent) -> None:
        if self.closed:
            return
        self.published += 1
        self.history.append(event)
        for callback in list(self._listeners):
            try:
                callback(event)
            except Exception:  # a broken listener must not stop the others
                log.exception("event listener failed")
        for sub in list(self._subs):
            sub._offer(event)

    @property
    def dropped(self) -> int:
        return sum(s.dropped for s in self._subs)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for sub in list(self._subs):
            sub._offer(None)
        self._subs.clear()
        self._listeners.clear()
