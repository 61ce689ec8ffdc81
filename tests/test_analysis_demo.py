"""The demo page's "Analyse a video" tab in a real headless Chromium (Debian /usr/bin/chromium via
Playwright): upload a generated video, watch the progress, read the tag timeline."""

from __future__ import annotations

import os

import pytest

from server.settings import Settings
from tests.analysis_media import face_between, write_video
from tests.conftest import start_server, stop_server
from tests.webrtc_helpers import BASE_FLAGS, CHROMIUM, enter_token

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed")


async def test_analyse_tab_uploads_and_draws_the_face_span(monkeypatch, tmp_path):
    from playwright.async_api import async_playwright

    video = write_video(str(tmp_path / "face.mp4"), 10, face_between(2.0, 7.0), fps=10)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    server = await start_server(Settings(host="127.0.0.1", port=0, asr_preload=False))
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=BASE_FLAGS)
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 900})
                await page.goto(server.url("/"))
                await enter_token(page, server.token("api"))
                assert not await page.is_visible("#an-run")  # the live tab first
                await page.click("#analyze-tab")
                assert await page.is_visible("#an-run") and not await page.is_visible("#start")
                await page.set_input_files("#an-file", video)
                await page.fill("#an-tags", "face")
                await page.fill("#an-interval", "0.5")
                await page.click("#an-run")
                await page.wait_for_selector(".an-span", timeout=60_000)
                assert await page.text_content("#an-status") == "done"
                assert await page.evaluate("document.getElementById('an-progress').value") == 1
                assert await page.text_content(".an-label") == "face"
                # the span bar sits at 2-7 s of 10 s: left 20 %, width 50 %
                left = await page.evaluate("parseFloat(document.querySelector('.an-span').style.left)")
                width = await page.evaluate("parseFloat(document.querySelector('.an-span').style.width)")
                assert abs(left - 20) <= 5 and abs(width - 50) <= 10, (left, width)
                await page.click("button[data-tab='live']")
                assert await page.is_visible("#start")
            finally:
                await browser.close()
    finally:
        await stop_server(server)
