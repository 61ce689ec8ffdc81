"""A stream source fed by RTMP publishers, one at a time, across reconnects.

The source outlives its publishers: when one leaves, the stream keeps running (its state turns
`DEGRADED_INPUT` as input goes idle) and a new publish with the same key attaches to the same
source; after `reconnect_seconds` without one the input ends and the stream stops. A second
publisher while one is attached is refused (`NetStream.Publish.BadName`, "already publishing").
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from media.endpoints import Ingest, MediaSource
from rtmp.decode import FlvDecoder
from rtmp.flv import FlvPacket
from rtmp.server import PublishRefused, Session

log = logging.getLogger(__name__)


class _Publish:
    """One publisher's connection to the source (the session's PublishTarget)."""

    def __init__(self, source: RtmpSource, session: Session) -> None:
        self.source = source
        self.session = session
        self.ended = False

    def on_tracks(self, has_video: bool, has_audio: bool) -> None:
        if self.source._ingest is not None and not self.ended:
            self.source._ingest.on_streams(has_video, has_audio)

    def on_packet(self, packet: FlvPacket, timestamp: int) -> None:
        decoder = self.source._decoder
        if decoder is not None and not self.ended:
            self.source.last_media_at = time.monotonic()
            decoder.put(packet, timestamp)

    def on_unpublish(self, reason: str) -> None:
        if not self.ended:
            self.ended = True
            self.source._detached(self, reason)


class RtmpSource(MediaSource):
    name = "rtmp"

    def __init__(self, label: str, reconnect_seconds: float = 30.0, queue_packets: int = 512) -> None:
        self.label = label
        self.reconnect_seconds = reconnect_seconds
        self.queue_packets = queue_packets
        self._ingest: Ingest | None = None
        self._decoder: FlvDecoder | None = None
        self._publisher: _Publish | None = None
        self._reconnect_timer: asyncio.TimerHandle | None = None
        self._stopped = False
        self.publishes = 0
        self.last_media_at: float | None = None
        self.left_at: float | None = None
        self.last_end_reason: str | None = None

    async def start(self, ingest: Ingest) -> None:
        self._ingest = ingest
        self._decoder = FlvDecoder(self.label, ingest, max_packets=self.queue_packets)
        self._decoder.start()

    @property
    def publishing(self) -> bool:
        return self._publisher is not None

    def attach(self, session: Session) -> _Publish:
        """A publisher with this stream's key; raises PublishRefused while another one publishes."""
        if self._stopped or self._decoder is None:
            raise PublishRefused("the stream has stopped", reason="stopped")
        if self._publisher is not None:
            raise PublishRefused("already publishing", reason="busy")
        if self._reconnect_timer is not None:
            self._reconnect_timer.cancel()
            self._reconnect_timer = None
        self._publisher = _Publish(self, session)
        self.publishes += 1
        self.left_at = None
        self._decoder.new_session()
        log.info("[%s] RTMP publisher %s attached (publish #%d)", self.label, session.peer, self.publishes)
        return self._publisher

    def _detached(self, publish: _Publish, reason: str) -> None:
        if publish is not self._publisher:
            return
        self._publisher = None
        self.last_end_reason = reason
        self.left_at = time.monotonic()
        if self._decoder is not None:
            self._decoder.end_session()
        if self._stopped:
            return
        log.info(
            "[%s] RTMP publisher left (%s); waiting %g s for a reconnect", self.label, reason, self.reconnect_seconds
        )
        loop = asyncio.get_running_loop()
        self._reconnect_timer = loop.call_later(self.reconnect_seconds, self._reconnect_expired)

    def _reconnect_expired(self) -> None:
        self._reconnect_timer = None
        if self._publisher is None and not self._stopped and self._ingest is not None:
            self._ingest.on_input_ended(f"RTMP publisher gone for {self.reconnect_seconds:g} s")

    async def stop(self) -> None:
        self._stopped = True
        if self._reconnect_timer is not None:
            self._reconnect_timer.cancel()
            self._reconnect_timer = None
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            publisher.ended = True
            publisher.session.close("stream stopped")
        if self._decoder is not None:
            self._decoder.close()
            await asyncio.get_running_loop().run_in_executor(None, self._decoder.join, 10.0)

    def stats(self) -> dict[str, Any]:
        decoder = self._decoder
        now = time.monotonic()
        return {
            "publishing": self.publishing,
            "publishes": self.publishes,
            "peer": self._publisher.session.peer if self._publisher else None,
            "video_frames": decoder.video_frames if decoder else 0,
            "audio_frames": decoder.audio_frames if decoder else 0,
            "packets_dropped": decoder.packets_dropped if decoder else 0,
            "decode_errors": decoder.decode_errors if decoder else 0,
            "disconnected_for_s": None if self.left_at is None else round(now - self.left_at, 3),
            "reconnect_seconds": self.reconnect_seconds,
            "last_end_reason": self.last_end_reason,
        }
