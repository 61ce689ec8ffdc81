"""H.264 + Opus encoding into MPEG-TS segments, one segment per GOP.

The encoders live for the whole stream (rate control and Opus state carry over), while each GOP
gets a fresh MPEG-TS container so every segment is standalone and starts on an IDR frame with its
own PAT/PMT, as trickle consumers expect. Bytes leave through a `SegmentSink` as the muxer writes
them (one write per muxed frame), not when the GOP closes, so latency is not bound by segment
length. All methods run on one thread at a time (the trickle sink's encoding thread; other callers
hold `lock`). Any input size works: an odd width/height is cropped by one pixel (4:2:0 needs even).
"""

from __future__ import annotations

import io
import logging
import threading
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Protocol

import av
from av.audio.stream import AudioStream
from av.container import OutputContainer
from av.packet import Packet
from av.stream import Stream
from av.video.frame import PictureType
from av.video.stream import VideoStream

from media.frames import crop_to_even, even_size, reformat

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer from Python 3.12

log = logging.getLogger(__name__)

VIDEO_TIME_BASE = Fraction(1, 90000)
AUDIO_RATE = 48000
AUDIO_TIME_BASE = Fraction(1, AUDIO_RATE)
# Let an idle track hold the interleaver back at most this long (microseconds).
MAX_INTERLEAVE_DELTA_US = 200_000


class SegmentSink(Protocol):
    """Receives the encoded byte stream, segment by segment (called on the encoding thread)."""

    def begin_segment(self) -> None: ...

    def write(self, data: bytes) -> None: ...

    def end_segment(self) -> None: ...


@dataclass
class EncoderSettings:
    preset: str = "superfast"
    tune: str = "zerolatency"
    crf: int = 23
    gop_seconds: float = 2.0
    fps_hint: int = 30
    audio_codec: str = "libopus"
    audio_bitrate: int = 96_000
    threads: int = 0  # 0 = let x264 decide


