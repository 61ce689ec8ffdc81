"""The stream lifecycle API: start, list, status, stop."""

from __future__ import annotations

import logging

from aiohttp import web
from pydantic import ValidationError

from media.http_routes import Role, RouteTable
from media.manager import AdmissionError, DuplicateStreamError, StreamManager
from media.outbound import OutboundDenied, check_spec_urls, outbound_policy
from media.redact import redact_payload, redact_text
from server.access import VIEWER_TOKENS_KEY
from server.errors import ApiError, read_json, validation_message
from server.pipeline import StreamFactory
from server.start_request import StartRequest, StreamSpec, parse_start

log = logging.getLogger(__name__)

routes = RouteTable()


def manager_of(request: web.Request) -> StreamManager:
    return request.app["streams"]


async def start_stream(app: web.Application, spec: StreamSpec, **build_kwargs):
    """Admit, build and start a stream; raises AdmissionError / DuplicateStreamError."""
    manager: StreamManager = app["streams"]
    factory: StreamFactory = app["stream_factory"]
    await check_spec_urls(outbound_policy(app), spec)  # OutboundDenied (a ValueError) before anything is held
    manager.reserve(spec.manifest_id)
    try:
        stream = factory.build(spec, **build_kwargs)  # ValueError: params a stage cannot accept
        for hook in app["stream_start_hooks"]:
            hook(stream, spec)
    except BaseException:
        manager.release(spec.manifest_id)
        raise
    await manager.start(stream)
    app["metrics"].streams_started.inc()
    return stream


def viewer_token(app: web.Application, stream) -> str:
    """The stream's own token for its WHEP, SSE and WebVTT routes (and nothing else)."""
    return app[VIEWER_TOKENS_KEY].issue(stream)


def start_response(app: web.Application, stream, created: bool = True) -> dict:
    """The start answer; only the start that created the stream carries its viewer token."""
    body = {
        "success": True,
        "status": "success",
        "message": "Stream started successfully",
        "manifest_id": stream.manifest_id,
        "request_id": stream.manifest_id,
        "current_state": stream.state.value,
        "stream": redact_payload(stream.summary()),  # caller URLs without credentials or tokens
    }
    if created:
        body["viewer_token"] = viewer_token(app, stream)
    return body


async def start_from_body(app: web.Application, body: dict, stream_id_header: str | None) -> web.Response:
    """Shared by `POST /stream/start` (both shapes) and ai-runner's `/live-video-to-video`."""
    metrics = app["metrics"]
    try:
        spec = parse_start(body, stream_id_header)
    except ValidationError as exc:
        metrics.streams_rejected.labels("bad_request").inc()
        raise ApiError(400, validation_message(exc)) from None
    except ValueError as exc:
        metrics.streams_rejected.labels("bad_request").inc()
        raise ApiError(400, str(exc)) from None
    running = app["streams"].get_active(spec.manifest_id)
    if running is not None and running.metadata.get("publish_url") == spec.publish_url:
        try:  # the gateway re-sends /stream/start for a running stream: its params are a merge patch
            running.update_params(spec.params)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        # answered as ai-runner does (200, the same stream), but whoever can repeat a start (its id
        # and publish_url are no secret) does not get the viewer token again
        return web.json_response(start_response(app, running, created=False))
    try:
        stream = await start_stream(app, spec)
    except AdmissionError as exc:
        metrics.streams_rejected.labels("capacity").inc()
        raise ApiError(503, str(exc), code="at_capacity", headers={"Retry-After": "5"}) from None
    except DuplicateStreamError as exc:
        raise ApiError(409, str(exc)) from None
    except OutboundDenied as exc:
        metrics.streams_rejected.labels("outbound_denied").inc()
        log.warning("[%s] stream start refused: %s", spec.manifest_id, exc)
        raise ApiError(400, str(exc)) from None
    except ValueError as exc:
        metrics.streams_rejected.labels("bad_request").inc()
        raise ApiError(400, str(exc)) from None
    except Exception as exc:
        log.exception("[%s] stream failed to start", spec.manifest_id)
        raise ApiError(500, f"stream failed to start: {redact_text(str(exc))}") from None
    return web.json_response(start_response(app, stream))


@routes.post(
    "/stream/start",
    role=(Role.API, Role.LIVEPEER),
    body=StartRequest,
    tag="streams",
    summary="Start a stream: native {subscribe_url, publish_url} or the Livepeer gateway shape "
    "(X-Stream-Id, gateway_request_id, control/events/data URLs)",
    errors=(400, 401, 409, 415, 503),
)
async def post_stream_start(request: web.Request) -> web.Response:
    return await start_from_body(request.app, await read_json(request), request.headers.get("X-Stream-Id"))


@routes.get("/streams", role=Role.API, tag="streams", summary="Running streams")
async def list_streams(request: web.Request) -> web.Response:
    streams = []
    for stream in manager_of(request).active():
        item = stream.summary()
        status = stream.status()
        item.update(
            {
                k: status[k]
                for k in ("state", "uptime_s", "frames_in", "frames_out", "frames_dropped", "input_fps", "output_fps")
            }
        )
        streams.append(redact_payload(item))
    return web.json_response({"success": True, "streams": streams, "count": len(streams)})


def _stream_or_404(request: web.Request, active_only: bool = False):
    manifest_id = request.match_info["manifest_id"]
    manager = manager_of(request)
    stream = manager.get_active(manifest_id) if active_only else manager.get(manifest_id)
    if stream is None:
        raise ApiError(404, f"no stream with manifest id '{manifest_id}'")
    return stream


@routes.get(
    "/stream/{manifest_id}/status",
    role=Role.API,
    tag="streams",
    errors=(401, 404),
    summary="One stream's status (running or recently stopped)",
)
async def stream_status(request: web.Request) -> web.Response:
    stream = _stream_or_404(request)
    return web.json_response({"success": True, **redact_payload(stream.status())})


@routes.delete("/stream/{manifest_id}", role=Role.API, tag="streams", errors=(401, 404), summary="Stop a stream")
async def delete_stream(request: web.Request) -> web.Response:
    stream = _stream_or_404(request, active_only=True)
    await stream.stop("stopped by DELETE")
    return web.json_response(
        {
            "success": True,
            "manifest_id": stream.manifest_id,
            "status": stream.state.value,
            "end_reason": stream.end_reason,
        }
    )
