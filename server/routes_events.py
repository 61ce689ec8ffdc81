"""A stream's events over Server-Sent Events, and its captions as WebVTT.

- `GET /stream/{id}/events`: every event (captions, tags, descriptions, status, errors);
  `?kinds=tags,caption` narrows it.
- `GET /stream/{id}/captions`: caption events only, `event: partial` / `event: final` / `event: update`
  (a final's translation, same id).
- `GET /stream/{id}/captions.vtt`: the final captions as a WebVTT document (`?lang=es` for a translation).

Each SSE message carries `id: <event id>`; a client reconnecting with `Last-Event-ID` (or `?replay=1`)
first gets the recent events it missed, from the stream's bounded history.
"""

from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import web

from media.events import StreamEvent
from media.http_routes import Role, RouteTable, match_stream_id
from server.access import cors_headers

log = logging.getLogger(__name__)

routes = RouteTable()
# Viewer routes: WHEP_TOKEN (every stream) or the stream's own viewer token; `?token=` too, since
# EventSource and <track src> cannot send headers.
VIEWER = dict(role=Role.VIEWER, query_token=True, stream_of=match_stream_id(), tag="viewer", errors=(401, 404))

KEEPALIVE_SECONDS = 15.0
DISCONNECT_CHECK_SECONDS = 1.0
# open SSE connections per manifest id (SSE_MAX_PER_STREAM); entries go when they reach zero
SSE_OPEN_KEY = web.AppKey("sse_open", dict)


def mount_event_routes(app: web.Application) -> None:
    app[SSE_OPEN_KEY] = {}
    routes.mount(app)


def _stream(request: web.Request):
    manifest_id = request.match_info["manifest_id"]
    stream = request.app["streams"].get(manifest_id)
    if stream is None:
        raise web.HTTPNotFound(reason=f"no stream with manifest id '{manifest_id}'")
    return stream


def event_payload(event: StreamEvent) -> dict:
    body = event.to_dict()
    body["type"] = event.kind
    return body


def sse_message(event: StreamEvent, event_name: str) -> bytes:
    data = json.dumps(event_payload(event), separators=(",", ":"), default=str)
    return f"id: {event.id}\nevent: {event_name}\ndata: {data}\n\n".encode()


async def _serve_sse(request: web.Request, kinds: set[str] | None, name_of) -> web.StreamResponse:
    stream = _stream(request)
    last_id = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    replay = request.query.get("replay") in ("1", "true") or last_id is not None
    open_now = request.app[SSE_OPEN_KEY]
    limit = request.app["settings"].sse_max_per_stream
    if open_now.get(stream.manifest_id, 0) >= limit:
        raise web.HTTPServiceUnavailable(reason=f"stream '{stream.manifest_id}' has its maximum of {limit} "
                                                "event connections", headers={"Retry-After": "5"})
    try:
        subscription = stream.events.subscribe(maxsize=512, kinds=kinds, replay=replay)
    except RuntimeError as exc:  # too many subscribers on this stream
        raise web.HTTPServiceUnavailable(reason=str(exc)) from None
    open_now[stream.manifest_id] = open_now.get(stream.manifest_id, 0) + 1
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
        **cors_headers(request),
    })
    await response.prepare(request)
    skip_until = int(last_id) if last_id and last_id.isdigit() else 0
    try:
        await response.write(b": streamlens events\nretry: 2000\n\n")
        loop = asyncio.get_running_loop()
        last_write = loop.time()
        while True:
            # wake every second so a client that went away frees its place promptly
            event = await subscription.get(timeout=DISCONNECT_CHECK_SECONDS)
            if event is None:
                if subscription.closed:
                    reason = json.dumps({"type": "stream_ended", "reason": stream.end_reason})
                    await response.write(f"event: end\ndata: {reason}\n\n".encode())
                    break
                if request.transport is None or request.transport.is_closing():
                    break
                if loop.time() - last_write >= KEEPALIVE_SECONDS:
                    await response.write(b": keepalive\n\n")
                    last_write = loop.time()
                continue
            if event.id <= skip_until:
                continue  # the client saw it before reconnecting
            await response.write(sse_message(event, name_of(event)))
            last_write = loop.time()
    except (ConnectionResetError, RuntimeError):
        pass  # the client went away
    finally:
        subscription.close()
        left = open_now.get(stream.manifest_id, 1) - 1
        if left > 0:
            open_now[stream.manifest_id] = left
        else:
            open_now.pop(stream.manifest_id, None)  # no entry for a stream nobody watches
    return response


@routes.get("/stream/{manifest_id}/events", summary="Every event of a stream (SSE); ?kinds=caption,tags",
            response_type="text/event-stream", **VIEWER)
async def stream_events(request: web.Request) -> web.StreamResponse:
    kinds_param = request.query.get("kinds")
    kinds = {k.strip() for k in kinds_param.split(",") if k.strip()} if kinds_param else None
    return await _serve_sse(request, kinds, lambda event: event.kind)


@routes.get("/stream/{manifest_id}/captions", summary="Caption events (SSE: partial / final / update)",
            response_type="text/event-stream", **VIEWER)
async def stream_captions(request: web.Request) -> web.StreamResponse:
    return await _serve_sse(request, {"caption"}, lambda event: event.sse_event)


@routes.get("/stream/{manifest_id}/captions.vtt", summary="Final captions as WebVTT (?lang= a translation)",
            response_type="text/vtt", **VIEWER)
async def stream_captions_vtt(request: web.Request) -> web.Response:
    stream = _stream(request)
    text = stream.captions.to_webvtt(request.query.get("lang"))
    return web.Response(text=text, content_type="text/vtt", charset="utf-8")
