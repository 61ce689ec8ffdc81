"""HTTP helpers for the Livepeer routes: JSON errors and body parsing.

The JSON error body and the depth-limited JSON parser are `media.http_json`'s, shared with
`server`. Tokens are checked by the server's access policy from each route's declared role.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from media.http_json import JSONBodyError, json_error, loads_limited

log = logging.getLogger(__name__)


class LivepeerHTTPError(Exception):
    """Raised inside a handler; turned into a JSON error response by `error_response`."""

    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers

    def response(self) -> web.Response:
        return json_error(self.status, self.message, code=self.code, headers=self.headers)


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
