"""RTMP(S) push output: the processed stream, H.264 + AAC in FLV, to any RTMP server.

One worker thread per output takes frames from a bounded drop-oldest queue (drops counted), draws
this output's overlay (burned-in captions or not), encodes H.264 (libx264, `tune=zerolatency`)
and AAC, optionally splices CEA-608 captions into each access unit as A/53 SEI (`media.cea608`),
and muxes FLV in memory. An FFmpeg process per connection (`_Pusher`) copies that FLV to the
destination: PyAV holds the GIL while FFmpeg connects to or writes to a URL, so a stalled server
handled in-process would freeze the whole server.

Before every (re)connect the host is resolved once and every address checked by the outbound
policy; FFmpeg then connects to that checked address (the RTMP `tcUrl` keeps the name the caller
gave), so a name cannot rebind between check and connect. A refused, stalled (FFmpeg's
`rw_timeout`) or vanished server ends the session: the output goes `retrying`, waits a capped
exponential backoff and reconnects. Nothing here can stop the stream or another output.
"""

from __future__ import annotations

import asyncio
import collections
import shutil
import subprocess
import threading
import time
from fractions import Fraction
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import av
from av.audio.stream import AudioStream
from av.container import OutputContainer
from av.packet import Packet
from av.video.frame import PictureType
from av.video.stream import VideoStream

from httpapi.outbound import OutboundDenied, TlsPolicy
from httpapi.redact import redact_text, redact_url
from media import cea608
from media.encode import ChunkCollector
from media.events import CaptionEvent
from media.frames import AudioItem, DropOldestQueue, VideoItem, even_size, reformat
from media.outputs.base import OutputBase, OutputContext, OutputOverlay, OutputState
from media.outputs.spec import RtmpOutputSpec, resolve_allowed

QUEUE_ITEMS = 90  # video frames and audio frames waiting for the worker (about 1 s)
RW_TIMEOUT_S = 5.0  # no progress on the socket for this long → the session has failed
CONNECT_TIMEOUT_S = RW_TIMEOUT_S * 2 + 2  # connected (FLV header out) by then, or the session failed
CLOSE_WAIT_S = 3.0
ANALYZE_US = 500_000  # FFmpeg reads this much of our FLV before it starts copying
STDERR_LINES = 20
FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
# an idle track (no audio yet) holds the interleaver back at most 0.2 s, not FFmpeg's 10 s
FLV_OPTIONS = {"flvflags": "no_duration_filesize", "max_interleave_delta": "200000", "flush_packets": "1"}
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 8.0
STABLE_SESSION_S = 10.0  # a session live this long resets the backoff
RESOLVE_WAIT_S = 10.0
STOP_JOIN_S = CLOSE_WAIT_S + 10
TIME_BASE = Fraction(1, 1000)  # FLV timestamps are milliseconds
AUDIO_RATE = 48000
AUDIO_BITRATE = 128_000
MAX_PENDING_CAPTIONS = 16
FPS_WINDOW = 30  # frames over which the output frame rate is measured (608 pacing)
MIN_608_FPS, MAX_608_FPS = 5.0, 60.0
CAPTION_IDS_KEPT = 64  # caption ids already put into 608 (a final and its translation update)


def connect_target(url: str, address: str) -> tuple[str, str]:
    """(the URL FFmpeg dials: `url` with its host replaced by the checked `address`, the tcUrl the
    server sees: scheme://host[:port]/app as the caller wrote it)."""
    parts = urlsplit(url)
    host = f"[{address}]" if ":" in address else address
    netloc = f"{host}:{parts.port}" if parts.port else host
    app = parts.path.lstrip("/").partition("/")[0]
    tc_url = urlunsplit((parts.scheme, parts.netloc, f"/{app}", "", ""))
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")), tc_url


