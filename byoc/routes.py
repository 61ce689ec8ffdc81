"""Livepeer routes: BYOC streaming (`/stream/params|stop|status`; `/stream/start` is the server's
own route), the ai-runner alias `POST /live-video-to-video`, BYOC batch capabilities
(`/process/request/{name}` and the bare `/{name}` the orchestrator forwards to), `/hardware/*`.

Handlers reach their collaborators through `request.app[LIVEPEER_KEY]` (a `LivepeerService`, see
byoc/mount.py). Every route is declared with its role (`livepeer`; the stream routes also `api`);
the server's access policy checks the token.

Content types: `/stream/stop` takes any body (the orchestrator sends a client's JSON, a gateway
error string or nothing) and batch capabilities take the caller's own Content-Type (the
orchestrator forwards the raw body); every other route takes `application/json` only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from byoc.capabilities import CapabilityContext, CapabilityError
from byoc.hardware import hardware_info, hardware_stats
from byoc.http import LivepeerHTTPError, parse_json_object, read_body
from byoc.livepeer_header import HEADER_NAME, LivepeerHeaderError, parse_livepeer_header
from byoc.params import normalize_params_body
from byoc.service import LIVEPEER_KEY
from byoc.status import StreamStatusTracker, idle_status
from httpapi.errors import ApiError, validation_message
from httpapi.json_body import JSONBodyError, loads_limited
from httpapi.redact import redact_payload, redact_text
from httpapi.routes import Role, RouteTable, registry_of, validated_body

if TYPE_CHECKING:
    from byoc.service import LivepeerService

log = logging.getLogger(__name__)

routes = RouteTable()
STREAM_ROLES = (Role.LIVEPEER, Role.API)

STREAM_ID_HEADER = "X-Stream-Id"
# ai-runner waits this long for the previous streamer before answering 400
PREVIOUS_STREAM_STOP_TIMEOUT_S = 10.0


def service_of(request: web.Request) -> LivepeerService:
    return request.app[LIVEPEER_KEY]


# -- locating the stream a BYOC call is about ----------------------------------------------------
def requested_stream_id(request: web.Request, body: dict[str, Any] | None) -> str | None:
    """`X-Stream-Id`, then the body's `manifest_id` / `stream_id` / `gateway_request_id`, then the
    query string's `stream_id` / `manifest_id`."""
    header = request.headers.get(STREAM_ID_HEADER, "").strip()
    if header:
        return header
    for source in (body or {}, request.query):
        for key in ("manifest_id", "stream_id", "gateway_request_id"):
            value = source.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
    return None


def locate_stream(request: web.Request, body: dict[str, Any] | None, action: str):
    """(stream, stream_id) of the addressed stream; the only running stream when none is named.
    A named stream that already stopped comes back too (callers decide); unknown → 404."""
    manager = service_of(request).manager
    stream_id = requested_stream_id(request, body)
    if stream_id is not None:
        stream = manager.get_active(stream_id) or manager.get(stream_id)
        if stream is None:
            raise LivepeerHTTPError(404, f"no stream with id '{stream_id}'")
        return stream, stream_id
    active = manager.active()
    if not active:
        raise LivepeerHTTPError(400, f"No active stream to {action}")
    if len(active) > 1:
        raise LivepeerHTTPError(400, f"{len(active)} streams are running; name one with the {STREAM_ID_HEADER} header")
    return active[0], active[0].manifest_id


