"""A stream source fed by a WebRTC peer's remote tracks (browser camera, OBS over WHIP).

aiortc decodes on its own thread into `RemoteStreamTrack`, whose asyncio queue is unbounded: a
slow consumer would grow latency and memory without limit. One task per track therefore calls
`recv()` back to back and hands every frame straight to the stream, whose bounded drop-oldest
video queue keeps only the newest frames (and counts what it drops). Audio frames all go through.

A peer that vanishes without saying goodbye is noticed here: no media for `media_timeout`
seconds (or none at all within `connect_timeout`) ends the input.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media.endpoints import Ingest, MediaSource

log = logging.getLogger(__name__)


class WebRTCSource(MediaSource):
    name = "webrtc"

    def __init__(
        self,
        label: str,
        video: MediaStreamTrack | None,
        audio: MediaStreamTrack | None,
        connect_timeout: float = 20.0,
        media_timeout: float = 10.0,
        peer: str = "webrtc",
    ) -> None:
        if video is None and audio is None:
            raise ValueError("a WebRTC source needs a video or an audio track")
        self.label = label
        self.video = video
        self.audio = audio
        self.peer = peer
        self.connect_timeout = connect_timeout
        self.media_timeout = media_timeout
        self._ingest: Ingest | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._started_at = time.monotonic()
        self._ended = False
        self.video_frames = 0
        self.audio_frames = 0
        self.last_media_at: float | None = None
        self.end_reason: str | None = None
        self.video_size: tuple[int, int] | None = None

    async def start(self, ingest: Ingest) -> None:
        self._ingest = ingest
        self._started_at = time.monotonic()
        ingest.on_streams(self.video is not None, self.audio is not None)
        if self.video is not None:
            self._tasks.append(
                asyncio.create_task(self._drain(self.video, self._on_video), name=f"rtc-video-{self.label}")
            )
        if self.audio is not None:
            self._tasks.append(
                asyncio.create_task(self._drain(self.audio, self._on_audio), name=f"rtc-audio-{self.label}")
            )
        self._tasks.append(asyncio.create_task(self._watchdog(), name=f"rtc-watchdog-{self.label}"))

    def _on_video(self, frame: av.VideoFrame) -> None:
        assert self._ingest is not None  # frames flow only after start()
        self.video_frames += 1
        self.video_size = (frame.width, frame.height)
        self._ingest.on_video_frame(frame)

    def _on_audio(self, frame: av.AudioFrame) -> None:
        assert self._ingest is not None  # frames flow only after start()
        self.audio_frames += 1
        self._ingest.on_audio_frame(frame)

    async def _drain(self, track: MediaStreamTrack, deliver: Callable[[Any], None]) -> None:
        ingest = self._ingest
        assert ingest is not None  # drained only after start()
        try:
            while True:
                frame = await track.recv()
                self.last_media_at = time.monotonic()
                try:
                    deliver(frame)
                except Exception as exc:  # a bad frame must not end the input
                    ingest.on_decode_error(f"{track.kind} frame rejected: {exc}")
        except MediaStreamError:
            log.info("[%s] remote %s track ended", self.label, track.kind)
        if all(t.done() or t is asyncio.current_task() for t in self._tasks[:-1]):
            self._end(f"{self.peer} peer stopped sending")

    async def _watchdog(self) -> None:
        interval = max(0.1, min(1.0, self.media_timeout / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            if self.last_media_at is None:
                if now - self._started_at > self.connect_timeout:
                    self._end(f"no media from the {self.peer} peer within {self.connect_timeout:g} s")
                    return
            elif now - self.last_media_at > self.media_timeout:
                self._end(f"no media from the {self.peer} peer for {self.media_timeout:g} s")
                return

    def _end(self, reason: str) -> None:
        if self._ended or self._ingest is None:
            return
        self._ended = True
        self.end_reason = reason
        self._ingest.on_input_ended(reason)

    async def stop(self) -> None:
        self._ended = True
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stats(self) -> dict[str, Any]:
        age = None if self.last_media_at is None else round(time.monotonic() - self.last_media_at, 3)
        return {
            "peer": self.peer,
            "video_frames": self.video_frames,
            "audio_frames": self.audio_frames,
            "video_size": list(self.video_size) if self.video_size else None,
            "last_media_age_s": age,
            "end_reason": self.end_reason,
        }