class ChunkCollector(io.RawIOBase):
    """File object handed to a muxer (MPEG-TS segments, the RTMP output's FLV): collects the bytes
    of one mux call."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Buffer, /) -> int:
        view = memoryview(data)
        self.parts.append(view.tobytes())
        return view.nbytes

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


class TsSegmentEncoder:
    """Encodes frames and cuts the output into standalone MPEG-TS segments at forced keyframes."""

    def __init__(self, sink: SegmentSink, width: int, height: int, with_audio: bool, settings: EncoderSettings) -> None:
        self.sink = sink
        self.width, self.height = even_size(width, height)
        self.with_audio = with_audio
        self.settings = settings
        self.lock = threading.Lock()
        self._template = av.open(io.BytesIO(), "w", format="mpegts")
        self._video = self._template.add_stream(
            "libx264",
            rate=settings.fps_hint,
            options={
                "preset": settings.preset,
                "tune": settings.tune,
                "crf": str(settings.crf),
                "bf": "0",
                "forced-idr": "1",
                # keyframes only where we force them (segment boundaries)
                "x264-params": "scenecut=0:repeat-headers=1",
            },
        )
        self._video.width = self.width
        self._video.height = self.height
        self._video.pix_fmt = "yuv420p"
        self._video.time_base = VIDEO_TIME_BASE
        # encode in 90 kHz ticks: source timestamps are not always on a 1/fps grid
        self._video.codec_context.time_base = VIDEO_TIME_BASE
        self._video.codec_context.gop_size = max(1, int(settings.gop_seconds * settings.fps_hint * 4))
        self._video.codec_context.thread_count = settings.threads
        self._audio: AudioStream | None = None
        self._resampler: av.AudioResampler | None = None
        if with_audio:
            audio = self._template.add_stream(settings.audio_codec, rate=AUDIO_RATE)
            assert isinstance(audio, AudioStream), settings.audio_codec  # an audio codec gives an audio stream
            self._audio = audio
            self._audio.layout = "stereo"
            self._audio.bit_rate = settings.audio_bitrate
            self._audio.time_base = AUDIO_TIME_BASE
            self._resampler = av.AudioResampler(format=self._audio.format.name, layout="stereo", rate=AUDIO_RATE)
        self._container: OutputContainer | None = None
        self._out_video: VideoStream | None = None
        self._out_audio: AudioStream | None = None
        self._io = ChunkCollector()
        self._next_keyframe_at: float | None = None
        self._last_video_pts: int | None = None
        self._next_audio_pts: int | None = None
        self.segments = 0
        self.frames_encoded = 0
        self.frames_skipped = 0  # non-monotonic timestamps
        self.audio_frames_encoded = 0
        self.bytes_out = 0
        self.closed = False

    # -- segments -------------------------------------------------------------------------------
    def _open_segment(self) -> None:
        self._close_segment()
        self.sink.begin_segment()
        container = av.open(
            self._io,
            "w",
            format="mpegts",
            options={"flush_packets": "1", "max_interleave_delta": str(MAX_INTERLEAVE_DELTA_US)},
        )
        self._out_video = container.add_stream_from_template(self._video)
        if self._audio is not None:
            self._out_audio = container.add_stream_from_template(self._audio)
        self._container = container
        self.segments += 1

    def _close_segment(self) -> None:
        if self._container is None:
            return
        try:
            self._container.close()  # flushes the interleaver and writes what is left
        finally:
            self._container = None
            self._emit()
            self.sink.end_segment()

    def _emit(self) -> None:
        data = self._io.take()
        if data:
            self.bytes_out += len(data)
            self.sink.write(data)

    def _mux(self, packets: list[Packet[Any]], stream: Stream | None) -> None:
        container = self._container
        for packet in packets:
            assert container is not None and stream is not None  # packets come only while a segment is open
            packet.stream = stream
            container.mux(packet)
        self._emit()

    # -- input ----------------------------------------------------------------------------------
    def encode_video(self, frame: av.VideoFrame, media_time: float) -> bool:
        """Encode one frame stamped with `media_time` (seconds). Returns False if it was skipped."""
        if self.closed:
            return False
        pts = round(media_time * 90000)
        if self._last_video_pts is not None and pts <= self._last_video_pts:
            self.frames_skipped += 1
            return False
        if (frame.width, frame.height) != (self.width, self.height) and even_size(frame.width, frame.height) == (
            self.width,
            self.height,
        ):
            frame = crop_to_even(frame)  # an odd input size loses its last column/row, no rescale
        if frame.width != self.width or frame.height != self.height or frame.format.name != "yuv420p":
            frame = reformat(frame, "yuv420p", self.width, self.height)
        out = frame  # sinks stamp their own timestamps on the shared processed frame
        out.pts = pts
        out.time_base = VIDEO_TIME_BASE
        if self._next_keyframe_at is None or media_time >= self._next_keyframe_at:
            out.pict_type = PictureType.I
            self._next_keyframe_at = media_time + self.settings.gop_seconds
            self._open_segment()
        else:
            out.pict_type = PictureType.NONE
        self._last_video_pts = pts
        self._mux(self._video.encode(out), self._out_video)
        self.frames_encoded += 1
        return True

    def encode_audio(self, frame: av.AudioFrame, media_time: float) -> None:
        if self.closed or self._audio is None or self._container is None:
            return  # audio before the first video frame has no segment to go into
        start = round(media_time * AUDIO_RATE)
        frame.pts = None
        assert self._resampler is not None  # made together with the audio stream
        for resampled in self._resampler.resample(frame):
            if self._next_audio_pts is None or start - self._next_audio_pts > AUDIO_RATE // 5:
                self._next_audio_pts = start  # first frame, or a gap (dropped audio): jump ahead
            resampled.pts = self._next_audio_pts
            resampled.time_base = AUDIO_TIME_BASE
            self._next_audio_pts += resampled.samples
            start += resampled.samples
            self._mux(self._audio.encode(resampled), self._out_audio)
            self.audio_frames_encoded += 1

    def close(self) -> None:
        """Flush the encoders into the last segment and end it."""
        if self.closed:
            return
        self.closed = True
        try:
            if self._container is not None:
                self._mux(self._video.encode(None), self._out_video)
                if self._audio is not None:
                    self._mux(self._audio.encode(None), self._out_audio)
        except (av.FFmpegError, ValueError) as exc:
            log.warning("flushing encoders failed: %s", exc)
        finally:
            try:
                self._close_segment()
            finally:
                self._template.close()
