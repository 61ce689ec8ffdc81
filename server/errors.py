"""JSON request bodies for server routes; the one error path is `httpapi.errors`.

`ApiError`, `error_middleware`, `json_error` and `validation_message` are re-exported from there
(shared with `byoc` and the trickle server): handlers raise, the middleware answers with the one
body `{"error": {"code", "message"}, "detail": {"msg"}}`. A route's declared body model is read with
`validated_body(request, Model)` (httpapi/routes.py): validated once, by the access middleware;
`read_json` is for routes that declare no model.
"""

from __future__ import annotations

from typing import Any, Literal, overload

from aiohttp import web

from httpapi.errors import ApiError, error_middleware, json_error, validation_message
from httpapi.routes import EMPTY_BODY_MESSAGE, JSON_KEY, validated_body
from server.access import parse_json
from server.settings import SETTINGS_KEY

__all__ = ["ApiError", "error_middleware", "json_error", "read_json", "validated_body", "validation_message"]


@overload
async def read_json(request: web.Request, allow_empty: Literal[False] = False) -> dict[str, Any]: ...


@overload
async def read_json(request: web.Request, allow_empty: bool) -> dict[str, Any] | None: ...


async def read_json(request: web.Request, allow_empty: bool = False) -> dict[str, Any] | None:
    """The request body as a JSON object (parsed once, depth-limited, by the access middleware),
    or a 400 with a clear message."""
    body = request.get(JSON_KEY)
    if body is None:
        raw = await request.read()  # raises 413 beyond client_max_size
        if not raw.strip():
            if allow_empty:
                return None
            raise ApiError(400, EMPTY_BODY_MESSAGE)
        body = parse_json(raw, request.app[SETTINGS_KEY].max_json_depth)
    if not isinstance(body, dict):
        raise ApiError(400, "the JSON body must be an object")
    return body
