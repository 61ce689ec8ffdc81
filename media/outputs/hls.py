"""The `{"type": "hls"}` output: HLS served by this server, with one WebVTT subtitle rendition per
caption language.

The processed video is encoded (H.264, AAC when the input has audio) by the shared
`TsSegmentEncoder` into standalone MPEG-TS segments of `HLS_SEGMENT_SECONDS`, each starting on an
IDR frame, and held in memory in a sliding window bounded by count and bytes (`HlsWindow`; what
the budget forces out early is counted). Playlists are rendered on request (RFC 8216): the master
lists the video variant and one `SUBTITLES` rendition per caption language (the spoken one,
`DEFAULT=YES`, then every `translate_to`); each WebVTT segment is aligned with its video segment
(same sequence number, duration and program date) and starts with `X-TIMESTAMP-MAP` tying its
`LOCAL` zero to the video segment's first PTS, so players put the cues on the video's clock.

Captions come after the speech they transcribe (recognition takes its time), so a subtitle segment
is listed only `HLS_SUBTITLE_DELAY` seconds after its video segment ended ("sealed"): a caption
goes into the segment where it starts when it arrives before that segment is sealed, else into
the first segment not sealed yet (start moved to that segment's start: shown late, never lost).
Each cue is in exactly one segment, so players never show it twice. When the output stops every
playlist gets `#EXT-X-ENDLIST`; the registry keeps it readable for `HLS_LINGER_SECONDS`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from av.packet import Packet
from av.stream import Stream
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from media.captions import vtt_timestamp, webvtt_document
from media.encode import TsSegmentEncoder
from media.events import CaptionEvent
from media.frames import AudioItem, DropOldestQueue, VideoItem
from media.outputs.base import OutputBase, OutputBuilder, OutputContext, OutputOverlay, OutputState
from media.overlay import OverlayState

log = logging.getLogger(__name__)

TS_PACKET = 188
PTS_WRAP = 1 << 33  # MPEG-TS timestamps are 33 bits (90 kHz)
MAX_LANGUAGES = 9  # the spoken language and at most 8 `translate_to` (CaptionParams)
MAX_CUES_PER_LANGUAGE = 512
LANGUAGE_CODE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$")
# names players show in their subtitle menu (NAME must be unique in the group); others: the code
LANGUAGE_NAMES = {
    "ar": "العربية",
    "de": "Deutsch",
    "en": "English",
    "es": "Español",
    "fr": "Français",
    "hi": "हिन्दी",
    "it": "Italiano",
    "ja": "日本語",
    "ko": "한국어",
    "nl": "Nederlands",
    "pl": "Polski",
    "pt": "Português",
    "ru": "Русский",
    "sv": "Svenska",
    "tr": "Türkçe",
    "uk": "Українська",
    "zh": "中文",
}
UNDETERMINED = "und"


class HlsSettings(BaseSettings):
    """HLS output settings, read from `HLS_*` environment variables (each description starts with
    its variable's name)."""

    model_config = SettingsConfigDict(env_prefix="HLS_", case_sensitive=False, extra="ignore")

    segment_seconds: float = Field(
        1.0, ge=0.5, le=10, description="HLS_SEGMENT_SECONDS: target segment length (a keyframe starts each)"
    )
    window_segments: int = Field(
        6, ge=3, le=60, description="HLS_WINDOW_SEGMENTS: segments listed in a live playlist (at least 3)"
    )
    keep_segments: int = Field(
        4, ge=0, le=60, description="HLS_KEEP_SEGMENTS: segments still served after they left the playlist"
    )
    max_bytes: int = Field(
        48 << 20,
        ge=1 << 20,
        description="HLS_MAX_BYTES: segment bytes one stream's HLS holds; beyond it the oldest go early (counted)",
    )
    subtitle_delay: float = Field(
        2.0,
        ge=0,
        le=30,
        description="HLS_SUBTITLE_DELAY: seconds a subtitle segment waits for late captions before it is listed",
    )
    linger_seconds: float = Field(
        60.0, ge=0, le=3600, description="HLS_LINGER_SECONDS: how long a finished stream's HLS stays readable"
    )
    max_finished: int = Field(8, ge=0, le=1024, description="HLS_MAX_FINISHED: finished HLS outputs kept at most")
    audio_bitrate: int = Field(128_000, ge=32_000, le=512_000, description="HLS_AUDIO_BITRATE: AAC bitrate (bps)")
    queue_items: int = Field(
        120, ge=8, le=2000, description="HLS_QUEUE_ITEMS: frames waiting for the encoder (oldest dropped, counted)"
    )


def adts_header(payload_size: int, sample_rate_index: int = 3, channels: int = 2) -> bytes:
    """The 7-byte ADTS header of one AAC-LC frame (48 kHz = index 3): MPEG-TS carries AAC as ADTS."""
    size = payload_size + 7
    return bytes(
        (
            0xFF,
            0xF1,  # sync, MPEG-4, no CRC
            (1 << 6) | (sample_rate_index << 2) | (channels >> 2),  # profile LC (object type 2 - 1)
            ((channels & 3) << 6) | (size >> 11),
            (size >> 3) & 0xFF,
            ((size & 7) << 5) | 0x1F,
            0xFC,  # buffer fullness 0x7FF (VBR), one raw data block
        )
    )


class AdtsSegmentEncoder(TsSegmentEncoder):
    """`TsSegmentEncoder` with AAC audio framed as ADTS: each segment's container gets its audio
    stream before the encoder has its AudioSpecificConfig, so the TS muxer cannot add the headers."""

    def _mux(self, packets: list[Packet[Any]], stream: Stream | None) -> None:
        if stream is not None and stream.type == "audio":
            framed = []
            for packet in packets:
                data = bytes(packet)
                out = Packet(adts_header(len(data)) + data)
                out.pts, out.dts, out.time_base = packet.pts, packet.dts, packet.time_base
                framed.append(out)
            packets = framed
        super()._mux(packets, stream)


def language_name(code: str) -> str:
    return LANGUAGE_NAMES.get(code.split("-")[0].lower(), code)


def first_video_pts(ts: bytes) -> int | None:
    """The PTS (90 kHz) of the first video PES in an MPEG-TS segment, as the muxer wrote it."""
    for offset in range(0, len(ts) - TS_PACKET + 1, TS_PACKET):
        packet = ts[offset : offset + TS_PACKET]
        if packet[0] != 0x47 or not packet[1] & 0x40:  # not synced, or no payload unit start
            continue
        adaptation = (packet[3] >> 4) & 0x3
        start = 4
        if adaptation in (2, 3):
            start += 1 + packet[4]
        if adaptation == 2 or start + 14 > TS_PACKET:
            continue
        pes = packet[start:]
        if pes[:3] != b"\x00\x00\x01" or not 0xE0 <= pes[3] <= 0xEF or not pes[7] & 0x80:
            continue
        p = pes[9:14]
        return ((p[0] >> 1) & 0x07) << 30 | p[1] << 22 | (p[2] >> 1) << 15 | p[3] << 7 | p[4] >> 1
    return None


def h264_codec(ts: bytes) -> str:
    """The RFC 6381 `avc1.PPCCLL` of the first SPS in the bytes (x264 repeats it at each IDR)."""
    match = re.search(rb"\x00\x00\x01[\x27\x47\x67](...)", ts, re.DOTALL)
    return "avc1." + match.group(1).hex() if match else "avc1.64001f"


@dataclass
class HlsSegment:
    seq: int
    data: bytes
    start: float  # media seconds of its first frame (the stream's timeline, as caption times)
    pts: int  # 90 kHz PTS of its first video frame in the TS
    duration: float
    wall: float  # epoch seconds of its start (EXT-X-PROGRAM-DATE-TIME)
    sealed: bool = False  # its subtitle segments are final and listed

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass
class Cue:
    ident: int
    start: float
    end: float
    text: str
    seq: int | None = None  # the segment it went into (None: not placed yet)


@dataclass
class HlsCounters:
    segments: int = 0
    segments_removed: int = 0  # slid out of the window as usual
    segments_dropped: int = 0  # forced out early by the bytes budget
    cues: int = 0
    cues_late: int = 0  # arrived after their segment was sealed: moved to a later segment
    cues_dropped: int = 0  # over the per-language bound


class HlsWindow:
    """The segments and cues of one HLS output and its playlists. Thread-safe: segments are added
    on the encoder thread, cues on the loop, playlists read by request handlers."""

    def __init__(self, settings: HlsSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._segments: deque[HlsSegment] = deque()  # bounded by _evict: count and bytes budget
        self._bytes = 0
        self._cues: dict[str, deque[Cue]] = {}
        self._seen: deque[tuple[int, str]] = deque(maxlen=4 * MAX_CUES_PER_LANGUAGE)
        self._target = max(1, math.ceil(settings.segment_seconds))
        self.codecs = "avc1.64001f"
        self.resolution: tuple[int, int] | None = None
        self.has_audio = False
        self.ended = False
        self.ended_at: float | None = None
        self.counters = HlsCounters()
        self._first: tuple[float, float] | None = None  # (media start, wall time) of the first segment

    # -- input ------------------------------------------------------------------------------------
    def add_segment(self, data: bytes, start: float, duration: float) -> HlsSegment:
        pts = first_video_pts(data)
        with self._lock:
            if self._first is None:
                self._first = (start, time.time())
                self.codecs = h264_codec(data) + (",mp4a.40.2" if self.has_audio else "")
            wall = self._first[1] + (start - self._first[0])
            seq = self._segments[-1].seq + 1 if self._segments else 0
            segment = HlsSegment(seq, data, start, pts if pts is not None else round(start * 90000), duration, wall)
            self._segments.append(segment)
            self._bytes += len(data)
            self.counters.segments += 1
            self._target = max(self._target, round(duration))
            self._seal(lambda s: s.end + self.settings.subtitle_delay <= segment.end)
            self._evict()
            return segment

    def add_cue(self, lang: str, ident: int, start: float, end: float, text: str) -> None:
        """A final caption's text in `lang` (once per caption and language; repeats are ignored)."""
        text = text.strip()
        if not text:
            return
        with self._lock:
            if self.ended or (ident, lang) in self._seen:
                return
            self._seen.append((ident, lang))
            cues = self._cues.get(lang)
            if cues is None:
                if len(self._cues) >= MAX_LANGUAGES:
                    self.counters.cues_dropped += 1
                    return
                cues = self._cues[lang] = deque()  # bounded: MAX_CUES_PER_LANGUAGE, just below
            if len(cues) >= MAX_CUES_PER_LANGUAGE:
                cues.popleft()
                self.counters.cues_dropped += 1
            end = end if end > start else start + 1.0
            cues.append(Cue(ident, start, end, text))
            self.counters.cues += 1

    def finish(self) -> None:
        """The stream (or this output) ended: every segment sealed, every playlist ENDLIST."""
        with self._lock:
            if self.ended:
                return
            self._seal(lambda s: True)
            last = self._segments[-1].seq if self._segments else None
            for cues in self._cues.values():
                for cue in cues:
                    if cue.seq is None and last is not None:
                        self._place(cue, self._segments[-1])
            self.ended = True
            self.ended_at = time.monotonic()

    # -- under the lock ---------------------------------------------------------------------------
    def _seal(self, ready: Callable[[HlsSegment], bool]) -> None:
        for segment in self._segments:
            if segment.sealed:
                continue
            if not ready(segment):
                break  # in order: a later segment is never sealed before an earlier one
            for cues in self._cues.values():
                for cue in cues:
                    if cue.seq is None and cue.start < segment.end:
                        self._place(cue, segment)
            segment.sealed = True

    def _place(self, cue: Cue, segment: HlsSegment) -> None:
        if cue.start < segment.start:  # too late for the segment it starts in: shown from this one
            self.counters.cues_late += 1
            cue.end = max(cue.end, segment.start + 1.0)
            cue.start = segment.start
        cue.seq = segment.seq

    def _evict(self) -> None:
        keep = self.settings.window_segments + self.settings.keep_segments
        while len(self._segments) > keep:
            self._drop_oldest()
            self.counters.segments_removed += 1
        while self._bytes > self.settings.max_bytes and len(self._segments) > 1:
            self._drop_oldest()
            self.counters.segments_dropped += 1

    def _drop_oldest(self) -> None:
        old = self._segments.popleft()
        self._bytes -= len(old.data)
        for cues in self._cues.values():
            while cues and cues[0].seq is not None and cues[0].seq <= old.seq:
                cues.popleft()

    # -- output -----------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Playlists can be served: at least one segment with its subtitles listed."""
        with self._lock:
            return any(s.sealed for s in self._segments)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                **dataclasses.asdict(self.counters),
                "segments_held": len(self._segments),
                "bytes_held": self._bytes,
                "ended": self.ended,
            }

    def _listed(self) -> list[HlsSegment]:
        return list(self._segments)[-self.settings.window_segments :]

    def bandwidth(self) -> int:
        with self._lock:
            peaks = [len(s.data) * 8 / s.duration for s in self._segments if s.duration > 0]
        return int(max(peaks, default=2_000_000) * 1.1)

    def media_playlist(self, uri: Callable[[HlsSegment], str], subtitles: bool) -> str:
        with self._lock:
            listed = self._listed()
            shown = [s for s in listed if s.sealed] if subtitles else listed
            lines = [
                "#EXTM3U",
                "#EXT-X-VERSION:3",
                f"#EXT-X-TARGETDURATION:{self._target}",
                f"#EXT-X-MEDIA-SEQUENCE:{listed[0].seq if listed else 0}",
            ]
            for segment in shown:
                stamp = datetime.fromtimestamp(segment.wall, UTC).isoformat(timespec="milliseconds")
                lines += [
                    f"#EXT-X-PROGRAM-DATE-TIME:{stamp.replace('+00:00', 'Z')}",
                    f"#EXTINF:{segment.duration:.5f},",
                    uri(segment),
                ]
            if self.ended:
                lines.append("#EXT-X-ENDLIST")
        return "\n".join(lines) + "\n"

    def segment(self, seq: int) -> HlsSegment | None:
        with self._lock:
            for segment in self._segments:
                if segment.seq == seq:
                    return segment
        return None

    def webvtt(self, lang: str, seq: int) -> str | None:
        """The WebVTT segment `seq` in `lang`; None when that segment is not held or not sealed."""
        with self._lock:
            segment = next((s for s in self._segments if s.seq == seq and s.sealed), None)
            if segment is None:
                return None
            cues = [c for c in self._cues.get(lang, ()) if c.seq == seq]
            header = [f"X-TIMESTAMP-MAP=MPEGTS:{segment.pts % PTS_WRAP},LOCAL:{vtt_timestamp(0)}"]
            return webvtt_document(
                ((c.ident, c.start - segment.start, c.end - segment.start, c.text) for c in cues), header
            )


def caption_languages(params: dict[str, Any], default_language: str, seen: str | None) -> list[str]:
    """The stream's caption languages: the spoken one first, then every `translate_to` (none when
    captions are off). `default_language` stands in for an unset one; "auto" takes the language
    the recognizer reported (`seen`)."""
    captions = params.get("captions")
    if not isinstance(captions, dict) or captions.get("enabled", True) is False:
        return []
    spoken = str(captions.get("language") or default_language)
    if spoken == "auto" or not LANGUAGE_CODE.match(spoken):
        spoken = seen or UNDETERMINED
    languages = [spoken]
    for target in captions.get("translate_to") or []:
        if isinstance(target, str) and LANGUAGE_CODE.match(target) and target not in languages:
            languages.append(target)
    return languages[:MAX_LANGUAGES]


class HlsOutput(OutputBase):
    """One stream's HLS: an encoder thread filling an `HlsWindow`, and the playlists over it."""

    type = "hls"

    def __init__(
        self,
        name: str,
        spec: Any,
        ctx: OutputContext,
        settings: HlsSettings,
        default_language: str = "en",
        on_stop: Callable[[HlsOutput], None] | None = None,
    ) -> None:
        super().__init__(name, spec, ctx)
        self.manifest_id = ctx.manifest_id
        self.settings = settings
        self.default_language = default_language
        self.window = HlsWindow(settings)
        self._on_stop = on_stop
        self._overlay = OutputOverlay(ctx, captions=False)  # captions are the subtitle renditions
        self._input: DropOldestQueue[VideoItem | AudioItem] = DropOldestQueue(settings.queue_items)
        self._encoder: AdtsSegmentEncoder | None = None
        self._thread: threading.Thread | None = None
        self._has_audio = False
        self._spoken_seen: str | None = None
        self._languages = caption_languages(ctx.params(), default_language, None)
        # the segment being written (encoder thread only)
        self._parts: list[bytes] = []
        self._segment_start: float | None = None
        self._frame_time: float | None = None
        self._last_frame_time: float | None = None
        self._frame_interval = 1 / 30
        self._stopped = False
        self._closing = False  # the encoder is flushing its last segment

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        self.set_state(OutputState.CONNECTING)
        self._thread = threading.Thread(target=self._run, name=f"hls-{self.manifest_id}", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._input.close()
        thread = self._thread
        if thread is not None:
            await _join(thread)
        self._encoder = None  # closed by its thread
        self.window.finish()
        self.set_state(OutputState.STOPPED)
        self._release_stream()
        if self._on_stop is not None:
            self._on_stop(self)

    def _release_stream(self) -> None:
        """A finished output stays readable for a while but keeps nothing of its stream: the
        context's callbacks hold the stream object (and its buffers and stages with it)."""
        self._languages = self.languages()
        self.ctx = dataclasses.replace(
            self.ctx, params=dict, publish=_ignore, on_state=None, overlay_state=OverlayState(), log=log
        )
        self._overlay = OutputOverlay(self.ctx, captions=False)

    def configure(self, has_audio: bool) -> None:
        self._has_audio = has_audio
        self.window.has_audio = has_audio

    def send_video(self, item: VideoItem) -> None:
        if not self._input.put(item):
            self.drops += 1

    def send_audio(self, item: AudioItem) -> None:
        if self._has_audio and not self._input.put(item):
            self.drops += 1

    def on_caption(self, event: CaptionEvent) -> None:
        if not event.final:
            return
        if self._spoken_seen is None and event.lang:
            self._spoken_seen = event.lang
        languages = self.languages()
        if not languages:
            return
        spoken = languages[0]
        self.window.add_cue(spoken, event.id, event.start, event.end, event.text)
        for lang in languages[1:]:
            translated = event.translations.get(lang)
            if translated:
                self.window.add_cue(lang, event.id, event.start, event.end, translated)

    def update_params(self, params: dict[str, Any]) -> None:
        self._overlay.refresh()
        self._languages = caption_languages(params, self.default_language, self._spoken_seen)

    def languages(self) -> list[str]:
        if not self._stopped and self._languages and self._languages[0] == UNDETERMINED and self._spoken_seen:
            self._languages = caption_languages(self.ctx.params(), self.default_language, self._spoken_seen)
        return list(self._languages)

    def status(self) -> dict[str, Any]:
        return {**super().status(), "hls": self.window.stats(), "languages": self.languages()}

    # -- the encoder thread -----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._input.get(timeout=0.5)
            if item is None:
                if self._input.closed:
                    break
                continue
            try:
                if isinstance(item, VideoItem):
                    self._encode_video(item)
                elif self._encoder is not None:
                    self._encoder.encode_audio(item.frame, item.media_time)
            except Exception as exc:  # one bad frame must not end the output
                self.drops += 1
                self.set_state(OutputState.RETRYING, f"encoding failed: {exc}")
        if self._encoder is not None:
            self._closing = True
            try:
                self._encoder.close()  # the last segment goes out whole
            except Exception as exc:
                log.info("[%s] HLS final flush failed: %s", self.manifest_id, exc)

    def _encode_video(self, item: VideoItem) -> None:
        if self._encoder is None:
            encoder = dataclasses.replace(
                self.ctx.encoder,
                gop_seconds=self.settings.segment_seconds - 0.01,
                audio_codec="aac",
                audio_bitrate=self.settings.audio_bitrate,
            )
            self._encoder = AdtsSegmentEncoder(self, item.frame.width, item.frame.height, self._has_audio, encoder)
            self.window.resolution = (self._encoder.width, self._encoder.height)
        if self._last_frame_time is not None and item.media_time > self._last_frame_time:
            self._frame_interval = item.media_time - self._last_frame_time
            # a keyframe on the frame nearest each segment boundary, whatever the frame rate
            self._encoder.settings.gop_seconds = self.settings.segment_seconds - self._frame_interval / 2
        self._frame_time = item.media_time
        frame = self._overlay.draw(item)
        if self._encoder.encode_video(frame, item.media_time):
            self._last_frame_time = item.media_time
            self.frames += 1
            if self.state != OutputState.LIVE and self.window.ready:
                self.set_state(OutputState.LIVE)

    # -- SegmentSink (the encoder's calls, on the encoder thread) ---------------------------------
    def begin_segment(self) -> None:
        self._parts = []
        self._segment_start = self._frame_time

    def write(self, data: bytes) -> None:
        self._parts.append(data)
        self.bytes += len(data)

    def end_segment(self) -> None:
        start = self._segment_start
        if start is None or not self._parts:
            return
        if not self._closing and self._frame_time is not None and self._frame_time > start:
            end = self._frame_time  # the frame that opens the next segment
        else:  # the last segment: up to the end of its last frame
            end = (self._last_frame_time or start) + self._frame_interval
        # exact durations on the 90 kHz clock the encoder stamps
        duration = (round(end * 90000) - round(start * 90000)) / 90000
        self.window.add_segment(b"".join(self._parts), start, max(duration, 0.001))
        self._parts = []


def _ignore(_event: Any) -> None:
    """A finished output's event sink: its stream's bus is closed."""


async def _join(thread: threading.Thread) -> None:
    await asyncio.get_running_loop().run_in_executor(None, thread.join, 15.0)


class HlsRegistry:
    """The HLS output of each stream, by manifest id, for the routes: a running stream's, and the
    finished ones for `linger_seconds` (at most `max_finished`, oldest forgotten first)."""

    def __init__(self, settings: HlsSettings) -> None:
        self.settings = settings
        self._outputs: dict[str, HlsOutput] = {}
        self._lock = threading.Lock()

    def add(self, output: HlsOutput) -> None:
        with self._lock:
            self._outputs[output.manifest_id] = output
            self._prune()

    def finished(self, output: HlsOutput) -> None:
        """An output stopped: kept (ENDLIST) for a while, then forgotten."""
        with self._lock:
            self._prune()

    def get(self, manifest_id: str) -> HlsOutput | None:
        with self._lock:
            self._prune()
            return self._outputs.get(manifest_id)

    def _prune(self) -> None:
        now = time.monotonic()
        done = [
            (o.window.ended_at or now, key)
            for key, o in self._outputs.items()
            if o.window.ended and now - (o.window.ended_at or now) >= self.settings.linger_seconds
        ]
        for _, key in done:
            del self._outputs[key]
        finished = sorted((o.window.ended_at or now, key) for key, o in self._outputs.items() if o.window.ended)
        for _, key in finished[: max(0, len(finished) - self.settings.max_finished)]:
            del self._outputs[key]

    def __len__(self) -> int:
        return len(self._outputs)


def with_token(uri: str, token: str | None) -> str:
    """A playlist URI that keeps a `?token=` viewer token (players fetch relative URIs as given)."""
    return f"{uri}?token={quote(token, safe='')}" if token else uri


def master_playlist(output: HlsOutput, token: str | None) -> str:
    window = output.window
    languages = output.languages()
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for index, lang in enumerate(languages):
        default = "YES" if index == 0 else "NO"
        lines.append(
            f'#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID="subs",LANGUAGE="{lang}",NAME="{language_name(lang)}",'
            f'DEFAULT={default},AUTOSELECT=YES,URI="{with_token(subtitle_name(lang), token)}"'
        )
    attributes = [f"BANDWIDTH={window.bandwidth()}", f'CODECS="{window.codecs}"']
    if window.resolution:
        attributes.append(f"RESOLUTION={window.resolution[0]}x{window.resolution[1]}")
    if languages:
        attributes.append('SUBTITLES="subs"')
    attributes.append("CLOSED-CAPTIONS=NONE")  # or hls.js adds an empty 608 track
    lines += ["#EXT-X-STREAM-INF:" + ",".join(attributes), with_token(VIDEO_PLAYLIST, token)]
    return "\n".join(lines) + "\n"


VIDEO_PLAYLIST = "video.m3u8"
# names under /stream/{id}/hls/: video.m3u8, video-{seq}.ts, subs-{lang}.m3u8, subs-{lang}-{seq}.vtt
SUBTITLE_PLAYLIST = re.compile(r"^subs-([A-Za-z0-9-]{2,40})\.m3u8$")
VIDEO_SEGMENT = re.compile(r"^video-([0-9]{1,12})\.ts$")
SUBTITLE_SEGMENT = re.compile(r"^subs-([A-Za-z0-9-]{2,40})-([0-9]{1,12})\.vtt$")


def subtitle_name(lang: str) -> str:
    return f"subs-{lang}.m3u8"


def video_playlist(output: HlsOutput, token: str | None) -> str:
    return output.window.media_playlist(lambda s: with_token(f"video-{s.seq}.ts", token), subtitles=False)


def subtitle_playlist(output: HlsOutput, lang: str, token: str | None) -> str | None:
    if lang not in output.languages():
        return None
    return output.window.media_playlist(lambda s: with_token(f"subs-{lang}-{s.seq}.vtt", token), subtitles=True)


def hls_builder(settings: HlsSettings, registry: HlsRegistry, default_language: str = "en") -> OutputBuilder:
    """The outputs runner's builder of `{"type": "hls"}` entries: each output registers itself for
    the routes (the newest of a stream wins) and stays readable a while after it stops."""

    def build(name: str, spec: Any, ctx: OutputContext) -> OutputBase:
        output = HlsOutput(name, spec, ctx, settings, default_language, on_stop=registry.finished)
        registry.add(output)
        return output

    return build
