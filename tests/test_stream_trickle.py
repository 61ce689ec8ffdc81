"""End to end over loopback: trickle in → decode → overlay → encode → trickle out."""

from __future__ import annotations

import asyncio
import re

import numpy as np

from media.manager import STREAMS_KEY
from server.keys import TRICKLE_KEY
from tests.conftest import wait_until
from tests.media_gen import decode_ts, make_segments, read_frame_id, synthetic_picture
from tests.trickle_helpers import OutputCollector, publish_realtime

SECONDS = 6


def metric_value(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_trickle_stream_end_to_end(server):
    trickle = server.app[TRICKLE_KEY]
    trickle.create_channel("e2e")  # the orchestrator creates the channels before the start call
    trickle.create_channel("e2e-out")
    segments = make_segments(SECONDS, 512, 512, fps=30, segment_seconds=1.0)

    resp = await server.session.post(
        server.url("/stream/start"),
        json={
            "subscribe_url": server.trickle_url("e2e"),
            "publish_url": server.trickle_url("e2e-out"),
            "params": {"note": "e2e"},
        },
    )
    body = await resp.json()
    assert resp.status == 200, body
    assert body["success"] is True
    manifest_id = body["manifest_id"]
    assert body["stream"]["manifest_id"] == manifest_id
    assert body["stream"]["stream_url"] == server.trickle_url("e2e-out")
    assert body["stream"]["status"] == "LOADING"  # answered at set-up, before any frame
    assert set(body["stream"]) >= {"manifest_id", "stream_url", "created_at", "status", "metadata"}

    collector = OutputCollector(server.trickle_url("e2e-out"), token=server.token("trickle")).start()
    await publish_realtime(server.trickle_url("e2e"), segments, token=server.token("trickle"))

    stream = server.app[STREAMS_KEY].get(manifest_id)
    assert await wait_until(lambda: stream.frames_out + stream.frames_dropped >= stream.frames_in > 0, timeout=10)
    status = await (await server.session.get(server.url(f"/stream/{manifest_id}/status"))).json()
    # the newest frame or two stay in the demuxer until more input arrives (live input)
    assert SECONDS * 30 - 3 <= status["frames_in"] <= SECONDS * 30
    # every frame came out or was counted dropped (waited on above); how many keep up on this
    # machine is a speed figure: bench/bench_pipeline.py prints in/out/dropped
    assert status["frames_out"] > 0
    assert status["latency_ms"]["p50"] is not None and status["latency_ms"]["p95"] is not None
    assert status["state"] in ("ONLINE", "DEGRADED_INPUT")  # input just went idle

    listing = await (await server.session.get(server.url("/streams"))).json()
    assert listing["count"] == 1 and listing["streams"][0]["manifest_id"] == manifest_id

    metrics = await (await server.session.get(server.url("/metrics"))).text()
    assert (
        metric_value(metrics, "streamlens_frames_total", manifest_id=manifest_id, direction="in") == status["frames_in"]
    )
    assert (
        metric_value(metrics, "streamlens_frames_total", manifest_id=manifest_id, direction="out")
        == status["frames_out"]
    )
    assert "streamlens_frame_latency_seconds_bucket" in metrics
    health = await (await server.session.get(server.url("/health"))).json()
    assert (health["status"], health["streams"], health["capacity"]) == ("OK", 1, 4)
    assert health["gpu"]["available"] is False  # reported plainly on a machine without CUDA

    resp = await server.session.delete(server.url(f"/stream/{manifest_id}"))
    assert resp.status == 200
    assert (await resp.json())["status"] == "STOPPED"
    # stopping closes the output channel: the subscriber sees the end
    await asyncio.wait_for(collector.ended.wait(), 10)
    assert not trickle.has_channel("e2e-out")

    frames, audio_frames = decode_ts(collector.data())
    # never more than was published (the status above was read before the stop flushed the demuxer)
    assert 0 < len(frames) <= SECONDS * 30
    assert audio_frames > 0  # audio is carried through
    assert all((f.width, f.height) == (512, 512) for f in frames)
    ids = [read_frame_id(f) for f in frames]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # in order, no duplicates
    assert all(0 <= i < SECONDS * 30 for i in ids)
    # every output segment starts on a keyframe and is decodable on its own
    for _seq, data in collector.segments:
        if data:
            seg_frames, _ = decode_ts(data)
            assert seg_frames and seg_frames[0].key_frame
    # the overlay changed the header region and left the rest of the picture alone
    frame = frames[len(frames) // 2]
    original = synthetic_picture(512, 512, ids[len(frames) // 2])[:512]
    output = frame.to_ndarray()[:512]
    header = np.abs(output[:20, :200].astype(int) - original[:20, :200]).mean()
    middle = np.abs(output[200:300, :].astype(int) - original[200:300, :]).mean()
    assert header > 20 > middle

    health = await (await server.session.get(server.url("/health"))).json()
    assert health["status"] == "IDLE"
    await collector.stop()


async def test_input_channel_closed_stops_stream_and_closes_output(server):
    trickle = server.app[TRICKLE_KEY]
    trickle.create_channel("gone")
    trickle.create_channel("gone-out")
    resp = await server.session.post(
        server.url("/stream/start"),
        json={"subscribe_url": server.trickle_url("gone"), "publish_url": server.trickle_url("gone-out")},
    )
    manifest_id = (await resp.json())["manifest_id"]
    await publish_realtime(server.trickle_url("gone"), make_segments(2, 256, 256), token=server.token("trickle"))
    stream = server.app[STREAMS_KEY].get(manifest_id)
    assert await wait_until(lambda: stream.frames_out > 30, timeout=10)
    await trickle.close_channel("gone")  # the gateway went away
    assert await wait_until(lambda: stream.stopped.is_set(), timeout=10)
    status = await (await server.session.get(server.url(f"/stream/{manifest_id}/status"))).json()
    assert status["state"] == "STOPPED"
    assert "input" in status["end_reason"]
    assert not trickle.has_channel("gone-out")
    assert re.match(r"sl-[0-9a-f]{16}$", manifest_id)