# -- BYOC streaming -------------------------------------------------------------------------------
@routes.post(
    "/stream/params",
    role=STREAM_ROLES,
    tag="livepeer",
    errors=(400, 401, 404, 415),
    summary="Update a running stream's params (merge patch); X-Stream-Id names the stream",
)
async def stream_params(request: web.Request) -> web.Response:
    """BYOC update: the body is the client's JSON verbatim, a JSON merge patch (RFC 7396) of the
    params (or its `params` object is): absent keys keep their value, null removes. A mid-stream
    width/height change is refused with 400."""
    body = parse_json_object(await read_body(request))
    stream, stream_id = locate_stream(request, body, "update")
    if not stream.active:
        raise LivepeerHTTPError(404, f"stream '{stream_id}' is not running ({stream.end_reason})")
    try:
        params = normalize_params_body(body)
        stream.update_params(params)
    except ValueError as exc:
        raise LivepeerHTTPError(400, str(exc)) from None
    return web.json_response(
        {
            "success": True,
            "status": "success",
            "message": "Parameters updated successfully",
            "manifest_id": stream.manifest_id,
            "params": stream.params,
        }
    )


def _stop_reason(raw: bytes) -> str:
    """The stop body may be a client's JSON, a gateway error string, or empty; keep a short trace."""
    text = raw.decode("utf-8", "replace").strip()
    if not text:
        return "stopped by /stream/stop"
    try:
        body = loads_limited(text)
    except JSONBodyError:
        return f"stopped by /stream/stop: {text[:200]}"
    reason = body.get("reason") or body.get("error") if isinstance(body, dict) else None
    return f"stopped by /stream/stop: {str(reason)[:200]}" if reason else "stopped by /stream/stop"


@routes.post(
    "/stream/stop",
    role=STREAM_ROLES,
    content_types=None,
    tag="livepeer",
    errors=(400, 401, 404),
    summary="Stop a stream (any body: JSON, a gateway error string, or nothing)",
)
async def stream_stop(request: web.Request) -> web.Response:
    raw = await read_body(request)
    try:  # any body is accepted: JSON, a plain error string, or nothing
        body = parse_json_object(raw, allow_empty=True)
    except LivepeerHTTPError:
        body = None
    stream, _ = locate_stream(request, body, "stop")
    already = not stream.active
    if not already:
        await stream.stop(_stop_reason(raw))
    return web.json_response(
        {
            "success": True,
            "status": "success",
            "message": "Stream already stopped" if already else "Stream stopped successfully",
            "manifest_id": stream.manifest_id,
            "request_id": stream.manifest_id,
            "state": stream.state.value,
            "end_reason": stream.end_reason,
        }
    )


@routes.get(
    "/stream/status",
    role=STREAM_ROLES,
    tag="livepeer",
    errors=(400, 401, 404),
    summary="ai-runner status of the addressed (or only) stream",
)
async def stream_status(request: web.Request) -> web.Response:
    """pytrickle's status route: ai-runner's status for the addressed (or only) stream."""
    service = service_of(request)
    pipeline = service.settings.pipeline_name
    if requested_stream_id(request, None) is None and not service.manager.active():
        return web.json_response({**idle_status(pipeline), "client_active": False, "manifest_id": None})
    stream, _ = locate_stream(request, None, "report")
    channels = service.channels.get(stream.manifest_id)
    tracker = channels.tracker if channels is not None else StreamStatusTracker(stream, pipeline)
    return web.json_response(
        redact_payload(
            {  # caller URLs without credentials or tokens
                **tracker.snapshot(clear_transient=False),
                "client_active": stream.active,
                "manifest_id": stream.manifest_id,
                "stream": stream.status(),
                "channels": channels.stats() if channels is not None else None,
            }
        ),
        dumps=lambda value: json.dumps(value, default=str),
    )


# -- ai-runner live-video-to-video ----------------------------------------------------------------
class LiveVideoToVideoRequest(BaseModel):
    """ai-runner's body (runner/routes/live_video_to_video.py); unknown keys are ignored."""

    model_config = ConfigDict(extra="ignore")

    subscribe_url: str = Field(..., min_length=1)
    publish_url: str = Field(..., min_length=1)
    control_url: str = ""
    events_url: str = ""
    model_id: str = ""
    params: dict[str, Any] = Field(default_factory=dict)
    gateway_request_id: str = ""
    manifest_id: str = ""
    stream_id: str = ""

    @field_validator("params", mode="before")
    @classmethod
    def _params(cls, value: Any) -> Any:
        if value is None:
            return {}
        if isinstance(value, str):
            try:
                return loads_limited(value) if value.strip() else {}
            except JSONBodyError as exc:
                raise ValueError(f"params is a string but not acceptable JSON: {exc}") from None
        return value