def tls_options(policy: TlsPolicy, url: str, host: str) -> list[str]:
    """FFmpeg's TLS options for an RTMPS push to the checked address: SNI and the certificate name
    are the host the caller gave; the certificate is verified (FFmpeg does not by default) against
    the system CAs or TLS_CA_FILE, unless the host is in TLS_INSECURE_HOSTS."""
    options = ["-verifyhost", host]
    if not policy.is_insecure(url):
        options += ["-tls_verify", "1"]
        if policy.ca_file:
            options += ["-ca_file", policy.ca_file]
    return options


def private_audio_copy(frame: av.AudioFrame) -> av.AudioFrame:
    """A copy of a decoded audio frame this output may stamp: the stream's other sinks set `pts` on
    the frame they were given, from their own threads."""
    copy = av.AudioFrame.from_ndarray(frame.to_ndarray(), format=frame.format.name, layout=frame.layout.name)
    copy.sample_rate = frame.sample_rate
    return copy


class SessionEnded(Exception):
    """The output was asked to stop while a session ran."""


class RtmpOutput(OutputBase):
    type = "rtmp"

    def __init__(self, name: str, spec: RtmpOutputSpec, ctx: OutputContext) -> None:
        super().__init__(name, spec, ctx)
        self.spec: RtmpOutputSpec = spec
        self._queue: DropOldestQueue[VideoItem | AudioItem] = DropOldestQueue(QUEUE_ITEMS)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._has_audio: bool | None = None
        self._overlay = OutputOverlay(ctx, captions=spec.captions in ("burn_in", "both"))
        self._cc = spec.captions in ("cea608", "both")
        # captions for 608 wait here (loop thread → worker thread)
        self._captions: collections.deque[str] = collections.deque(maxlen=MAX_PENDING_CAPTIONS)
        self._caption_ids: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.audio_frames = 0
        self.sessions = 0
        self.captions_608 = 0
        self.address: str | None = None
        self._pusher: _Pusher | None = None  # the current session's FFmpeg

    # -- runner hooks ----------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=f"rtmp-{self.ctx.manifest_id}-{self.name}", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        self._queue.close()
        if self._thread is not None:
            thread, self._thread = self._thread, None
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, thread.join, CLOSE_WAIT_S)
            pusher = self._pusher
            if thread.is_alive() and pusher is not None:
                pusher.process.kill()  # a write blocked on a stalled server ends now
            await loop.run_in_executor(None, thread.join, STOP_JOIN_S)
            if thread.is_alive():
                self.ctx.log.error("rtmp output %s did not stop in time", self.name)
        self.set_state(OutputState.STOPPED)

    @property
    def running(self) -> bool:
        """True while its worker thread or an FFmpeg process of it is alive."""
        pusher = self._pusher
        return self._thread is not None or (pusher is not None and pusher.alive())

    def configure(self, has_audio: bool) -> None:
        self._has_audio = has_audio

    def send_video(self, item: VideoItem) -> None:
        if not self._queue.put(item):
            self.drops += 1

    def send_audio(self, item: AudioItem) -> None:
        if self._has_audio is None:
            self._has_audio = True
        if not self._queue.put(item):
            self.drops += 1

    def update_params(self, params: dict[str, Any]) -> None:
        self._overlay.refresh()

    def on_caption(self, event: CaptionEvent) -> None:
        if not self._cc or not event.final or not event.text:
            return
        language = self.spec.cea608_language.lower() if self.spec.cea608_language else None
        if language is None or language == event.lang.lower():
            text = event.text if event.revision == 0 else None
        else:
            text = event.translations.get(language)
        if not text or event.id in self._caption_ids:
            return
        self._caption_ids[event.id] = None
        while len(self._caption_ids) > CAPTION_IDS_KEPT:
            self._caption_ids.popitem(last=False)
        self._captions.append(text)

    def status(self) -> dict[str, Any]:
        return {
            **super().status(),
            "url": redact_url(self.spec.url),
            "captions": self.spec.captions,
            "address": self.address,
            "audio_frames": self.audio_frames,
            "sessions": self.sessions,
            "captions_608": self.captions_608,
        }

    # -- worker thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        delay = BACKOFF_INITIAL_S
        while not self._stop.is_set():
            self.set_state(OutputState.CONNECTING)
            began = time.monotonic()
            try:
                self._session()
                return
            except SessionEnded:
                return
            except OutboundDenied as exc:
                error = f"refused by the outbound policy: {exc}"
            except Exception as exc:  # FFmpeg, network, encoder: this output only
                error = f"{type(exc).__name__}: {exc}"
            if self._stop.is_set():
                return
            if self.state == OutputState.LIVE and time.monotonic() - began > STABLE_SESSION_S:
                delay = BACKOFF_INITIAL_S
            self.set_state(OutputState.RETRYING, redact_text(error))
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, BACKOFF_MAX_S)
            self.reconnects += 1

    def _resolve(self) -> str:
        assert self._loop is not None  # set by start()
        future = asyncio.run_coroutine_threadsafe(
            resolve_allowed(self.ctx.policy, self.spec.host, self.spec.port), self._loop
        )
        try:
            return future.result(RESOLVE_WAIT_S)
        except TimeoutError:
            future.cancel()
            raise OutboundDenied(f"host {self.spec.host} did not resolve in time") from None

    def _first_video(self) -> VideoItem:
        """Wait for a video frame (the encoder's size comes from it); older items are stale."""
        while True:
            item = self._queue.get(timeout=0.5)
            if self._stop.is_set() or (item is None and self._queue.closed):
                raise SessionEnded
            if isinstance(item, VideoItem):
                return item  # audio before it has no video to go with

    def _session(self) -> None:
        first = self._first_video()
        address = self._resolve()
        self.address = address
        url, tc_url = connect_target(self.spec.url, address)
        self.sessions += 1
        tls: list[str] = []
        if urlsplit(self.spec.url).scheme == "rtmps":
            tls = tls_options(self.ctx.policy.tls, self.spec.url, self.spec.host)
        pusher = _Pusher(url, tc_url, tls)
        self._pusher = pusher
        collector = ChunkCollector()
        try:
            container = av.open(collector, "w", format="flv", options=FLV_OPTIONS)
            try:
                _Session(self, container, collector, pusher, first).run()
            finally:
                try:
                    container.close()
                except Exception as exc:  # the destination is gone: nothing more to flush
                    self.ctx.log.debug("closing rtmp output %s: %s", self.name, exc)
        finally:
            pusher.close()


