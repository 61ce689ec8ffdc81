"""Where a stream's media comes from and goes to.

A `MediaSource` delivers decoded frames to the stream (`Ingest`), from any thread. A `MediaSink`
takes processed video from the stream's video worker thread and audio from the decode thread.
Trickle, WebRTC and WHIP are each one source and/or sink; the stream does not know which.
"""

from __future__ import annotations

from typing import Any, Protocol

import av

from media.frames import AudioItem, VideoItem


class Ingest(Protocol):
    """The stream side of a source. Every method is safe to call from any thread."""

    def on_streams(self, has_video: bool, has_audio: bool) -> None: ...

    def on_video_frame(self, frame: av.VideoFrame) -> None: ...

    def on_audio_frame(self, frame: av.AudioFrame) -> None: ...

    def on_decode_error(self, message: str) -> None: ...

    def on_input_segment(self, seq: int) -> None: ...

    def on_input_ended(self, reason: str) -> None: ...


class MediaSource:
    name = "source"

    async def start(self, ingest: Ingest) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        return {}


class SinkHost(Protocol):
    """What a sink may tell its stream."""

    def on_output_failed(self, reason: str) -> None: ...

    def on_output_segment(self, seq: int) -> None: ...

    def on_output_lagging(self, sink_name: str, reason: str) -> None: ...


class MediaSink:
    name = "sink"
    # True: `send_video` gets each frame before the stream's overlay is drawn (media/outputs)
    source_frames = False

    async def start(self, host: SinkHost) -> None:
        self.host = host

    def configure(self, has_audio: bool) -> None:
        """Told once the input's tracks are known (before the first frame is sent)."""

    def send_video(self, item: VideoItem) -> None:
        """Called on the stream's video worker thread with each processed frame."""

    def send_audio(self, item: AudioItem) -> None:
        """Called on the decode thread with each decoded audio frame."""

    async def stop(self) -> None:
        """Flush and release everything (called after the video worker has stopped)."""

    def stats(self) -> dict[str, Any]:
        return {}
