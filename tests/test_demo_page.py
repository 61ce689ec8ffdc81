"""The demo page in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright).

The fake camera plays a grey Y4M file (neutral chroma, so screen brightness is luma). The page
sends it to the server, which burns its header (a darkened band with white text) into the top
rows; the test checks those PIXELS of the returned video against the local preview, plus the
data-channel driven parts of the page (captions panel, text-track cues, stats, params).
"""

from __future__ import annotations

import contextlib
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from media.events import CaptionEvent
from media.manager import STREAMS_KEY  # noqa: E402
from server.webrtc_service import WEBRTC_KEY  # noqa: E402
from tests.conftest import wait_until
from tests.webrtc_helpers import BASE_FLAGS, CHROMIUM, enter_token, loopback_settings  # noqa: E402

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed")


def write_grey_y4m(path: Path, width: int = 640, height: int = 480, frames: int = 30) -> Path:
    """A grey picture with a moving dark square: neutral chroma, plain luma."""
    with av.open(str(path), "w", format="yuv4mpegpipe") as container:
        stream = container.add_stream("rawvideo", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            planes = np.full((height * 3 // 2, width), 128, np.uint8)
            x = 40 + index * 8
            planes[200:280, x : x + 80] = 40
            frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            frame.pts, frame.time_base = index, Fraction(1, 30)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def band(image_path: Path) -> np.ndarray:
    """Brightness of the top band where the server draws its header (stream id + clock)."""
    grey = np.asarray(Image.open(image_path).convert("L")).astype(float)
    height, width = grey.shape
    return grey[2 : max(4, int(height * 0.035)), int(width * 0.02) : int(width * 0.5)]


async def launch(playwright, flags: list[str]):
    return await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=BASE_FLAGS + flags)


@contextlib.asynccontextmanager
async def fake_camera_browser(tmp_path: Path, audio: Path | None = None):
    """Chromium whose camera plays a grey Y4M file (and whose microphone plays `audio`, if given)."""
    from playwright.async_api import async_playwright

    y4m = write_grey_y4m(tmp_path / "grey.y4m")
    flags = [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={y4m}",
    ]
    if audio is not None:
        flags.append(f"--use-file-for-fake-audio-capture={audio}")
    async with async_playwright() as playwright:
        browser = await launch(playwright, flags)
        try:
            yield browser
        finally:
            await browser.close()


async def test_demo_page_shows_processed_video_and_events(make_server, tmp_path):
    server = await make_server(**loopback_settings())
    async with fake_camera_browser(tmp_path) as browser:
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        await page.goto(server.url("/"))
        assert await page.title() == "streamlens — live demo"
        await enter_token(page, server.token("api"))
        await page.click("#start")
        await page.wait_for_function("document.body.dataset.manifestId", timeout=30_000)
        manifest_id = await page.evaluate("document.body.dataset.manifestId")
        stream = server.app[STREAMS_KEY].get_active(manifest_id)
        assert stream is not None and stream.metadata["transport"] == "webrtc"
        # processed video plays and data-channel messages arrive
        await page.wait_for_function(
            "(() => { const v = document.getElementById('remote');"
            " return v.readyState >= 2 && v.currentTime > 1 && (window.streamlensMessages || 0) >= 2; })()",
            timeout=30_000,
        )

        # parameter controls send {"type": "params"} over the data channel
        await page.select_option("#target-lang", "es")
        await page.check("#vision-enabled")
        assert await wait_until(
            lambda: (
                stream.params.get("captions", {}).get("translate_to") == ["es"]
                and stream.params.get("vision", {}).get("enabled") is True
            ),
            timeout=10,
        )

        # captions from the stream's bus: panel + native text-track cue, translation shown
        stream.events.publish(CaptionEvent(text="hello browser", final=True, translations={"es": "hola navegador"}))
        await page.wait_for_function(
            "document.querySelector('#captions li') && "
            "document.querySelector('#captions li').textContent.includes('hello browser')",
            timeout=10_000,
        )
        assert await page.text_content("#captions li .translation") == "hola navegador"
        cues = await page.evaluate(
            "Array.from(document.getElementById('remote').textTracks[0].cues || []).map(c => c.text)"
        )
        assert any("hello browser" in cue and "hola navegador" in cue for cue in cues)

        # stats: getStats (fps, round trip) and the server's status messages (state, drops)
        await page.wait_for_function(
            "document.getElementById('stat-rtt').textContent.endsWith('ms') && "
            "document.getElementById('stat-fps').textContent !== '–' && "
            "document.getElementById('stat-dropped').textContent !== '–'",
            timeout=15_000,
        )
        assert await page.text_content("#stat-state") in ("ONLINE", "DEGRADED_INPUT", "DEGRADED_INFERENCE", "LOADING")
        assert (await page.text_content("#stat-dropped")).isdigit()

        # PIXELS: the returned video carries the server's header band; the camera does not
        await page.screenshot(path=str(tmp_path / "demo.png"))
        await page.locator("#remote").screenshot(path=str(tmp_path / "remote.png"))
        await page.locator("#local").screenshot(path=str(tmp_path / "local.png"))
        local, remote = band(tmp_path / "local.png"), band(tmp_path / "remote.png")
        assert local.mean() > 100 and local.std() < 8  # plain grey camera picture
        assert remote.mean() < 0.7 * local.mean()  # the darkened header band
        assert np.percentile(remote, 99.5) > 170  # with bright text in it

        # the WHEP viewer page watches the same processed stream (and gets its events); with tokens
        # set, through the page's share link, whose fragment carries the stream's viewer token
        viewer = await browser.new_page(viewport={"width": 1280, "height": 900})
        viewer_path = f"/view/{manifest_id}"
        if server.token("viewer"):
            viewer_path = await page.get_attribute("#viewer-link", "href")
        await viewer.goto(server.url(viewer_path))
        await viewer.wait_for_function(
            "(() => { const v = document.getElementById('remote');"
            " return v.readyState >= 2 && v.currentTime > 0.5 && (window.streamlensMessages || 0) >= 1; })()",
            timeout=30_000,
        )
        assert server.app[WEBRTC_KEY].count("whep") == 1
        await viewer.locator("#remote").screenshot(path=str(tmp_path / "viewer.png"))
        watched = band(tmp_path / "viewer.png")
        assert watched.mean() < 0.7 * local.mean() and np.percentile(watched, 99.5) > 170
        await viewer.click("#stop")  # DELETEs its WHEP session
        assert await wait_until(lambda: server.app[WEBRTC_KEY].count("whep") == 0, timeout=10)

        # Stop closes the peer connection: the stream ends and everything is freed
        await page.click("#stop")
        assert await wait_until(lambda: not server.app[STREAMS_KEY].active(), timeout=20)
        assert await wait_until(lambda: not server.app[WEBRTC_KEY].sessions, timeout=10)


async def test_demo_page_explains_denied_camera(make_server):
    from playwright.async_api import async_playwright

    server = await make_server(**loopback_settings())
    async with async_playwright() as playwright:
        browser = await launch(playwright, ["--use-fake-device-for-media-stream", "--deny-permission-prompts"])
        try:
            page = await browser.new_page()
            await page.goto(server.url("/"))
            assert await page.is_hidden("#notice")
            await page.click("#start")
            await page.wait_for_function("document.body.dataset.cameraError", timeout=15_000)
            assert await page.evaluate("document.body.dataset.cameraError") == "NotAllowedError"
            assert await page.is_visible("#notice")
            assert "denied" in await page.text_content("#notice")
            assert await page.is_enabled("#start")  # the user can try again
            assert not server.app[STREAMS_KEY].active() and not server.app[WEBRTC_KEY].sessions
        finally:
            await browser.close()