class _Pusher:
    """An FFmpeg process that copies the FLV it reads on stdin to the RTMP(S) URL.

    The network side lives in its own process: PyAV holds the GIL while FFmpeg connects and writes
    to a URL, so a stalled server would freeze the whole server for the `rw_timeout`. Here a stall
    or a refusal ends FFmpeg (`-rw_timeout`), and the worker's next pipe write fails."""

    def __init__(self, url: str, tc_url: str, tls: list[str]) -> None:
        command = [
            FFMPEG,
            "-hide_banner",
            "-loglevel",
            "info",
            "-nostats",
            "-fflags",
            "nobuffer",
            "-probesize",
            "65536",
            "-analyzeduration",
            str(ANALYZE_US),
            "-f",
            "flv",
            "-i",
            "pipe:0",
            "-map",
            "0",
            "-c",
            "copy",
            "-rw_timeout",
            str(int(RW_TIMEOUT_S * 1_000_000)),
            "-rtmp_tcurl",
            tc_url,
            "-rtmp_live",
            "live",
            "-flvflags",
            "no_duration_filesize",
            "-max_interleave_delta",
            FLV_OPTIONS["max_interleave_delta"],
            "-flush_packets",
            "1",
        ]
        command += tls
        command += ["-protocol_whitelist", "rtmp,rtmps,tcp,tls", "-f", "flv", url]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, bufsize=0
        )
        self.connected = threading.Event()
        self.lines: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self._reader = threading.Thread(target=self._read_stderr, name="rtmp-ffmpeg-log", daemon=True)
        self._reader.start()
        self._deadline = time.monotonic() + CONNECT_TIMEOUT_S

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            line = raw.decode(errors="replace").strip()
            if line.startswith("Output #0"):
                self.connected.set()  # the URL is open and the FLV header written
            elif line:
                self.lines.append(line)

    def error(self) -> str:
        """What FFmpeg said last (its URL redacted by the caller's `redact_text`)."""
        for line in reversed(self.lines):
            if "rror" in line or "failed" in line or "timed out" in line.lower() or "refused" in line.lower():
                return line
        code = self.process.poll()
        return self.lines[-1] if self.lines else f"ffmpeg exited with status {code}"

    def write(self, data: bytes) -> None:
        if not self.connected.is_set() and time.monotonic() > self._deadline:
            raise ConnectionError(f"not connected after {CONNECT_TIMEOUT_S:.0f} s")
        stdin = self.process.stdin
        assert stdin is not None
        view = memoryview(data)
        try:
            while view:
                written = stdin.write(view)
                view = view[written or 0 :]
        except (BrokenPipeError, ConnectionResetError, ValueError):
            self.process.wait(5)
            raise ConnectionError(self.error()) from None

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        """End of input: FFmpeg sends what it holds and exits; killed if it does not in time."""
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(CLOSE_WAIT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self._reader.join(5)


class _Session:
    """One connection: encoders and the FLV muxer (worker thread only)."""

    def __init__(
        self,
        output: RtmpOutput,
        container: OutputContainer,
        collector: ChunkCollector,
        pusher: _Pusher,
        first: VideoItem,
    ) -> None:
        self.output = output
        self.container = container
        self.collector = collector
        self.pusher = pusher
        self.first = first
        self.width, self.height = even_size(first.frame.width, first.frame.height)
        settings = output.ctx.encoder
        fps = settings.fps_hint
        video = container.add_stream(
            "libx264",
            rate=fps,
            options={
                "preset": settings.preset,
                "tune": "zerolatency",
                "crf": str(settings.crf),
                "bf": "0",
                "forced-idr": "1",
                "x264-params": "scenecut=0",
            },
        )
        assert isinstance(video, VideoStream)
        video.width, video.height, video.pix_fmt = self.width, self.height, "yuv420p"
        video.time_base = TIME_BASE
        video.codec_context.time_base = TIME_BASE
        video.codec_context.gop_size = max(1, int(settings.gop_seconds * fps * 4))
        video.codec_context.thread_count = settings.threads
        self.video = video
        self.audio: AudioStream | None = None
        self.resampler: av.AudioResampler | None = None
        if output._has_audio:
            audio = container.add_stream("aac", rate=AUDIO_RATE)
            assert isinstance(audio, AudioStream)
            audio.layout = "stereo"
            audio.bit_rate = AUDIO_BITRATE
            audio.time_base = Fraction(1, AUDIO_RATE)
            self.audio = audio
            self.resampler = av.AudioResampler(format=audio.format.name, layout="stereo", rate=AUDIO_RATE)
        self.t0 = first.media_time
        self.last_pts = -1
        self.next_keyframe_at: float | None = None
        self.next_audio_pts: int | None = None
        # 608 is paced per frame: its encoder is made once the frame rate is measured
        self.cc: cea608.Cea608Encoder | None = None
        self.frame_times: collections.deque[float] = collections.deque(maxlen=FPS_WINDOW)

    def run(self) -> None:
        output = self.output
        self.video_frame(self.first)
        while True:
            if not self.pusher.alive():
                raise ConnectionError(self.pusher.error())
            if output.state != OutputState.LIVE and self.pusher.connected.is_set():
                output.set_state(OutputState.LIVE)
            item = output._queue.get(timeout=0.5)
            if output._stop.is_set():
                self.flush()
                return
            if item is None:
                if output._queue.closed:
                    self.flush()
                    return
                continue
            if isinstance(item, VideoItem):
                self.video_frame(item)
            else:
                self.audio_frame(item)

    def mux(self, packets: list[Packet[Any]]) -> None:
        for packet in packets:
            self.container.mux(packet)
        data = self.collector.take()
        if data:
            self.pusher.write(data)
            self.output.bytes += len(data)

    def video_frame(self, item: VideoItem) -> None:
        output = self.output
        drawn = output._overlay.draw(item)
        size = (self.width, self.height)
        if drawn is item.frame or (drawn.width, drawn.height) != size or drawn.format.name != "yuv420p":
            # a private frame: the stream's other sinks encode the same decoded frame
            drawn = reformat(drawn, "yuv420p", *size)
        pts = max(round((item.media_time - self.t0) * 1000), self.last_pts + 1)
        self.last_pts = pts
        drawn.pts, drawn.time_base = pts, TIME_BASE
        if self.next_keyframe_at is None or item.media_time >= self.next_keyframe_at:
            drawn.pict_type = PictureType.I  # keyframes on a fixed clock: platforms ask for ≤ 2-4 s
            self.next_keyframe_at = item.media_time + output.ctx.encoder.gop_seconds
        else:
            drawn.pict_type = PictureType.NONE
        packets = self.video.encode(drawn)
        self.frame_times.append(item.media_time)
        if output._cc and self.cc is None and (output._captions or len(self.frame_times) == FPS_WINDOW):
            self.cc = cea608.Cea608Encoder(rows=2, fps=self.measured_fps())
        if self.cc is not None:
            while output._captions:
                if self.cc.add_caption(output._captions.popleft()):
                    output.captions_608 += 1
            sei = cea608.caption_sei(self.cc.next_frame_cc_data())
            for packet in packets:
                data = cea608.insert_sei(bytes(packet), sei)
                spliced = Packet(data)
                spliced.pts, spliced.dts, spliced.time_base = packet.pts, packet.dts, packet.time_base
                spliced.is_keyframe = packet.is_keyframe
                spliced.stream = self.video
                self.mux([spliced])
        else:
            self.mux(packets)
        output.frames += 1

    def measured_fps(self) -> float:
        """The output frame rate over the last frames (the encoder's hint until there are some)."""
        times = self.frame_times
        if len(times) < 2 or times[-1] <= times[0]:
            return float(self.output.ctx.encoder.fps_hint)
        return min(MAX_608_FPS, max(MIN_608_FPS, (len(times) - 1) / (times[-1] - times[0])))

    def audio_frame(self, item: AudioItem) -> None:
        if self.audio is None or self.resampler is None:
            return
        start = round((item.media_time - self.t0) * AUDIO_RATE)
        if start < 0:
            return  # audio from before the session's first video frame
        for resampled in self.resampler.resample(item.frame):
            if resampled is item.frame:  # nothing to convert: the resampler hands the shared frame back
                resampled = private_audio_copy(resampled)
            if self.next_audio_pts is None or start - self.next_audio_pts > AUDIO_RATE // 5:
                self.next_audio_pts = start  # first frame, or a gap (dropped audio): jump ahead
            resampled.pts, resampled.time_base = self.next_audio_pts, Fraction(1, AUDIO_RATE)
            self.next_audio_pts += resampled.samples
            start += resampled.samples
            self.mux(self.audio.encode(resampled))
            self.output.audio_frames += 1

    def flush(self) -> None:
        try:
            self.mux(self.video.encode(None))
            if self.audio is not None:
                self.mux(self.audio.encode(None))
        except (av.FFmpegError, ValueError) as exc:
            self.output.ctx.log.debug("flushing rtmp output %s: %s", self.output.name, exc)
