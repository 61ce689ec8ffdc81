"""Frame sampling from a recorded file without ever holding the video in memory.

`FrameSampler.frames(times)` yields one decoded frame per requested time, in order. For each time
it either decodes forward from where the decoder is (when the target is closer than one keyframe
interval), or seeks to the keyframe before the target and decodes forward from there. Only the
frames between that keyframe and the target are decoded, and only the target is converted to RGB
(scaled by swscale to the size the caller asks for). So the work is proportional to the number of
samples, not to the file's length, and memory holds one frame at a time.

`video_plan` turns the TRU VLM parameters (fps, max_frames, min/max/total pixels) into sample times
and one frame size: sides multiples of the VLM's patch merged 2x2 (`IMAGE_PATCH_SIZE` 16, Qwen3-VL:
32 px; 14, Qwen2.5-VL: 28 px).

Inputs come from callers, so `open_media` reads them with media demuxers only (`ANALYSIS_INPUT_FORMATS`)
and the local file protocol: a playlist or concat script that names other files is refused before
FFmpeg reads its header (and so before it opens anything it names).

Everything here is blocking; it runs on an analysis job's own low-priority thread.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass

import av
import numpy as np

from analysis.settings import INPUT_FORMATS
from media.frames import rgb_array

log = logging.getLogger(__name__)

DEFAULT_IMAGE_PATCH_SIZE = 16  # Qwen3-VL
SPATIAL_MERGE = 2  # Qwen-VL merges 2x2 patches into one token


def merge_factor(patch_size: int) -> int:
    """Frame sides are multiples of this: one merged token's side in pixels."""
    return patch_size * SPATIAL_MERGE


PATCH = merge_factor(DEFAULT_IMAGE_PATCH_SIZE)  # the default frame-side multiple, 32
_MAX_FORWARD_FRAMES = 100_000  # bound on frames decoded for one sample (a broken index)


class NotAVideo(ValueError):
    """The file is not something PyAV can decode video from (the job fails with this message)."""


@dataclass(frozen=True)
class VideoInfo:
    duration: float  # seconds
    width: int
    height: int
    fps: float | None
    codec: str
    container: str
    has_audio: bool


@dataclass
class SampledFrame:
    t: float  # seconds from the start of the video, of the frame actually decoded
    target: float  # the time that was asked for
    image: np.ndarray  # RGB uint8 (h, w, 3)


class UnsupportedFormat(NotAVideo):
    """The file is of a kind the allow-list of demuxers refuses (a playlist, script, image sequence...)."""


def open_media(path: str, formats: str = INPUT_FORMATS) -> av.container.InputContainer:
    """Open a caller's file for reading with only the demuxers in `formats` (FFmpeg refuses any
    other before reading the header) and only the local file protocol. Raises NotAVideo."""
    options = {"format_whitelist": formats, "protocol_whitelist": "file"}
    try:
        return av.open(path, "r", metadata_errors="ignore", container_options=options)
    except av.ArgumentError:  # EINVAL from the open: the probed demuxer is not on the list
        raise UnsupportedFormat(
            f"unsupported input format: the file is not one of the media containers read "
            f"here ({formats}; ANALYSIS_INPUT_FORMATS)"
        ) from None
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise NotAVideo(f"not a readable media file ({_ffmpeg_reason(exc)})") from None


def _ffmpeg_reason(exc: BaseException) -> str:
    text = str(exc)
    return text.split(": '", 1)[0] if text else type(exc).__name__


