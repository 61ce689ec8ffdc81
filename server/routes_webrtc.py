"""WebRTC in and out: `POST /offer` (browser), WHIP ingest (RFC 9725, OBS 30+), WHEP playback,
and the demo pages.

Every publisher (browser or WHIP) is an ordinary manifest stream started through
`start_stream`: listed by `GET /streams`, stopped by `DELETE /stream/{id}`, counted in metrics.
Every stream also gets a `WebRTCOutput` sink, so WHEP viewers can watch any stream; all peers of a
stream share one encode per codec (see `media/webrtc_sink.py`).

Peer connections are bounded (`max_streams` publishers plus `whep_max_viewers` viewers per
stream) and closed on every exit path: DELETE of the session or the stream, the peer closing or
failing, no media / no RTCP for `webrtc_media_timeout`, no connection within
`webrtc_connect_timeout`, server shutdown.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiortc import RTCPeerConnection, RTCRtpTransceiver, RTCSessionDescription
from prometheus_client.core import GaugeMetricFamily
from pydantic import BaseModel, ConfigDict, Field

from media.ice import IceSettings, apply_ice_settings
from media.manager import AdmissionError, DuplicateStreamError, StreamManager
from media.stream import Stream
from media.webrtc_events import EventChannel
from media.webrtc_sdp import (
    OfferError,
    add_transceivers,
    answer_direction,
    negotiated_codec,
    parse_offer,
    parse_sdpfrag,
)
from media.webrtc_sink import (
    PacketTrack,
    WebRTCEncoderConfig,
    WebRTCOutput,
    forward_keyframe_requests,
)
from media.webrtc_source import WebRTCSource
from server.auth import require_bearer
from server.errors import json_error, read_json
from server.routes_streams import start_stream
from server.settings import Settings
from server.start_request import MANIFEST_ID_RE, StreamSpec, new_manifest_id

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
EXPOSED_HEADERS = "Location, ETag, Link, Accept-Patch, X-Manifest-Id, X-Session-Id"
MAX_CHANNELS_PER_PEER = 4
PEER_CLOSE_TIMEOUT = 10.0
PUBLISHER_KINDS = ("browser", "whip")


class SessionLimitError(Exception):
    """Too many peer connections (→ 503)."""


class OfferBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    sdp: str = Field(min_length=1)
    type: str = Field(pattern="^offer$")
    params: dict[str, Any] = Field(default_factory=dict)
    manifest_id: str | None = None


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
        self.settings: Settings = app["settings"]
        s = self.settings
        self.ice = IceSettings.from_strings(s.ice_servers, s.webrtc_host_addresses, s.webrtc_udp_port_min,
                                            s.webrtc_udp_port_max)
        self.encoder_config = WebRTCEncoderConfig(
            video_bitrate=s.webrtc_video_bitrate, audio_bitrate=s.webrtc_audio_bitrate,
            h264_preset=s.webrtc_h264_preset, keyframe_interval=s.webrtc_keyframe_interval,
            encoder_threads=s.webrtc_encoder_threads)
        self.sessions: dict[str, PeerSession] = {}
        self.max_sessions = s.max_streams * (1 + s.whep_max_viewers)
        self._release_ice = None

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
        session = PeerSession(id=secrets.token_urlsafe(18), kind=kind, manifest_id=manifest_id, pc=pc,
                              etag=f'"{secrets.token_hex(8)}"')
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
            bridge = EventChannel(channel, stream, allow_control=session.kind == "browser",
                                  status_interval=self.settings.webrtc_status_interval)
            if bridge.start():
                session.channels.append(bridge)

        return session

    async def _negotiate(self, session: PeerSession, offer_text: str, direction: str,
                         max_per_kind: int = 1) -> tuple[dict[str, RTCRtpTransceiver], str]:
        offer = parse_offer(offer_text, max_per_kind)
        session.remote_ufrag, session.first_mid = offer.ice_ufrag, offer.first_mid
        pc = session.pc
        transceivers = add_transceivers(pc, offer, direction, self.settings.webrtc_video_codec)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_text, type="offer"))
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)  # gathers every local candidate (no trickle from us)
        except Exception as exc:  # aiortc raises ValueError / OperationError / InternalError on bad offers
            raise OfferError(f"cannot negotiate this offer: {exc}") from None
        return transceivers, pc.localDescription.sdp

    def _attach_outputs(self, session: PeerSession, transceivers: dict[str, RTCRtpTransceiver],
                        output: WebRTCOutput, answer: str) -> None:
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

    async def open_publisher(self, kind: str, offer_text: str, manifest_id: str,
                             params: dict[str, Any]) -> tuple[PeerSession, str]:
        """A browser (`/offer`) or WHIP publisher: a new stream fed by the peer's tracks. The browser
        also gets the processed video and its audio back on the same connection."""
        manager: StreamManager = self.app["streams"]
        if manager.get_active(manifest_id) is not None:
            raise DuplicateStreamError(f"stream '{manifest_id}' is already running")
        ok, reason = manager.can_accept()
        if not ok:
            raise AdmissionError(reason)
        session = self._new_session(kind, manifest_id)
        try:
            direction = "sendrecv" if kind == "browser" else "recvonly"
            transceivers, answer = await self._negotiate(session, offer_text, direction)
            remote = {k: t.receiver.track for k, t in transceivers.items() if t.receiver.track is not None}
            if not remote:
                raise OfferError("the offer sends no audio or video to the server", status=422)
            s = self.settings
            source = WebRTCSource(manifest_id, remote.get("video"), remote.get("audio"),
                                  connect_timeout=s.webrtc_connect_timeout, media_timeout=s.webrtc_media_timeout,
                                  peer="OBS/WHIP" if kind == "whip" else kind)
            output = self.make_output(manifest_id)
            spec = StreamSpec(manifest_id=manifest_id, mode="native", subscribe_url=None, publish_url=None,
                              params=params)
            stream = await start_stream(self.app, spec, source=source, sinks=[output],
                                        video_queue_size=self.settings.webrtc_video_queue_size)
            session.stream = stream
            stream.metadata["transport"] = "whip" if kind == "whip" else "webrtc"
            stream.on_stop(self._on_stream_stopped)
            if not stream.active:  # it ended before the callback was in place
                raise OfferError(f"the stream ended at once: {stream.end_reason}", status=500)
            if kind == "browser":
                self._attach_outputs(session, transceivers, output, answer)
            session.watchdog = asyncio.create_task(self._watch(session), name=f"rtc-watch-{session.id[:8]}")
            return session, answer
        except BaseException:
            await self.close(session, "set-up failed")
            raise

    async def open_viewer(self, manifest_id: str, offer_text: str) -> tuple[PeerSession, str]:
        """A WHEP viewer of a running stream's processed output."""
        manager: StreamManager = self.app["streams"]
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
                raise OfferError("the offer receives no VP8/H.264 video or Opus audio", status=422)
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


