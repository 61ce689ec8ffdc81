"""WebRTC routes: `POST /offer` (browser), WHIP ingest (RFC 9725, OBS 30+, FFmpeg 8), WHEP
playback, the session API and the demo pages. The peers themselves: server/webrtc_service.py.

Roles: `/offer` and the session API are `api`; WHIP is `ingest`; WHEP is `viewer` (WHEP_TOKEN,
or the stream's own viewer token); the pages and their static files are `public`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from httpapi.json_body import JSONBodyError, loads_limited
from httpapi.routes import Role, RouteTable, match_stream_id
from media.webrtc_sdp import OfferError, parse_sdpfrag
from server.errors import ApiError, validated_body
from server.keys import METRICS_KEY, STREAM_SERVICE_KEY
from server.settings import SETTINGS_KEY
from server.start_request import MANIFEST_ID_RE, new_manifest_id
from server.webrtc_service import WEBRTC_KEY, PeerSession, WebRTCService

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
MANIFEST_ID_MESSAGE = "must be 1-128 characters of letters, digits, '.', '_', ':' or '-'"

routes = RouteTable()


class OfferBody(BaseModel):
    """The browser demo's offer."""

    model_config = ConfigDict(extra="ignore")

    sdp: str = Field(min_length=1, max_length=64 << 10)
    type: str = Field(pattern="^offer$")
    params: dict[str, Any] = Field(default_factory=dict)
    manifest_id: str | None = None


class OfferAnswer(BaseModel):
    sdp: str
    type: str = "answer"
    manifest_id: str
    session_id: str
    viewer_token: str


def service_of(request: web.Request) -> WebRTCService:
    return request.app[WEBRTC_KEY]


def _session_stream(request: web.Request) -> str | None:
    """`stream_of` for the WHEP session routes: the viewer token of the session's stream opens them."""
    session = service_of(request).sessions.get(request.match_info.get("session_id", ""))
    return session.manifest_id if session is not None else None


def _query_stream(request: web.Request) -> str | None:
    return request.query.get("manifest_id")


def sdp_created(request: web.Request, session: PeerSession, answer: str, location: str) -> web.Response:
    """201 as WHIP/WHEP clients (OBS) require: exact `application/sdp`, Location, ETag."""
    response = web.Response(status=201, body=answer.encode(), content_type=SDP)
    response.headers["Location"] = location
    response.headers["ETag"] = session.etag
    response.headers["Accept-Patch"] = SDPFRAG
    response.headers["X-Manifest-Id"] = session.manifest_id
    response.headers["X-Session-Id"] = session.id
    if session.kind == "whip" and session.stream is not None:
        response.headers["X-Viewer-Token"] = request.app[STREAM_SERVICE_KEY].viewer_token(session.stream)
    for link in service_of(request).ice.link_headers():
        response.headers.add("Link", link)
    return response


async def _sdp_text(request: web.Request) -> str:
    try:
        return (await request.read()).decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "the SDP body is not UTF-8") from None


@routes.post(
    "/offer",
    role=Role.API,
    body=OfferBody,
    response=OfferAnswer,
    tag="webrtc",
    errors=(400, 401, 409, 503),
    summary="Browser demo: an SDP offer in, the answer out; the stream's video comes back processed",
)
async def post_offer(request: web.Request) -> web.Response:
    body = validated_body(request, OfferBody)
    manifest_id = body.manifest_id or new_manifest_id()
    if not MANIFEST_ID_RE.fullmatch(manifest_id):
        raise ApiError(400, f"manifest id {MANIFEST_ID_MESSAGE}")
    # refusals (bad offer or params, a running id, no capacity) are answered by the error table
    session, answer = await service_of(request).open_publisher("browser", body.sdp, manifest_id, body.params)
    assert session.stream is not None  # a publisher's session holds its stream once open
    return web.json_response(
        {
            "sdp": answer,
            "type": "answer",
            "manifest_id": session.manifest_id,
            "session_id": session.id,
            "viewer_token": request.app[STREAM_SERVICE_KEY].viewer_token(session.stream),
        }
    )


WHIP: dict[str, Any] = dict(
    role=Role.INGEST,
    content_types=(SDP,),
    max_body="max_sdp_bytes",
    tag="webrtc",
    status=201,
    response_type=SDP,
    errors=(400, 401, 409, 415, 422, 503),
    preflight_headers={"Accept-Post": SDP},
)


