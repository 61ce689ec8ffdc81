"""HTTP helpers for the Livepeer routes: JSON errors and body parsing.

The error path is `httpapi.errors`'s and the depth-limited JSON parser `httpapi.json_body`'s,
shared with `server`. Tokens are checked by the server's access policy from each route's declared role.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, overload

from aiohttp import web

from httpapi.errors import ApiError
from httpapi.json_body import JSONBodyError, loads_limited

log = logging.getLogger(__name__)


class LivepeerHTTPError(ApiError):
    """The Livepeer routes' `ApiError`: byoc's middleware (byoc/mount.py) also asks for
    re-registration on its 401s; the body is the one error shape (`httpapi.errors`)."""


@overload
def parse_json_object(
    raw: bytes, *, allow_empty: Literal[False] = False, what: str = "request body"
) -> dict[str, Any]: ...


@overload
def parse_json_object(raw: bytes, *, allow_empty: bool, what: str = "request body") -> dict[str, Any] | None: ...


def parse_json_object(raw: bytes, *, allow_empty: bool = False, what: str = "request body") -> dict[str, Any] | None:
    """`raw` as a JSON object; None for an empty body when `allow_empty`; else LivepeerHTTPError(400)."""
    if not raw.strip():
        if allow_empty:
            return None
        raise LivepeerHTTPError(400, f"{what} is empty; a JSON object is required")
    try:
        value = loads_limited(raw)
    except JSONBodyError as exc:
        raise LivepeerHTTPError(400, f"{what}: {exc}") from None
    if not isinstance(value, dict):
        raise LivepeerHTTPError(400, f"{what} must be a JSON object")
    return value


async def read_body(request: web.Request) -> bytes:
    """The raw body; aiohttp answers 413 past the app's client_max_size."""
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise LivepeerHTTPError(413, "request body too large") from None
