"""WebRTC output of a stream: encode each processed frame once, send the packets to every peer.

Design (shared encode): `WebRTCOutput` is one `MediaSink` per stream. For each video codec some
peer negotiated (VP8 or H.264) it runs one `SharedVideoEncoder` thread that encodes the newest
processed frame with PyAV (libvpx realtime / libx264 zerolatency baseline, no B-frames, a keyframe
every `keyframe_interval` seconds and whenever a peer joins or sends PLI/FIR). Each peer gets a
`PacketTrack` whose `recv()` returns those same `av.Packet`s: aiortc's `RTCRtpSender` packetizes an
`av.Packet` without encoding again (`Encoder.pack`), so N viewers cost one encode plus N cheap
packetizations. Audio is shared the same way (one Opus encoder per stream).

Latency rules: the encoder holds only the newest frame (older waiting frames are skipped and
counted); each peer's packet queue is bounded and, when a peer falls behind, it is emptied and the
peer restarts at the next keyframe (counted as dropped) instead of receiving stale frames. The
trade-off of sharing: one bitrate for all peers (no per-peer REMB adaptation).

Codec choice: aiortc's own H.264 encoder runs x264 preset `medium` (≈ 24 ms per 720p frame);
encoding here instead lets H.264 use `ultrafast` + `zerolatency` (≈ 3 ms) and VP8 use libvpx
realtime (≈ 5-7 ms). VP8 is the default for browsers (every WebRTC browser has it); H.264 is the
cheaper one on CPU (see bench/bench_webrtc.py) and what OBS sends. Encoders run single-threaded:
libvpx's worker threads stalled for ~180 ms at a time on a busy 2-core machine.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.video.frame import PictureType

from media.endpoints import MediaSink, SinkHost
from media.frames import AudioItem, DropOldestQueue, VideoItem, copy_i420, even_size
from media.stats import LatencyWindow

log = logging.getLogger(__name__)

VIDEO_TIME_BASE = Fraction(1, 90000)
AUDIO_RATE = 48000
AUDIO_TIME_BASE = Fraction(1, AUDIO_RATE)
OPUS_FRAME_SAMPLES = 960  # 20 ms, what WebRTC peers expect
VIDEO_CODECS = ("VP8", "H264")


@dataclass
class WebRTCEncoderConfig:
    video_bitrate: int = 1_500_000
    audio_bitrate: int = 64_000
    h264_preset: str = "ultrafast"  # aiortc's own H.264 encoder uses "medium" (≈ 24 ms per 720p frame)
    keyframe_interval: float = 2.0  # seconds; also the recovery time for peers that never send PLI
    min_keyframe_gap: float = 0.5  # PLI storms and joins within this gap share one keyframe
    encoder_threads: int = 1  # per video encoder; see SharedVideoEncoder._open
    video_queue_packets: int = 8  # per peer; beyond it the peer resyncs on the next keyframe
    audio_queue_packets: int = 25  # per peer (0.5 s), oldest dropped


def normalize_codec(name: str) -> str:
    upper = name.upper().replace("VIDEO/", "")
    if upper not in VIDEO_CODECS:
        raise ValueError(f"unsupported video codec {name!r} (VP8 or H264)")
    return upper


# -- per-peer tracks ---------------------------------------------------------------------------------


class PacketTrack(MediaStreamTrack):
    """An outgoing track that yields pre-encoded `av.Packet`s from a shared encoder.

    Lives on the event loop: `put` is called there by the encoder's delivery callback."""

    def __init__(
        self,
        kind: str,
        max_packets: int,
        on_stop: Callable[[PacketTrack], None] | None = None,
        request_keyframe: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self.kind = kind
        self._queue: deque[av.Packet[Any]] = deque(maxlen=max_packets)  # overflow is handled in put()
        self._max_packets = max_packets
        self._wake = asyncio.Event()
        self._on_stop = on_stop
        self._request_keyframe = request_keyframe
        self._need_keyframe = kind == "video"
        self.packets_in = 0
        self.packets_out = 0
        self.dropped = 0  # packets a slow (or just joined) peer never got
        self.resyncs = 0
        self.keyframe_requests = 0

    def put(self, packet: av.Packet[Any]) -> None:
        if self.readyState != "live":
            return
        self.packets_in += 1
        if self.kind == "audio":
            if len(self._queue) >= self._max_packets:
                self._queue.popleft()
                self.dropped += 1
        else:
            if len(self._queue) >= self._max_packets:
                # the peer fell behind: stale frames are worthless, restart at a keyframe
                self.dropped += len(self._queue)
                self._queue.clear()
                self.resyncs += 1
                self._need_keyframe = True
                self.request_keyframe()
            if self._need_keyframe:
                if not packet.is_keyframe:
                    self.dropped += 1
                    return
                self._need_keyframe = False
        self._queue.append(packet)
        self._wake.set()

    def request_keyframe(self) -> None:
        """Called on PLI/FIR from this peer and when it resyncs."""
        self.keyframe_requests += 1
        if self._request_keyframe is not None:
            self._request_keyframe()

    async def recv(self) -> av.Packet[Any]:
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._wake.clear()
            await self._wake.wait()
        self.packets_out += 1
        return self._queue.popleft()

    def stop(self) -> None:
        was_live = self.readyState == "live"
        super().stop()
        self._queue.clear()
        self._wake.set()
        if was_live and self._on_stop is not None:
            self._on_stop(self)

    def stats(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "packets_in": self.packets_in,
            "packets_out": self.packets_out,
            "dropped": self.dropped,
            "resyncs": self.resyncs,
            "keyframe_requests": self.keyframe_requests,
        }


def forward_keyframe_requests(sender: Any, track: PacketTrack) -> None:
    """aiortc answers a peer's PLI/FIR by flagging its own encoder, which packets bypass; forward
    the request to the shared encoder as well (an instance attribute, nothing global)."""
    original = getattr(sender, "_send_keyframe", None)
    if original is None:
        return

    def send_keyframe() -> None:
        original()
        track.request_keyframe()

    sender._send_keyframe = send_keyframe


# -- shared encoders ---------------------------------------------------------------------------------


class _SharedEncoder:
    """One encoding thread and the peers' tracks it feeds."""

    kind = "video"

    def __init__(self, label: str, config: WebRTCEncoderConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.label = label
        self.config = config
        self.loop = loop
        self.consumers: list[PacketTrack] = []  # touched on the loop only
        self.consumer_count = 0  # read by other threads
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.packets = 0
        self.bytes = 0
        self.errors = 0
        self.encode_time = LatencyWindow(256)
        self.retired_drops = 0

    # loop side
    def add_consumer(self, track: PacketTrack) -> None:
        self.consumers.append(track)
        self.consumer_count = len(self.consumers)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"{self.kind}-enc-{self.label}", daemon=True)
            self._thread.start()

    def remove_consumer(self, track: PacketTrack) -> None:
        if track in self.consumers:
            self.consumers.remove(track)
            self.retired_drops += track.dropped
        self.consumer_count = len(self.consumers)

    def _deliver(self, packets: list[av.Packet[Any]]) -> None:
        for track in list(self.consumers):
            for packet in packets:
                track.put(packet)

    def _publish(self, packets: list[av.Packet[Any]]) -> None:
        if not packets:
            return
        self.packets += len(packets)
        self.bytes += sum(p.size for p in packets)
        try:
            self.loop.call_soon_threadsafe(self._deliver, packets)
        except RuntimeError:  # loop closed during shutdown
            self._stopping = True

    def stop(self) -> None:
        self._stopping = True
        self._wake_thread()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("[%s] %s encoder thread did not stop in time", self.label, self.kind)

    def _wake_thread(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        return {
            "consumers": self.consumer_count,
            "packets": self.packets,
            "bytes": self.bytes,
            "errors": self.errors,
            "encode_ms": self.encode_time.summary_ms(),
            "consumer_dropped": self.retired_drops + sum(t.dropped for t in list(self.consumers)),
        }


class SharedVideoEncoder(_SharedEncoder):
    """Encodes the newest processed frame once for every peer that negotiated `codec`."""

    kind = "video"

    def __init__(self, label: str, codec: str, config: WebRTCEncoderConfig, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(label, config, loop)
        self.codec = normalize_codec(codec)
        self._cond = threading.Condition()
        self._pending: VideoItem | None = None  # a slot of one: the newest frame wins
        self._context: av.VideoCodecContext | None = None
        self._keyframe_wanted = True
        self._last_keyframe = 0.0
        self._last_pts = -1
        self.frames_submitted = 0
        self.frames_encoded = 0
        self.frames_skipped = 0  # replaced by a newer frame before the encoder got to them
        self.keyframes = 0
        self.keyframe_requests = 0  # joins, PLI/FIR, resyncs (served at most every min_keyframe_gap)

    def submit(self, item: VideoItem) -> None:
        """Stream video worker thread: hand over the newest processed frame (never blocks)."""
        with self._cond:
            if self._pending is not None:
                self.frames_skipped += 1
            self._pending = item
            self.frames_submitted += 1
            self._cond.notify()

    def request_keyframe(self) -> None:
        self.keyframe_requests += 1
        self._keyframe_wanted = True

    def _wake_thread(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._stopping:
                    self._cond.wait(0.5)
                if self._stopping:
                    return
                item, self._pending = self._pending, None
                assert item is not None  # the wait ends on a pending frame unless stopping
            if not self.consumer_count:
                continue
            started = time.perf_counter()
            try:
                packets = self._encode(item)
            except (av.FFmpegError, ValueError) as exc:
                self.errors += 1
                self._context = None  # rebuilt (with a keyframe) on the next frame
                log.warning("[%s] %s encode failed: %s", self.label, self.codec, exc)
                continue
            self.encode_time.add(time.perf_counter() - started)
            self.frames_encoded += 1
            self._publish(packets)

    def _open(self, width: int, height: int) -> av.VideoCodecContext:
        cfg = self.config
        if self.codec == "H264":
            ctx = av.CodecContext.create("libx264", "w")
            ctx.profile = "Baseline"  # constrained baseline: what every WebRTC H.264 peer decodes
            options = {
                "preset": cfg.h264_preset,
                "tune": "zerolatency",
                "bf": "0",
                "maxrate": str(cfg.video_bitrate),
                "bufsize": str(cfg.video_bitrate // 2),
            }
        else:
            ctx = av.CodecContext.create("libvpx", "w")
            ctx.qmin, ctx.qmax = 2, 56
            # aiortc's realtime CBR settings
            options = {
                "deadline": "realtime",
                "cpu-used": "-6",
                "lag-in-frames": "0",
                "minrate": str(cfg.video_bitrate),
                "maxrate": str(cfg.video_bitrate),
                "bufsize": str(cfg.video_bitrate),
                "static-thresh": "1",
                "noise-sensitivity": "4",
                "undershoot-pct": "100",
                "overshoot-pct": "15",
                "partitions": "0",
            }
        ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
        ctx.bit_rate = cfg.video_bitrate
        ctx.time_base = VIDEO_TIME_BASE
        ctx.framerate = Fraction(30, 1)
        ctx.gop_size = 100_000  # keyframes are forced by time (and on request), not by count
        # default one thread: with 2, libvpx stalled on a busy 2-core machine (720p encode p95 179 ms
        # vs 11 ms with 1), and a 720p frame fits in one core's 33 ms budget
        ctx.thread_count = self.config.encoder_threads
        ctx.options = options
        return ctx

    def _encode(self, item: VideoItem) -> list[av.Packet[Any]]:
        source = item.frame
        width, height = even_size(source.width, source.height)  # odd sizes lose one column/row
        ctx = self._context
        if ctx is None or (ctx.width, ctx.height) != (width, height):
            ctx = self._context = self._open(width, height)
            self._keyframe_wanted = True
        # a private (cropped) copy: the processed frame is shared with other sinks on another thread
        frame = copy_i420(source, width, height)
        pts = round(item.media_time * 90000)
        if pts <= self._last_pts:
            pts = self._last_pts + 1  # monotonic even when media time stalls
        self._last_pts = pts
        frame.pts = pts
        frame.time_base = VIDEO_TIME_BASE
        now = time.monotonic()
        since_keyframe = now - self._last_keyframe
        force = since_keyframe >= self.config.keyframe_interval or (
            self._keyframe_wanted and since_keyframe >= self.config.min_keyframe_gap
        )
        frame.pict_type = PictureType.I if force else PictureType.NONE
        packets = list(ctx.encode(frame))
        for packet in packets:
            if packet.is_keyframe:
                self.keyframes += 1
                self._last_keyframe = now
                self._keyframe_wanted = False
            if packet.time_base is None:
                packet.time_base = VIDEO_TIME_BASE
        return packets

    def stats(self) -> dict[str, Any]:
        return {
            **super().stats(),
            "codec": self.codec,
            "frames_submitted": self.frames_submitted,
            "frames_encoded": self.frames_encoded,
            "frames_skipped": self.frames_skipped,
            "keyframes": self.keyframes,
            "keyframe_requests": self.keyframe_requests,
        }


class SharedAudioEncoder(_SharedEncoder):
    """Encodes the stream's audio to Opus once for every peer."""

    kind = "audio"

    def __init__(
        self, label: str, config: WebRTCEncoderConfig, loop: asyncio.AbstractEventLoop, queue_frames: int = 50
    ) -> None:
        super().__init__(label, config, loop)
        self._input: DropOldestQueue[AudioItem] = DropOldestQueue(queue_frames)
        self._resampler = self._new_resampler()
        self._context: av.AudioCodecContext | None = None
        self._samples = 0  # output timeline in samples
        self._expected_time: float | None = None
        self.frames_encoded = 0

    @staticmethod
    def _new_resampler() -> av.AudioResampler:
        return av.AudioResampler(format="s16", layout="stereo", rate=AUDIO_RATE, frame_size=OPUS_FRAME_SAMPLES)

    def submit(self, item: AudioItem) -> None:
        self._input.put(item)

    @property
    def frames_dropped(self) -> int:
        return self._input.dropped

    def _wake_thread(self) -> None:
        self._input.close()

    def _open(self) -> av.AudioCodecContext:
        ctx = av.CodecContext.create("libopus", "w")
        ctx.bit_rate = self.config.audio_bitrate
        ctx.format = "s16"
        ctx.layout = "stereo"
        ctx.sample_rate = AUDIO_RATE
        ctx.time_base = AUDIO_TIME_BASE
        ctx.options = {"application": "lowdelay"}
        return ctx

    def _run(self) -> None:
        while not self._stopping:
            item = self._input.get(timeout=0.5)
            if item is None:
                if self._input.closed:
                    return
                continue
            if not self.consumer_count:
                continue
            started = time.perf_counter()
            try:
                packets = self._encode(item)
            except (av.FFmpegError, ValueError) as exc:
                self.errors += 1
                log.warning("[%s] audio encode failed: %s", self.label, exc)
                continue
            self.encode_time.add(time.perf_counter() - started)
            self.frames_encoded += 1
            self._publish(packets)

    def _encode(self, item: AudioItem) -> list[av.Packet[Any]]:
        if self._context is None:
            self._context = self._open()
        # keep RTP time honest across input gaps (the receiver's jitter buffer expects it)
        if self._expected_time is not None and item.media_time - self._expected_time > 0.1:
            self._samples += round((item.media_time - self._expected_time) * AUDIO_RATE)
        self._expected_time = item.media_time + item.frame.samples / max(1, item.frame.sample_rate)
        try:
            resampled = self._resampler.resample(item.frame)
        except ValueError:  # the input's format changed (e.g. a publisher restarted): start over
            self._resampler = self._new_resampler()
            resampled = self._resampler.resample(item.frame)
        packets: list[av.Packet[Any]] = []
        for frame in resampled:
            frame.pts = self._samples
            frame.time_base = AUDIO_TIME_BASE
            self._samples += frame.samples
            packets.extend(self._context.encode(frame))
        for packet in packets:
            if packet.time_base is None:
                packet.time_base = AUDIO_TIME_BASE
        return packets

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "frames_encoded": self.frames_encoded, "frames_dropped": self.frames_dropped}


# -- the sink ------------------------------------------------------------------------------------------


class WebRTCOutput(MediaSink):
    """The stream's WebRTC output: hands processed frames to the shared encoders and creates one
    `PacketTrack` per peer (the browser's return path, WHEP viewers)."""

    name = "webrtc"

    def __init__(self, label: str, config: WebRTCEncoderConfig | None = None, max_tracks: int = 64) -> None:
        self.label = label
        self.config = config or WebRTCEncoderConfig()
        self.max_tracks = max_tracks
        self.loop: asyncio.AbstractEventLoop | None = None
        self.has_audio: bool | None = None
        self._video: dict[str, SharedVideoEncoder] = {}
        self._audio: SharedAudioEncoder | None = None
        self._tracks: list[PacketTrack] = []
        self._stopped = False

    async def start(self, host: SinkHost) -> None:
        await super().start(host)
        self.loop = asyncio.get_running_loop()

    def configure(self, has_audio: bool) -> None:
        self.has_audio = has_audio

    # -- worker / decode threads ---------------------------------------------------------------------
    def send_video(self, item: VideoItem) -> None:
        for encoder in list(self._video.values()):
            if encoder.consumer_count:
                encoder.submit(item)

    def send_audio(self, item: AudioItem) -> None:
        encoder = self._audio
        if encoder is not None and encoder.consumer_count:
            encoder.submit(item)

    # -- loop: peers ---------------------------------------------------------------------------------
    def video_track(self, codec: str) -> PacketTrack:
        codec = normalize_codec(codec)
        self._check_room()
        encoder = self._video.get(codec)
        if encoder is None:
            encoder = self._video[codec] = SharedVideoEncoder(self.label, codec, self.config, self._loop())
        track = PacketTrack(
            "video", self.config.video_queue_packets, on_stop=self._detach, request_keyframe=encoder.request_keyframe
        )
        track.encoder = encoder  # type: ignore[attr-defined]
        encoder.add_consumer(track)
        encoder.request_keyframe()  # a new peer can only start decoding at a keyframe
        self._tracks.append(track)
        return track

    def audio_track(self) -> PacketTrack:
        self._check_room()
        if self._audio is None:
            self._audio = SharedAudioEncoder(self.label, self.config, self._loop())
        track = PacketTrack("audio", self.config.audio_queue_packets, on_stop=self._detach)
        track.encoder = self._audio  # type: ignore[attr-defined]
        self._audio.add_consumer(track)
        self._tracks.append(track)
        return track

    def _loop(self) -> asyncio.AbstractEventLoop:
        return self.loop or asyncio.get_running_loop()

    def _check_room(self) -> None:
        if self._stopped:
            raise RuntimeError("the stream's output has stopped")
        if len(self._tracks) >= self.max_tracks:
            raise RuntimeError(f"too many outgoing tracks on this stream (max {self.max_tracks})")

    def _detach(self, track: PacketTrack) -> None:
        encoder = getattr(track, "encoder", None)
        if encoder is not None:
            encoder.remove_consumer(track)
        if track in self._tracks:
            self._tracks.remove(track)

    async def stop(self) -> None:
        self._stopped = True
        for track in list(self._tracks):
            track.stop()
        encoders: list[_SharedEncoder] = list(self._video.values())
        if self._audio is not None:
            encoders.append(self._audio)
        for encoder in encoders:
            encoder.stop()
        loop = asyncio.get_running_loop()
        for encoder in encoders:
            await loop.run_in_executor(None, encoder.join, 5.0)

    def stats(self) -> dict[str, Any]:
        return {
            "tracks": len(self._tracks),
            "video_encoders": {codec: enc.stats() for codec, enc in self._video.items()},
            "audio_encoder": self._audio.stats() if self._audio else None,
        }
