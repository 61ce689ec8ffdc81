"""One live stream: its source, bounded queues, video worker, stages, sinks, stats and state.

Data path: source (decode thread) → `on_video_frame` → stages see the frame → bounded video queue
(newest frames kept) → video worker thread: overlay → sinks (encode/publish). Audio goes from the
decode thread to the stages (ASR) and the sinks. Stopping cancels every task, joins every thread
and closes every socket the stream opened; nothing outlives it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import av

from media.captions import CaptionLog
from media.endpoints import MediaSink, MediaSource
from media.events import ErrorEvent, EventBus
from media.frames import AudioItem, DropOldestQueue, VideoItem
from media.overlay import Overlay, OverlayOptions, OverlayState
from media.params import merge_patch
from media.stage import Stage, StageContext
from media.stats import LatencyWindow, RateMeter

log = logging.getLogger(__name__)


# decode errors are reported (log line + error event) at most once per this many seconds
DECODE_ERROR_REPORT_INTERVAL = 5.0


class StreamState(str, enum.Enum):  # noqa: UP042 - str() of a member stays "StreamState.X"
    LOADING = "LOADING"
    ONLINE = "ONLINE"
    DEGRADED_INPUT = "DEGRADED_INPUT"
    DEGRADED_INFERENCE = "DEGRADED_INFERENCE"
    ERROR = "ERROR"
    STOPPED = "STOPPED"


@dataclass
class StreamThresholds:
    """State thresholds, after ai-runner's process guardian (its live pipeline's state rules)."""

    input_timeout: float = 60.0  # no input at all for this long → the stream is stopped
    output_stall: float = 5.0  # input flows but no output for this long → ERROR
    # no output at all yet: ai-runner allows 10 s after the pipeline (re)load before ERROR
    first_output: float = 10.0
    idle: float = 2.0  # no frames for this long → DEGRADED_*
    min_input_fps: float = 15.0
    min_output_fps: float = 10.0  # output below min(this, 0.8 × input) → DEGRADED_INFERENCE
    error_grace: float = 15.0  # a stage error this recent → DEGRADED_INFERENCE


@dataclass
class StreamConfig:
    video_queue_size: int = 30
    thresholds: StreamThresholds = field(default_factory=StreamThresholds)
    monitor_interval: float = 1.0
    event_history: int = 200
    # a deliberately slow per-frame delay (seconds) for overload tests and benchmarks only
    debug_frame_delay: float = 0.0


class StreamLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every line with the stream's manifest id (and carries it as `extra`)."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        assert self.extra is not None  # always made with the manifest id
        kwargs.setdefault("extra", {}).update(self.extra)
        return f"[{self.extra['manifest_id']}] {msg}", kwargs


class Timeline:
    """Maps source timestamps to seconds since the stream's first frame, keeping time continuous
    across publisher restarts (a jump of more than `max_jump` seconds is re-based)."""

    def __init__(self, max_jump: float = 10.0) -> None:
        self.max_jump = max_jump
        self._offset: float | None = None
        self._last_raw: float | None = None
        self._last_media = 0.0
        self._lock = threading.Lock()
        self._fallback_clock = time.monotonic()

    def media_time(self, raw: float | None) -> float:
        with self._lock:
            if raw is None:  # no timestamp: use arrival time
                raw = time.monotonic() - self._fallback_clock
            if self._offset is None:
                self._offset = raw
            elif self._last_raw is not None and abs(raw - self._last_raw) > self.max_jump:
                self._offset = raw - self._last_media - 1 / 30
            self._last_raw = raw
            media = raw - self._offset
            self._last_media = max(self._last_media, media)
            return media


class Stream:
    def __init__(
        self,
        manifest_id: str,
        source: MediaSource | None,
        sinks: list[MediaSink],
        stages: list[Stage],
        params: dict[str, Any],
        loop: asyncio.AbstractEventLoop,
        config: StreamConfig | None = None,
        metadata: dict[str, Any] | None = None,
        on_frame_latency: Callable[[float], None] | None = None,
    ) -> None:
        self.manifest_id = manifest_id
        self.source = source
        self.sinks = sinks
        self.stages = stages
        self.params = dict(params)
        self.loop = loop
        self.config = config or StreamConfig()
        self.metadata = metadata or {}
        self.log = StreamLog(log, {"manifest_id": manifest_id})
        self.created_at = datetime.now(UTC)
        self._created_mono = time.monotonic()
        self.state = StreamState.LOADING
        self.state_changed_at = time.time()
        self.events = EventBus(loop, history=self.config.event_history)
        self.overlay_state = OverlayState()
        self.events.add_listener(self.overlay_state.on_event)
        self.captions = CaptionLog()
        self.events.add_listener(self.captions.on_event)
        self.overlay = Overlay(manifest_id[:24], self.overlay_state, OverlayOptions.from_params(self.params))
        self.video_queue: DropOldestQueue[VideoItem] = DropOldestQueue(self.config.video_queue_size)
        self.timeline = Timeline()
        self.in_meter = RateMeter()
        self.out_meter = RateMeter()
        self.latency = LatencyWindow()
        self._on_frame_latency = on_frame_latency
        self.frames_in = 0
        self.frames_out = 0
        self.audio_frames_in = 0
        self.decode_errors = 0
        self._decode_error_lock = threading.Lock()
        self._decode_error_reported_at = -DECODE_ERROR_REPORT_INTERVAL
        self._decode_errors_unreported = 0
        self.last_error: str | None = None
        self.last_error_time: float | None = None
        self.end_reason: str | None = None
        self.params_updated_at: float | None = None
        self.first_input_segment_at: float | None = None
        self.first_output_segment_at: float | None = None
        self.output_lagging_at: float | None = None  # last time a sink dropped for a slow output
        self.output_lagging_reason: str | None = None
        self._seq = 0
        self._tracks_known = threading.Event()
        self._worker: threading.Thread | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._stop_started = False
        self.stopped = asyncio.Event()
        self._stop_callbacks: list[Callable[[Stream], Any]] = []
        self._hooks: dict[str, list[Callable[..., Any]]] = {}
        # the server's params checks (server/stream_service.py): a params update that fails them
        # raises ValueError before anything changes, whichever way it arrived
        self.params_check: Callable[[dict[str, Any]], None] | None = None
        # more sections of `status()` (name → callable), e.g. "outputs" from media/outputs/runner.py
        self.status_sections: dict[str, Callable[[], Any]] = {}

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        ctx = StageContext(self.manifest_id, self.loop, self.events, dict(self.params), self.log, self.report_error)
        try:
            for stage in self.stages:
                await stage.start(ctx)
            for sink in self.sinks:
                await sink.start(self)
            self._worker = threading.Thread(target=self._video_worker, name=f"video-{self.manifest_id}", daemon=True)
            self._worker.start()
            if self.source is not None:
                await self.source.start(self)
            self._monitor = asyncio.create_task(self._monitor_loop(), name=f"monitor-{self.manifest_id}")
        except BaseException as exc:
            await self.stop(f"start failed: {exc}", error=True)
            raise
        self.log.info(
            "stream started (source=%s, sinks=%s, stages=%s)",
            self.source and self.source.name,
            [s.name for s in self.sinks],
            [s.name for s in self.stages],
        )

    def on_stop(self, callback: Callable[[Stream], Any]) -> None:
        self._stop_callbacks.append(callback)

    def add_hook(self, name: str, callback: Callable[..., Any]) -> None:
        """Observers of lifecycle moments: 'first_input_segment', 'first_output_segment', 'params'."""
        self._hooks.setdefault(name, []).append(callback)

    def _fire(self, name: str, *args: Any) -> None:
        for callback in self._hooks.get(name, []):
            try:
                callback(*args)
            except Exception:
                self.log.exception("hook %s failed", name)

    def request_stop(self, reason: str, error: bool = False) -> None:
        """Thread-safe: ask the loop to stop this stream."""

        def schedule() -> None:
            if self._stopping is None:
                self._stopping = asyncio.ensure_future(self.stop(reason, error=error))

        try:
            self.loop.call_soon_threadsafe(schedule)
        except RuntimeError:
            pass

    async def stop(self, reason: str = "stopped by request", error: bool = False) -> None:
        if self._stop_started:
            await self.stopped.wait()
            return
        self._stop_started = True
        self.end_reason = reason
        self.log.info("stopping: %s", reason)
        try:
            if self._monitor is not None:
                self._monitor.cancel()
                await asyncio.gather(self._monitor, return_exceptions=True)
            if self.source is not None:
                await self._quietly(self.source.stop(), "source")
            self.video_queue.close()
            if self._worker is not None:
                await self.loop.run_in_executor(None, self._worker.join, 10.0)
                if self._worker.is_alive():
                    self.log.error("video worker did not stop in time")
            for sink in self.sinks:
                await self._quietly(sink.stop(), f"sink {sink.name}")
            for stage in self.stages:
                await self._quietly(stage.stop(), f"stage {stage.name}")
        finally:
            if error:
                self._record_error(reason)
            self._set_state(StreamState.ERROR if error else StreamState.STOPPED)
            self.events.close()
            self.stopped.set()
            for callback in self._stop_callbacks:
                try:
                    result = callback(self)
                    if asyncio.iscoroutine(result):
                        await result
                except Exception:
                    self.log.exception("stop callback failed")

    async def _quietly(self, coro: Awaitable[object], what: str) -> None:
        try:
            await asyncio.wait_for(coro, 15)
        except Exception as exc:
            self.log.warning("stopping %s failed: %s", what, exc)

    @property
    def active(self) -> bool:
        return not self._stop_started

    # -- params ---------------------------------------------------------------------------------
    def update_params(self, patch: dict[str, Any]) -> None:
        """Apply a params update as a JSON merge patch (RFC 7396, `media.params.merge_patch`): keys
        it does not mention keep their value, `null` removes one. The one place a running stream's
        params change; a mid-stream resolution change is refused (ValueError)."""
        if not isinstance(patch, dict):
            raise ValueError("a params update must be a JSON object")
        self._apply_params(merge_patch(self.params, patch))

    def replace_params(self, params: dict[str, Any]) -> None:
        """Replace the params as a whole (the data channel's explicit `"replace": true`)."""
        self._apply_params(dict(params))

    def _apply_params(self, params: dict[str, Any]) -> None:
        for key in ("width", "height"):
            if params.get(key) != self.params.get(key) and key in self.params:
                raise ValueError(f"changing '{key}' mid-stream is not supported")
        if self.params_check is not None:
            self.params_check(params)
        self.params = params
        self.params_updated_at = time.time()
        self.overlay.options = OverlayOptions.from_params(self.params)
        for stage in self.stages:
            try:
                stage.update_params(self.params)
            except Exception as exc:
                self.report_error(f"stage {stage.name} rejected params: {exc}")
        self._fire("params", self.params)
        self.log.info("params updated")

    # -- Ingest (any thread) --------------------------------------------------------------------
    def on_streams(self, has_video: bool, has_audio: bool) -> None:
        if not self._tracks_known.is_set():
            for sink in self.sinks:
                sink.configure(has_audio)
            self._tracks_known.set()

    def on_video_frame(self, frame: av.VideoFrame) -> None:
        self.frames_in += 1
        self.in_meter.mark()
        self._seq += 1
        item = VideoItem(frame, self.timeline.media_time(frame.time), seq=self._seq)
        for stage in self.stages:
            stage.on_video(item)
        self.video_queue.put(item)

    def on_audio_frame(self, frame: av.AudioFrame) -> None:
        self.audio_frames_in += 1
        item = AudioItem(frame, self.timeline.media_time(frame.time))
        for stage in self.stages:
            stage.on_audio(item)
        for sink in self.sinks:
            sink.send_audio(item)

    def on_decode_error(self, message: str) -> None:
        """Every error is counted; a burst (garbage bytes can cause hundreds a second) logs one
        WARNING and publishes one error event per `DECODE_ERROR_REPORT_INTERVAL`, saying how many
        were folded into it."""
        self.decode_errors += 1
        now = time.monotonic()
        with self._decode_error_lock:
            if now - self._decode_error_reported_at < DECODE_ERROR_REPORT_INTERVAL:
                self._decode_errors_unreported += 1
                return
            folded, self._decode_errors_unreported = self._decode_errors_unreported, 0
            self._decode_error_reported_at = now
        if folded:
            message = f"{message} (and {folded} more decode errors in the last {DECODE_ERROR_REPORT_INTERVAL:.0f} s)"
        self._record_error(message)

    def on_input_segment(self, seq: int) -> None:
        if self.first_input_segment_at is None:
            self.first_input_segment_at = time.time()
            self.loop.call_soon_threadsafe(self._fire, "first_input_segment", seq)

    def on_input_ended(self, reason: str) -> None:
        self.request_stop(reason)

    # -- SinkHost (any thread) ------------------------------------------------------------------
    def on_output_failed(self, reason: str) -> None:
        self.request_stop(reason, error=True)

    def on_output_lagging(self, sink_name: str, reason: str) -> None:
        """A sink drops frames because its output is slower than the stream (any thread). The
        stream reports DEGRADED_INFERENCE (the output, not the input, is the cause) for a while."""
        self.output_lagging_at = time.time()
        self.output_lagging_reason = reason

    def on_output_segment(self, seq: int) -> None:
        if self.first_output_segment_at is None:
            self.first_output_segment_at = time.time()
            self.loop.call_soon_threadsafe(self._fire, "first_output_segment", seq)

    # -- errors ---------------------------------------------------------------------------------
    def report_error(self, message: str | None) -> None:
        """Stages call this (any thread) when inference fails; None clears nothing but is allowed."""
        if message:
            self._record_error(message)

    def _record_error(self, message: str) -> None:
        self.last_error = message
        self.last_error_time = time.time()
        self.log.warning("%s", message)
        self.events.publish(ErrorEvent(message=message))

    # -- video worker thread --------------------------------------------------------------------
    def _video_worker(self) -> None:
        delay = self.config.debug_frame_delay
        while True:
            item = self.video_queue.get(timeout=0.5)
            if item is None:
                if self.video_queue.closed:
                    return
                continue
            try:
                frame = self.overlay.draw(item.frame, item.media_time)
                if delay:
                    time.sleep(delay)
                out = VideoItem(frame, item.media_time, item.ingest_time, item.seq)
                for sink in self.sinks:
                    # an outputs runner takes the frame before the overlay: each output draws its own
                    sink.send_video(item if sink.source_frames else out)
            except Exception as exc:  # one bad frame must not end the stream
                self._record_error(f"frame processing failed: {exc}")
                continue
            latency = time.perf_counter() - item.ingest_time
            self.latency.add(latency)
            if self._on_frame_latency is not None:
                self._on_frame_latency(latency)
            self.frames_out += 1
            self.out_meter.mark()

    # -- state ----------------------------------------------------------------------------------
    def _set_state(self, state: StreamState) -> None:
        if state != self.state:
            self.log.info("state %s → %s", self.state.value, state.value)
            self.state = state
            self.state_changed_at = time.time()

    def evaluate_state(self, now: float | None = None) -> StreamState:
        """The state ai-runner's guardian would report (without side effects)."""
        now = time.monotonic() if now is None else now
        th = self.config.thresholds
        in_idle = self.in_meter.idle_for(now)
        out_idle = self.out_meter.idle_for(now)
        in_fps = self.in_meter.rate(now)
        out_fps = self.out_meter.rate(now)
        if self.source is None and self.frames_in == 0:
            # a data-only / output-only stream has no input to judge: it is up while it runs,
            # degraded while a stage reports errors
            recent_error = self.last_error_time is not None and time.time() - self.last_error_time < th.error_grace
            return StreamState.DEGRADED_INFERENCE if recent_error else StreamState.ONLINE
        if self.frames_in == 0:
            return StreamState.LOADING
        if self.frames_out == 0:
            if now - self._created_mono > th.first_output and in_idle is not None and in_idle < th.idle:
                return StreamState.ERROR
            return StreamState.LOADING
        # ai-runner: output stopped over a second before input did, and more than output_stall ago
        if in_idle is not None and out_idle is not None and out_idle > in_idle + 1 and out_idle > th.output_stall:
            return StreamState.ERROR
        if self.last_error_time is not None and time.time() - self.last_error_time < th.error_grace:
            return StreamState.DEGRADED_INFERENCE
        if self._output_lagging(th):
            return StreamState.DEGRADED_INFERENCE
        if in_idle is None or in_idle > th.idle or in_fps < th.min_input_fps:
            return StreamState.DEGRADED_INPUT
        if out_idle is None or out_idle > th.idle or out_fps < min(th.min_output_fps, 0.8 * in_fps):
            return StreamState.DEGRADED_INFERENCE
        return StreamState.ONLINE

    def _output_lagging(self, th: StreamThresholds) -> bool:
        return self.output_lagging_at is not None and time.time() - self.output_lagging_at < th.output_stall

    def degraded_reason(self) -> str | None:
        """Why the state is what it is, in words (None while ONLINE)."""
        th = self.config.thresholds
        if self.state == StreamState.DEGRADED_INFERENCE:
            if self.last_error_time is not None and time.time() - self.last_error_time < th.error_grace:
                return self.last_error
            if self._output_lagging(th):
                return self.output_lagging_reason
            return "output below the input frame rate"
        if self.state == StreamState.DEGRADED_INPUT:
            return "input below the minimum frame rate or idle"
        if self.state == StreamState.ERROR:
            return self.end_reason or self.last_error
        return None

    async def _monitor_loop(self) -> None:
        th = self.config.thresholds
        while True:
            await asyncio.sleep(self.config.monitor_interval)
            now = time.monotonic()
            self._set_state(self.evaluate_state(now))
            last_input = self.in_meter.last_time or self._created_mono
            if self.source is not None and now - last_input > th.input_timeout:
                self.request_stop(f"no input for {th.input_timeout:.0f} s")
                return

    # -- reporting ------------------------------------------------------------------------------
    @property
    def frames_dropped(self) -> int:
        return self.video_queue.dropped

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        latency = self.latency.summary_ms()
        return {
            "manifest_id": self.manifest_id,
            "state": self.state.value,
            "created_at": self.created_at.isoformat(),
            "uptime_s": round(now - self._created_mono, 3),
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "frames_dropped": self.frames_dropped,
            "audio_frames_in": self.audio_frames_in,
            "input_fps": round(self.in_meter.rate(now), 2),
            "output_fps": round(self.out_meter.rate(now), 2),
            "latency_ms": latency,
            "decode_errors": self.decode_errors,
            "degraded_reason": self.degraded_reason(),
            "last_error": self.last_error,
            "last_error_time": self.last_error_time,
            "end_reason": self.end_reason,
            "params": self.params,
            "source": self.source.stats() if self.source else None,
            "sinks": {s.name: s.stats() for s in self.sinks},
            "stages": {s.name: s.stats() for s in self.stages},
            "events": {"published": self.events.published, "dropped": self.events.dropped},
            **{name: section() for name, section in self.status_sections.items()},
        }

    def summary(self) -> dict[str, Any]:
        """The `stream` object of the lifecycle API."""
        return {
            "manifest_id": self.manifest_id,
            "stream_url": self.metadata.get("publish_url"),
            "created_at": self.created_at.isoformat(),
            "status": self.state.value,
            "metadata": self.metadata,
        }
