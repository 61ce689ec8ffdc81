"""Shared fixtures: a real streamlens server on a loopback port, and trickle helpers.

Token mode (`STREAMLENS_TEST_TOKENS=1`, which `make test` runs as its second pass): every server a
test starts without tokens of its own gets a distinct token per role, and `server.session` sends
the token of the route's role, looked up in the server's own route declarations, so the whole
suite proves that no feature works only in open mode. Peers outside the session (FFmpeg, Chromium,
pytrickle) take their token from `server.token(role)`.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never fetch model weights in tests
# analysis jobs (SQLite) of test servers go to a scratch folder, never ./data in the checkout
os.environ.setdefault("DATA_DIR", tempfile.mkdtemp(prefix="streamlens-test-data-"))
# no test server takes the RTMP port 1935; RTMP tests ask for a free port (rtmp.port = -1)
os.environ.setdefault("RTMP_PORT", "0")

from media.manager import STREAMS_KEY  # noqa: E402
from server.app import create_app, make_runner  # noqa: E402
from server.routes_system import health_status  # noqa: E402
from server.settings import (
    SETTINGS_KEY,  # noqa: E402
    Settings,  # noqa: E402
)

TOKEN_MODE = os.environ.get("STREAMLENS_TEST_TOKENS") == "1"
# one distinct token per role setting, so a route that checks the wrong role fails in token mode
TEST_TOKENS = {
    "api_token": "test-api-token",
    "auth_token": "test-livepeer-token",
    "whip_token": "test-ingest-token",
    "whep_token": "test-viewer-token",
    "trickle_token": "test-trickle-token",
    "metrics_token": "test-metrics-token",
}
ROLE_SETTING = {
    "api": "api_token",
    "livepeer": "auth_token",
    "ingest": "whip_token",
    "viewer": "whep_token",
    "trickle": "trickle_token",
    "metrics": "metrics_token",
}


def with_test_tokens(settings: Settings) -> Settings:
    """In token mode, `settings` with every role's token set (unless the test set tokens itself)."""
    if not TOKEN_MODE or any(getattr(settings, name, None) for name in TEST_TOKENS):
        return settings
    return settings.model_copy(update=TEST_TOKENS)


def settings_token(settings: Settings, role: str) -> str | None:
    """The token a caller of `role` presents: the role's own, else API_TOKEN, then AUTH_TOKEN."""
    for name in (ROLE_SETTING[role], "api_token", "auth_token"):
        value = getattr(settings, name, None)
        value = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        if value:
            return value
    return None


async def route_roles(app: web.Application, method: str, path: str) -> tuple[str, ...]:
    """The roles `app` declares for `method path` (empty when the router does not match it)."""
    from aiohttp.test_utils import make_mocked_request

    from httpapi.routes import registry_of

    match = await app.router.resolve(make_mocked_request(method, path, app=app))
    spec = registry_of(app).spec_for(match.route) if match.http_exception is None else None
    return tuple(str(role) for role in spec.roles) if spec is not None else ()


def bearer_middleware(app: web.Application, base_url: str):
    """A client middleware that presents the token of the route's role to this server only."""

    async def middleware(request: aiohttp.ClientRequest, handler):
        if (
            str(request.url).startswith(base_url)
            and "Authorization" not in request.headers
            and "token" not in request.url.query
        ):
            for role in await route_roles(app, request.method, request.url.path):
                token = None if role == "public" else settings_token(app[SETTINGS_KEY], role)
                if token:
                    request.headers["Authorization"] = f"Bearer {token}"
                    break
        return await handler(request)

    return middleware


@dataclass
class RunningServer:
    app: web.Application
    runner: web.AppRunner
    base_url: str
    session: aiohttp.ClientSession

    def url(self, path: str) -> str:
        return self.base_url + path

    def trickle_url(self, channel: str) -> str:
        return f"{self.base_url}/ai/trickle/{channel}"

    def token(self, role: str) -> str | None:
        """The bearer token a `role` caller presents to this server (None in open mode)."""
        return settings_token(self.app[SETTINGS_KEY], role)

    def auth_headers(self, role: str) -> dict[str, str]:
        token = self.token(role)
        return {"Authorization": f"Bearer {token}"} if token else {}


async def start_server(settings: Settings | None = None, app: web.Application | None = None) -> RunningServer:
    settings = with_test_tokens(settings or Settings(host="127.0.0.1", port=0))
    app = app or create_app(settings)
    runner = make_runner(app, settings, shutdown_timeout=10)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    base_url = f"http://127.0.0.1:{port}"
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=60), middlewares=(bearer_middleware(app, base_url),) if TOKEN_MODE else ()
    )
    # ready as a Livepeer orchestrator sees it: /health no longer LOADING (speech model loaded)
    await wait_until(lambda: health_status(app) != "LOADING", timeout=60, interval=0.05)
    return RunningServer(app, runner, base_url, session)


async def stop_server(server: RunningServer) -> None:
    # as `streamlens serve` does: stop streams while still listening, then close everything
    await server.app[STREAMS_KEY].stop_all("server shutting down")
    await server.session.close()
    await server.runner.cleanup()


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    running = await start_server()
    try:
        yield running
    finally:
        await stop_server(running)


@pytest.fixture
async def make_server():
    """Start servers with custom settings; all are cleaned up after the test."""
    started: list[RunningServer] = []

    async def factory(**overrides) -> RunningServer:
        settings = Settings(host="127.0.0.1", port=0, **overrides)
        running = await start_server(settings)
        started.append(running)
        return running

    yield factory
    for running in started:
        await stop_server(running)


async def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Poll `predicate` (sync or async) until true or the timeout passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return True
        await asyncio.sleep(interval)
    return False


@pytest.fixture
async def orch_trickle():
    """A trickle server of its own, as the orchestrator hosts a stream's channels (no tokens)."""
    from tests.interop.gateway import OrchestratorTrickle

    host = await OrchestratorTrickle().start()
    try:
        yield host
    finally:
        await host.stop()