async def live_video_to_video(request: web.Request) -> web.StreamResponse:
    service = service_of(request)
    req = validated_body(request, LiveVideoToVideoRequest)  # validated once, by the access middleware
    configured = service.settings.model_id
    if req.model_id and req.model_id != configured:
        raise LivepeerHTTPError(400, f"pipeline configured with {configured} but called with {req.model_id}.")
    # the orchestrator names the trickle channels after the manifest id
    stream_id = req.manifest_id or req.gateway_request_id or req.stream_id or "sl-" + uuid.uuid4().hex[:16]

    previous = service.manager.get_active(stream_id)
    if previous is not None:  # ai-runner: a new start replaces the running one
        log.info("[%s] live-video-to-video restart: stopping the running stream first", stream_id)
        try:
            await asyncio.wait_for(
                asyncio.shield(previous.stop("replaced by a new live-video-to-video start")),
                PREVIOUS_STREAM_STOP_TIMEOUT_S,
            )
        except TimeoutError:
            raise LivepeerHTTPError(400, "Timeout stopping previous streamer") from None

    forwarded: dict[str, Any] = {
        key: value
        for key, value in {
            "subscribe_url": req.subscribe_url,
            "publish_url": req.publish_url,
            "control_url": req.control_url,
            "events_url": req.events_url,
            "gateway_request_id": req.gateway_request_id,
            "manifest_id": req.manifest_id,
            "stream_id": req.stream_id,
            "model_id": req.model_id,
        }.items()
        if value
    }
    forwarded["params"] = req.params
    # the server's stream service, as for `/stream/start`; its refusals are answered by the error table
    started = await service.streams.start_body(forwarded, stream_id)
    # ai-runner answers {"publish_url": "", "subscribe_url": "", "control_url": ""} (unused)
    return web.json_response({"publish_url": "", "subscribe_url": "", "control_url": "", **started.answer()})


for _path in ("/live-video-to-video", "/live-video-to-video/"):
    routes.add(
        "POST",
        _path,
        live_video_to_video,
        role=Role.LIVEPEER,
        body=LiveVideoToVideoRequest,
        tag="livepeer",
        errors=(400, 401, 415, 503),
        hidden=_path.endswith("/"),
        summary="ai-runner live-video-to-video: start a stream from trickle URLs",
    )


# -- BYOC batch capabilities ----------------------------------------------------------------------
async def run_capability(request: web.Request, name: str) -> web.StreamResponse:
    """Serve batch capability `name`, counting the outcome by status for /metrics."""
    service = service_of(request)
    known = name in service.capabilities
    try:
        response = await _run_capability(service, request, name)
    except ApiError as exc:  # LivepeerHTTPError, or an edge error raised by a capability's code
        service.capability_counter.add(name, exc.status, known)
        raise
    service.capability_counter.add(name, response.status, known)
    return response