# -- HTTP ----------------------------------------------------------------------------------------------

def service_of(request: web.Request) -> WebRTCService:
    return request.app["webrtc"]


def cors_headers(request: web.Request) -> dict[str, str]:
    return {"Access-Control-Allow-Origin": request.app["settings"].cors_origins,
            "Access-Control-Expose-Headers": EXPOSED_HEADERS}


def preflight(methods: str, accept_post: bool = False, accept_patch: bool = False):
    async def handler(request: web.Request) -> web.Response:
        headers = {
            "Access-Control-Allow-Origin": request.app["settings"].cors_origins,
            "Access-Control-Allow-Methods": methods,
            "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
            "Access-Control-Expose-Headers": EXPOSED_HEADERS,
            "Access-Control-Max-Age": "600",
        }
        if accept_post:
            headers["Accept-Post"] = SDP
        if accept_patch:
            headers["Accept-Patch"] = SDPFRAG
        return web.Response(status=204, headers=headers)

    return handler


def _error(request: web.Request, status: int, message: str, code: str | None = None,
           headers: dict[str, str] | None = None) -> web.Response:
    return json_error(status, message, code=code, headers={**cors_headers(request), **(headers or {})})


def whip_token(settings: Settings) -> str | None:
    return settings.whip_token or settings.api_token


def whep_token(settings: Settings) -> str | None:
    return settings.whep_token or settings.api_token


async def read_sdp(request: web.Request) -> str:
    if request.content_type != SDP:
        raise web.HTTPUnsupportedMediaType(reason=f"Content-Type must be {SDP}, got '{request.content_type}'")
    raw = await request.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise web.HTTPBadRequest(reason="the SDP body is not UTF-8") from None


def sdp_created(request: web.Request, session: PeerSession, answer: str, location: str) -> web.Response:
    """201 as WHIP/WHEP clients (OBS) require: exact `application/sdp`, Location, ETag."""
    response = web.Response(status=201, body=answer.encode(), content_type=SDP)
    response.headers.update(cors_headers(request))
    response.headers["Location"] = location
    response.headers["ETag"] = session.etag
    response.headers["Accept-Patch"] = SDPFRAG
    response.headers["X-Manifest-Id"] = session.manifest_id
    response.headers["X-Session-Id"] = session.id
    for link in service_of(request).ice.link_headers():
        response.headers.add("Link", link)
    return response


