"""A web page of another site must not drive the server: with no token set only a loopback `Host`
(or one in ALLOWED_HOSTS) is answered, against DNS rebinding; in every mode a state-changing
request or a WebSocket upgrade from a foreign `Origin` is refused (a browser sends those without
a CORS preflight). Requests without `Origin` (curl, FFmpeg, OBS, servers) pass."""

from __future__ import annotations

import asyncio
import os
import re

import aiohttp
import pytest
from aiohttp import web

from httpapi.routes import registry_of
from media.manager import STREAMS_KEY
from server.access import SAFE_METHODS
from server.app import create_app
from server.keys import TRICKLE_KEY
from server.settings import Settings
from tests.conftest import RunningServer, start_server, stop_server, wait_until
from tests.security.listener import CountingListener
from tests.webrtc_helpers import BASE_FLAGS, CHROMIUM

API = "api-secret-h"
EVIL = "http://evil.example"


@pytest.fixture
async def open_server():
    """Servers with no token at all, in both test modes (the token pass would otherwise set them)."""
    started: list[RunningServer] = []

    async def factory(**overrides) -> RunningServer:
        settings = Settings(host="127.0.0.1", port=0, asr_preload=False, **overrides)
        running = await start_server(settings, app=create_app(settings))
        started.append(running)
        return running

    yield factory
    for running in started:
        await stop_server(running)


def port_of(server: RunningServer) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


async def start_stream(server: RunningServer, orch_trickle, manifest_id: str) -> None:
    orch_trickle.trickle.create_channel(manifest_id)
    body = {"subscribe_url": orch_trickle.trickle_url(manifest_id), "manifest_id": manifest_id}
    resp = await server.session.post(server.url("/stream/start"), json=body, headers=server.auth_headers("api"))
    assert resp.status == 200, await resp.text()


async def refused(resp: aiohttp.ClientResponse, code: str, names: str) -> None:
    assert resp.status == 403, (resp.status, await resp.text())
    error = (await resp.json())["error"]
    assert error["code"] == code and names in error["message"], error


# -- Host ----------------------------------------------------------------------------------------------
async def test_open_mode_answers_only_loopback_hosts(open_server):
    server = await open_server()
    port = port_of(server)
    for host in (
        "evil.example",
        f"evil.example:{port}",
        f"192.168.1.5:{port}",
        "127.0.0.1.evil.example",
        f"localhost.evil.example:{port}",
        "[fd00::1]:8000",
        "bad host",
    ):
        for method, path in (
            ("GET", "/streams"),
            ("GET", "/health"),
            ("POST", "/stream/start"),
            ("GET", "/no/such/route"),
        ):
            resp = await server.session.request(method, server.url(path), json={}, headers={"Host": host})
            await refused(resp, "host_not_allowed", "ALLOWED_HOSTS")
    assert not server.app[STREAMS_KEY].active()
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"127.0.0.2:{port}", "[::1]", f"[::1]:{port}"):
        resp = await server.session.get(server.url("/streams"), headers={"Host": host})
        assert resp.status == 200, host


async def test_allowed_hosts_adds_names_and_star_allows_any(open_server):
    server = await open_server(allowed_hosts="media.example, [fd00::1]")
    for host in ("media.example", "MEDIA.example:8000", "[fd00::1]:8000", "localhost:1"):
        assert (await server.session.get(server.url("/streams"), headers={"Host": host})).status == 200, host
    await refused(
        await server.session.get(server.url("/streams"), headers={"Host": "evil.example"}),
        "host_not_allowed",
        "ALLOWED_HOSTS",
    )
    anyone = await open_server(allowed_hosts="*")
    assert (await anyone.session.get(anyone.url("/streams"), headers={"Host": "evil.example"})).status == 200


async def test_with_tokens_the_host_is_checked_only_when_allowed_hosts_is_set(make_server):
    auth = {"Authorization": f"Bearer {API}"}
    unchecked = await make_server(api_token=API)
    resp = await unchecked.session.get(unchecked.url("/streams"), headers={"Host": "streamlens:8000", **auth})
    assert resp.status == 200
    checked = await make_server(api_token=API, allowed_hosts="streamlens")
    for host, status in (("streamlens:8000", 200), ("localhost", 200), ("evil.example", 403)):
        resp = await checked.session.get(checked.url("/streams"), headers={"Host": host, **auth})
        assert resp.status == status, host


