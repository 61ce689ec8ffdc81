"""Shared fixtures: a real streamlens server on a loopback port, and trickle helpers."""

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

from server.app import create_app, make_runner  # noqa: E402
from server.routes_system import health_status  # noqa: E402
from server.settings import Settings  # noqa: E402


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


async def start_server(settings: Settings | None = None, app: web.Application | None = None) -> RunningServer:
    settings = settings or Settings(host="127.0.0.1", port=0)
    app = app or create_app(settings)
    runner = make_runner(app, settings, shutdown_timeout=10)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
    # ready as a Livepeer orchestrator sees it: /health no longer LOADING (speech model loaded)
    await wait_until(lambda: health_status(app) != "LOADING", timeout=60, interval=0.05)
    return RunningServer(app, runner, f"http://127.0.0.1:{port}", session)


async def stop_server(server: RunningServer) -> None:
    # as `streamlens serve` does: stop streams while still listening, then close everything
    await server.app["streams"].stop_all("server shutting down")
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
