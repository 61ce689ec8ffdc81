"""Bearer-token checks. A route group is open when its token setting is unset."""

from __future__ import annotations

import logging

from aiohttp import web

from media.http_json import bearer_ok

log = logging.getLogger(__name__)


def require_bearer(request: web.Request, token: str | None) -> None:
    """Raise 401 (with `WWW-Authenticate: Bearer`) unless the request carries the token."""
    if not bearer_ok(request, token):
        log.info("%s %s → 401: missing or wrong bearer token", request.method, request.path)
        raise web.HTTPUnauthorized(reason="missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})
