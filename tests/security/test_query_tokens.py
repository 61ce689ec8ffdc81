"""`?token=` rides in URLs (access logs, browser history, Referer headers), so it is accepted only
on the viewer routes a browser opens without headers (SSE, WebVTT), and there only a viewer token:
WHEP_TOKEN or the stream's own, never the API token. The demo's "Analyse a video" tab sends the API
token in an Authorization header only."""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from httpapi.routes import Role, RouteTable, registry_of
from server.settings import Settings
from tests.analysis_media import face_between, write_video
from tests.conftest import start_server, stop_server
from tests.webrtc_helpers import BASE_FLAGS, CHROMIUM

API = "api-secret-q"
WHEP = "whep-secret-q"
STATIC = Path(__file__).resolve().parents[2] / "static"


async def start(server, orch_trickle, manifest_id: str) -> str:
    """Start a stream with the API token in a header; its own viewer token."""
    orch_trickle.trickle.create_channel(manifest_id)
    body = {"subscribe_url": orch_trickle.trickle_url(manifest_id), "manifest_id": manifest_id}
    resp = await server.session.post(server.url("/stream/start"), json=body, headers={"Authorization": f"Bearer {API}"})
    assert resp.status == 200, await resp.text()
    return (await resp.json())["viewer_token"]


async def status_of(server, path: str, token: str) -> int:
    # a session of its own: nothing but the query carries a token
    async with aiohttp.ClientSession() as bare, bare.get(server.url(path), params={"token": token}) as resp:
        return resp.status


async def test_the_api_token_in_a_url_opens_nothing(make_server, orch_trickle):
    server = await make_server(api_token=API, whep_token=WHEP, asr_preload=False)
    viewer = await start(server, orch_trickle, "q-1")
    for path in (
        "/streams",
        "/stream/q-1/status",
        "/stream/q-1/captions.vtt",
        "/stream/q-1/events",
        "/stream/q-1/captions",
        "/v1/jobs/x1/events",
        "/v1/jobs/x1/transcript.vtt",
        "/v1/jobs/x1/transcript.srt",
    ):
        assert await status_of(server, path, API) == 401, path
    async with aiohttp.ClientSession() as bare:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await bare.ws_connect(server.url(f"/translate/stream?token={API}"))
        assert refused.value.status == 401
    # viewer tokens still open viewer routes from a URL (EventSource, <track src>)
    for token in (WHEP, viewer):
        assert await status_of(server, "/stream/q-1/captions.vtt", token) == 200
    # ...and never an API route
    assert await status_of(server, "/streams", WHEP) == 401
    assert await status_of(server, "/streams", viewer) == 401


async def test_without_whep_token_the_api_fallback_stays_out_of_urls(make_server, orch_trickle):
    """The viewer role falls back to API_TOKEN in a header; a `?token=` never does."""
    server = await make_server(api_token=API, asr_preload=False)
    viewer = await start(server, orch_trickle, "q-2")
    assert await status_of(server, "/stream/q-2/captions.vtt", API) == 401
    assert await status_of(server, "/stream/q-2/captions.vtt", viewer) == 200
    resp = await server.session.get(server.url("/stream/q-2/captions.vtt"), headers={"Authorization": f"Bearer {API}"})
    assert resp.status == 200


def test_query_tokens_are_declared_on_viewer_routes_only():
    from server.app import create_app

    with pytest.raises(ValueError, match="viewer routes only"):
        RouteTable().get("/x", role=Role.API, query_token=True)(lambda request: None)
    app = create_app(Settings(asr_preload=False))
    with_query = [s for s in registry_of(app).specs if s.query_token]
    assert with_query and all(Role.VIEWER in s.roles for s in with_query)


def test_the_demo_scripts_put_no_token_in_a_url():
    for script in STATIC.glob("*.js"):
        text = script.read_text()
        assert "?token=" not in text and "&token=" not in text, script.name
        assert "EventSource(" not in text or script.name != "analyze.js"


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed")
async def test_the_analyse_tab_sends_the_token_in_headers_only(monkeypatch, tmp_path):
    """Chromium runs a job with API_TOKEN set: progress over SSE (read with fetch), the result, and
    the WebVTT download as a blob: URL; no request URL carries the token."""
    from playwright.async_api import async_playwright

    video = write_video(
        str(tmp_path / "face.mp4"), 4, face_between(1.0, 3.0), fps=10, audio=np.zeros(16000 * 4, np.float32)
    )
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    server = await start_server(Settings(host="127.0.0.1", port=0, asr_preload=False, api_token=API))
    urls: list[str] = []
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=BASE_FLAGS)
            try:
                page = await browser.new_page()
                page.on("request", lambda request: urls.append(request.url))
                await page.goto(server.url("/#analyze"))
                await page.evaluate("(token) => { document.getElementById('token').value = token; }", API)
                await page.set_input_files("#an-file", video)
                await page.fill("#an-tags", "face")
                await page.check("#an-transcript")
                await page.click("#an-run")
                await page.wait_for_function(
                    "document.getElementById('an-status').textContent === 'done'", timeout=60_000
                )
                await page.wait_for_function(
                    "(document.getElementById('an-vtt') || {}).href?.startsWith('blob:')", timeout=30_000
                )
                vtt = await page.evaluate("fetch(document.getElementById('an-vtt').href).then((r) => r.text())")
                assert vtt.startswith("WEBVTT"), vtt[:80]
            finally:
                await browser.close()
    finally:
        await stop_server(server)
    assert any("/events" in url for url in urls) and any("transcript.vtt" in url for url in urls), urls
    assert not [url for url in urls if API in url or "token=" in url]
