"""The stream lifecycle API: start, list, status, stop."""

from __future__ import annotations

from aiohttp import web

from httpapi.redact import redact_payload
from httpapi.routes import Role, RouteTable, validated_body
from media.manager import StreamManager
from server.errors import ApiError
from server.keys import STREAM_SERVICE_KEY
from server.rtmp_service import rtmp_answer
from server.start_request import StartRequest

routes = RouteTable()


def manager_of(request: web.Request) -> StreamManager:
    return request.app[STREAM_SERVICE_KEY].manager


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
    # the service's domain errors (capacity, duplicate, outbound, params) are answered by the error table
    started = await request.app[STREAM_SERVICE_KEY].start_request(
        validated_body(request, StartRequest), request.headers.get("X-Stream-Id")
    )
    # an RTMP-sourced stream's answer also says where to publish, and (once) its stream key
    return web.json_response({**started.answer(), **rtmp_answer(request, started)})


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


def _stream_or_404(request: web.Request):
    manifest_id = request.match_info["manifest_id"]
    stream = manager_of(request).get(manifest_id)
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
    # StreamNotFound → 404 (the error table)
    stream = await request.app[STREAM_SERVICE_KEY].stop(request.match_info["manifest_id"], "stopped by DELETE")
    return web.json_response(
        {
            "success": True,
            "manifest_id": stream.manifest_id,
            "status": stream.state.value,
            "end_reason": stream.end_reason,
        }
    )
