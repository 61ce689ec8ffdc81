"""JSON error bodies and bearer checks shared by every route group (server, byoc, trickle).

Error bodies carry the project's `{"error": {"code", "message"}}` and ai-runner's
`{"detail": {"msg"}}` side by side: the Livepeer orchestrator only relays the status code, and
Livepeer components read the `detail` shape.
"""

from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web
from pydantic import ValidationError

STATUS_CODES = {
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
    504: "timeout",
}


def error_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    return {
        "success": False,
        "status": "error",
        "error": {"code": code or STATUS_CODES.get(status, "error"), "message": message},
        "detail": {"msg": message},
    }


def json_error(status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(error_body(status, message, code), status=status, headers=headers)


def validation_message(exc: ValidationError) -> str:
    """'subscribe_url: Field required; width: Input should be ...' — names every bad field."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ())) or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def bearer_ok(request: web.Request, token: str | None) -> bool:
    """True when no token is configured, or the request carries `Authorization: Bearer <token>`."""
    if not token:
        return True
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())
