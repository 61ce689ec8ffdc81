"""Lifecycle API: validation, capacity, faults, isolation and cleanup."""

from __future__ import annotations

import asyncio
import gc
import os
import threading

import psutil

from media.manager import STREAMS_KEY
from server.keys import TRICKLE_KEY
from tests.conftest import wait_until
from tests.media_gen import make_segments
from tests.trickle_helpers import OutputCollector, publish_realtime


async def start(server, **body):
    resp = await server.session.post(server.url("/stream/start"), json=body)
    return resp.status, await resp.json()


async def test_bad_requests_get_clear_errors(server):
    url = server.url("/stream/start")
    resp = await server.session.post(url, data=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    body = await resp.json()
    assert "invalid JSON" in body["error"]["message"] and body["error"]["code"] == "bad_request"

    resp = await server.session.post(url, json=[1, 2])
    assert resp.status == 400 and "object" in (await resp.json())["error"]["message"]

    status, body = await start(server, publish_url=server.trickle_url("x-out"))
    assert status == 400 and "subscribe_url" in body["error"]["message"]

    status, body = await start(server, subscribe_url="rtmp://example.com/live", publish_url=server.trickle_url("o"))
    assert status == 400 and "subscribe_url must be an http(s) URL" in body["error"]["message"]

    status, body = await start(server, subscribe_url=server.trickle_url("a"), width="wide", height=10)
    assert status == 400 and "width" in body["error"]["message"]

    resp = await server.session.post(
        url, data=b'{"a": "' + b"x" * (2 << 20) + b'"}', headers={"Content-Type": "application/json"}
    )
    assert resp.status == 413
    assert "too large" in (await resp.json())["error"]["message"]

    resp = await server.session.get(server.url("/stream/nope/status"))
    assert resp.status == 404 and "nope" in (await resp.json())["error"]["message"]
    resp = await server.session.delete(server.url("/stream/nope"))
    assert resp.status == 404
    # nothing was started by any of that
    assert server.app[STREAMS_KEY].active() == []


async def test_capacity_refuses_with_503(make_server):
    srv = await make_server(max_streams=1)
    srv.app[TRICKLE_KEY].create_channel("c1")
    srv.app[TRICKLE_KEY].create_channel("c2")
    status, body = await start(srv, subscribe_url=srv.trickle_url("c1"))
    assert status == 200
    health = await (await srv.session.get(srv.url("/health"))).json()
    assert health["status"] == "OK"  # never IDLE while a stream runs
    status, body = await start(srv, subscribe_url=srv.trickle_url("c2"))
    assert status == 503
    assert "capacity" in body["error"]["message"]
    resp = await srv.session.delete(srv.url(f"/stream/{srv.app[STREAMS_KEY].active()[0].manifest_id}"))
    assert resp.status == 200
    assert (await (await srv.session.get(srv.url("/health"))).json())["status"] == "IDLE"
    status, _ = await start(srv, subscribe_url=srv.trickle_url("c2"))
    assert status == 200


def corrupt(segment: bytes) -> bytes:
    """Overwrite a stretch in the middle of a segment with garbage (keeps the length)."""
    middle = len(segment) // 2
    garbage = bytes((i * 37 + 11) % 256 for i in range(20_000))
    return segment[:middle] + garbage + segment[middle + len(garbage) :]


async def test_garbage_in_a_segment_is_survived_and_other_streams_carry_on(server):
    trickle = server.app[TRICKLE_KEY]
    for name in ("bad", "bad-out", "good", "good-out"):
        trickle.create_channel(name)
    _, bad = await start(server, subscribe_url=server.trickle_url("bad"), publish_url=server.trickle_url("bad-out"))
    _, good = await start(server, subscribe_url=server.trickle_url("good"), publish_url=server.trickle_url("good-out"))
    segments = make_segments(5, 256, 256)
    broken = list(segments)
    broken[2] = corrupt(broken[2])
    broken.insert(3, os.urandom(50_000))  # a whole segment of noise
    await asyncio.gather(
        publish_realtime(server.trickle_url("bad"), broken, token=server.token("trickle")),
        publish_realtime(server.trickle_url("good"), segments, token=server.token("trickle")),
    )
    streams = server.app[STREAMS_KEY]
    bad_stream, good_stream = streams.get(bad["manifest_id"]), streams.get(good["manifest_id"])
    # every frame of the good stream is accounted for: encoded, or dropped under load and counted
    ok = await wait_until(
        lambda: good_stream.frames_out + good_stream.frames_dropped >= good_stream.frames_in >= 147, timeout=10
    )
    assert ok, (good_stream.frames_in, good_stream.frames_out, good_stream.frames_dropped)
    assert good_stream.frames_out >= 0.9 * good_stream.frames_in
    # the damaged stream is still running, decoded frames after the damage, and says what happened
    assert bad_stream.active
    assert bad_stream.frames_in > 100  # frames of the segments after the garbage were decoded
    status = await (await server.session.get(server.url(f"/stream/{bad['manifest_id']}/status"))).json()
    assert "out of sync" in status["last_error"]
    assert status["source"]["damaged_segments"] == 2 and status["decode_errors"] >= 2
    assert good_stream.last_error is None and good_stream.decode_errors == 0


def stream_threads(manifest_id: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if manifest_id in t.name]


async def test_stop_leaves_no_task_thread_socket_or_file(server):
    trickle = server.app[TRICKLE_KEY]
    process = psutil.Process()
    # warm up once so lazily created pools and codec tables do not count as leaks
    for round_ in range(2):
        tasks_before = {t for t in asyncio.all_tasks()}
        fds_before = process.num_fds()
        conns_before = len(process.net_connections())
        threads_before = {t.ident for t in threading.enumerate()}
        name = f"leak{round_}"
        trickle.create_channel(name)
        trickle.create_channel(f"{name}-out")
        _, body = await start(
            server, subscribe_url=server.trickle_url(name), publish_url=server.trickle_url(f"{name}-out")
        )
        manifest_id = body["manifest_id"]
        collector = OutputCollector(server.trickle_url(f"{name}-out"), token=server.token("trickle")).start()
        await publish_realtime(server.trickle_url(name), make_segments(2, 256, 256), token=server.token("trickle"))
        stream = server.app[STREAMS_KEY].get(manifest_id)
        assert await wait_until(lambda: stream.frames_out > 30, timeout=10)  # noqa: B023 - awaited here
        assert stream_threads(manifest_id)
        resp = await server.session.delete(server.url(f"/stream/{manifest_id}"))
        assert resp.status == 200
        await asyncio.wait_for(collector.ended.wait(), 10)
        await collector.stop()
        await trickle.close_channel(name)
        assert await wait_until(lambda: stream_threads(manifest_id) == [], timeout=10)  # noqa: B023 - awaited here
        gc.collect()
        leftover = {t for t in asyncio.all_tasks() if not t.done()} - tasks_before
        leftover = {t for t in leftover if t is not asyncio.current_task()}
        assert not [t.get_name() for t in leftover if manifest_id in t.get_name() or "trickle" in t.get_name()]
        if round_ == 1:
            assert process.num_fds() <= fds_before + 2
            assert len(process.net_connections()) <= conns_before + 1
            new_threads = [t for t in threading.enumerate() if t.ident not in threads_before]
            assert all(not t.name.startswith(("decode-", "video-")) for t in new_threads)


async def test_stream_without_input_is_not_timed_out(make_server):
    """A data-only / output-only stream (no subscribe URL) has no input to wait for."""
    srv = await make_server(input_timeout=1.0)
    srv.app[TRICKLE_KEY].create_channel("nodata-data")
    resp = await srv.session.post(
        srv.url("/stream/start"),
        headers={"X-Stream-Id": "nodata"},
        json={"gateway_request_id": "nodata", "data_url": srv.trickle_url("nodata-data"), "params": {}},
    )
    assert resp.status == 200, await resp.text()
    # kept: the behaviour is that the input timeout (1 s) passes without effect, so time must pass
    await asyncio.sleep(2.5)
    status = await (await srv.session.get(srv.url("/stream/nodata/status"))).json()
    assert status["state"] == "ONLINE" and status["end_reason"] is None