async def post_whip(request: web.Request) -> web.Response:
    offer = await _sdp_text(request)
    stream_key = request.match_info.get("stream_key")
    if stream_key is not None and not MANIFEST_ID_RE.fullmatch(stream_key):
        raise ApiError(400, f"the stream key {MANIFEST_ID_MESSAGE}")
    manifest_id = stream_key or new_manifest_id()
    params: dict[str, Any] = {}
    if "params" in request.query:
        try:
            params = loads_limited(request.query["params"], request.app[SETTINGS_KEY].max_json_depth)
        except JSONBodyError as exc:
            raise ApiError(400, f"the params query parameter: {exc}") from None
        if not isinstance(params, dict):
            raise ApiError(400, "the params query parameter must be a JSON object")
    session, answer = await service_of(request).open_publisher("whip", offer, manifest_id, params)
    return sdp_created(request, session, answer, f"/whip/sessions/{session.id}")


routes.add("POST", "/whip", post_whip, summary="WHIP publish (OBS, FFmpeg): SDP offer → 201 SDP answer", **WHIP)
routes.add(
    "POST",
    "/whip/{stream_key}",
    post_whip,
    summary="WHIP publish with a stream key (the key becomes the manifest id)",
    **WHIP,
)


@routes.post(
    "/whep/{manifest_id}",
    role=Role.VIEWER,
    stream_of=match_stream_id(),
    content_types=(SDP,),
    max_body="max_sdp_bytes",
    tag="webrtc",
    status=201,
    response_type=SDP,
    errors=(400, 401, 404, 415, 503),
    preflight_headers={"Accept-Post": SDP},
    summary="WHEP playback of a stream's processed output: SDP offer → 201 SDP answer",
)
async def post_whep(request: web.Request) -> web.Response:
    offer = await _sdp_text(request)
    manifest_id = request.match_info["manifest_id"]
    try:
        session, answer = await service_of(request).open_viewer(manifest_id, offer)
    except LookupError as exc:
        raise ApiError(404, str(exc)) from None
    return sdp_created(request, session, answer, f"/whep/sessions/{session.id}")


def _session_or_404(request: web.Request, kinds: tuple[str, ...]) -> PeerSession:
    session = service_of(request).sessions.get(request.match_info["session_id"])
    if session is None or session.kind not in kinds:
        raise ApiError(404, "no such session")
    return session


def _patch_handler(kind: str):
    async def patch_session(request: web.Request) -> web.Response:
        """Trickle ICE (RFC 9725 §4.3): add the client's candidates; ICE restarts are refused (422)."""
        session = _session_or_404(request, (kind,))
        if_match = request.headers.get("If-Match")
        if if_match is None:
            raise ApiError(428, "If-Match with the session's ETag is required", code="precondition_required")
        if if_match.strip() == "*":
            raise ApiError(422, "ICE restarts are not supported; start a new session")
        if if_match.strip() != session.etag:
            raise ApiError(412, "If-Match does not match the session's ETag", code="precondition_failed")
        try:
            frag = parse_sdpfrag(await _sdp_text(request), session.first_mid)
        except OfferError as exc:  # a bad fragment is a 400 whatever its kind
            raise ApiError(400, str(exc)) from None
        if frag.ice_ufrag and frag.ice_ufrag != session.remote_ufrag:
            raise ApiError(422, "ICE restarts are not supported; start a new session")
        for candidate in frag.candidates:
            try:
                await session.pc.addIceCandidate(candidate)
            except Exception as exc:
                raise ApiError(400, f"candidate rejected: {exc}") from None
        # a=end-of-candidates is not applied: peer-reflexive discovery must stay possible (OBS sends none)
        return web.Response(status=204)

    return patch_session


def _delete_handler(kinds: tuple[str, ...]):
    async def delete_session(request: web.Request) -> web.Response:
        session = _session_or_404(request, kinds)
        await service_of(request).close(session, "DELETE by the client")
        return web.Response(status=200)

    return delete_session