async def post_offer(request: web.Request) -> web.Response:
    """Browser demo: `{"sdp", "type": "offer", "params"?}` → `{"sdp", "type": "answer", "manifest_id"}`."""
    require_bearer(request, request.app["settings"].api_token)
    body = OfferBody.model_validate(await read_json(request))
    manifest_id = body.manifest_id or new_manifest_id()
    if not MANIFEST_ID_RE.match(manifest_id):
        return _error(request, 400, "manifest id must be 1-128 characters of letters, digits, '.', '_', ':' or '-'")
    try:
        session, answer = await service_of(request).open_publisher("browser", body.sdp, manifest_id, body.params)
    except OfferError as exc:
        return _error(request, exc.status, str(exc))
    except (AdmissionError, SessionLimitError) as exc:
        request.app["metrics"].streams_rejected.labels("capacity").inc()
        return _error(request, 503, str(exc), code="at_capacity", headers={"Retry-After": "5"})
    except DuplicateStreamError as exc:
        return _error(request, 409, str(exc))
    return web.json_response({"sdp": answer, "type": "answer", "manifest_id": session.manifest_id,
                              "session_id": session.id}, headers=cors_headers(request))


async def post_whip(request: web.Request) -> web.Response:
    require_bearer(request, whip_token(request.app["settings"]))
    offer = await read_sdp(request)
    stream_key = request.match_info.get("stream_key")
    if stream_key is not None and not MANIFEST_ID_RE.match(stream_key):
        return _error(request, 400, "the stream key must be 1-128 characters of letters, digits, '.', '_', ':' or '-'")
    manifest_id = stream_key or new_manifest_id()
    params: dict[str, Any] = {}
    if "params" in request.query:
        try:
            params = json.loads(request.query["params"])
        except json.JSONDecodeError as exc:
            return _error(request, 400, f"the params query parameter is not JSON: {exc}")
        if not isinstance(params, dict):
            return _error(request, 400, "the params query parameter must be a JSON object")
    try:
        session, answer = await service_of(request).open_publisher("whip", offer, manifest_id, params)
    except OfferError as exc:
        return _error(request, exc.status, str(exc))
    except (AdmissionError, SessionLimitError) as exc:
        request.app["metrics"].streams_rejected.labels("capacity").inc()
        return _error(request, 503, str(exc), code="at_capacity", headers={"Retry-After": "5"})
    except DuplicateStreamError as exc:
        return _error(request, 409, str(exc))
    return sdp_created(request, session, answer, f"/whip/sessions/{session.id}")


async def post_whep(request: web.Request) -> web.Response:
    require_bearer(request, whep_token(request.app["settings"]))
    offer = await read_sdp(request)
    manifest_id = request.match_info["manifest_id"]
    try:
        session, answer = await service_of(request).open_viewer(manifest_id, offer)
    except LookupError as exc:
        return _error(request, 404, str(exc))
    except OfferError as exc:
        return _error(request, exc.status, str(exc))
    except SessionLimitError as exc:
        return _error(request, 503, str(exc), code="at_capacity", headers={"Retry-After": "5"})
    return sdp_created(request, session, answer, f"/whep/sessions/{session.id}")


def _session_or_404(request: web.Request, kind: str | tuple[str, ...]) -> PeerSession:
    session = service_of(request).sessions.get(request.match_info["session_id"])
    kinds = (kind,) if isinstance(kind, str) else kind
    if session is None or session.kind not in kinds:
        raise web.HTTPNotFound(reason="no such session")
    return session


async def patch_session(request: web.Request, kind: str, token: str | None) -> web.Response:
    """Trickle ICE (RFC 9725 §4.3): add the client's candidates; ICE restarts are refused (422)."""
    require_bearer(request, token)
    session = _session_or_404(request, kind)
    if request.content_type != SDPFRAG:
        return _error(request, 415, f"Content-Type must be {SDPFRAG}")
    if_match = request.headers.get("If-Match")
    if if_match is None:
        return _error(request, 428, "If-Match with the session's ETag is required", code="precondition_required")
    if if_match.strip() == "*":
        return _error(request, 422, "ICE restarts are not supported; start a new session")
    if if_match.strip() != session.etag:
        return _error(request, 412, "If-Match does not match the session's ETag", code="precondition_failed")
    try:
        frag = parse_sdpfrag(await request.text(), session.first_mid)
    except OfferError as exc:
        return _error(request, 400, str(exc))
    if (frag.ice_ufrag and frag.ice_ufrag != session.remote_ufrag):
        return _error(request, 422, "ICE restarts are not supported; start a new session")
    for candidate in frag.candidates:
        try:
            await session.pc.addIceCandidate(candidate)
        except Exception as exc:
            return _error(request, 400, f"candidate rejected: {exc}")
    # a=end-of-candidates is not applied: peer-reflexive discovery must stay possible (OBS sends none)
    return web.Response(status=204, headers=cors_headers(request))


