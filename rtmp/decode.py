"""Decode FLV packets with PyAV on a thread of their own, into a stream's `Ingest`.

The RTMP session (event loop) only queues packets; this thread decodes them. The queue is bounded
in packets and bytes: when a publisher sends faster than we decode, new packets are dropped and
counted, and video then waits for the next keyframe (a P-frame without its references would only
decode to garbage). Timestamps are the FLV tag times (ms); each publisher session is re-based to
continue where the previous one ended, so a reconnect never sends time backwards.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from fractions import Fraction
from typing import Any

import av

from media.endpoints import Ingest
from rtmp.flv import FlvPacket

log = logging.getLogger(__name__)

MS = Fraction(1, 1000)
_RESET = object()  # a new publisher session: new decoder configuration, new time base
_FLUSH = object()  # the publisher left: frames the decoders hold back (B-frame reordering) come out
_STOP = object()


class FlvDecoder(threading.Thread):
    def __init__(self, label: str, ingest: Ingest, max_packets: int = 512, max_bytes: int = 32 << 20) -> None:
        super().__init__(name=f"rtmp-decode-{label}", daemon=True)
        self.label = label
        self.ingest = ingest
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        # bounded by put(): max_packets and max_bytes (a full queue drops and counts); the session
        # markers come one per publish/unpublish of the one connection feeding this decoder
        self._queue: deque[Any] = deque()  # bounded: see above
        self._bytes = 0
        self._cond = threading.Condition()
        self._need_keyframe = True
        self._contexts: dict[str, Any] = {}
        self._offset: int | None = None
        self._last_ms = -40
        self.packets_dropped = 0
        self.video_frames = 0
        self.audio_frames = 0
        self.decode_errors = 0

    # -- producer side (event loop) -------------------------------------------------------------
    def new_session(self) -> None:
        with self._cond:
            self._queue.append(_RESET)
            self._need_keyframe = True
            self._cond.notify()

    def end_session(self) -> None:
        with self._cond:
            self._queue.append(_FLUSH)
            self._cond.notify()

    def put(self, packet: FlvPacket, timestamp: int) -> bool:
        """Queue one packet; False (and counted) when the queue is full."""
        with self._cond:
            if len(self._queue) >= self.max_packets or self._bytes + len(packet.data) > self.max_bytes:
                self.packets_dropped += 1
                if packet.kind == "video" and not packet.config:
                    self._need_keyframe = True  # read by the producer: skip until the next keyframe
                return False
            if packet.kind == "video" and not packet.config and self._need_keyframe:
                if not packet.keyframe:
                    self.packets_dropped += 1
                    return False
                self._need_keyframe = False
            self._queue.append((packet, timestamp))
            self._bytes += len(packet.data)
            self._cond.notify()
            return True

    def close(self) -> None:
        with self._cond:
            self._queue.clear()
            self._bytes = 0
            self._queue.append(_STOP)
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    # -- decode thread --------------------------------------------------------------------------
    def run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                item = self._queue.popleft()
                if isinstance(item, tuple):
                    self._bytes -= len(item[0].data)
            if item is _STOP:
                return
            if item is _RESET:
                self._contexts.clear()
                self._offset = None
                continue
            if item is _FLUSH:
                self._flush()
                continue
            packet, timestamp = item
            try:
                self._decode(packet, timestamp)
            except Exception as exc:  # one bad packet never ends the input
                self.decode_errors += 1
                self.ingest.on_decode_error(f"RTMP {packet.kind} packet not decoded: {exc}")

    def _flush(self) -> None:
        contexts, self._contexts = self._contexts, {}
        for kind, ctx in contexts.items():
            try:
                self._deliver(kind, ctx.decode(None))
            except Exception as exc:
                self.decode_errors += 1
                self.ingest.on_decode_error(f"RTMP {kind} decoder flush failed: {exc}")

    def _deliver(self, kind: str, frames: Any) -> None:
        for frame in frames:
            if frame.pts is not None:
                self._last_ms = max(self._last_ms, int(frame.pts))
            if kind == "video":
                self.video_frames += 1
                self.ingest.on_video_frame(frame)
            else:
                self.audio_frames += 1
                self.ingest.on_audio_frame(frame)

    def _decode(self, packet: FlvPacket, timestamp: int) -> None:
        if packet.end:
            return
        if packet.config:
            ctx: Any = av.CodecContext.create(packet.codec, "r")
            ctx.extradata = packet.data
            if packet.kind == "video":
                ctx.thread_type = "SLICE"  # frame threads would add latency
            self._contexts[packet.kind] = ctx
            return
        ctx = self._contexts.get(packet.kind)
        if ctx is None:
            return  # media before its sequence header: nothing can decode it yet
        if self._offset is None:
            self._offset = self._last_ms + 40 - timestamp
        dts = timestamp + self._offset
        av_packet = av.Packet(packet.data)
        av_packet.dts = dts
        av_packet.pts = dts + packet.cts
        av_packet.time_base = MS
        self._deliver(packet.kind, ctx.decode(av_packet))
