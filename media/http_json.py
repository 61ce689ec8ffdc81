"""JSON error bodies and bearer checks shared by every route group (server, byoc, trickle).

Error bodies carry the project's `{"error": {"code", "message"}}` and ai-runner's
`{"detail": {"msg"}}` side by side: the Livepeer orchestrator only relays the status code, and
Livepeer components read the `detail` shape.
"""

from __future__ import annotations

import json
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


def json_error(
    status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(error_body(status, message, code), status=status, headers=headers)


def validation_message(exc: ValidationError) -> str:
    """'subscribe_url: Field required; width: Input should be ...' — names every bad field."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ())) or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


DEFAULT_MAX_JSON_DEPTH = 32


class JSONBodyError(ValueError):
    """A body that is not acceptable JSON (invalid, or nested too deeply) → 400."""


def json_depth_ok(value: Any, limit: int) -> bool:
    """Iterative, so a hostile body cannot exhaust the stack here either."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return True


def loads_limited(raw: bytes | str, max_depth: int = DEFAULT_MAX_JSON_DEPTH, max_bytes: int | None = None) -> Any:
    """`raw` as JSON; `JSONBodyError` naming what is wrong (too large, invalid, too deeply nested).

    The one parser for every JSON a caller sends: bodies, JSON-encoded strings inside them
    (`params`), query parameters, form fields, headers and channel messages. `max_bytes` caps
    input that nothing else bounds (bodies, query strings and messages already have their limits);
    it counts `len(raw)`: bytes, or the characters of a str.
    """
    if max_bytes is not None and len(raw) > max_bytes:
        raise JSONBodyError(f"JSON larger than {max_bytes} bytes")
    try:
        value = json.loads(raw)
    except RecursionError:
        # the C decoder recurses per nesting level: a deep array hits the interpreter's limit
        raise JSONBodyError(f"JSON nested too deeply (at most {max_depth} levels)") from None
    except (ValueError, TypeError) as exc:  # JSONDecodeError, UnicodeDecodeError (bytes not UTF-8/16/32)
        raise JSONBodyError(f"invalid JSON: {exc}") from None
    if not json_depth_ok(value, max_depth):
        raise JSONBodyError(f"JSON nested too deeply (at most {max_depth} levels)")
    return value
