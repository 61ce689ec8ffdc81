"""`params.outputs` RTMP push: a trickle stream pushed to nginx-rtmp (Debian's libnginx-mod-rtmp),
read back with FFmpeg; validation and the outbound policy; refused, stalled and vanished servers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import av
import numpy as np
import pytest

from media.events import CaptionEvent
from media.manager import STREAMS_KEY
from media.outputs.base import OutputEvent
from media.outputs.rtmp import RtmpOutput
from media.outputs.runner import runner_of
from rtmp.settings import RtmpSettings
from server.keys import TRICKLE_KEY
from tests.conftest import wait_until
from tests.media_gen import make_segments
from tests.rtmp_platform import RtmpPlatform, available, free_port
from tests.trickle_helpers import publish_realtime

pytestmark = pytest.mark.skipif(not available(), reason="nginx with libnginx-mod-rtmp is not installed")

WIDTH, HEIGHT = 320, 240
CAPTION_WORDS = ("HELLO WORLD", "LIVE CAPTIONS", "STREAM LENS")


@pytest.fixture
async def platform() -> AsyncIterator[RtmpPlatform]:
    running = await RtmpPlatform().start()
    try:
        yield running
    finally:
        await running.stop()


@contextlib.asynccontextmanager
async def stalled_listener() -> AsyncIterator[int]:
    """A TCP server that accepts and never reads or answers (a stalled platform)."""
    held: list[asyncio.StreamWriter] = []
    release = asyncio.Event()

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await release.wait()
        writer.close()

    listener = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield int(listener.sockets[0].getsockname()[1])
    finally:
        release.set()
        listener.close()
        for writer in held:
            writer.close()
        await listener.wait_closed()


async def start_stream(server, channel: str, outputs: list[dict], **params) -> tuple[dict, str]:
    server.app[TRICKLE_KEY].create_channel(channel)
    body = {
        "subscribe_url": server.trickle_url(channel),
        "params": {"captions": {"enabled": False}, "outputs": outputs, **params},
    }
    resp = await server.session.post(server.url("/stream/start"), json=body)
    return await resp.json(), resp.status


async def status_of(server, manifest_id: str) -> dict:
    resp = await server.session.get(server.url(f"/stream/{manifest_id}/status"))
    assert resp.status == 200
    return await resp.json()


async def update(server, manifest_id: str, patch: dict) -> tuple[dict, int]:
    resp = await server.session.post(server.url("/stream/params"), json=patch, headers={"X-Stream-Id": manifest_id})
    return await resp.json(), resp.status


async def outputs_in(server, manifest_id: str, *names: str, state: str) -> bool:
    outputs = (await status_of(server, manifest_id)).get("outputs", {})
    return all(outputs.get(name, {}).get("state") == state for name in names)


def probe(path: Path) -> dict:
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-count_frames", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return {s["codec_type"]: s for s in json.loads(result.stdout)["streams"]}


def caption_band_luma(path: Path) -> float:
    """Mean luma of the bottom fifth of every decoded frame (where burned-in captions sit)."""
    means = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            luma = frame.to_ndarray(format="gray")
            means.append(float(luma[-luma.shape[0] // 5 :].mean()))
    assert means, f"no video frames in {path}"
    return float(np.mean(means))


def subcc_text(path: Path) -> str:
    """The CEA-608 captions FFmpeg's own decoder (`subcc`) reads from the H.264 in `path`."""
    srt = path.with_suffix(".srt")
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"movie={path}[out0+subcc]", "-map", "0:1", str(srt)],
        capture_output=True,
        timeout=60,
        check=True,
    )
    return srt.read_text(errors="replace")


async def captions_forever(stream) -> None:
    """Finals on the stream's event bus, as its caption stage publishes them."""
    n = 0
    while True:
        text = CAPTION_WORDS[n % len(CAPTION_WORDS)]
        stream.events.publish(CaptionEvent(text=text, final=True, lang="en", start=n * 0.7, end=n * 0.7 + 0.6))
        n += 1
        await asyncio.sleep(0.7)


