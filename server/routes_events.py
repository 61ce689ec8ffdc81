"""A stream's events over Server-Sent Events, and its captions as WebVTT.

- `GET /stream/{id}/events`: every event (captions, tags, descriptions, status, errors);
  `?kinds=tags,caption` narrows it.
- `GET /stream/{id}/captions`: caption events only, `event: partial` / `event: final`.
- `GET /stream/{id}/captions.vtt`: the final captions as a WebVTT document (`?lang=es` for a translation).

Each SSE message carries `id: <event id>`; a client reconnecting with `Last-Event-ID` (or `?replay=1`)
first gets the recent events it missed, from the stream's bounded history.
"""

from __future__ import annotations

import json
import logging

from aiohttp import web

from media.events import StreamEvent
from server.auth import require_bearer

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

KEEPALIVE_SECONDS = 15.0


def _stream(request: web.Request):
    require_bearer(request, request.app["settings"].api_token)
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
    try:
        subscription = stream.events.subscribe(maxsize=512, kinds=kinds, replay=replay)
    except RuntimeError as exc:  # too many subscribers on this stream
        raise web.HTTPServiceUnavailable(reason=str(exc)) from None
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
        "Access-Control-Allow-Origin": request.app["settings"].cors_origins,
    })
    await response.prepare(request)
    skip_until = int(last_id) if last_id and last_id.isdigit() else 0
    try:
        await response.write(b": streamlens events\nretry: 2000\n\n")
        while True:
            event = await subscription.get(timeout=KEEPALIVE_SECONDS)
            if event is None:
                if subscription.closed:
                    reason = json.dumps({"type": "stream_ended", "reason": stream.end_reason})
                    await response.write(f"event: end\ndata: {reason}\n\n".encode())
                    break
                await response.write(b": keepalive\n\n")
                continue
            if event.id <= skip_until:
                continue  # the client saw it before reconnecting
            await response.write(sse_message(event, name_of(event)))
    except (ConnectionResetError, RuntimeError):
        pass  # the client went away
    finally:
        subscription.close()
    return response


@routes.get("/stream/{manifest_id}/events")
async def stream_events(request: web.Request) -> web.StreamResponse:
    kinds_param = request.query.get("kinds")
    kinds = {k.strip() for k in kinds_param.split(",") if k.strip()} if kinds_param else None
    return await _serve_sse(request, kinds, lambda event: event.kind)


@routes.get("/stream/{manifest_id}/captions")
async def stream_captions(request: web.Request) -> web.StreamResponse:
    return await _serve_sse(request, {"caption"}, lambda event: "final" if event.final else "partial")


@routes.get("/stream/{manifest_id}/captions.vtt")
async def stream_captions_vtt(request: web.Request) -> web.Response:
    stream = _stream(request)
    text = stream.captions.to_webvtt(request.query.get("lang"))
    return web.Response(text=text, content_type="text/vtt", charset="utf-8")
