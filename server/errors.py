"""JSON errors for every route: `{"error": {"code", "message"}}` with the right status.

The body also carries ai-runner's `{"detail": {"msg"}}` so Livepeer components that read that
shape get the message too (the orchestrator only relays the status code).
"""

from __future__ import annotations

import json
import logging

from aiohttp import web
from pydantic import ValidationError

log = logging.getLogger(__name__)

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


def json_error(status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    body = {
        "success": False,
        "error": {"code": code or _STATUS_CODES.get(status, "error"), "message": message},
        "detail": {"msg": message},
    }
    return web.json_response(body, status=status, headers=headers)


def validation_message(exc: ValidationError) -> str:
    """'subscribe_url: Field required; width: Input should be ...' — names every bad field."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ())) or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


async def read_json(request: web.Request, allow_empty: bool = False) -> dict | None:
    """The request body as a JSON object, or a 400/413 HTTP error with a clear message."""
    raw = await request.read()  # raises 413 beyond client_max_size
    if not raw.strip():
        if allow_empty:
            return None
        raise web.HTTPBadRequest(reason="request body is empty; a JSON object is required")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise web.HTTPBadRequest(reason=f"invalid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(reason="the JSON body must be an object")
    return body


@web.middleware
async def error_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        message = exc.reason if exc.text in (None, "", f"{exc.status}: {exc.reason}") else exc.text
        if exc.status == 413:
            message = f"request body too large (limit {request.app['settings'].max_body_bytes} bytes)"
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
