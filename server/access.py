"""The access policy: what every declared route (media/http_routes.py) gets before its handler.

In order, for each request: find the route's declaration (an undeclared route is refused), answer
CORS preflights, check the bearer token against the route's roles, check the Content-Type, read
the body under its size cap and time limit, parse JSON with a nesting limit and validate the
declared body model. Handlers never check tokens; requests never choose which token applies.

Tokens (README "Security"): each role has its own setting; unset, it falls back to API_TOKEN, then
AUTH_TOKEN. When no token at all is set every route is open (a loopback-only default); once any is
set, a role without a token is closed: an unset token never grants anything. Viewer routes also
open with their stream's own `viewer_token`.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import re
import secrets
import weakref
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from byoc.mount import secret_value
from media.http_json import JSONBodyError, loads_limited
from media.http_routes import JSON, RouteSpec, Role, registry_of

log = logging.getLogger(__name__)

ROLE_TOKEN_SETTING = {
    Role.API: "api_token",
    Role.LIVEPEER: "auth_token",
    Role.INGEST: "whip_token",
    Role.VIEWER: "whep_token",
    Role.TRICKLE: "trickle_token",
    Role.METRICS: "metrics_token",
}
TOKEN_SETTINGS = tuple(ROLE_TOKEN_SETTING.values())
INVALID_TOKEN_MESSAGE = "Invalid bearer token."  # ai-runner's wording (Livepeer callers read it)
JSON_KEY = "streamlens_json"
BODY_KEY = "streamlens_body"
EXPOSED_HEADERS = "Location, ETag, Link, Accept-Patch, Accept-Post, X-Manifest-Id, X-Session-Id, X-Viewer-Token"
ALLOWED_HEADERS = "Authorization, Content-Type, If-Match, Last-Event-ID"


class AccessPolicy:
    """Tokens per role, from the settings; built once per app."""

    def __init__(self, settings: Any) -> None:
        tokens = {name: secret_value(getattr(settings, name, None)) for name in TOKEN_SETTINGS}
        self.open = not any(tokens.values())
        fallback = tokens["api_token"] or tokens["auth_token"]
        self.role_tokens: dict[Role, str | None] = {
            role: tokens[name] or fallback for role, name in ROLE_TOKEN_SETTING.items()}
        self.cors_origins = {o.strip() for o in (settings.cors_origins or "").split(",") if o.strip()}

    def allows(self, spec: RouteSpec, presented: str | None, viewer_token: str | None = None) -> bool:
        if spec.public or self.open:
            return True
        if not presented:
            return False
        for role in spec.roles:
            token = self.role_tokens.get(role)
            if token and hmac.compare_digest(presented.encode(), token.encode()):
                return True
        return bool(viewer_token) and Role.VIEWER in spec.roles and hmac.compare_digest(
            presented.encode(), viewer_token.encode())

    def cors_origin(self, origin: str | None) -> str | None:
        if not origin or not self.cors_origins:
            return None
        if "*" in self.cors_origins:
            return "*"
        return origin if origin in self.cors_origins else None


POLICY_KEY = web.AppKey("access_policy", AccessPolicy)


class ViewerTokens:
    """One random token per stream, opening only that stream's viewer routes. Held as long as the
    stream object lives (the stream manager keeps stopped streams for a while, then drops them)."""

    def __init__(self) -> None:
        self._tokens: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()

    def issue(self, stream: Any) -> str:
        token = self._tokens.get(stream)
        if token is None:
            token = self._tokens[stream] = secrets.token_urlsafe(24)
        return token

    def of(self, stream: Any) -> str | None:
        return None if stream is None else self._tokens.get(stream)

    def transfer(self, stream: Any, summary: Any) -> None:
        """A stopped stream is kept as a small summary (captions stay readable): its token follows."""
        token = self._tokens.pop(stream, None)
        if token is not None:
            self._tokens[summary] = token


VIEWER_TOKENS_KEY = web.AppKey("viewer_tokens", ViewerTokens)


def install_access(app: web.Application) -> None:
    """Put the policy in the app; its middleware is `access_middleware`. At start-up every route
    of the router must have a declaration, or the server refuses to start."""
    app[POLICY_KEY] = AccessPolicy(app["settings"])
    app[VIEWER_TOKENS_KEY] = ViewerTokens()
    if "streams" in app:  # an app serving streams (test apps may mount only some routes)
        app["streams"].summary_hooks.append(app[VIEWER_TOKENS_KEY].transfer)
    app.middlewares.append(access_middleware)
    app.on_startup.append(_check_every_route_declared)


async def _check_every_route_declared(app: web.Application) -> None:
    missing = undeclared_routes(app)
    if missing:
        raise RuntimeError("routes without a declared role: " + ", ".join(missing))


def undeclared_routes(app: web.Application) -> list[str]:
    registry = registry_of(app)
    return [f"{route.method} {route.resource.canonical if route.resource else '?'}"
            for route in app.router.routes() if registry.spec_for(route) is None]


def presented_token(request: web.Request, spec: RouteSpec) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if spec.query_token:
        return request.query.get("token") or None
    return None


def _viewer_token_for(request: web.Request, spec: RouteSpec) -> str | None:
    if spec.stream_of is None or Role.VIEWER not in spec.roles:
        return None
    manifest_id = spec.stream_of(request)
    if not manifest_id:
        return None
    streams = request.app.get("streams")
    return None if streams is None else request.app[VIEWER_TOKENS_KEY].of(streams.get(manifest_id))


def _cors_headers(request: web.Request) -> dict[str, str]:
    origin = request.app[POLICY_KEY].cors_origin(request.headers.get("Origin"))
    if origin is None:
        return {}
    headers = {"Access-Control-Allow-Origin": origin, "Access-Control-Expose-Headers": EXPOSED_HEADERS}
    if origin != "*":
        headers["Vary"] = "Origin"
    return headers


def preflight_response(request: web.Request) -> web.Response | None:
    """`OPTIONS` on a declared path: the methods declared there, plus WHIP/WHEP's Accept-* headers."""
    path = request.match_info.route.resource.canonical if request.match_info.route.resource else None
    specs = [s for s in registry_of(request.app).specs if s.path == path and s.method != "OPTIONS"]
    if not specs:
        return None
    methods = sorted({s.method for s in specs} | {"OPTIONS"})
    headers = {"Allow": ", ".join(methods), "Access-Control-Allow-Methods": ", ".join(methods),
               "Access-Control-Allow-Headers": ALLOWED_HEADERS, "Access-Control-Max-Age": "600"}
    for spec in specs:
        headers.update(spec.preflight_headers)
    return web.Response(status=204, headers=headers)


