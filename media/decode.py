"""Demux and decode a continuous MPEG-TS byte stream with PyAV on a dedicated thread.

Trickle segments are concatenated into one byte stream (a `BytePipe`) that the decoder reads as a
file. Garbage bytes make the demuxer resync on the next TS sync byte and the decoder skip to the
next keyframe; errors are counted and reported, never fatal, up to a restart budget.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import av
import numpy as np

log = logging.getLogger(__name__)


class BytePipe:
    """A bounded chunk queue between an async producer and a blocking reader (PyAV's IO thread).

    The producer waits while the pipe is full, which pushes back on the trickle subscriber: when it
    falls behind, the trickle server's window (and 470 + Latest) is what drops data, not memory.
    Waiting is event driven on both sides: the reader sleeps on a condition until a chunk or the
    end arrives, and a full pipe parks the writer on an asyncio event that the reader sets (from its
    thread, through the writer's loop) when it takes a chunk — no polling."""

    def __init__(self, max_chunks: int = 64) -> None:
        self.max_chunks = max_chunks
        self._chunks: deque[bytes] = deque()  # bounded by max_chunks (write waits for room)
        self._cond = threading.Condition()
        self._leftover = b""
        self._eof = False  # the reader has returned end-of-file
        self._eof_requested = False
        self._closed = False
        self._room: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None  # a parked writer
        self.bytes_in = 0
        self.writer_waits = 0  # times the writer found the pipe full
        self.writer_wakeups = 0  # times a parked writer was resumed (one per wait, never a poll)

    async def write(self, data: bytes) -> bool:
        """Queue `data`; False if the reader side has closed."""
        if not data:
            return True  # an empty read means end-of-file to the demuxer: never queue one
        while True:
            with self._cond:
                if self._closed:
                    return False
                if len(self._chunks) < self.max_chunks:
                    self._chunks.append(data)
                    self.bytes_in += len(data)
                    self._cond.notify()
                    return True
                room = asyncio.Event()
                self._room = (asyncio.get_running_loop(), room)
                self.writer_waits += 1
            await room.wait()
            self.writer_wakeups += 1

    def _wake_writer(self) -> None:
        """Called with the condition held, after room appeared or the pipe closed."""
        if self._room is None:
            return
        (loop, room), self._room = self._room, None
        try:
            loop.call_soon_threadsafe(room.set)
        except RuntimeError:  # the writer's loop is gone (shutdown)
            pass

    def write_eof(self) -> None:
        """Signal the end of the stream after the data already queued; never blocks."""
        with self._cond:
            self._eof_requested = True
            self._cond.notify_all()

    def close(self) -> None:
        """Reader gone or stream stopping: wake and refuse writers, drop what is queued."""
        with self._cond:
            self._closed = True
            self._eof_requested = True
            self._chunks.clear()
            self._cond.notify_all()
            self._wake_writer()

    # -- reader side (file-like for PyAV) -------------------------------------------------------
    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self._leftover:
            data, self._leftover = self._leftover, b""
        else:
            if self._eof:
                return b""
            with self._cond:
                while not self._chunks and not self._eof_requested:
                    self._cond.wait()
                if not self._chunks:
                    self._eof = True
                    return b""
                data = self._chunks.popleft()
                self._wake_writer()
        if 0 < n < len(data):
            data, self._leftover = data[:n], data[n:]
        return data


TS_PACKET = 188
TS_SYNC = 0x47


class TsSyncChecker:
    """Counts 188-byte MPEG-TS packets of one segment that do not start with the sync byte.

    Trickle segments start on a packet boundary, so garbage bytes inside a segment show up as lost
    sync. The demuxer resyncs on its own; this only makes the damage visible in the stream status."""

    def __init__(self) -> None:
        self._offset = 0  # position of the next byte within its TS packet
        self.packets = 0
        self.bad_packets = 0

    def feed(self, data: bytes) -> None:
        start = (TS_PACKET - self._offset) % TS_PACKET  # first packet start inside this chunk
        if start < len(data):
            heads = np.frombuffer(data, dtype=np.uint8)[start::TS_PACKET]
            self.packets += len(heads)
            self.bad_packets += int(np.count_nonzero(heads != TS_SYNC))
        self._offset = (self._offset + len(data)) % TS_PACKET


class DecodeSink(Protocol):
    """What the decoder feeds (implemented by the stream)."""

    def on_streams(self, has_video: bool, has_audio: bool) -> None: ...

    def on_video_frame(self, frame: av.VideoFrame) -> None: ...

    def on_audio_frame(self, frame: av.AudioFrame) -> None: ...

    def on_decode_error(self, message: str) -> None: ...


@dataclass
class DecoderOptions:
    analyzeduration_us: int = 200_000
    probesize: int = 1_000_000
    max_restarts: int = 5  # demuxer reopen attempts (budget refills after a calm minute)
    threads: int = 1


class MediaDecoder(threading.Thread):
    """Reads MPEG-TS from a `BytePipe` until EOF and hands decoded frames to a `DecodeSink`."""

    def __init__(
        self,
        pipe: BytePipe,
        sink: DecodeSink,
        name: str,
        options: DecoderOptions | None = None,
        on_exit: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.pipe = pipe
        self.sink = sink
        self.options = options or DecoderOptions()
        self.on_exit = on_exit
        self.decode_errors = 0
        self.repeated_frames = 0
        self._last_video_time: float | None = None
        self.restarts = 0
        self.end_reason = ""
        self._stop_requested = threading.Event()

    def stop(self) -> None:
        self._stop_requested.set()
        self.pipe.close()

    def run(self) -> None:
        reason = "end of input"
        last_restart = 0.0
        try:
            while not self._stop_requested.is_set():
                try:
                    finished = self._decode_container()
                except av.EOFError:
                    break  # the input ended before a full header could be read
                except Exception as exc:  # demuxer gave up on this stretch of bytes
                    if self._stop_requested.is_set():
                        break
                    now = time.monotonic()
                    if now - last_restart > 60:
                        self.restarts = 0
                    self.restarts += 1
                    last_restart = now
                    self.sink.on_decode_error(f"demuxer error: {exc}")
                    if self.restarts > self.options.max_restarts:
                        reason = f"input undecodable after {self.options.max_restarts} restarts: {exc}"
                        break
                    continue
                if finished:
                    break
        finally:
            self.end_reason = "stopped" if self._stop_requested.is_set() else reason
            self.pipe.close()
            if self.on_exit is not None:
                self.on_exit(self.end_reason)

    def _is_repeat(self, frame: av.VideoFrame) -> bool:
        """A frame whose timestamp does not move forward (within a second) repeats one already
        delivered: the demuxer can emit a segment's last frame twice at a segment boundary. A
        bigger step back is a publisher restart and passes (the stream's timeline re-bases it)."""
        time_s = frame.time
        if time_s is None:
            return False
        last, self._last_video_time = self._last_video_time, time_s
        if last is not None and last - 1.0 < time_s <= last:
            self._last_video_time = last
            self.repeated_frames += 1
            return True
        return False

    def _decode_container(self) -> bool:
        """Decode until EOF. Returns True at a clean end of input."""
        if self.pipe._eof and not self.pipe._leftover:
            return True
        container = av.open(
            self.pipe,
            mode="r",
            format="mpegts",
            options={
                "analyzeduration": str(self.options.analyzeduration_us),
                "probesize": str(self.options.probesize),
                # codec parameters come from the first keyframe; don't wait ~20 frames to guess fps
                "fpsprobesize": "1",
            },
        )
        try:
            video = container.streams.video[0] if container.streams.video else None
            audio = container.streams.audio[0] if container.streams.audio else None
            if video is None and audio is None:
                raise av.InvalidDataError(0, "no audio or video stream found in input")
            self.sink.on_streams(video is not None, audio is not None)
            if video is not None:
                video.codec_context.thread_type = "SLICE"  # frame threading would add frames of delay
                video.codec_context.thread_count = self.options.threads
            selected = [s for s in (video, audio) if s is not None]
            for packet in container.demux(selected):
                if self._stop_requested.is_set():
                    return True
                if packet.size == 0:
                    continue  # flush packet at EOF
                try:
                    frames = packet.decode()
                except (av.InvalidDataError, av.FFmpegError) as exc:
                    self.decode_errors += 1
                    self.sink.on_decode_error(f"decode error: {exc}")
                    continue
                for frame in frames:
                    # only the video and audio streams are demuxed, so the frame type tells them apart
                    if isinstance(frame, av.VideoFrame):
                        if self._is_repeat(frame):
                            continue
                        self.sink.on_video_frame(frame)
                    elif isinstance(frame, av.AudioFrame):
                        self.sink.on_audio_frame(frame)
            return True
        finally:
            container.close()
