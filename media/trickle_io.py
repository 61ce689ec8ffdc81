"""Trickle as a stream source (subscribe → byte pipe → PyAV decoder) and sink (its own encoding
thread → segments → one chunked POST each, sent by a pump task that alone waits on the network)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from typing import Any

import aiohttp
import av

from httpapi.outbound import OutboundPolicy
from httpapi.redact import redact_text, redact_url
from media.decode import BytePipe, DecoderOptions, MediaDecoder, TsSyncChecker
from media.encode import EncoderSettings, TsSegmentEncoder
from media.endpoints import Ingest, MediaSink, MediaSource, SinkHost
from media.frames import AudioItem, DropOldestQueue, VideoItem
from media.stats import LatencyWindow
from trickle.client import SegmentWriter, TricklePublisher, TrickleSubscriber

log = logging.getLogger(__name__)

# How long one step of the output (opening a segment POST, one write) may make no progress before
# the output is declared stuck (a slow output makes progress and drops frames instead).
LOOP_WAIT_SECONDS = 10.0


class TrickleSource(MediaSource):
    """Subscribes to a trickle channel and decodes the concatenated MPEG-TS segments."""

    name = "trickle"

    def __init__(
        self,
        url: str,
        label: str,
        session: aiohttp.ClientSession | None = None,
        decoder_options: DecoderOptions | None = None,
        pipe_chunks: int = 64,
        policy: OutboundPolicy | None = None,
        read_timeout: float = 30.0,
    ) -> None:
        self.url = url
        self.policy = policy  # None: the built-in outbound policy
        self.read_timeout = read_timeout
        self.label = label
        self._session = session
        self._decoder_options = decoder_options
        self._pipe = BytePipe(max_chunks=pipe_chunks)
        self._subscriber: TrickleSubscriber | None = None
        self._decoder: MediaDecoder | None = None
        self._task: asyncio.Task[None] | None = None
        self._ingest: Ingest | None = None
        self._ended = False
        self.segments = 0
        self.damaged_segments = 0
        self.end_reason: str | None = None

    async def start(self, ingest: Ingest) -> None:
        self._ingest = ingest
        self._subscriber = TrickleSubscriber(
            self.url, session=self._session, policy=self.policy, read_timeout=self.read_timeout
        )
        self._decoder = MediaDecoder(
            self._pipe, ingest, name=f"decode-{self.label}", options=self._decoder_options, on_exit=self._decoder_exited
        )
        self._decoder.start()
        self._task = asyncio.create_task(self._pump(), name=f"trickle-in-{self.label}")

    async def _pump(self) -> None:
        subscriber, ingest = self._subscriber, self._ingest
        assert subscriber is not None and ingest is not None  # set by start() before the task
        reason = "input ended"
        try:
            while True:
                segment = await subscriber.next_segment()
                if segment is None:
                    reason = f"input channel ended: {subscriber.end_reason or 'closed'}"
                    break
                self.segments += 1
                ingest.on_input_segment(segment.seq)
                checker = TsSyncChecker()
                try:
                    while chunk := await segment.read():
                        checker.feed(chunk)
                        if not await self._pipe.write(chunk):
                            return  # decoder is gone; it reports why
                finally:
                    await segment.close()
                if checker.bad_packets:
                    self.damaged_segments += 1
                    ingest.on_decode_error(
                        f"input segment {segment.seq}: {checker.bad_packets} of {checker.packets} MPEG-TS packets "
                        "out of sync (garbage bytes); the decoder resyncs at the next keyframe"
                    )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # network errors beyond the subscriber's retries
            reason = f"input failed: {redact_text(str(exc))}"
            log.warning("[%s] trickle %s", self.label, reason)
        finally:
            self.end_reason = self.end_reason or reason
            self._pipe.write_eof()  # the decoder drains what it has, then exits

    def _decoder_exited(self, reason: str) -> None:
        if reason == "stopped" or self._ingest is None:
            return
        self._ingest.on_input_ended(self.end_reason or reason)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._subscriber is not None:
            await self._subscriber.close()
        if self._decoder is not None:
            self._decoder.stop()
            await asyncio.get_running_loop().run_in_executor(None, self._decoder.join, 5.0)
            if self._decoder.is_alive():
                log.error("[%s] decoder thread did not stop in time", self.label)

    def stats(self) -> dict[str, Any]:
        return {
            "url": redact_url(self.url),  # the status answer shows no credentials or token
            "segments": self.segments,
            "damaged_segments": self.damaged_segments,
            "stalled_segments": self._subscriber.stalls if self._subscriber else 0,
            "bytes": self._pipe.bytes_in,
            "decode_errors": self._decoder.decode_errors if self._decoder else 0,
            "demuxer_restarts": self._decoder.restarts if self._decoder else 0,
            "repeated_frames_dropped": self._decoder.repeated_frames if self._decoder else 0,
        }


class TrickleSink(MediaSink):
    """Encodes processed frames on its own thread and publishes each GOP as one trickle segment,
    streaming its bytes into the segment's POST while it is being encoded.

    Nothing upstream ever waits on the output: `send_video` (video worker) and `send_audio`
    (decode thread) only queue a reference in a bounded drop-oldest queue. The encoding thread
    hands the muxed bytes to a pump task on the event loop without waiting; when the bytes the
    network has not taken yet exceed `max_backlog_bytes`, or the oldest of them has waited longer
    than `max_lag_seconds`, or `max_unacknowledged_segments` whole segments are still waiting for
    the server to read them (socket buffers hide a slow reader from the writes for a long time;
    the segment POSTs' responses do not), new frames are dropped before encoding
    (counted, and reported to the stream as lagging output) instead of back-pressuring the
    decoder. Segments already begun are never cut, so the output stays decodable."""

    name = "trickle"

    def __init__(
        self,
        url: str,
        label: str,
        encoder_settings: EncoderSettings,
        session: aiohttp.ClientSession | None = None,
        size: tuple[int, int] | None = None,
        queue_items: int = 120,
        max_backlog_bytes: int = 2 << 20,
        max_lag_seconds: float = 1.0,
        max_unacknowledged_segments: int = 2,
        stall_timeout: float = LOOP_WAIT_SECONDS,
        policy: OutboundPolicy | None = None,
    ) -> None:
        self.url = url
        self.policy = policy  # None: the built-in outbound policy
        self.label = label
        self.encoder_settings = encoder_settings
        self._session = session
        self._size = size
        self._has_audio = False
        self.max_backlog_bytes = max_backlog_bytes
        self.max_lag_seconds = max_lag_seconds
        self.max_unacknowledged_segments = max_unacknowledged_segments
        self.stall_timeout = stall_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._publisher: TricklePublisher | None = None
        self._encoder: TsSegmentEncoder | None = None
        self._writer: SegmentWriter | None = None
        # ~2 s of video + audio references; a stuck encoder loses the oldest, never blocks a caller
        self._input: DropOldestQueue[VideoItem | AudioItem] = DropOldestQueue(queue_items)
        self._thread: threading.Thread | None = None
        # encoder thread → pump: (kind "begin"|"data"|"end", bytes, monotonic time queued); bounded
        # by max_backlog_bytes / max_lag_seconds (beyond either, frames are dropped before encoding)
        self._ops: deque[tuple[str, bytes, float]] = deque()  # bounded: bytes and lag, above
        self._ops_lock = threading.Lock()
        self._backlog_bytes = 0
        self._wake: asyncio.Event | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()  # segment POSTs awaiting their response
        self.failed: str | None = None
        self.segments_started = 0
        self.video_dropped = 0  # frames not encoded because the output was behind
        self.audio_dropped = 0
        self.max_backlog_seen = 0
        self.encode_latency = LatencyWindow(256)

    async def start(self, host: SinkHost) -> None:
        await super().start(host)
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._publisher = TricklePublisher(self.url, mime="video/mp2t", session=self._session, policy=self.policy)
        self._pump_task = asyncio.create_task(self._pump(), name=f"trickle-out-{self.label}")
        self._thread = threading.Thread(target=self._run, name=f"trickle-enc-{self.label}", daemon=True)
        self._thread.start()

    def configure(self, has_audio: bool) -> None:
        self._has_audio = has_audio

    # -- callers' threads: queue a reference, never wait -------------------------------------------
    def send_video(self, item: VideoItem) -> None:
        if not self.failed:
            self._input.put(item)

    def send_audio(self, item: AudioItem) -> None:
        if not self.failed:
            self._input.put(item)

    # -- the encoding thread -------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._input.get(timeout=0.5)
            if item is None:
                if self._input.closed:
                    break
                continue
            if self.failed:
                continue
            if isinstance(item, VideoItem):
                self._encode_video(item)
            else:
                self._encode_audio(item)
        if self._encoder is not None and not self.failed:
            try:
                self._encoder.close()  # the last GOP goes out whole
            except Exception as exc:
                log.info("[%s] final flush failed: %s", self.label, exc)

    def _output_behind(self) -> bool:
        if len(self._closing) >= self.max_unacknowledged_segments:
            return True  # whole GOPs the server has not finished reading: at least a GOP behind
        with self._ops_lock:
            if self._backlog_bytes > self.max_backlog_bytes:
                return True
            return bool(self._ops) and time.monotonic() - self._ops[0][2] > self.max_lag_seconds

    def _encode_video(self, item: VideoItem) -> None:
        if self._encoder is None:
            width, height = self._size or (item.frame.width, item.frame.height)
            self._encoder = TsSegmentEncoder(self, width, height, self._has_audio, self.encoder_settings)
        if self._output_behind():
            self.video_dropped += 1
            self._report_lagging()
            return
        try:
            if self._encoder.encode_video(item.frame, item.media_time):
                # decoded → muxed, the part of the glass-to-glass time this sink adds to the stream's
                self.encode_latency.add(time.perf_counter() - item.ingest_time)
        except (av.FFmpegError, ValueError) as exc:
            self._fail(f"video encoding failed: {exc}")

    def _encode_audio(self, item: AudioItem) -> None:
        if self._encoder is None:
            return  # audio before the first video frame has no segment to go into
        if self._output_behind():
            self.audio_dropped += 1
            return
        try:
            self._encoder.encode_audio(item.frame, item.media_time)
        except (av.FFmpegError, ValueError) as exc:
            log.warning("[%s] audio frame dropped: %s", self.label, exc)

    def _report_lagging(self) -> None:
        on_lagging = getattr(self.host, "on_output_lagging", None)
        if on_lagging is not None:
            on_lagging(
                self.name,
                f"trickle output {redact_url(self.url)} is slower than the stream: {self.video_dropped} frames dropped",
            )

    # SegmentSink, called by the encoder on the encoding thread: hand over, never wait
    def begin_segment(self) -> None:
        self._push("begin", b"")

    def write(self, data: bytes) -> None:
        self._push("data", data)

    def end_segment(self) -> None:
        self._push("end", b"")

    def _push(self, kind: str, data: bytes) -> None:
        wake = self._wake
        if self.failed or self._loop is None or wake is None:
            return
        with self._ops_lock:
            self._ops.append((kind, data, time.monotonic()))
            self._backlog_bytes += len(data)
            self.max_backlog_seen = max(self.max_backlog_seen, self._backlog_bytes)
        try:
            self._loop.call_soon_threadsafe(wake.set)
        except RuntimeError:  # loop closed during shutdown
            pass

    # -- the pump: the only part that waits on the network (event loop) ------------------------------
    def _pop(self) -> tuple[str, bytes] | None:
        """The oldest op; it stays queued (its age is the output's lag) until `_done` removes it."""
        with self._ops_lock:
            return self._ops[0][:2] if self._ops else None

    def _done(self, data: bytes) -> None:
        with self._ops_lock:
            self._ops.popleft()
            self._backlog_bytes -= len(data)

    async def _pump(self) -> None:
        wake, publisher = self._wake, self._publisher
        assert wake is not None and publisher is not None  # set by start() before the task
        while True:
            op = self._pop()
            if op is None:
                wake.clear()
                if self._ops:
                    continue
                await wake.wait()
                continue
            kind, data = op
            try:
                if self.failed:
                    continue
                if kind == "begin":
                    new_writer = await asyncio.wait_for(publisher.next_segment(), self.stall_timeout)
                    self._writer = new_writer
                    self.segments_started += 1
                    self.host.on_output_segment(new_writer.seq)
                elif kind == "data":
                    if self._writer is not None:
                        await asyncio.wait_for(self._writer.write(data), self.stall_timeout)
                else:
                    writer, self._writer = self._writer, None
                    if writer is not None:
                        # the POST's response is not awaited here: the next GOP must not wait on it
                        task = asyncio.create_task(self._finish_segment(writer))
                        self._closing.add(task)
                        task.add_done_callback(self._closing.discard)
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                self._fail(f"output did not accept data for {self.stall_timeout:.0f} s")
            except Exception as exc:
                self._fail(f"output {kind} failed: {exc}")
            finally:
                self._done(data)

    async def _finish_segment(self, writer: SegmentWriter) -> None:
        try:
            await writer.close()
        except Exception as exc:
            log.info("[%s] closing output segment %s failed: %s", self.label, writer.seq, exc)
        if self._publisher is not None and self._publisher.closed and not self.failed:
            self._fail("output channel closed by the server")

    def _fail(self, reason: str) -> None:
        if self.failed:
            return
        reason = redact_text(reason)  # it reaches the log and the stream's status
        self.failed = reason
        log.warning("[%s] trickle output failed: %s", self.label, reason)
        self.host.on_output_failed(reason)

    # -- lifecycle ------------------------------------------------------------------------------
    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        self._input.close()
        if self._thread is not None:
            await loop.run_in_executor(None, self._thread.join, 10.0)
            if self._thread.is_alive():
                log.error("[%s] trickle encoder thread did not stop in time", self.label)
        # let the pump send what the encoder flushed (bounded by the backlog limit), then stop it
        deadline = loop.time() + 5
        while self._ops and not self.failed and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if self._pump_task is not None:
            self._pump_task.cancel()
            await asyncio.gather(self._pump_task, return_exceptions=True)
        if self._writer is not None:
            await self._finish_segment(self._writer)
            self._writer = None
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=5)
        with self._ops_lock:
            self._ops.clear()
            self._backlog_bytes = 0
        if self._publisher is not None:
            await self._publisher.close(delete_channel=True)

    def stats(self) -> dict[str, Any]:
        enc = self._encoder
        return {
            "url": redact_url(self.url),
            "segments": enc.segments if enc else 0,
            "frames_encoded": enc.frames_encoded if enc else 0,
            "frames_skipped": enc.frames_skipped if enc else 0,
            "audio_frames_encoded": enc.audio_frames_encoded if enc else 0,
            "bytes": enc.bytes_out if enc else 0,
            # the output was slower than the stream: dropped before encoding, never queued
            "frames_dropped_slow_output": self.video_dropped,
            "audio_frames_dropped_slow_output": self.audio_dropped,
            "input_queue_dropped": self._input.dropped,
            "backlog_bytes": self._backlog_bytes,
            "max_backlog_bytes": self.max_backlog_seen,
            "latency_ms": self.encode_latency.summary_ms(),
            "failed": self.failed,
        }