async def _run_capability(service: LivepeerService, request: web.Request, name: str) -> web.StreamResponse:
    capability = service.capabilities.get(name)
    if capability is None:
        known = ", ".join(service.capabilities.names()) or "none"
        raise LivepeerHTTPError(404, f"unknown capability '{name}'; known: {known}")
    try:
        header = parse_livepeer_header(request.headers.get(HEADER_NAME))
    except LivepeerHeaderError as exc:
        raise LivepeerHTTPError(400, str(exc)) from None
    if header is not None and header.capability not in (None, name, service.settings.capability_name):
        raise LivepeerHTTPError(400, f"the {HEADER_NAME} header is for capability '{header.capability}', not '{name}'")
    timeout = header.timeout_seconds if header is not None and header.timeout_seconds else service.batch_timeout
    raw = await read_body(request)
    body = (parse_json_object(raw, allow_empty=True) or {}) if capability.json_body else {}
    ctx = CapabilityContext(name=name, request=request, header=header, timeout=timeout, raw_body=raw)
    try:
        async with asyncio.timeout(timeout):
            result = await capability.handler(body, ctx)
    except TimeoutError:
        log.warning("capability %s timed out after %.1f s", name, timeout)
        raise LivepeerHTTPError(504, f"capability '{name}' timed out after {timeout:g} s") from None
    except ValidationError as exc:
        raise LivepeerHTTPError(400, validation_message(exc)) from None
    except CapabilityError as exc:
        if exc.detail:  # what the caller is not told (e.g. how a URL's host answered), redacted
            log.warning("capability %s: %s: %s", name, exc.message, redact_text(exc.detail))
        raise LivepeerHTTPError(exc.status, exc.message, code=exc.code) from None
    except (ApiError, web.HTTPException):
        raise
    except Exception:
        log.exception("capability %s failed", name)
        raise LivepeerHTTPError(500, f"capability '{name}' failed") from None
    if isinstance(result, web.StreamResponse):
        return result
    return web.json_response(result, dumps=lambda value: json.dumps(value, default=str))


CAPABILITY: dict[str, Any] = dict(
    role=Role.LIVEPEER, content_types=None, tag="livepeer", errors=(400, 401, 404, 413, 504)
)


@routes.post(
    "/process/request/{capability}", summary="Run a BYOC batch capability (raw body of the caller's type)", **CAPABILITY
)
async def process_request(request: web.Request) -> web.StreamResponse:
    return await run_capability(request, request.match_info["capability"])


async def bare_capability(request: web.Request) -> web.StreamResponse:
    """The orchestrator forwards `/process/request/<name>` to `{registered url}/<name>`."""
    name = request.match_info["capability"]
    if name not in service_of(request).capabilities:  # answer as if this route did not exist
        methods = {spec.method for spec in registry_of(request.app).for_path(request.path)} - {"OPTIONS"}
        if methods:
            raise web.HTTPMethodNotAllowed(request.method, methods)
        raise web.HTTPNotFound(reason=f"no route {request.path}")
    return await run_capability(request, name)


# mounted last of all routes (byoc.mount.mount_capability_fallback), so every named route wins
capability_fallback = RouteTable()
capability_fallback.add(
    "POST",
    "/{capability}",
    bare_capability,
    summary="A batch capability at the bare path "
    "the orchestrator forwards to when the registered URL is the server root",
    **CAPABILITY,
)


@routes.get("/process/capabilities", role=Role.LIVEPEER, tag="livepeer", summary="Batch capabilities served here")
async def list_capabilities(request: web.Request) -> web.Response:
    service = service_of(request)
    return web.json_response(
        {
            "capability_name": service.settings.capability_name,
            "capabilities": service.capabilities.describe(),
        }
    )


# -- hardware (ai-runner shape) -------------------------------------------------------------------
async def get_hardware_info(request: web.Request) -> web.Response:
    settings = service_of(request).settings
    body = await asyncio.to_thread(hardware_info, settings.pipeline_name, settings.model_id)
    return web.json_response(body)


async def get_hardware_stats(request: web.Request) -> web.Response:
    settings = service_of(request).settings
    body = await asyncio.to_thread(hardware_stats, settings.pipeline_name, settings.model_id)
    return web.json_response(body)


for _path, _handler, _summary in (
    ("/hardware/info", get_hardware_info, "GPUs and pipeline (ai-runner shape)"),
    ("/hardware/stats", get_hardware_stats, "GPU utilisation (ai-runner shape)"),
):
    for _alias in (_path, _path + "/"):
        # public, as in ai-runner: go-livepeer reads them when it adopts a runner, without a token
        routes.add(
            "GET", _alias, _handler, role=Role.PUBLIC, tag="livepeer", summary=_summary, hidden=_alias.endswith("/")
        )
