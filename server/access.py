"""The access policy: what every declared route (httpapi/routes.py) gets before its handler.

In order, for each request: refuse a `Host` this server does not answer to (open mode: loopback
names and ALLOWED_HOSTS only, against DNS rebinding) and a state-changing request or WebSocket
upgrade from a foreign `Origin`; find the route's declaration (an undeclared route is refused),
answer CORS preflights, check the bearer token against the route's roles, check the Content-Type,
read the body under its size cap and time limit, parse JSON with a nesting limit and validate the
declared body model. Handlers never check tokens; requests never choose which token applies.

Tokens (README "Security"): each role has its own setting; unset, it falls back to API_TOKEN, then
AUTH_TOKEN. When no token at all is set every route is open (a loopback-only default); once any is
set, a role without a token is closed: an unset token never grants anything. Viewer routes also
open with their stream's own `viewer_token`; those a browser opens without headers (EventSource,
`<track src>`) take `?token=`, but only a viewer token there (WHEP_TOKEN or the stream's own),
never the API token: URLs end up in logs, history and Referer headers.
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

from httpapi.errors import MAX_BODY_BYTES_KEY, error_response, json_error
from httpapi.json_body import JSONBodyError, loads_limited
from httpapi.redact import redact_text
from httpapi.routes import BODY_KEY, JSON, JSON_KEY, Role, RouteSpec, registry_of
from media.manager import STREAMS_KEY
from server.settings import SETTINGS_KEY, Settings

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
EXPOSED_HEADERS = "Location, ETag, Link, Accept-Patch, Accept-Post, X-Manifest-Id, X-Session-Id, X-Viewer-Token"
ALLOWED_HEADERS = "Authorization, Content-Type, If-Match, Last-Event-ID"


class AccessPolicy:
    """Tokens per role, from the settings; built once per app."""

    def __init__(self, settings: Settings) -> None:
        tokens = settings.tokens()
        self.open = not any(tokens.values())
        fallback = tokens["api_token"] or tokens["auth_token"]
        self.role_tokens: dict[Role, str | None] = {
            role: tokens[name] or fallback for role, name in ROLE_TOKEN_SETTING.items()
        }
        # tokens set by the server itself, not by settings (server/self_trust.py: its own trickle clients)
        self.internal_tokens: dict[Role, str] = {}
        self.cors_origins = {o.strip() for o in (settings.cors_origins or "").split(",") if o.strip()}
        # a `?token=` rides in URLs (logs, history, Referer): only WHEP_TOKEN itself, never its API fallback
        self.query_viewer_token = tokens["whep_token"]
        self.allowed_hosts = {_bare_host(h) for h in settings.allowed_hosts.split(",") if h.strip()}
        # open mode answers only to loopback names (a DNS-rebinding page is refused); with tokens the
        # Host is checked only when ALLOWED_HOSTS is set
        self.check_host = "*" not in self.allowed_hosts and (self.open or bool(self.allowed_hosts))

    def allows(
        self, spec: RouteSpec, presented: str | None, viewer_token: str | None = None, *, from_query: bool = False
    ) -> bool:
        if spec.public or self.open:
            return True
        if not presented or not _encodable(presented):  # undecodable header bytes never match a token
            return False
        if from_query:
            return Role.VIEWER in spec.roles and any(
                token and hmac.compare_digest(presented.encode(), token.encode())
                for token in (self.query_viewer_token, viewer_token)
            )
        for role in spec.roles:
            for token in (self.role_tokens.get(role), self.internal_tokens.get(role)):
                if token and hmac.compare_digest(presented.encode(), token.encode()):
                    return True
        if not viewer_token or Role.VIEWER not in spec.roles:
            return False
        return hmac.compare_digest(presented.encode(), viewer_token.encode())

    def cors_origin(self, origin: str | None) -> str | None:
        if not origin or not self.cors_origins:
            return None
        if "*" in self.cors_origins:
            return "*"
        return origin if origin in self.cors_origins else None

    def host_allowed(self, host: str) -> bool:
        return not self.check_host or is_loopback_host(host) or host in self.allowed_hosts


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:  # aiohttp keeps non-UTF-8 header bytes as lone surrogates
        return False
    return True


def _bare_host(host: str) -> str:
    """An ALLOWED_HOSTS entry as `_split_host` writes a host: lower case, IPv6 without brackets."""
    return host.strip().lower().removeprefix("[").removesuffix("]")


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
    app[POLICY_KEY] = AccessPolicy(app[SETTINGS_KEY])
    app[MAX_BODY_BYTES_KEY] = app[SETTINGS_KEY].max_body_bytes  # named in 413 answers (httpapi/errors.py)
    if VIEWER_TOKENS_KEY not in app:  # the composition root shares its own with the stream service
        app[VIEWER_TOKENS_KEY] = ViewerTokens()
    if STREAMS_KEY in app:  # an app serving streams (test apps may mount only some routes)
        app[STREAMS_KEY].summary_hooks.append(app[VIEWER_TOKENS_KEY].transfer)
    app.middlewares.append(access_middleware)
    app.on_startup.append(_check_every_route_declared)


async def _check_every_route_declared(app: web.Application) -> None:
    missing = undeclared_routes(app)
    if missing:
        raise RuntimeError("routes without a declared role: " + ", ".join(missing))


def undeclared_routes(app: web.Application) -> list[str]:
    registry = registry_of(app)
    return [
        f"{route.method} {route.resource.canonical if route.resource else '?'}"
        for route in app.router.routes()
        if registry.spec_for(route) is None
    ]


def presented_token(request: web.Request, spec: RouteSpec) -> tuple[str | None, bool]:
    """(token, whether it came from `?token=`): the query only on viewer routes a browser opens
    without headers, where `AccessPolicy.allows` takes only viewer tokens from it."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip(), False
    if spec.query_token:
        return request.query.get("token") or None, True
    return None, False