async def delete_session(request: web.Request, kind: str | tuple[str, ...], token: str | None) -> web.Response:
    require_bearer(request, token)
    session = _session_or_404(request, kind)
    await service_of(request).close(session, "DELETE by the client")
    return web.Response(status=200, headers=cors_headers(request))


async def patch_whip(request: web.Request) -> web.Response:
    return await patch_session(request, "whip", whip_token(request.app["settings"]))


async def delete_whip(request: web.Request) -> web.Response:
    return await delete_session(request, "whip", whip_token(request.app["settings"]))


async def patch_whep(request: web.Request) -> web.Response:
    return await patch_session(request, "whep", whep_token(request.app["settings"]))


async def delete_whep(request: web.Request) -> web.Response:
    return await delete_session(request, "whep", whep_token(request.app["settings"]))


async def ice_servers(request: web.Request) -> web.Response:
    """The ICE servers browsers should use (the pages read them before creating a peer)."""
    require_bearer(request, request.app["settings"].api_token)
    servers = [{k: v for k, v in (("urls", srv.urls), ("username", srv.username), ("credential", srv.credential)) if v}
               for srv in service_of(request).ice.servers]
    return web.json_response({"iceServers": servers}, headers=cors_headers(request))


async def list_sessions(request: web.Request) -> web.Response:
    require_bearer(request, request.app["settings"].api_token)
    sessions = [s.describe() for s in service_of(request).sessions.values()]
    return web.json_response({"success": True, "sessions": sessions, "count": len(sessions)})


async def delete_any_session(request: web.Request) -> web.Response:
    """Close any peer (the demo page's Stop uses it; closing the peer connection works too)."""
    return await delete_session(request, ("browser", "whip", "whep"), request.app["settings"].api_token)


def static_dir(settings) -> Path:
    """The demo pages: `STATIC_DIR` when set (an installed package has no checkout beside it),
    else the repository's `static/`."""
    return Path(settings.static_dir) if settings.static_dir else STATIC_DIR


def _page(name: str):
    async def handler(request: web.Request) -> web.FileResponse:
        return web.FileResponse(static_dir(request.app["settings"]) / name, headers={"Cache-Control": "no-cache"})

    return handler


def add_webrtc_routes(app: web.Application) -> WebRTCService:
    """Mount `/offer`, WHIP, WHEP, the session API and the demo pages; wire the service into the
    app's lifecycle (ICE settings, stream start hook, shutdown, metrics)."""
    service = WebRTCService(app)
    app["webrtc"] = service
    app["stream_start_hooks"].append(service.on_stream_build)
    app["metrics"].add_source(service.metrics)
    app.on_startup.append(service.on_startup)
    app.on_shutdown.append(service.on_shutdown)
    app.on_cleanup.append(service.on_cleanup)
    r = app.router
    r.add_post("/offer", post_offer)
    r.add_route("OPTIONS", "/offer", preflight("POST, OPTIONS"))
    for path in ("/whip", "/whip/{stream_key}"):
        r.add_post(path, post_whip)
        r.add_route("OPTIONS", path, preflight("POST, OPTIONS", accept_post=True))
    r.add_patch("/whip/sessions/{session_id}", patch_whip)
    r.add_delete("/whip/sessions/{session_id}", delete_whip)
    r.add_route("OPTIONS", "/whip/sessions/{session_id}", preflight("PATCH, DELETE, OPTIONS", accept_patch=True))
    r.add_post("/whep/{manifest_id}", post_whep)
    r.add_route("OPTIONS", "/whep/{manifest_id}", preflight("POST, OPTIONS", accept_post=True))
    r.add_patch("/whep/sessions/{session_id}", patch_whep)
    r.add_delete("/whep/sessions/{session_id}", delete_whep)
    r.add_route("OPTIONS", "/whep/sessions/{session_id}", preflight("PATCH, DELETE, OPTIONS", accept_patch=True))
    r.add_get("/webrtc/ice-servers", ice_servers)
    r.add_get("/webrtc/sessions", list_sessions)
    r.add_delete("/webrtc/sessions/{session_id}", delete_any_session)
    r.add_get("/", _page("index.html"))
    r.add_get("/whep.html", _page("whep.html"))
    r.add_get("/view/{manifest_id}", _page("whep.html"))
    r.add_static("/static/", static_dir(app["settings"]))
    return service