async def test_rtmp_outputs_to_nginx(server, platform):
    """One stream, three RTMP outputs: h264 + aac readable, burn-in vs none, CEA-608 for subcc;
    status, events and metrics report each output; the key never shows."""
    outputs = [
        {"type": "rtmp", "id": "burn", "url": platform.url("burn-key"), "captions": "burn_in"},
        {"type": "rtmp", "id": "plain", "url": platform.url("plain-key"), "captions": "none"},
        {"type": "rtmp", "id": "cc", "url": platform.url("cc-key"), "captions": "cea608"},
    ]
    body, code = await start_stream(server, "rtmp-in", outputs)
    assert code == 200, body
    manifest_id = body["manifest_id"]
    stream = server.app[STREAMS_KEY].get(manifest_id)
    states: dict[str, OutputEvent] = {}  # each output's last state event
    stream.events.add_listener(lambda e: states.update({e.output: e}) if isinstance(e, OutputEvent) else None)
    segments = make_segments(9, WIDTH, HEIGHT, fps=30)
    publisher = asyncio.create_task(
        publish_realtime(server.trickle_url("rtmp-in"), segments, token=server.token("trickle"))
    )
    captions = asyncio.create_task(captions_forever(stream))
    try:
        assert await wait_until(lambda: outputs_in(server, manifest_id, "burn", "plain", "cc", state="live"), 15)
        burn, plain, cc = await asyncio.gather(
            platform.record("burn-key", 3, "burn.flv"),
            platform.record("plain-key", 3, "plain.flv"),
            platform.record("cc-key", 4, "cc.flv"),
        )
        status = await status_of(server, manifest_id)
    finally:
        captions.cancel()
        await asyncio.gather(publisher, captions, return_exceptions=True)

    for path in (burn, plain, cc):
        streams = probe(path)
        assert streams["video"]["codec_name"] == "h264" and streams["audio"]["codec_name"] == "aac"
        assert (int(streams["video"]["width"]), int(streams["video"]["height"])) == (WIDTH, HEIGHT)
        assert int(streams["video"]["nb_read_frames"]) >= 30
    # the burned-in band darkens the bottom of the picture; `none` leaves it as the input has it
    assert caption_band_luma(burn) < caption_band_luma(plain) - 10
    text = subcc_text(cc).upper()
    assert any(words in text for words in CAPTION_WORDS), text

    entry = status["outputs"]["burn"]
    assert entry["type"] == "rtmp" and entry["state"] == "live" and entry["last_error"] is None
    assert entry["frames"] > 30 and entry["bytes"] > 10_000 and entry["audio_frames"] > 0
    assert entry["url"] == f"rtmp://127.0.0.1:{platform.port}/live/[redacted]"
    assert status["outputs"]["cc"]["captions_608"] > 0
    assert "burn-key" not in json.dumps(status)  # the stream key is a secret: params too
    metrics = await (await server.session.get(server.url("/metrics"))).text()
    assert f'streamlens_output_frames_total{{manifest_id="{manifest_id}",output="burn",type="rtmp"}}' in metrics
    assert f'streamlens_output_state{{manifest_id="{manifest_id}",output="cc",state="live",type="rtmp"}} 1.0' in metrics

    runner = runner_of(stream)
    assert runner is not None
    running = runner.outputs()
    assert len(running) == 3 and all(isinstance(o, RtmpOutput) and o.running for o in running)
    resp = await server.session.delete(server.url(f"/stream/{manifest_id}"))
    assert resp.status == 200
    # every output closed with the stream (its thread and its FFmpeg), and said so
    assert runner.outputs() == [] and not any(o.running for o in running if isinstance(o, RtmpOutput))
    assert all(e.state == "stopped" for e in states.values()) and set(states) == {"burn", "plain", "cc"}