def _viewer_token_for(request: web.Request, spec: RouteSpec) -> str | None:
    if spec.stream_of is None or Role.VIEWER not in spec.roles:
        return None
    manifest_id = spec.stream_of(request)
    if not manifest_id:
        return None
    streams = request.app.get(STREAMS_KEY)
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
    headers = {
        "Allow": ", ".join(methods),
        "Access-Control-Allow-Methods": ", ".join(methods),
        "Access-Control-Allow-Headers": ALLOWED_HEADERS,
        "Access-Control-Max-Age": "600",
    }
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
    settings = request.app[SETTINGS_KEY]
    limit = settings.size_limit(spec.max_body) if isinstance(spec.max_body, str) else spec.max_body
    limit = limit or settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(
            max_size=limit, actual_size=request.content_length, reason=f"request body too large (limit {limit} bytes)"
        )
    sized = request.clone(client_max_size=limit) if limit != request.client_max_size else request
    try:
        async with asyncio.timeout(settings.body_read_timeout):
            await sized.read()
    except TimeoutError:
        raise web.HTTPRequestTimeout(
            reason=f"request body not received within {settings.body_read_timeout:g} s"
        ) from None
    except web.HTTPRequestEntityTooLarge:
        raise web.HTTPRequestEntityTooLarge(
            max_size=limit, actual_size=limit + 1, reason=f"request body too large (limit {limit} bytes)"
        ) from None
    return sized


# -- Host and Origin: a web page of another site must not drive this server --------------------------
_HOST_RE = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9._-]+)(?::([0-9]{1,5}))?")
_ORIGIN_RE = re.compile(r"(https?)://(\[[0-9a-f:.]+\]|[a-z0-9._-]+)(?::([0-9]{1,5}))?")
DEFAULT_PORTS = {"http": 80, "https": 443}
# what a page may send cross-site without a preflight and still change nothing (HTTP semantics)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _split_host(value: str) -> tuple[str, int | None] | None:
    """A `Host` header as (lower-case host, IPv6 without brackets; port or None); None if malformed."""
    match = _HOST_RE.fullmatch(value.strip().lower())
    if match is None:
        return None
    return match[1].strip("[]"), int(match[2]) if match[2] else None


def _origin_key(origin: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) origin; None for `null`, other schemes or garbage."""
    match = _ORIGIN_RE.fullmatch(origin.strip().lower())
    if match is None:
        return None
    scheme = match[1]
    return scheme, match[2].strip("[]"), int(match[3]) if match[3] else DEFAULT_PORTS[scheme]


def _request_scheme(request: web.Request) -> str:
    # Behind a TLS-terminating proxy the page is https while this hop is http. A page cannot add
    # this header to a cross-site request: that needs a preflight, which never allows it.
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return forwarded if forwarded in DEFAULT_PORTS else request.scheme


def same_origin(request: web.Request, origin: str) -> bool:
    """Whether `origin` is this request's own: scheme, host and port of its `Host` header."""
    key = _origin_key(origin)
    host = _split_host(request.headers.get("Host", ""))
    if key is None or host is None:
        return False
    scheme = _request_scheme(request)
    return key == (scheme, host[0], DEFAULT_PORTS[scheme] if host[1] is None else host[1])


def _is_websocket(request: web.Request) -> bool:
    return request.method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket"


