"""Route declarations: every HTTP route of the server is declared once, with its access role.

A `RouteTable` collects `RouteSpec`s (method, path, handler, roles, body model, accepted content
types, summary). `server.access` enforces them (auth, content type, body limits, JSON parsing and
validation, CORS) and `server.openapi` describes them; a handler never checks a token itself, and
a route that is not declared here is refused by the access middleware.

This module sits in `httpapi` (beside `json_body`) because `byoc` and the trickle server declare
their routes too, and neither imports `server`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel

from httpapi.errors import ApiError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

JSON = "application/json"
# where the access middleware (server/access.py) leaves a request's parsed JSON and validated body
JSON_KEY: web.RequestKey[Any] = web.RequestKey("streamlens_json")
BODY_KEY: web.RequestKey[BaseModel] = web.RequestKey("streamlens_body")
EMPTY_BODY_MESSAGE = "request body is empty; a JSON object is required"

ModelT = TypeVar("ModelT", bound=BaseModel)


class Role(StrEnum):
    """Who may call a route. Each non-public role has its own token setting (README "Security")."""

    PUBLIC = "public"  # /health, /version, the demo pages and their static files
    API = "api"  # stream lifecycle, translation, vision, analysis: API_TOKEN
    LIVEPEER = "livepeer"  # BYOC / ai-runner routes: AUTH_TOKEN
    INGEST = "ingest"  # WHIP publish: WHIP_TOKEN
    VIEWER = "viewer"  # WHEP, SSE, WebVTT: WHEP_TOKEN or the stream's own viewer token
    TRICKLE = "trickle"  # the built-in trickle server: TRICKLE_TOKEN
    METRICS = "metrics"  # /metrics: METRICS_TOKEN


@dataclass(frozen=True)
class RouteSpec:
    """One declared route. Everything the access policy and the OpenAPI document need."""

    method: str
    path: str
    handler: Handler
    roles: tuple[Role, ...]
    summary: str = ""
    # JSON body model: parsed (depth-limited) and validated once, before the handler runs; the
    # handler takes the typed result with `validated_body(request, Model)`.
    body: type[BaseModel] | None = None
    # Request Content-Types accepted when the request has a body (→ 415 otherwise). None: any
    # (a Livepeer caller known to send other types; documented on the route).
    content_types: tuple[str, ...] | None = (JSON,)
    # Largest body: bytes, or the name of the setting that holds it; None = MAX_BODY_BYTES.
    # Ignored when `stream_body`.
    max_body: int | str | None = None
    # The handler streams the body itself (trickle segments, uploads): no pre-read, no parse.
    stream_body: bool = False
    # A viewer route a browser opens without headers (EventSource, <track src>): `?token=` accepted,
    # and only a viewer token there (never the API token: URLs leak into logs, history, Referer).
    query_token: bool = False
    # Viewer routes: the manifest id the request is about, so that stream's viewer token opens it.
    stream_of: Callable[[web.Request], str | None] | None = None
    # OpenAPI: the success response model and status, extra documented statuses, a tag.
    response: type[BaseModel] | None = None
    status: int = 200
    response_type: str = JSON
    errors: tuple[int, ...] = ()
    tag: str = ""
    # the route answers its own OPTIONS preflight headers (WHIP/WHEP `Accept-Post`/`Accept-Patch`)
    preflight_headers: dict[str, str] = field(default_factory=dict)
    # documented only (not part of OpenAPI operation ids); e.g. the trailing-slash aliases
    hidden: bool = False

    def __post_init__(self) -> None:
        if self.query_token and Role.VIEWER not in self.roles:
            raise ValueError(f"{self.method} {self.path}: `?token=` is for viewer routes only")

    @property
    def public(self) -> bool:
        return Role.PUBLIC in self.roles


@dataclass
class RouteTable:
    """A list of route declarations; `mount(app)` adds them to the app and its registry."""

    specs: list[RouteSpec] = field(default_factory=list)

    def route(
        self, method: str, path: str, *, role: Role | tuple[Role, ...], **options: Any
    ) -> Callable[[Handler], Handler]:
        roles = role if isinstance(role, tuple) else (role,)
        if not roles:
            raise ValueError(f"{method} {path}: a route needs a role")

        def decorate(handler: Handler) -> Handler:
            self.specs.append(RouteSpec(method=method.upper(), path=path, handler=handler, roles=roles, **options))
            return handler

        return decorate

    def get(self, path: str, *, role: Role | tuple[Role, ...], **options: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, role=role, **options)

    def post(self, path: str, *, role: Role | tuple[Role, ...], **options: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, role=role, **options)

    def patch(self, path: str, *, role: Role | tuple[Role, ...], **options: Any) -> Callable[[Handler], Handler]:
        return self.route("PATCH", path, role=role, **options)

    def delete(self, path: str, *, role: Role | tuple[Role, ...], **options: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, role=role, **options)

    def add(self, method: str, path: str, handler: Handler, *, role: Role | tuple[Role, ...], **options: Any) -> None:
        self.route(method, path, role=role, **options)(handler)

    def mount(self, app: web.Application) -> None:
        """Add every route, and one `OPTIONS` per path (the access middleware answers the preflight
        from the declarations of that path)."""
        registry = registry_of(app)
        for spec in self.specs:
            route = app.router.add_route(spec.method, spec.path, spec.handler)
            registry.add(route, spec)
            if spec.path not in registry.options_paths:
                registry.options_paths.add(spec.path)
                options = RouteSpec(
                    method="OPTIONS",
                    path=spec.path,
                    handler=_preflight,
                    roles=(Role.PUBLIC,),
                    summary="CORS preflight",
                    content_types=None,
                    hidden=True,
                )
                registry.add(app.router.add_route("OPTIONS", spec.path, _preflight), options)


async def _preflight(request: web.Request) -> web.StreamResponse:
    # answered by the access middleware from the path's declarations; this runs only without it
    return web.Response(status=204)


class RouteRegistry:
    """The app's declared routes, keyed by the aiohttp route object they were mounted as."""

    def __init__(self) -> None:
        self._by_route: dict[int, RouteSpec] = {}
        self._routes: list[web.AbstractRoute] = []  # keeps the keys of _by_route alive
        self.specs: list[RouteSpec] = []
        self.options_paths: set[str] = set()

    def add(self, route: web.AbstractRoute, spec: RouteSpec) -> None:
        self._by_route[id(route)] = spec
        self._routes.append(route)
        self.specs.append(spec)

    def spec_for(self, route: web.AbstractRoute | None) -> RouteSpec | None:
        return None if route is None else self._by_route.get(id(route))

    def for_path(self, path: str) -> list[RouteSpec]:
        return [s for s in self.specs if s.path == path]


