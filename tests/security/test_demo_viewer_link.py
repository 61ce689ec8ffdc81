"""The demo page on a server with API_TOKEN set, in real Chromium: the publisher types the token,
the page shows a viewer link carrying only the stream's viewer token (in the URL fragment, which
no server log sees), and the viewer page plays the stream with it."""

from __future__ import annotations

import os

import pytest

from server.webrtc_service import WEBRTC_KEY
from tests.conftest import wait_until
from tests.test_demo_page import fake_camera_browser
from tests.webrtc_helpers import CHROMIUM, loopback_settings

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed")

API = "demo-api-token-3c1f"


async def test_viewer_link_plays_with_the_stream_token_only(make_server, tmp_path, caplog):
    server = await make_server(**loopback_settings(api_token=API))
    async with fake_camera_browser(tmp_path) as browser:
        page = await browser.new_page()
        await page.goto(server.url("/"))
        await page.click("details:has(#token) summary")  # the token field is folded away
        await page.fill("#token", API)
        await page.click("#start")
        await page.wait_for_function("document.body.dataset.manifestId", timeout=30_000)
        manifest_id = await page.evaluate("document.body.dataset.manifestId")
        href = await page.get_attribute("#viewer-link", "href")
        assert href.startswith(f"/view/{manifest_id}#token=")
        viewer_token = href.split("#token=", 1)[1]
        assert viewer_token and viewer_token != API

        viewer = await browser.new_page()
        await viewer.goto(server.url(href))
        await viewer.wait_for_function(
            "(() => { const v = document.getElementById('remote'); return v.readyState >= 2 && v.currentTime > 0.5; })()",
            timeout=30_000,
        )
        service = server.app[WEBRTC_KEY]
        assert await wait_until(lambda: service.count("whep") == 1, timeout=10)
        await viewer.click("#stop")  # DELETE of its session, with the viewer token
        assert await wait_until(lambda: service.count("whep") == 0, timeout=10)
        await page.click("#stop")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert viewer_token not in logged and API not in logged