# -- Origin --------------------------------------------------------------------------------------------
def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", path)


async def test_every_state_changing_route_refuses_a_foreign_origin(make_server):
    server = await make_server(asr_preload=False)
    specs = [s for s in registry_of(server.app).specs if s.method not in SAFE_METHODS]
    assert len(specs) > 30
    for origin in (
        EVIL,
        "null",
        f"http://127.0.0.1:{port_of(server) + 1}",
        f"https://127.0.0.1:{port_of(server)}",
        f"http://localhost:{port_of(server)}",
    ):
        for spec in specs:
            resp = await server.session.request(
                spec.method,
                server.url(concrete(spec.path)),
                data=b"x",
                headers={"Origin": origin, "Content-Type": "text/plain"},
            )
            await refused(resp, "origin_not_allowed", "CORS_ORIGINS")
    assert not server.app[STREAMS_KEY].active()
    # a read is not refused: a browser does not let the page read it without CORS anyway
    resp = await server.session.get(server.url("/streams"), headers={"Origin": EVIL})
    assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers


async def test_text_plain_analyze_from_a_foreign_page_fetches_nothing(open_server):
    server = await open_server()
    async with CountingListener("127.0.0.1") as listener:
        resp = await server.session.post(
            server.url("/analyze"),
            data=f'{{"video_url": "{listener.url("/v.mp4")}"}}',
            headers={"Origin": EVIL, "Content-Type": "text/plain"},
        )
        await refused(resp, "origin_not_allowed", EVIL)
        assert listener.connections == 0


@pytest.mark.parametrize("path", ["/v1/analyze", "/v1/transcribe", "/v1/inference/upload"])
async def test_multipart_upload_from_a_foreign_page_is_refused(make_server, path):
    server = await make_server(asr_preload=False)
    form = aiohttp.FormData()
    form.add_field("prompt", "what is shown")
    form.add_field("video", b"\x00" * 1024, filename="v.mp4", content_type="video/mp4")
    resp = await server.session.post(server.url(path), data=form, headers={"Origin": EVIL})
    await refused(resp, "origin_not_allowed", EVIL)


async def test_stream_stop_and_trickle_post_from_a_foreign_page_are_refused(make_server, orch_trickle):
    server = await make_server(asr_preload=False)
    await start_stream(server, orch_trickle, "origin-1")
    resp = await server.session.post(
        server.url("/stream/stop"),
        data="origin-1",
        headers={"Origin": EVIL, "X-Stream-Id": "origin-1", "Content-Type": "text/plain"},
    )
    await refused(resp, "origin_not_allowed", EVIL)
    assert server.app[STREAMS_KEY].get_active("origin-1") is not None
    resp = await server.session.post(server.trickle_url("planted/0"), data=b"<script>", headers={"Origin": EVIL})
    await refused(resp, "origin_not_allowed", EVIL)
    assert not server.app[TRICKLE_KEY].has_channel("planted")
    # the same requests from the server's own origin (what Chromium sends from the demo page) pass
    own = server.base_url
    resp = await server.session.post(server.trickle_url("planted/0"), data=b"ok", headers={"Origin": own})
    assert resp.status == 200 and server.app[TRICKLE_KEY].has_channel("planted")
    resp = await server.session.post(
        server.url("/stream/stop"), json={"manifest_id": "origin-1"}, headers={"Origin": own, "X-Stream-Id": "origin-1"}
    )
    assert resp.status == 200, await resp.text()
    assert await wait_until(lambda: server.app[STREAMS_KEY].get_active("origin-1") is None, timeout=10)