def _has_body(request: web.Request) -> bool:
    return bool(request.content_length) or request.headers.get("Transfer-Encoding", "").lower() == "chunked"


def parse_json(raw: bytes, max_depth: int) -> Any:
    """`raw` as JSON, or a 400 naming what is wrong (invalid, too deeply nested)."""
    try:
        return loads_limited(raw, max_depth)
    except JSONBodyError as exc:
        raise web.HTTPBadRequest(reason=str(exc)) from None


async def _read_body(request: web.Request, spec: RouteSpec) -> web.Request:
    settings = request.app["settings"]
    limit = getattr(settings, spec.max_body) if isinstance(spec.max_body, str) else spec.max_body
    limit = limit or settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length,
                                            reason=f"request body too large (limit {limit} bytes)")
    sized = request.clone(client_max_size=limit) if limit != request.client_max_size else request
    try:
        async with asyncio.timeout(settings.body_read_timeout):
            await sized.read()
    except TimeoutError:
        raise web.HTTPRequestTimeout(
            reason=f"request body not received within {settings.body_read_timeout:g} s") from None
    except web.HTTPRequestEntityTooLarge:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=limit + 1,
                                            reason=f"request body too large (limit {limit} bytes)") from None
    return sized


@web.middleware
async def access_middleware(request: web.Request, handler):
    route = request.match_info.route
    if request.match_info.http_exception is not None:
        return await handler(request)  # 404 / 405: the router's own answer
    spec = registry_of(request.app).spec_for(route)
    if spec is None:
        log.error("%s %s has no declared role; refused", request.method, request.path)
        raise web.HTTPForbidden(reason="this route has no declared access role")
    policy: AccessPolicy = request.app[POLICY_KEY]
    if request.method == "OPTIONS":
        response = preflight_response(request) or await handler(request)
        response.headers.update(_cors_headers(request))
        return response
    if not policy.allows(spec, presented_token(request, spec), _viewer_token_for(request, spec)):
        log.info("%s %s → 401: missing or wrong bearer token", request.method, request.path)
        raise web.HTTPUnauthorized(reason=INVALID_TOKEN_MESSAGE,
                                   headers={"WWW-Authenticate": "Bearer", **_cors_headers(request)})
    if spec.content_types is not None and _has_body(request) and request.content_type not in spec.content_types:
        raise web.HTTPUnsupportedMediaType(
            reason=f"Content-Type must be {' or '.join(spec.content_types)}, got '{request.content_type}'")
    if not spec.stream_body and _has_body(request):
        request = await _read_body(request, spec)
        if request.content_type == JSON:
            raw = await request.read()
            if raw.strip():
                request[JSON_KEY] = parse_json(raw, request.app["settings"].max_json_depth)
                if spec.body is not None:
                    if not isinstance(request[JSON_KEY], dict):
                        raise web.HTTPBadRequest(reason="the JSON body must be an object")
                    request[BODY_KEY] = spec.body.model_validate(request[JSON_KEY])
    cors = _cors_headers(request)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(cors)  # so a browser can read the error
        raise
    if cors and not response.prepared:
        response.headers.update(cors)
    return response


