"""The WebRTC session service: every peer connection of the server (browser `/offer`, WHIP
publishers, WHEP viewers) and the WebRTC side of each stream. HTTP routes: server/routes_webrtc.py.

Every publisher (browser or WHIP) is an ordinary manifest stream started through the stream
service (server/stream_service.py): listed by `GET /streams`, stopped by `DELETE /stream/{id}`,
counted in metrics.
Every stream also gets a `WebRTCOutput` sink, so WHEP viewers can watch any stream; all peers of a
stream share one encode per codec (see `media/webrtc_sink.py`).

Peer connections are bounded (`max_streams` publishers plus `whep_max_viewers` viewers per
stream) and closed on every exit path: DELETE of the session or the stream, the peer closing or
failing, no media / no RTCP for `webrtc_media_timeout`, no connection within
`webrtc_connect_timeout`, server shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiortc import RTCPeerConnection, RTCRtpTransceiver, RTCSessionDescription
from prometheus_client.core import GaugeMetricFamily

from httpapi.outbound import outbound_policy
from media.ice import CandidateGuard, IceSettings, accept_media_as_consent, apply_ice_settings
from media.manager import StreamManager
from media.spec import StreamSpec
from media.stream import Stream
from media.webrtc_events import EventChannel
from media.webrtc_sdp import (
    OfferError,
    OfferFailed,
    UnsupportedOffer,
    add_transceivers,
    answer_direction,
    negotiated_codec,
    parse_offer,
)
from media.webrtc_sink import PacketTrack, WebRTCEncoderConfig, WebRTCOutput, forward_keyframe_requests
from media.webrtc_source import WebRTCSource
from server.keys import STREAM_SERVICE_KEY
from server.settings import SETTINGS_KEY, Settings
from server.stream_service import StreamService

log = logging.getLogger(__name__)

MAX_CHANNELS_PER_PEER = 4
PEER_CLOSE_TIMEOUT = 10.0
PUBLISHER_KINDS = ("browser", "whip")


class SessionLimitError(Exception):
    """Too many peer connections (→ 503)."""


@dataclass
class PeerSession:
    id: str
    kind: str  # "browser" | "whip" | "whep"
    manifest_id: str
    pc: RTCPeerConnection
    etag: str
    remote_ufrag: str | None = None
    first_mid: str | None = None
    stream: Stream | None = None
    created: float = field(default_factory=time.monotonic)
    connected_at: float | None = None
    last_heard: float | None = None
    tracks: list[PacketTrack] = field(default_factory=list)
    channels: list[EventChannel] = field(default_factory=list)
    watchdog: asyncio.Task | None = None
    closing: bool = False
    close_reason: str | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "session_id": self.id,
            "kind": self.kind,
            "manifest_id": self.manifest_id,
            "connection_state": self.pc.connectionState,
            "age_s": round(time.monotonic() - self.created, 3),
            "tracks": [t.stats() for t in self.tracks],
            "data_channels": [c.stats() for c in self.channels],
        }


class WebRTCService:
    """Owns every peer connection of the server and the WebRTC side of each stream."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.settings: Settings = app[SETTINGS_KEY]
        s = self.settings
        self.ice = IceSettings.from_strings(
            s.ice_servers, s.webrtc_host_addresses, s.webrtc_udp_port_min, s.webrtc_udp_port_max
        )
        # remote ICE candidates (offers, trickle PATCH) pass the outbound policy's deny list
        self.candidate_guard = CandidateGuard(outbound_policy(app))
        self.encoder_config = WebRTCEncoderConfig(
            video_bitrate=s.webrtc_video_bitrate,
            audio_bitrate=s.webrtc_audio_bitrate,
            h264_preset=s.webrtc_h264_preset,
            keyframe_interval=s.webrtc_keyframe_interval,
            encoder_threads=s.webrtc_encoder_threads,
        )
        self.streams: StreamService = app[STREAM_SERVICE_KEY]
        self.sessions: dict[str, PeerSession] = {}
        self.max_sessions = s.max_streams * (1 + s.whep_max_viewers)
        self._release_ice: Callable[[], None] | None = None

    # -- app lifecycle ----------------------------------------------------------------------------------
    async def on_startup(self, app: web.Application) -> None:
        self._release_ice = apply_ice_settings(self.ice)

    async def on_shutdown(self, app: web.Application) -> None:
        sessions = list(self.sessions.values())
        if sessions:
            await asyncio.gather(*(self.close(s, "server shutting down") for s in sessions), return_exceptions=True)

    async def on_cleanup(self, app: web.Application) -> None:
        if self._release_ice is not None:
            self._release_ice()
            self._release_ice = None

    def on_stream_build(self, stream: Stream, spec: StreamSpec) -> None:
        """Start hook: every stream gets a WebRTC output, so WHEP viewers can watch any stream."""
        if not any(isinstance(sink, WebRTCOutput) for sink in stream.sinks):
            stream.sinks.append(self.make_output(stream.manifest_id))

    def make_output(self, label: str) -> WebRTCOutput:
        return WebRTCOutput(label, self.encoder_config, max_tracks=2 * (2 + self.settings.whep_max_viewers))

    # -- sessions ----------------------------------------------------------------------------------------
    def _new_session(self, kind: str, manifest_id: str) -> PeerSession:
        if len(self.sessions) >= self.max_sessions:
            raise SessionLimitError(f"too many WebRTC peers ({len(self.sessions)} of {self.max_sessions})")
        pc = RTCPeerConnection(self.ice.rtc_configuration())
        session = PeerSession(
            id=secrets.token_urlsafe(18), kind=kind, manifest_id=manifest_id, pc=pc, etag=f'"{secrets.token_hex(8)}"'
        )
        self.sessions[session.id] = session

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            state = pc.connectionState
            log.info("[%s] %s peer %s: %s", manifest_id, kind, session.id[:8], state)
            if state == "connected" and session.connected_at is None:
                session.connected_at = session.last_heard = time.monotonic()
            elif state in ("failed", "closed"):
                await self.close(session, f"{kind} peer connection {state}")

        @pc.on("datachannel")
        def on_datachannel(channel) -> None:
            stream = session.stream
            if session.closing or stream is None or not stream.active or len(session.channels) >= MAX_CHANNELS_PER_PEER:
                channel.close()
                return
            bridge = EventChannel(
                channel,
                stream,
                allow_control=session.kind == "browser",
                status_interval=self.settings.webrtc_status_interval,
            )
            if bridge.start():
                session.channels.append(bridge)

        return session

    async def _negotiate(
        self, session: PeerSession, offer_text: str, direction: str, max_per_kind: int = 1
    ) -> tuple[dict[str, RTCRtpTransceiver], str]:
        offer = parse_offer(offer_text, max_per_kind)
        session.remote_ufrag, session.first_mid = offer.ice_ufrag, offer.first_mid
        pc = session.pc
        with self.candidate_guard.applied():  # the ICE connections made here check every remote candidate
            transceivers = add_transceivers(pc, offer, direction, self.settings.webrtc_video_codec)
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_text, type="offer"))
                answer = await pc.createAnswer()
                await pc.setLocalDescription(answer)  # gathers every local candidate (no trickle from us)
            except Exception as exc:  # aiortc raises ValueError / OperationError / InternalError on bad offers
                raise OfferError(f"cannot negotiate this offer: {exc}") from None
        return transceivers, pc.localDescription.sdp

    def _attach_outputs(
        self, session: PeerSession, transceivers: dict[str, RTCRtpTransceiver], output: WebRTCOutput, answer: str
    ) -> None:
        """Give the peer the stream's processed output on every m-line it receives."""
        for kind, transceiver in transceivers.items():
            if answer_direction(answer, kind) not in ("sendrecv", "sendonly"):
                continue
            codec = negotiated_codec(answer, kind)
            if kind == "video" and codec in ("VP8", "H264"):
                track = output.video_track(codec)
                forward_keyframe_requests(transceiver.sender, track)
            elif kind == "audio" and codec and codec.lower() == "opus":
                track = output.audio_track()
            else:
                continue
            transceiver.sender.replaceTrack(track)
            session.tracks.append(track)

    async def open_publisher(
        self, kind: str, offer_text: str, manifest_id: str, params: dict[str, Any]
    ) -> tuple[PeerSession, str]:
        """A browser (`/offer`) or WHIP publisher: a new stream fed by the peer's tracks. The browser
        also gets the processed video and its audio back on the same connection."""
        # refused before any peer connection is made: bad params, a running id, no capacity
        self.streams.check_params(params)
        self.streams.check_admission(manifest_id)
        try:
            session = self._new_session(kind, manifest_id)
        except SessionLimitError:
            self.streams.reject("capacity")
            raise
        try:
            direction = "sendrecv" if kind == "browser" else "recvonly"
            transceivers, answer = await self._negotiate(session, offer_text, direction)
            remote = {k: t.receiver.track for k, t in transceivers.items() if t.receiver.track is not None}
            if not remote:
                raise UnsupportedOffer("the offer sends no audio or video to the server")
            s = self.settings
            source = WebRTCSource(
                manifest_id,
                remote.get("video"),
                remote.get("audio"),
                connect_timeout=s.webrtc_connect_timeout,
                media_timeout=s.webrtc_media_timeout,
                peer="OBS/WHIP" if kind == "whip" else kind,
            )
            if kind == "whip":
                # FFmpeg 8 never answers ICE consent checks once it streams: its media keeps consent
                accept_media_as_consent(session.pc, lambda: source.last_media_at)
            output = self.make_output(manifest_id)
            spec = StreamSpec(
                manifest_id=manifest_id, mode="native", subscribe_url=None, publish_url=None, params=params
            )
            started = await self.streams.start(
                spec, source=source, sinks=[output], video_queue_size=self.settings.webrtc_video_queue_size
            )
            stream = session.stream = started.stream
            stream.metadata["transport"] = "whip" if kind == "whip" else "webrtc"
            stream.on_stop(self._on_stream_stopped)
            if not stream.active:  # it ended before the callback was in place
                raise OfferFailed(f"the stream ended at once: {stream.end_reason}")
            if kind == "browser":
                self._attach_outputs(session, transceivers, output, answer)
            session.watchdog = asyncio.create_task(self._watch(session), name=f"rtc-watch-{session.id[:8]}")
            return session, answer
        except BaseException:
            await self.close(session, "set-up failed")
            raise

    async def open_viewer(self, manifest_id: str, offer_text: str) -> tuple[PeerSession, str]:
        """A WHEP viewer of a running stream's processed output."""
        manager: StreamManager = self.streams.manager
        stream = manager.get_active(manifest_id)
        output = next((s for s in stream.sinks if isinstance(s, WebRTCOutput)), None) if stream else None
        if stream is None or output is None:
            raise LookupError(f"no running stream with manifest id '{manifest_id}'")
        viewers = sum(1 for s in self.sessions.values() if s.kind == "whep" and s.manifest_id == manifest_id)
        if viewers >= self.settings.whep_max_viewers:
            raise SessionLimitError(f"stream '{manifest_id}' has its maximum of {viewers} viewers")
        session = self._new_session("whep", manifest_id)
        session.stream = stream
        try:
            transceivers, answer = await self._negotiate(session, offer_text, "sendonly")
            if not stream.active:
                raise LookupError(f"stream '{manifest_id}' stopped")
            self._attach_outputs(session, transceivers, output, answer)
            if not session.tracks:
                raise UnsupportedOffer("the offer receives no VP8/H.264 video or Opus audio")
            session.watchdog = asyncio.create_task(self._watch(session), name=f"rtc-watch-{session.id[:8]}")
            return session, answer
        except BaseException:
            await self.close(session, "set-up failed")
            raise

    async def _watch(self, session: PeerSession) -> None:
        """Close a peer that never connects, or (viewers) stops sending RTCP receiver reports.
        Publishers' media silence is watched by their `WebRTCSource`."""
        s = self.settings
        interval = max(0.1, min(1.0, s.webrtc_media_timeout / 4))
        last_report = None
        last_sent = 0
        try:
            while not session.closing:
                await asyncio.sleep(interval)
                now = time.monotonic()
                if session.connected_at is None:
                    if now - session.created > s.webrtc_connect_timeout:
                        await self.close(session, f"peer did not connect within {s.webrtc_connect_timeout:g} s")
                        return
                    continue
                if session.kind != "whep":
                    return  # connected; the stream's source watches the publisher's media from here on
                report = await self._latest_receiver_report(session)
                if report is not None and report != last_report:
                    last_report = report
                    session.last_heard = now
                sent = sum(t.packets_out for t in session.tracks)
                if sent == last_sent:
                    session.last_heard = now  # we send nothing, so the viewer has nothing to report
                last_sent = sent
                if now - (session.last_heard or now) > s.webrtc_media_timeout:
                    await self.close(session, f"viewer silent (no RTCP) for {s.webrtc_media_timeout:g} s")
                    return
        except asyncio.CancelledError:
            pass

    @staticmethod
    async def _latest_receiver_report(session: PeerSession):
        """Timestamp of the newest RTCP receiver report from the peer (changes on each report)."""
        newest = None
        for transceiver in session.pc.getTransceivers():
            if transceiver.sender.track is None:
                continue
            try:
                report = await transceiver.sender.getStats()
            except Exception as exc:  # the sender is stopping
                log.debug("[%s] sender stats unavailable: %s", session.manifest_id, exc)
                continue
            for stats in report.values():
                if stats.type == "remote-inbound-rtp" and (newest is None or stats.timestamp > newest):
                    newest = stats.timestamp
        return newest

    async def close(self, session: PeerSession, reason: str) -> None:
        """Idempotent: release everything a session holds (and stop a publisher's stream)."""
        if session.closing:
            return
        session.closing = True
        session.close_reason = reason
        self.sessions.pop(session.id, None)
        log.info("[%s] closing %s peer %s: %s", session.manifest_id, session.kind, session.id[:8], reason)
        for channel in session.channels:
            channel.close()
        for track in session.tracks:
            track.stop()
        if session.watchdog is not None and session.watchdog is not asyncio.current_task():
            session.watchdog.cancel()
        stream = session.stream
        if session.kind in PUBLISHER_KINDS and stream is not None and stream.active:
            await stream.stop(reason)  # its stop callback closes the stream's viewers
        try:
            await asyncio.wait_for(session.pc.close(), PEER_CLOSE_TIMEOUT)
        except Exception as exc:
            log.warning("[%s] closing peer connection failed: %s", session.manifest_id, exc)

    async def _on_stream_stopped(self, stream: Stream) -> None:
        sessions = [s for s in self.sessions.values() if s.manifest_id == stream.manifest_id]
        reason = f"stream stopped: {stream.end_reason or 'stopped'}"
        await asyncio.gather(*(self.close(s, reason) for s in sessions), return_exceptions=True)

    def count(self, kind: str) -> int:
        return sum(1 for s in self.sessions.values() if s.kind == kind)

    def metrics(self):
        gauge = GaugeMetricFamily("streamlens_webrtc_sessions", "WebRTC peer connections open", labels=["kind"])
        for kind in ("browser", "whip", "whep"):
            gauge.add_metric([kind], self.count(kind))
        yield gauge


# beside its service: this module imports server/keys.py
WEBRTC_KEY = web.AppKey("webrtc", WebRTCService)