REGISTRY_KEY = web.AppKey("route_registry", RouteRegistry)


def registry_of(app: web.Application) -> RouteRegistry:
    if REGISTRY_KEY not in app:
        app[REGISTRY_KEY] = RouteRegistry()
    return app[REGISTRY_KEY]


def validated_body(request: web.Request, model: type[ModelT]) -> ModelT:
    """The route's declared `body` model, validated once by the access middleware: handlers never
    parse or validate a declared body again. A request without a body is a 400 (a JSON object is
    required); asking for a model the route does not declare is a bug (TypeError)."""
    body = request.get(BODY_KEY)
    if body is None:
        raise ApiError(400, EMPTY_BODY_MESSAGE)
    if not isinstance(body, model):
        raise TypeError(f"{request.method} {request.path} declares {type(body).__name__}, not {model.__name__}")
    return body


def match_stream_id(key: str = "manifest_id") -> Callable[[web.Request], str | None]:
    """`stream_of` for routes whose path names the stream (`/stream/{manifest_id}/events`)."""

    def stream_of(request: web.Request) -> str | None:
        return request.match_info.get(key)

    return stream_of


__all__ = [
    "Handler",
    "JSON",
    "Role",
    "RouteSpec",
    "RouteTable",
    "RouteRegistry",
    "registry_of",
    "match_stream_id",
    "validated_body",
    "REGISTRY_KEY",
    "BODY_KEY",
    "JSON_KEY",
]