def cors_headers(request: web.Request) -> dict[str, str]:
    """For handlers that prepare a streaming response themselves (SSE) before the middleware sees it."""
    return _cors_headers(request)


# -- start-up warnings ------------------------------------------------------------------------------
def is_loopback_host(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def startup_warnings(settings: Any) -> list[str]:
    """What `streamlens serve` logs loudly before it listens."""
    warnings = []
    policy = AccessPolicy(settings)
    if policy.open and not is_loopback_host(settings.host):
        warnings.append(f"LISTENING ON {settings.host} WITH NO TOKEN SET: every route is open to anyone who can "
                        "reach this address. Set API_TOKEN (and AUTH_TOKEN for Livepeer) — README \"Security\".")
    if "*" in policy.cors_origins:
        warnings.append("CORS_ORIGINS contains '*': any web site may call this server from a browser")
    return warnings


# -- secrets never reach the logs ----------------------------------------------------------------------
_TOKEN_IN_QUERY = re.compile(r"([?&](?:token|access_token)=)[^&\s\"]*", re.IGNORECASE)


def redact(text: str) -> str:
    return _TOKEN_IN_QUERY.sub(r"\1[redacted]", text)


class RedactTokens(logging.Filter):
    """aiohttp's access log prints the request line with its query string: drop `?token=` values."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg = record.getMessage()
            record.args = ()
        record.msg = redact(str(record.msg))
        return True


def install_log_redaction() -> None:
    access = logging.getLogger("aiohttp.access")
    if not any(isinstance(f, RedactTokens) for f in access.filters):
        access.addFilter(RedactTokens())


__all__ = ["AccessPolicy", "ViewerTokens", "install_access", "access_middleware", "undeclared_routes",
           "parse_json", "startup_warnings", "cors_headers", "JSON_KEY", "BODY_KEY", "POLICY_KEY",
           "VIEWER_TOKENS_KEY", "INVALID_TOKEN_MESSAGE", "install_log_redaction", "redact"]