def edge_refusal(request: web.Request, policy: AccessPolicy) -> web.Response | None:
    """403 for a `Host` this server does not answer to, or for a state-changing request or a
    WebSocket upgrade from a foreign `Origin` (a browser sends those without a CORS preflight).
    Requests without `Origin` (curl, FFmpeg, OBS, servers) pass."""
    host_header = request.headers.get("Host")
    if policy.check_host and host_header is not None:  # every browser sends one; an HTTP/1.0 tool may not
        host = _split_host(host_header)
        if host is None or not policy.host_allowed(host[0]):
            why = (
                "with no token set this server answers only to localhost, 127.0.0.0/8 and [::1]"
                if policy.open
                else "it is not in ALLOWED_HOSTS"
            )
            log.info("%s %s → 403: Host %r refused", request.method, request.path, host_header)
            return json_error(
                403,
                f"Host {host_header!r} is not served: {why}; add the name to ALLOWED_HOSTS"
                + (" (or set API_TOKEN)" if policy.open else ""),
                code="host_not_allowed",
            )
    origin = request.headers.get("Origin")
    changes_state = request.method not in SAFE_METHODS or _is_websocket(request)
    if origin and changes_state and not same_origin(request, origin) and policy.cors_origin(origin) is None:
        log.info("%s %s → 403: cross-origin request from %r", request.method, request.path, origin)
        return json_error(
            403,
            f"cross-origin {'WebSocket' if _is_websocket(request) else request.method} "
            f"from {origin!r} refused: list the origin in CORS_ORIGINS to allow it",
            code="origin_not_allowed",
        )
    return None


@web.middleware
async def access_middleware(request: web.Request, handler):
    policy: AccessPolicy = request.app[POLICY_KEY]
    refused = edge_refusal(request, policy)
    if refused is not None:
        return refused
    route = request.match_info.route
    if request.match_info.http_exception is not None:
        return await handler(request)  # 404 / 405: the router's own answer
    spec = registry_of(request.app).spec_for(route)
    if spec is None:
        log.error("%s %s has no declared role; refused", request.method, request.path)
        raise web.HTTPForbidden(reason="this route has no declared access role")
    if request.method == "OPTIONS":
        response = preflight_response(request) or await handler(request)
        response.headers.update(_cors_headers(request))
        return response
    presented, from_query = presented_token(request, spec)
    if not policy.allows(spec, presented, _viewer_token_for(request, spec), from_query=from_query):
        log.info("%s %s → 401: missing or wrong bearer token", request.method, request.path)
        raise web.HTTPUnauthorized(
            reason=INVALID_TOKEN_MESSAGE, headers={"WWW-Authenticate": "Bearer", **_cors_headers(request)}
        )
    if spec.content_types is not None and _has_body(request) and request.content_type not in spec.content_types:
        raise web.HTTPUnsupportedMediaType(
            reason=f"Content-Type must be {' or '.join(spec.content_types)}, got '{request.content_type}'"
        )
    cors = _cors_headers(request)
    try:
        if not spec.stream_body and _has_body(request):
            request = await _read_body_once(request, spec)
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(cors)  # so a browser can read the error
        raise
    except Exception as exc:  # ApiError, a mapped domain error, a bug: the one error answer, with CORS
        error = error_response(request, exc)
        if error is None:
            raise
        error.headers.update(cors)
        return error
    if cors and not response.prepared:
        response.headers.update(cors)
    return response


async def _read_body_once(request: web.Request, spec: RouteSpec) -> web.Request:
    """Read, parse and validate the body once: the handler takes the declared model typed
    (`validated_body(request, Model)`); a ValidationError is the one 400 naming every bad field."""
    request = await _read_body(request, spec)
    if request.content_type == JSON:
        raw = await request.read()
        if raw.strip():
            request[JSON_KEY] = parse_json(raw, request.app[SETTINGS_KEY].max_json_depth)
            if spec.body is not None:
                if not isinstance(request[JSON_KEY], dict):
                    raise web.HTTPBadRequest(reason="the JSON body must be an object")
                request[BODY_KEY] = spec.body.model_validate(request[JSON_KEY])
    return request


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


def startup_warnings(settings: Settings) -> list[str]:
    """What `streamlens serve` logs loudly before it listens."""
    warnings = []
    policy = AccessPolicy(settings)
    if policy.open and not is_loopback_host(settings.host):
        warnings.append(
            f"LISTENING ON {settings.host} WITH NO TOKEN SET: every route is open to anyone who can "
            'reach this address. Set API_TOKEN (and AUTH_TOKEN for Livepeer) — README "Security".'
        )
    if "*" in policy.cors_origins:
        warnings.append("CORS_ORIGINS contains '*': any web site may call this server from a browser")
    if policy.open and "*" in policy.allowed_hosts:
        warnings.append("ALLOWED_HOSTS is '*' with no token set: a DNS-rebinding web page can call every route")
    return warnings


# -- secrets never reach the logs ----------------------------------------------------------------------
def redact(text: str) -> str:
    # one redaction for the whole server (httpapi/redact.py): percent-encoded names, every secret-looking parameter
    return redact_text(text)


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


__all__ = [
    "AccessPolicy",
    "ViewerTokens",
    "install_access",
    "access_middleware",
    "undeclared_routes",
    "parse_json",
    "startup_warnings",
    "cors_headers",
    "JSON_KEY",
    "BODY_KEY",
    "POLICY_KEY",
    "VIEWER_TOKENS_KEY",
    "INVALID_TOKEN_MESSAGE",
    "install_log_redaction",
    "redact",
]
