"""The interface every per-stream output implements, and what the outputs runner hands it.

An output (RTMP push, HLS) is built by the runner from one validated `params.outputs` entry and a
shared `OutputContext`. The runner calls, from these threads:

- `start()` / `stop()` on the loop (stop is called once, on every stream exit path, and must
  release every thread, socket and buffer the output holds);
- `configure(has_audio)` once the input's tracks are known (any thread);
- `send_video(item)` on the stream's video worker thread with each frame *before* the stream's
  own overlay is drawn, so every output decides for itself whether captions are burned in
  (`OutputOverlay`); it must never block (queue and drop the oldest, counted);
- `send_audio(item)` on the decode thread (same rule);
- `on_caption(event)` on the loop with every caption event (partials, finals and their
  translation updates, with `lang`);
- `update_params(params)` on the loop when the stream's params change (the output's own spec
  entry is unchanged: a changed entry is a new output).

An output never ends its stream: a failure is its own state (`OutputState`), last error and
counters, reported through `OutputBase.set_state` (an `OutputEvent` on the stream's bus).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import av

from httpapi.outbound import OutboundPolicy
from httpapi.redact import redact_text
from media.encode import EncoderSettings
from media.events import CaptionEvent, StreamEvent
from media.frames import AudioItem, VideoItem
from media.overlay import Overlay, OverlayOptions, OverlayState


class OutputState(str, enum.Enum):  # noqa: UP042 - str() of a member stays "OutputState.X"
    STARTING = "starting"  # built, not connected yet
    CONNECTING = "connecting"  # (re)connecting to its destination
    LIVE = "live"  # media is flowing out
    RETRYING = "retrying"  # failed; waiting out a backoff before reconnecting
    STOPPED = "stopped"  # closed by the runner (params changed, stream stopped)


@dataclass
class OutputEvent(StreamEvent):
    """An output changed state (`output` is its name in `status()["outputs"]`)."""

    kind: str = "output"
    output: str = ""
    output_type: str = ""  # "rtmp", "hls" (not `type`: the SSE payload's `type` is the kind)
    state: str = ""
    error: str | None = None


@dataclass
class OutputContext:
    """What the runner gives every output of one stream."""

    manifest_id: str
    policy: OutboundPolicy
    encoder: EncoderSettings
    overlay_state: OverlayState  # the stream's caption/tag state, drawn by `OutputOverlay`
    params: Callable[[], dict[str, Any]]  # the stream's current params
    publish: Callable[[StreamEvent], None]  # the stream's event bus (thread-safe)
    log: logging.LoggerAdapter[logging.Logger] | logging.Logger = field(default=logging.getLogger("media.outputs"))
    # called on every state change (any thread): Prometheus metrics, tests
    on_state: Callable[[OutputBase, OutputState], None] | None = None
    label: str = ""  # the overlay header's stream label

    def __post_init__(self) -> None:
        if not self.label:
            self.label = self.manifest_id[:24]


class OutputOverlay:
    """The stream's overlay (header, vision tags per the stream's params) with this output's own
    choice of burned-in captions. Used from one thread (the video worker)."""

    def __init__(self, ctx: OutputContext, captions: bool) -> None:
        self._ctx = ctx
        self.captions = captions
        self._overlay = Overlay(ctx.label, ctx.overlay_state)
        self.refresh()

    def refresh(self) -> None:
        """Re-read the stream's params (call after `update_params`)."""
        options = OverlayOptions.from_params(self._ctx.params())
        if self.captions and not options.enabled:
            # the stream's header is off, yet this output asked for burned-in captions: only those
            options = OverlayOptions(enabled=True, clock=False, tags=False)
        options.captions = self.captions
        self._overlay.options = options

    def draw(self, item: VideoItem) -> av.VideoFrame:
        return self._overlay.draw(item.frame, item.media_time)


class OutputBase:
    """Common state, counters and reporting; subclasses implement the media hooks."""

    type: ClassVar[str] = "output"

    def __init__(self, name: str, spec: Any, ctx: OutputContext) -> None:
        self.name = name
        self.spec = spec
        self.ctx = ctx
        self.state = OutputState.STARTING
        self.state_changed_at = time.time()
        self.last_error: str | None = None
        self.last_error_time: float | None = None
        self.frames = 0  # video frames written out
        self.bytes = 0  # bytes written out
        self.drops = 0  # frames/packets dropped before the destination took them
        self.reconnects = 0
        self._state_lock = threading.Lock()

    # -- lifecycle, called by the runner -------------------------------------------------------
    async def start(self) -> None:
        """Begin (connect in the background); must not wait for the destination."""

    async def stop(self) -> None:
        """Flush and close everything; idempotent."""

    def configure(self, has_audio: bool) -> None:
        """The input's tracks are known (before the first frame)."""

    def send_video(self, item: VideoItem) -> None:
        """A frame before the stream's overlay (video worker thread); never block."""

    def send_audio(self, item: AudioItem) -> None:
        """A decoded audio frame (decode thread); never block."""

    def on_caption(self, event: CaptionEvent) -> None:
        """A caption event (loop thread)."""

    def update_params(self, params: dict[str, Any]) -> None:
        """The stream's params changed; this output's own entry did not (loop thread)."""

    # -- reporting -----------------------------------------------------------------------------
    def set_state(self, state: OutputState, error: str | None = None) -> None:
        """Record a state (and an error, redacted) and publish an `OutputEvent` when either changes.
        Thread-safe."""
        shown = redact_text(error) if error else None
        with self._state_lock:
            new_error = shown is not None and shown != self.last_error
            changed = state != self.state or new_error
            self.state = state
            if shown is not None:
                self.last_error, self.last_error_time = shown, time.time()
            if changed:
                self.state_changed_at = time.time()
        if not changed:
            return
        if new_error:
            self.ctx.log.warning("output %s (%s): %s: %s", self.name, self.type, state.value, shown)
        else:  # the same error again (a retry that failed as before): no new warning
            self.ctx.log.info("output %s (%s): %s", self.name, self.type, state.value)
        self.ctx.publish(OutputEvent(output=self.name, output_type=self.type, state=state.value, error=shown))
        if self.ctx.on_state is not None:
            self.ctx.on_state(self, state)

    def status(self) -> dict[str, Any]:
        """This output's entry in the stream status (no secrets: URLs are redacted)."""
        return {
            "type": self.type,
            "state": self.state.value,
            "state_changed_at": self.state_changed_at,
            "last_error": self.last_error,
            "last_error_time": self.last_error_time,
            "frames": self.frames,
            "bytes": self.bytes,
            "drops": self.drops,
            "reconnects": self.reconnects,
        }


# An output class (or factory) as the runner builds it: (name, validated spec entry, context).
OutputBuilder = Callable[[str, Any, OutputContext], OutputBase]
