"""The access policy against the real server over loopback: every route has a declared role, every
non-public route refuses a request without its token, the request never chooses the token, an
unset token never grants anything, JSON routes take only JSON, CORS is an allow-list."""

from __future__ import annotations

import re

import aiohttp
import pytest
from aiohttp import web

from httpapi.routes import Role, registry_of
from media.manager import STREAMS_KEY
from server.access import AccessPolicy, undeclared_routes
from server.app import create_app
from server.settings import Settings
from tests.conftest import start_server, stop_server

API, AUTH = "api-secret-1", "auth-secret-2"


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", path)


def declared(app: web.Application):
    return [s for s in registry_of(app).specs if s.method not in ("OPTIONS", "HEAD")]


def test_every_route_of_the_app_has_a_declared_role():
    app = create_app(Settings())
    assert undeclared_routes(app) == []
    specs = declared(app)
    assert len(specs) > 40
    for spec in specs:
        assert spec.roles and all(isinstance(r, Role) for r in spec.roles), spec.path
    public = {s.path for s in specs if s.public}
    # public is exactly the health/version probes, the demo pages and their assets (and ai-runner's hardware info)
    assert public <= {
        "/health",
        "/version",
        "/",
        "/whep.html",
        "/view/{manifest_id}",
        "/static/{filename}",
        "/static/vendor/hls.min.js",
        "/hardware/info",
        "/hardware/info/",
        "/hardware/stats",
        "/hardware/stats/",
        "/v1/health",
        "/openapi.json",
        "/docs",
    }, public


async def test_a_route_without_a_role_stops_the_server_from_starting():
    app = create_app(Settings(host="127.0.0.1", port=0))

    async def sneaky(_request):
        return web.json_response({"ok": True})

    app.router.add_get("/undeclared", sneaky)
    with pytest.raises(RuntimeError, match="GET /undeclared"):
        await start_server(app=app)


@pytest.mark.parametrize(
    "tokens",
    [dict(api_token=API), dict(auth_token=AUTH), dict(api_token=API, auth_token=AUTH), dict(metrics_token="m-only")],
)
async def test_every_non_public_route_is_401_without_its_token(tokens):
    server = await start_server(Settings(host="127.0.0.1", port=0, **tokens))
    bare = aiohttp.ClientSession()  # not server.session: in token mode it would add the right token
    try:
        for spec in declared(server.app):
            if spec.public:
                continue
            for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": API}):
                resp = await bare.request(spec.method, server.url(concrete(spec.path)), json={}, headers=headers)
                assert resp.status == 401, (spec.method, spec.path, headers, resp.status)
                body = await resp.json()
                assert body["error"]["code"] == "unauthorized" and resp.headers["WWW-Authenticate"].startswith("Bearer")
        for path in ("/health", "/version", "/", "/static/app.js"):
            assert (await server.session.get(server.url(path))).status == 200, path
        assert not server.app[STREAMS_KEY].active()
    finally:
        await bare.close()
        await stop_server(server)


def test_token_fallbacks_and_unset_tokens_never_grant():
    spec_of = {role: type("S", (), {"roles": (role,), "public": False})() for role in Role if role != Role.PUBLIC}
    only_api = AccessPolicy(Settings(api_token=API))
    for spec in spec_of.values():  # every role falls back to API_TOKEN
        assert only_api.allows(spec, API) and not only_api.allows(spec, "nope") and not only_api.allows(spec, None)
    only_auth = AccessPolicy(Settings(auth_token=AUTH))
    assert all(only_auth.allows(spec, AUTH) for spec in spec_of.values())  # ... then AUTH_TOKEN
    own = AccessPolicy(
        Settings(api_token=API, auth_token=AUTH, metrics_token="m", trickle_token="t", whip_token="w", whep_token="v")
    )
    assert own.allows(spec_of[Role.METRICS], "m") and not own.allows(spec_of[Role.METRICS], API)
    assert own.allows(spec_of[Role.LIVEPEER], AUTH) and not own.allows(spec_of[Role.LIVEPEER], API)
    assert own.allows(spec_of[Role.INGEST], "w") and not own.allows(spec_of[Role.INGEST], "v")
    # with only METRICS_TOKEN set, the other roles have no token: closed, never open
    metrics_only = AccessPolicy(Settings(metrics_token="m"))
    assert not metrics_only.open
    assert not metrics_only.allows(spec_of[Role.API], None) and not metrics_only.allows(spec_of[Role.API], "")
    assert AccessPolicy(Settings()).open and AccessPolicy(Settings()).allows(spec_of[Role.API], None)


