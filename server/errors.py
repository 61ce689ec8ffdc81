"""JSON errors for every route: `{"error": {"code", "message"}}` with the right status.

`json_error` and `validation_message` live in `media.http_json` (shared with `byoc`).

The body also carries ai-runner's `{"detail": {"msg"}}` so Livepeer components that read that
shape get the message too (the orchestrator only relays the status code).
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from media.http_json import json_error, validation_message
from server.access import BODY_KEY, JSON_KEY, parse_json

log = logging.getLogger(__name__)


async def read_json(request: web.Request, allow_empty: bool = False) -> dict | None:
    """The request body as a JSON object (parsed once, depth-limited, by the access middleware),
    or a 400 with a clear message."""
    body = request.get(JSON_KEY)
    if body is None:
        raw = await request.read()  # raises 413 beyond client_max_size
        if not raw.strip():
            if allow_empty:
                return None
            raise web.HTTPBadRequest(reason="request body is empty; a JSON object is required")
        body = parse_json(raw, request.app["settings"].max_json_depth)
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(reason="the JSON body must be an object")
    return body


def validated_body(request: web.Request) -> Any:
    """The route's declared `body` model, validated by the access middleware (None without a body)."""
    return request.get(BODY_KEY)


@web.middleware
async def error_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        message = exc.reason if exc.text in (None, "", f"{exc.status}: {exc.reason}") else exc.text
        if exc.status == 413:  # aiohttp's own text names no limit; ours (server/access.py) does
            message = (
                exc.reason
                if "limit" in (exc.reason or "")
                else f"request body too large (limit {request.app['settings'].max_body_bytes} bytes)"
            )
        log.info("%s %s → %d: %s", request.method, request.path, exc.status, message)
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
        return json_error(exc.status, message, headers=headers)
    except ValidationError as exc:
        message = validation_message(exc)
        log.info("%s %s → 400: %s", request.method, request.path, message)
        return json_error(400, message)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return json_error(500, "internal server error")