class FrameSampler:
    """One open input file; `close()` (or `with`) releases it."""

    def __init__(self, path: str, decoder_threads: int = 2, formats: str = INPUT_FORMATS) -> None:
        self.path = path
        self.container = open_media(path, formats)
        if not self.container.streams.video:
            self.container.close()
            raise NotAVideo("the file has no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.stream.codec_context.thread_count = max(1, decoder_threads)
        time_base = self.stream.time_base
        assert time_base is not None  # the demuxer gives every stream a time base
        self.time_base = time_base
        self.start = float(self.stream.start_time * self.time_base) if self.stream.start_time is not None else 0.0
        self.frames_decoded = 0
        self.seeks = 0
        self._gop = 0.0  # shortest distance between two keyframes seen, seconds (0: not known yet)
        self._last_key: float | None = None  # the latest keyframe decoded
        self._landed: float | None = None  # the keyframe the last seek landed on
        self._no_key_span = 0.0  # a seek showed no keyframe within this many seconds after the last one
        self._iter: Iterator[av.VideoFrame] | None = None
        self._pending: av.VideoFrame | None = None  # decoded but not yet used
        self._position = -math.inf  # media time of the last decoded frame
        self.info = self._probe()

    def __enter__(self) -> FrameSampler:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._iter = None
        self._pending = None
        try:
            self.container.close()
        except Exception:  # closing a half-broken file must not hide the real error
            pass

    # -- probing -----------------------------------------------------------------------------------

    def _probe(self) -> VideoInfo:
        stream = self.stream
        duration = None
        if stream.duration is not None and stream.duration > 0:
            duration = float(stream.duration * self.time_base)
        elif self.container.duration:
            duration = self.container.duration / 1_000_000.0
        if not duration or duration <= 0:
            duration = self._scan_duration()
        rate = stream.average_rate or stream.guessed_rate
        width, height = stream.codec_context.width, stream.codec_context.height
        if not width or not height:
            raise NotAVideo("the video stream has no frame size (truncated or unsupported file)")
        return VideoInfo(
            duration=duration,
            width=width,
            height=height,
            fps=float(rate) if rate else None,
            codec=stream.codec_context.name,
            container=self.container.format.name,
            has_audio=bool(self.container.streams.audio),
        )

    def _scan_duration(self) -> float:
        """Files without a duration in their header (some WebM/TS): read packet times, no decode."""
        last = None
        try:
            for packet in self.container.demux(self.stream):
                if packet.pts is not None:
                    end = packet.pts + (packet.duration or 0)
                    last = end if last is None else max(last, end)
        except av.FFmpegError:
            pass
        self.container.seek(0)
        if last is None:
            raise NotAVideo("the video stream has no readable packets")
        return max(0.0, float(last * self.time_base) - self.start)

    # -- decoding ------------------------------------------------------------------------------------

    def _decoded(self) -> Iterator[av.VideoFrame]:
        for packet in self.container.demux(self.stream):
            try:
                yield from packet.decode()
            except av.InvalidDataError:
                continue  # a damaged packet: skip it, as players do

    def _next_frame(self) -> av.VideoFrame | None:
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        if self._iter is None:
            self._iter = self._decoded()
        try:
            frame = next(self._iter)
        except StopIteration:
            self._iter = None
            return None
        self.frames_decoded += 1
        t = self._time(frame)
        if frame.key_frame:
            self._landed = t if self._landed is None else self._landed
            if self._last_key is not None and abs(t - self._last_key) > 1e-3:
                distance = abs(t - self._last_key)
                self._gop = distance if not self._gop else min(self._gop, distance)
            self._last_key = t
        self._position = t
        return frame

    def _time(self, frame: av.VideoFrame) -> float:
        if frame.pts is None:
            return self._position if self._position > -math.inf else 0.0
        return float(frame.pts * self.time_base) - self.start

    def _seek(self, target: float) -> None:
        offset = int((target + self.start) / self.time_base)
        self.container.seek(max(0, offset), stream=self.stream, backward=True, any_frame=False)
        self.seeks += 1
        self._iter = None
        self._pending = None
        self._position = -math.inf
        self._landed = None

    def _should_seek(self, target: float, half_frame: float) -> bool:
        """Seek when a keyframe is expected between where the decoder is and the target (decoding
        forward would cost more than starting from that keyframe); decode forward otherwise."""
        ahead = target - self._position
        if ahead < 0:
            return True
        if self._last_key is None:
            return ahead > 1.0
        if self._gop:
            return self._last_key + self._gop <= target + half_frame
        # keyframe distance not known yet: explore by seeking, unless a seek already showed that no
        # keyframe lies this close after the last one
        return ahead > 1.0 and target - self._last_key > self._no_key_span

    def frame_at(self, target: float) -> av.VideoFrame | None:
        """The first frame at or after `target` (the last frame when `target` is past the end)."""
        half_frame = 0.5 / (self.info.fps or 30.0)
        if self._should_seek(target, half_frame):
            previous_key = self._last_key
            self._seek(target)
            first = self._next_frame()
            if first is None:
                return None
            if previous_key is not None and self._landed is not None and abs(self._landed - previous_key) < 1e-3:
                self._no_key_span = max(self._no_key_span, target - previous_key)
            self._pending = first
        last: av.VideoFrame | None = None
        for _ in range(_MAX_FORWARD_FRAMES):
            frame = self._next_frame()
            if frame is None:
                return last
            if self._time(frame) + half_frame >= target:
                return frame
            last = frame
        return last

    def frames(
        self, times: Iterable[float], width: int | None = None, height: int | None = None
    ) -> Generator[SampledFrame, None, None]:
        """One RGB frame per time (in the order given). `width`/`height`: scale to this size;
        None keeps the source size."""
        previous_t = None
        for target in times:
            frame = self.frame_at(target)
            if frame is None:
                continue
            t = round(self._time(frame), 3)
            if previous_t is not None and t <= previous_t:
                # the file ended (or has one frame per many samples): do not repeat a frame
                self._pending = None
                if t == previous_t:
                    continue
            previous_t = t
            image = rgb_array(frame, width or frame.width, height or frame.height)
            yield SampledFrame(t=max(0.0, t), target=target, image=image)


# -- the TRU sampling parameters -------------------------------------------------------------------


def _round_to(value: float, factor: int) -> int:
    return max(factor, round(value / factor) * factor)


def fit_frame_size(width: int, height: int, min_pixels: int, max_pixels: int, factor: int = PATCH) -> tuple[int, int]:
    """Qwen-VL's resize rule (`smart_resize`): keep the aspect, both sides multiples of `factor`
    (patch size x 2), area within [min_pixels, max_pixels] (as far as `factor`-multiples allow)."""
    h_bar, w_bar = _round_to(height, factor), _round_to(width, factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return w_bar, h_bar


@dataclass(frozen=True)
class VideoPlan:
    times: list[float]
    width: int
    height: int


def video_plan(
    info: VideoInfo,
    fps: float,
    max_frames: int,
    min_pixels: int,
    max_pixels: int,
    total_pixels: int,
    factor: int = PATCH,
) -> VideoPlan:
    """Sample times and frame size for a prompt answer.

    Frames: `fps` per second (first at 0), at most `max_frames`, spread evenly over the video when
    fps would give more. Size: sides multiples of `factor`, each frame's area ≤ min(max_pixels,
    total_pixels / frames), and at least one `factor` x `factor` token; when even `min_pixels` per
    frame would overrun `total_pixels`, fewer frames are taken instead."""
    duration = max(info.duration, 0.0)
    count = max(1, min(max_frames, math.floor(duration * fps) or 1))
    floor_area = factor * factor  # one merged token: the smallest frame the VLM takes
    min_pixels = max(min_pixels, floor_area)
    max_pixels = max(max_pixels, floor_area)
    total_pixels = max(total_pixels, floor_area)
    if count * min_pixels > total_pixels:
        count = max(1, total_pixels // min_pixels)
    per_frame = max(min_pixels, min(max_pixels, total_pixels // count))
    width, height = fit_frame_size(info.width, info.height, min_pixels, per_frame, factor)
    while width * height > per_frame and (width > factor or height > factor):  # rounding overshoot
        if width >= height:
            width -= factor
        else:
            height -= factor
    if count * width * height > total_pixels and count > 1:
        count = max(1, total_pixels // (width * height))
    if count < math.floor(duration * fps):  # capped: spread what is left evenly
        step = duration / count
        times = [round((i + 0.5) * step, 3) for i in range(count)]
    else:
        times = [round(i / fps, 3) for i in range(count)]
    return VideoPlan(times=times, width=width, height=height)


def interval_times(duration: float, interval: float, max_samples: int) -> list[float]:
    """One sample every `interval` seconds from 0 (at most `max_samples`)."""
    count = min(max_samples, max(1, math.ceil(duration / interval - 1e-9)))
    return [round(i * interval, 3) for i in range(count) if i * interval < duration or i == 0]


def fit_within(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Downscale (never up) so the longer side is at most `max_side`; even sides for swscale."""
    scale = min(1.0, max_side / max(width, height))
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)