async def test_the_request_never_chooses_the_token(make_server, orch_trickle):
    """The reported bypass: API_TOKEN set, AUTH_TOKEN unset, `X-Stream-Id` and no token → started."""
    server = await make_server(api_token=API)
    gateway_body = {
        "gateway_request_id": "x",
        "subscribe_url": orch_trickle.trickle_url("x"),
        "publish_url": orch_trickle.trickle_url("x-out"),
    }
    async with aiohttp.ClientSession() as bare:  # no token added for the test
        for path in ("/stream/start", "/stream/stop", "/stream/params"):
            resp = await bare.post(server.url(path), json=gateway_body, headers={"X-Stream-Id": "x"})
            assert resp.status == 401, path
    # a text/plain body (no CORS preflight from a web page) is refused even with the right token
    resp = await server.session.post(
        server.url("/stream/start"),
        data=b'{"gateway_request_id": "x"}',
        headers={"X-Stream-Id": "x", "Content-Type": "text/plain", "Authorization": f"Bearer {API}"},
    )
    assert resp.status == 415 and "application/json" in (await resp.json())["error"]["message"]
    assert not server.app[STREAMS_KEY].active()
    # /stream/start serves two roles: a token valid for either opens it
    resp = await server.session.post(
        server.url("/stream/start"), json=gateway_body, headers={"X-Stream-Id": "x", "Authorization": f"Bearer {API}"}
    )
    assert resp.status == 200, await resp.text()
    assert server.app[STREAMS_KEY].get_active("x") is not None


async def test_two_roles_accept_either_token_and_nothing_else(make_server, orch_trickle):
    server = await make_server(api_token=API, auth_token=AUTH)
    for i, token in enumerate((API, AUTH)):
        body = {"subscribe_url": orch_trickle.trickle_url(f"two-{i}"), "manifest_id": f"two-{i}"}
        resp = await server.session.post(
            server.url("/stream/start"), json=body, headers={"Authorization": f"Bearer {token}"}
        )
        assert resp.status == 200, await resp.text()
    # /streams is api only: AUTH_TOKEN does not open it
    assert (await server.session.get(server.url("/streams"), headers={"Authorization": f"Bearer {AUTH}"})).status == 401
    assert (await server.session.get(server.url("/streams"), headers={"Authorization": f"Bearer {API}"})).status == 200
    # ?token= is only for viewer routes: an api route ignores it
    assert (await server.session.get(server.url(f"/streams?token={API}"))).status == 401


async def test_cors_is_an_allow_list(make_server):
    closed = await make_server()
    resp = await closed.session.get(closed.url("/health"), headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers  # no `*` by default
    resp = await closed.session.options(
        closed.url("/stream/start"), headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert resp.status == 204 and "Access-Control-Allow-Origin" not in resp.headers

    allowed = await make_server(cors_origins="https://app.example, https://other.example")
    for origin, expected in (("https://app.example", "https://app.example"), ("https://evil.example", None)):
        resp = await allowed.session.options(
            allowed.url("/whip"), headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
        )
        assert resp.status == 204
        assert resp.headers.get("Access-Control-Allow-Origin") == expected
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
        assert resp.headers["Accept-Post"] == "application/sdp"  # WHIP's own preflight header
    resp = await allowed.session.get(allowed.url("/health"), headers={"Origin": "https://app.example"})
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example" and resp.headers["Vary"] == "Origin"


def test_serve_warns_loudly_when_exposed_without_a_token():
    from server.access import startup_warnings

    assert Settings().host == "127.0.0.1"  # loopback unless told otherwise
    assert startup_warnings(Settings()) == []
    warnings = startup_warnings(Settings(host="0.0.0.0"))
    assert warnings and "NO TOKEN" in warnings[0]
    assert startup_warnings(Settings(host="0.0.0.0", api_token=API)) == []