SESSION_PATCH: dict[str, Any] = dict(
    content_types=(SDPFRAG,),
    max_body="max_sdp_bytes",
    tag="webrtc",
    status=204,
    errors=(400, 401, 404, 412, 415, 422, 428),
    preflight_headers={"Accept-Patch": SDPFRAG},
)
routes.add(
    "PATCH",
    "/whip/sessions/{session_id}",
    _patch_handler("whip"),
    role=Role.INGEST,
    summary="Trickle ICE candidates of a WHIP session",
    **SESSION_PATCH,
)
routes.add(
    "DELETE",
    "/whip/sessions/{session_id}",
    _delete_handler(("whip",)),
    role=Role.INGEST,
    tag="webrtc",
    errors=(401, 404),
    summary="End a WHIP session (stops its stream)",
)
routes.add(
    "PATCH",
    "/whep/sessions/{session_id}",
    _patch_handler("whep"),
    role=Role.VIEWER,
    stream_of=_session_stream,
    summary="Trickle ICE candidates of a WHEP session",
    **SESSION_PATCH,
)
routes.add(
    "DELETE",
    "/whep/sessions/{session_id}",
    _delete_handler(("whep",)),
    role=Role.VIEWER,
    stream_of=_session_stream,
    tag="webrtc",
    errors=(401, 404),
    summary="End a WHEP session",
)


@routes.get(
    "/webrtc/ice-servers",
    role=(Role.API, Role.INGEST, Role.VIEWER),
    stream_of=_query_stream,
    tag="webrtc",
    summary="ICE servers for browsers (viewer pages add ?manifest_id= so the stream's token opens it)",
)
async def ice_servers(request: web.Request) -> web.Response:
    servers = [
        {k: v for k, v in (("urls", srv.urls), ("username", srv.username), ("credential", srv.credential)) if v}
        for srv in service_of(request).ice.servers
    ]
    return web.json_response({"iceServers": servers})


@routes.get("/webrtc/sessions", role=Role.API, tag="webrtc", summary="Open peer connections")
async def list_sessions(request: web.Request) -> web.Response:
    sessions = [s.describe() for s in service_of(request).sessions.values()]
    return web.json_response({"success": True, "sessions": sessions, "count": len(sessions)})


routes.add(
    "DELETE",
    "/webrtc/sessions/{session_id}",
    _delete_handler(("browser", "whip", "whep")),
    role=Role.API,
    tag="webrtc",
    errors=(401, 404),
    summary="Close any peer (the demo page's Stop; closing the peer connection works too)",
)


def static_dir(settings) -> Path:
    """The demo pages: `STATIC_DIR` when set (an installed package has no checkout beside it),
    else the repository's `static/`."""
    return Path(settings.static_dir) if settings.static_dir else STATIC_DIR


def _page(name: str):
    async def handler(request: web.Request) -> web.FileResponse:
        return web.FileResponse(static_dir(request.app[SETTINGS_KEY]) / name, headers={"Cache-Control": "no-cache"})

    return handler


async def static_file(request: web.Request) -> web.FileResponse:
    """A demo asset by name: only plain files directly in the static folder (no sub-paths, no `..`)."""
    folder = static_dir(request.app[SETTINGS_KEY]).resolve()
    name = request.match_info["filename"]
    path = (folder / name).resolve()
    if "/" in name or name.startswith(".") or path.parent != folder or not path.is_file():
        raise ApiError(404, f"no static file '{name}'")
    return web.FileResponse(path, headers={"Cache-Control": "no-cache"})


PAGE: dict[str, Any] = dict(role=Role.PUBLIC, tag="demo", response_type="text/html")
routes.add("GET", "/", _page("index.html"), summary="Demo page: camera → captions, tags, translation", **PAGE)
routes.add("GET", "/whep.html", _page("whep.html"), summary="Viewer page (WHEP)", **PAGE)
routes.add("GET", "/view/{manifest_id}", _page("whep.html"), summary="Viewer page of one stream", **PAGE)
routes.add(
    "GET",
    "/static/{filename}",
    static_file,
    role=Role.PUBLIC,
    tag="demo",
    response_type="*/*",
    summary="Demo page assets (scripts, styles)",
)


def add_webrtc_routes(app: web.Application) -> WebRTCService:
    """Mount `/offer`, WHIP, WHEP, the session API and the demo pages; wire the service into the
    app's lifecycle (ICE settings, stream start hook, shutdown, metrics)."""
    service = WebRTCService(app)
    app[WEBRTC_KEY] = service
    app[STREAM_SERVICE_KEY].add_start_hook(service.on_stream_build)
    app[METRICS_KEY].add_source(service.metrics)
    app.on_startup.append(service.on_startup)
    app.on_shutdown.append(service.on_shutdown)
    app.on_cleanup.append(service.on_cleanup)
    routes.mount(app)
    return service