async def test_same_origin_variants_and_cors_origins(make_server):
    server = await make_server(asr_preload=False, cors_origins="https://app.example")
    port = port_of(server)
    accepted = [
        ({"Origin": f"http://127.0.0.1:{port}"}, "/stream/stop"),
        ({"Origin": f"http://localhost:{port}", "Host": f"localhost:{port}"}, "/stream/stop"),
        ({"Origin": "http://localhost", "Host": "localhost:80"}, "/stream/stop"),  # default port
        ({"Origin": f"https://127.0.0.1:{port}", "X-Forwarded-Proto": "https"}, "/stream/stop"),  # behind TLS proxy
        ({"Origin": "https://app.example"}, "/stream/stop"),  # listed in CORS_ORIGINS
    ]
    for headers, path in accepted:
        resp = await server.session.post(
            server.url(path), json={"manifest_id": "nope"}, headers={**headers, **server.auth_headers("livepeer")}
        )
        assert resp.status == 404, (headers, resp.status, await resp.text())  # reached the handler
    for origin in ("https://app.example.evil", "http://app.example", "null"):
        resp = await server.session.post(server.url("/stream/stop"), json={}, headers={"Origin": origin})
        await refused(resp, "origin_not_allowed", "CORS_ORIGINS")
    anyone = await make_server(asr_preload=False, cors_origins="*")
    resp = await anyone.session.post(
        anyone.url("/stream/stop"),
        json={"manifest_id": "nope"},
        headers={"Origin": EVIL, **anyone.auth_headers("livepeer")},
    )
    assert resp.status == 404


async def test_websocket_from_a_foreign_origin_is_refused(make_server):
    server = await make_server(asr_preload=False)
    url = server.url("/translate/stream")
    async with aiohttp.ClientSession() as session:
        for origin in (EVIL, "null"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused_ws:
                await session.ws_connect(url, origin=origin, headers=server.auth_headers("api"))
            assert refused_ws.value.status == 403
        async with session.ws_connect(url, origin=server.base_url, headers=server.auth_headers("api")) as ws:
            assert not ws.closed
        async with session.ws_connect(url, headers=server.auth_headers("api")) as ws:  # no Origin: not a browser
            assert not ws.closed


# -- what Chromium really sends ------------------------------------------------------------------------
# what a page does with no token: a POST a browser sends without a preflight, then a WebSocket
ATTACK_JS = """async (target) => {
  await fetch(target + "/stream/stop", {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"},
                                        body: JSON.stringify({manifest_id: "victim"})});
  return await new Promise((resolve) => {
    const ws = new WebSocket(target.replace("http", "ws") + "/translate/stream");
    ws.onopen = () => { ws.close(); resolve("open"); };
    ws.onerror = () => resolve("error");
  });
}"""


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed")
async def test_chromium_on_a_foreign_page_cannot_drive_an_open_server(open_server, orch_trickle):
    from playwright.async_api import async_playwright

    server = await open_server()
    await start_stream(server, orch_trickle, "victim")

    async def page_of_another_site(_request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>a page</title>", content_type="text/html")

    attacker = web.Application()
    attacker.router.add_get("/", page_of_another_site)
    runner = web.AppRunner(attacker)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    attacker_url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=BASE_FLAGS)
            try:
                page = await browser.new_page()
                await page.goto(attacker_url)
                assert await asyncio.wait_for(page.evaluate(ATTACK_JS, server.base_url), 30) == "error"
                assert server.app[STREAMS_KEY].get_active("victim") is not None
                # the server's own page: Chromium's Origin is the server's, so the same calls work
                await page.goto(server.url("/"))
                assert await asyncio.wait_for(page.evaluate(ATTACK_JS, server.base_url), 30) == "open"
                assert await wait_until(lambda: server.app[STREAMS_KEY].get_active("victim") is None, timeout=10)
            finally:
                await browser.close()
    finally:
        await runner.cleanup()


def test_serve_warns_when_any_host_may_reach_an_open_server():
    from server.access import startup_warnings

    assert startup_warnings(Settings(allowed_hosts="media.example")) == []
    assert any("DNS-rebinding" in w for w in startup_warnings(Settings(allowed_hosts="*")))
    assert startup_warnings(Settings(allowed_hosts="*", api_token=API)) == []