async def test_rtmp_output_faults_degrade_only_that_output(server, platform):
    """Refused (closed port), stalled (accepts, never reads) and vanished (nginx killed) servers:
    each output reports its own state and error, the stream and the other outputs go on, and the
    vanished one reconnects when nginx comes back."""
    closed = free_port()
    async with stalled_listener() as stalled:
        outputs = [
            {"type": "rtmp", "id": "good", "url": platform.url("good-key")},
            {"type": "rtmp", "id": "refused", "url": f"rtmp://127.0.0.1:{closed}/live/refused-key"},
            {"type": "rtmp", "id": "stalled", "url": f"rtmp://127.0.0.1:{stalled}/live/stalled-key"},
        ]
        body, code = await start_stream(server, "fault-in", outputs)
        assert code == 200, body
        manifest_id = body["manifest_id"]
        stream = server.app[STREAMS_KEY].get(manifest_id)
        segments = make_segments(40, WIDTH, HEIGHT, fps=30)  # cancelled once the test has seen enough
        publisher = asyncio.create_task(
            publish_realtime(server.trickle_url("fault-in"), segments, token=server.token("trickle"))
        )
        try:
            assert await wait_until(lambda: outputs_in(server, manifest_id, "good", state="live"), 15)

            async def failing() -> bool:
                out = (await status_of(server, manifest_id))["outputs"]
                return all(
                    out[n]["state"] in ("retrying", "connecting") and out[n]["last_error"]
                    for n in ("refused", "stalled")
                )

            assert await wait_until(failing, 15)
            out = (await status_of(server, manifest_id))["outputs"]
            assert "refused-key" not in json.dumps(out) and "stalled-key" not in json.dumps(out)
            assert out["good"]["state"] == "live" and out["good"]["reconnects"] == 0

            # the platform disappears: only "good" notices; the input keeps flowing
            await platform.kill()
            assert await wait_until(lambda: outputs_in(server, manifest_id, "good", state="retrying"), 15)
            frames_in = stream.frames_in
            assert await wait_until(lambda: stream.frames_in > frames_in + 15, 5)
            assert stream.active and stream.state.value in ("ONLINE", "DEGRADED_INFERENCE", "DEGRADED_INPUT")
            error = (await status_of(server, manifest_id))["outputs"]["good"]["last_error"]
            assert error and "good-key" not in error

            # ... and comes back: the output reconnects by itself and is readable again
            await platform.start()
            assert await wait_until(lambda: outputs_in(server, manifest_id, "good", state="live"), 15)
            out = (await status_of(server, manifest_id))["outputs"]
            assert out["good"]["reconnects"] >= 1
            again = await platform.record("good-key", 2, "again.flv")
            assert int(probe(again)["video"]["nb_read_frames"]) > 0

            # an update replaces the list: the failing outputs stop, a new one starts, and the
            # unchanged "good" keeps its connection
            sessions = out["good"]["sessions"]
            late = {"type": "rtmp", "id": "late", "url": platform.url("late-key"), "captions": "none"}
            body, code = await update(server, manifest_id, {"outputs": [outputs[0], late]})
            assert code == 200, body

            async def replaced() -> bool:
                out = (await status_of(server, manifest_id))["outputs"]
                return set(out) == {"good", "late"} and out["late"]["state"] == "live"

            assert await wait_until(replaced, 15)
            out = (await status_of(server, manifest_id))["outputs"]
            assert out["good"]["sessions"] == sessions and out["good"]["state"] == "live"
        finally:
            publisher.cancel()
            await asyncio.gather(publisher, return_exceptions=True)


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"type": "rtmp", "url": "http://example.com/live/key"}, "[0].url"),
        ({"type": "rtmp", "url": "rtmp://example.com/onlyapp"}, "[0].url"),
        ({"type": "rtmp", "url": "rtmp://127.0.0.1/live/secret-key", "captions": "loud"}, "[0].captions"),
        ({"type": "carrier-pigeon"}, "[0]: type"),
        ({"type": "rtmp", "url": "rtmp://169.254.169.254/live/secret-key"}, "OUTBOUND_DENY"),
        ({"type": "rtmp", "url": "rtmp://metadata.google.internal/live/secret-key"}, "OUTBOUND_DENY"),
    ],
)
async def test_invalid_outputs_refused_on_start_and_update(server, entry, field):
    """A bad entry (or a denied address) is a 400 naming it, at start and on update; a refused
    update changes nothing."""
    body, code = await start_stream(server, "bad-start", [entry])
    assert code == 400, body
    assert "params.outputs" in body["error"]["message"] and field in body["error"]["message"]
    assert "secret-key" not in json.dumps(body)  # an RTMP stream key is never echoed

    body, code = await start_stream(server, "ok-start", [])
    assert code == 200, body
    manifest_id = body["manifest_id"]
    body, code = await update(server, manifest_id, {"outputs": [entry]})
    assert code == 400, body
    assert "params.outputs" in body["error"]["message"] and field in body["error"]["message"]
    assert (await status_of(server, manifest_id))["params"]["outputs"] == []


async def test_rtmp_ingest_to_platform_with_608(make_server, platform):
    """The whole path: an RTMP publisher (FFmpeg, as OBS) into the server's RTMP ingest, captions
    on the stream's bus, and the platform receiving H.264 + AAC with the captions as CEA-608."""
    server = await make_server(rtmp=RtmpSettings(port=-1))
    outputs = [{"type": "rtmp", "id": "platform", "url": platform.url("obs-key"), "captions": "both"}]
    resp = await server.session.post(
        server.url("/stream/start"),
        json={"source": {"type": "rtmp"}, "params": {"captions": {"enabled": False}, "outputs": outputs}},
    )
    body = await resp.json()
    assert resp.status == 200, body
    manifest_id = body["manifest_id"]
    publish = [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin",
        "-re", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=30", "-re", "-f", "lavfi", "-i", "sine=f=440:r=44100",
        "-t", "12", "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "30",
        "-pix_fmt", "yuv420p", "-c:a", "aac", "-f", "flv", f"{body['ingest_url']}/{body['stream_key']}",
    ]  # fmt: skip
    publisher = await asyncio.create_subprocess_exec(*publish, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    captions = asyncio.create_task(captions_forever(server.app[STREAMS_KEY].get(manifest_id)))
    try:
        assert await wait_until(lambda: outputs_in(server, manifest_id, "platform", state="live"), 15)
        recording = await platform.record("obs-key", 4, "obs.flv", wall_limit=10)
    finally:
        captions.cancel()
        if publisher.returncode is None:
            publisher.kill()
        await asyncio.gather(publisher.wait(), captions, return_exceptions=True)
    streams = probe(recording)
    assert streams["video"]["codec_name"] == "h264" and streams["audio"]["codec_name"] == "aac"
    assert int(streams["video"]["nb_read_frames"]) > 0
    text = subcc_text(recording).upper()
    assert any(words in text for words in CAPTION_WORDS), text
