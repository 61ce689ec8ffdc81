"""OpenAPI 3.1 at `/openapi.json`, generated from the route declarations (httpapi/routes.py) and
the pydantic models that validate the requests: one source of truth with the access policy. Each
role is a security scheme; every error is the one error shape. `/docs` renders it."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from httpapi.errors import STATUS
from httpapi.routes import JSON, Role, RouteSpec, RouteTable, registry_of
from server import __version__
from server.settings import SETTINGS_KEY

ROLE_DESCRIPTIONS = {
    Role.API: "API_TOKEN: stream lifecycle, translation, vision, analysis",
    Role.LIVEPEER: "AUTH_TOKEN (else API_TOKEN): BYOC and ai-runner routes",
    Role.INGEST: "WHIP_TOKEN (else API_TOKEN, then AUTH_TOKEN): WHIP publishers",
    Role.VIEWER: "WHEP_TOKEN (else API_TOKEN, then AUTH_TOKEN), or the stream's own viewer_token",
    Role.TRICKLE: "TRICKLE_TOKEN (else API_TOKEN, then AUTH_TOKEN): the built-in trickle server",
    Role.METRICS: "METRICS_TOKEN (else API_TOKEN, then AUTH_TOKEN): Prometheus metrics",
}
# descriptions come from the one status table (httpapi/errors.py)
STATUS_TEXT = {status: info.text for status, info in STATUS.items()}
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        },
        "detail": {
            "type": "object",
            "properties": {"msg": {"type": "string"}},
            "description": "ai-runner's shape of the same message (Livepeer components read it)",
        },
        "success": {"type": "boolean"},
        "status": {"type": "string"},
    },
}
_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")


def _schema_of(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in schema.pop("$defs", {}).items():
        components[name] = definition
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _operation_id(spec: RouteSpec, used: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9]+", "_", f"{spec.method.lower()}_{spec.path}").strip("_") or spec.method.lower()
    name, n = base, 2
    while name in used:
        name, n = f"{base}_{n}", n + 1
    used.add(name)
    return name


def _operation(spec: RouteSpec, components: dict[str, Any], used: set[str]) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": _operation_id(spec, used),
        "summary": spec.summary or spec.path,
        "tags": [spec.tag or "other"],
        "x-role": [r.value for r in spec.roles],
    }
    if spec.query_token:
        op["description"] = "Browsers that cannot send headers (EventSource, <track>) may pass ?token=."
    if spec.public:
        op["security"] = []
    else:
        op["security"] = [{role.value: []} for role in spec.roles]
        if spec.query_token:
            op["security"].append({"viewer_query": []})
    statuses = set(spec.errors)
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PARAM.findall(spec.path)
    ]
    if params:
        op["parameters"] = params
        statuses.add(404)  # an unknown id or name
    if not spec.public:
        statuses.add(401)
    if spec.method in ("POST", "PUT", "PATCH"):
        if spec.body is not None:
            op["requestBody"] = {"required": True, "content": {JSON: {"schema": _schema_of(spec.body, components)}}}
            statuses.update((400, 415))
        elif spec.content_types:
            op["requestBody"] = {
                "required": False,
                "content": {
                    ct: {"schema": {"type": "object"} if ct == JSON else {"type": "string", "format": "binary"}}
                    for ct in spec.content_types
                },
            }
            statuses.update((400, 415) if JSON in spec.content_types else (415,))
        else:
            op["requestBody"] = {
                "required": False,
                "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
            }
        if not spec.stream_body:
            statuses.update((408, 413))
    success: dict[str, Any] = {"description": STATUS_TEXT.get(spec.status, "OK")}
    if spec.status != 204 and spec.response_type:  # "" = no body
        if spec.response is not None:
            success["content"] = {spec.response_type: {"schema": _schema_of(spec.response, components)}}
        elif spec.response_type == JSON:
            success["content"] = {JSON: {"schema": {"type": "object"}}}
        else:
            success["content"] = {spec.response_type: {"schema": {"type": "string"}}}
    responses: dict[str, Any] = {str(spec.status): success}
    for status in sorted(statuses):
        responses[str(status)] = {"$ref": f"#/components/responses/E{status}"}
    op["responses"] = responses
    return op


def openapi_document(app: web.Application) -> dict[str, Any]:
    components: dict[str, Any] = {"Error": ERROR_SCHEMA}
    paths: dict[str, dict[str, Any]] = {}
    used: set[str] = set()
    statuses: set[int] = set()
    for spec in registry_of(app).specs:
        if spec.hidden or spec.method in ("OPTIONS", "HEAD"):
            continue
        op = _operation(spec, components, used)
        statuses.update(int(s) for s in op["responses"] if int(s) >= 400)
        paths.setdefault(spec.path, {})[spec.method.lower()] = op
    security_schemes: dict[str, Any] = {
        role.value: {"type": "http", "scheme": "bearer", "description": text}
        for role, text in ROLE_DESCRIPTIONS.items()
    }
    security_schemes["viewer_query"] = {
        "type": "apiKey",
        "in": "query",
        "name": "token",
        "description": "A viewer token in the query string (viewer routes only)",
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "streamlens",
            "version": __version__,
            "description": "Real-time AI media server: live captions, translation and vision on WebRTC and "
            "Livepeer trickle streams, and analysis of recorded video. Every route has one "
            "role (x-role); each role is a bearer security scheme.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": security_schemes,
            "responses": {
                f"E{s}": {
                    "description": STATUS_TEXT.get(s, "Error"),
                    "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
                }
                for s in sorted(statuses)
            },
        },
    }


routes = RouteTable()


@routes.get("/openapi.json", role=Role.PUBLIC, tag="system", summary="This document (OpenAPI 3.1)")
async def get_openapi(request: web.Request) -> web.Response:
    cache = request.app[OPENAPI_KEY]
    if not cache:  # built on first use: every route is mounted by then
        cache.update(openapi_document(request.app))
    return web.json_response(cache)


async def get_docs(request: web.Request) -> web.FileResponse:
    from server.routes_webrtc import static_dir

    return web.FileResponse(static_dir(request.app[SETTINGS_KEY]) / "docs.html", headers={"Cache-Control": "no-cache"})


routes.add(
    "GET",
    "/docs",
    get_docs,
    role=Role.PUBLIC,
    tag="system",
    response_type="text/html",
    summary="The API described by /openapi.json, rendered",
)

OPENAPI_KEY = web.AppKey("openapi_document", dict)


def mount_openapi(app: web.Application) -> None:
    app[OPENAPI_KEY] = {}
    routes.mount(app)
