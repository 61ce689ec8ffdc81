"""Trickle subscriber and publisher against the built-in trickle server on a loopback port.

A small test-only aiohttp route (`/flaky/...`) stands in for an orchestrator answering errors, and a
middleware records every request the server sees, so preconnects and headers are checked server-side.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from tests.conftest import wait_until
from trickle.client import TrickleChannelClosedError, TricklePublisher, TrickleSubscriber
from trickle.server import TrickleServer

PREFIX = "/ai/trickle/"


@dataclass
class Running:
    server: TrickleServer
    base: str
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)  # method, path, headers
    flaky_plan: list[int] = field(default_factory=list)  # statuses /flaky answers before 200s

    def url(self, channel: str) -> str:
        return f"{self.base}{PREFIX}{channel}"

    def requests(self, method: str, path_suffix: str) -> list[dict[str, str]]:
        return [h for m, p, h in self.seen if m == method and p.endswith(path_suffix)]


@pytest.fixture
async def start_server() -> AsyncIterator:
    runners: list[web.AppRunner] = []

    async def start(**kwargs) -> Running:
        server = TrickleServer(**kwargs)
        running = Running(server, "")

        @web.middleware
        async def record(request: web.Request, handler):
            if len(running.seen) < 1000:  # bounded record
                running.seen.append((request.method, request.path, dict(request.headers)))
            return await handler(request)

        async def flaky(request: web.Request) -> web.StreamResponse:
            if running.flaky_plan:
                return web.Response(status=running.flaky_plan.pop(0), text="try later")
            return web.Response(status=200, body=b"ok", headers={"Lp-Trickle-Seq": request.match_info["seq"]})

        app = web.Application(middlewares=[record])
        server.add_routes(app, PREFIX)
        app.router.add_get("/flaky/{seq}", flaky)
        runner = web.AppRunner(app, shutdown_timeout=5.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        running.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        return running

    yield start
    for runner in runners:
        await runner.cleanup()


async def read_all(segment) -> bytes:
    data = b""
    for _ in range(10_000):
        chunk = await asyncio.wait_for(segment.read(), 10)
        if not chunk:
            return data
        data += chunk
    raise AssertionError("segment did not end")


async def publish(pub: TricklePublisher, data: bytes, piece: int = 16 * 1024) -> int | None:
    writer = await pub.next_segment()
    for i in range(0, len(data), piece):
        await writer.write(data[i : i + piece])
    return await asyncio.wait_for(writer.close(), 10)


async def test_round_trip_of_several_segments(start_server):
    srv = await start_server()
    url = srv.url("rt")
    payloads = [bytes([i]) * n for i, n in enumerate([1, 5_000, 300_000, 70_000])]
    pub = TricklePublisher(url)
    sub = TrickleSubscriber(url, start_seq=0)
    try:
        received: list[tuple[int, bytes]] = []
        for payload in payloads:
            assert await publish(pub, payload) == 200
            segment = await asyncio.wait_for(sub.next_segment(), 10)
            assert segment is not None
            received.append((segment.seq, await read_all(segment)))
        assert received == list(enumerate(payloads))
        assert pub.segments_published == 4 and pub.bytes_published == sum(map(len, payloads))
        assert pub.seq == 4 and sub.seq == 4
        assert sub.errors == 0
    finally:
        await sub.close()
        await pub.close()
    assert not srv.server.has_channel("rt")  # publisher DELETEd it


async def test_subscriber_reads_while_publisher_is_still_writing(start_server):
    srv = await start_server()
    srv.server.create_channel("live")
    pub = TricklePublisher(srv.url("live"))
    sub = TrickleSubscriber(srv.url("live"))
    try:
        writer = await pub.next_segment()
        await writer.write(b"early-bytes|")
        segment = await asyncio.wait_for(sub.next_segment(), 10)
        assert segment is not None and segment.seq == 0
        assert await asyncio.wait_for(segment.read(), 10) == b"early-bytes|"
        assert not writer.done  # the POST body is still open
        await writer.write(b"late")
        assert await writer.close() == 200
        assert await read_all(segment) == b"late"
    finally:
        await sub.close()
        await pub.close()


async def test_start_minus_two_vs_minus_one(start_server):
    srv = await start_server()
    url = srv.url("edge")
    pub = TricklePublisher(url)
    current = TrickleSubscriber(url, start_seq=-2)
    upcoming = TrickleSubscriber(url, start_seq=-1)
    try:
        await publish(pub, b"zero")
        await publish(pub, b"one")
        segment = await asyncio.wait_for(current.next_segment(), 10)
        assert segment is not None and segment.seq == 1 and await read_all(segment) == b"one"

        waiting = asyncio.create_task(upcoming.next_segment())
        # parked server-side: the current reader's preconnected GET for seq 2, and this one
        assert await wait_until(lambda: srv.requests("GET", "/edge/-1") and srv.server.stats()["subscribers"] == 2)
        assert not waiting.done()  # -1 waits for the next segment to start
        await publish(pub, b"two")
        segment = await asyncio.wait_for(waiting, 10)
        assert segment is not None and segment.seq == 2 and await read_all(segment) == b"two"
    finally:
        await current.close()
        await upcoming.close()
        await pub.close()


async def test_subscriber_jumps_to_latest_after_falling_behind(start_server):
    srv = await start_server()
    url = srv.url("behind")
    pub = TricklePublisher(url)
    sub = TrickleSubscriber(url, start_seq=0)

    async def publish_later(data: bytes) -> None:
        # once the subscriber, sent on by the 470 for seq 2, waits at the latest seq
        assert await wait_until(lambda: bool(srv.requests("GET", "/behind/8")))
        await publish(pub, data)

    try:
        await publish(pub, b"s0")
        first = await asyncio.wait_for(sub.next_segment(), 10)
        assert first is not None and await read_all(first) == b"s0"
        assert await wait_until(lambda: bool(srv.requests("GET", "/behind/1")))  # preconnected
        for i in range(1, 8):  # the subscriber stalls while 7 more segments go by
            await publish(pub, f"s{i}".encode())
        held = await asyncio.wait_for(sub.next_segment(), 10)
        assert held is not None and held.seq == 1 and await read_all(held) == b"s1"
        later = asyncio.create_task(publish_later(b"s8"))
        # Segment 2 has left the ring of 5: 470, then Lp-Trickle-Latest (8) is followed.
        edge = await asyncio.wait_for(sub.next_segment(), 10)
        assert edge is not None and edge.seq == 8 and await read_all(edge) == b"s8"
        await later
        assert srv.requests("GET", "/behind/2") and srv.requests("GET", "/behind/8")
        assert sub.errors == 0 and sub.seq == 9
    finally:
        await sub.close()
        await pub.close()


async def test_subscriber_starting_on_evicted_segment_follows_latest(start_server):
    srv = await start_server()
    url = srv.url("old")
    pub = TricklePublisher(url)
    for i in range(7):
        await publish(pub, f"s{i}".encode())
    sub = TrickleSubscriber(url, start_seq=0)
    try:
        waiting = asyncio.create_task(sub.next_segment())
        assert await wait_until(lambda: bool(srv.requests("GET", "/old/7")))  # 470 for 0, then waits at 7
        await publish(pub, b"s7")
        segment = await asyncio.wait_for(waiting, 10)
        assert segment is not None and segment.seq == 7 and await read_all(segment) == b"s7"
        assert srv.requests("GET", "/old/0") and srv.requests("GET", "/old/7")
    finally:
        await sub.close()
        await pub.close()


async def test_subscriber_ends_on_closed_channel(start_server):
    srv = await start_server()
    srv.server.create_channel("ending")
    sub = TrickleSubscriber(srv.url("ending"))
    try:
        waiting = asyncio.create_task(sub.next_segment())
        assert await wait_until(lambda: srv.server.stats()["subscribers"] == 1)  # the GET is parked
        await srv.server.close_channel("ending")
        assert await asyncio.wait_for(waiting, 10) is None
        assert sub.ended and sub.end_reason == "closed"
        assert await sub.next_segment() is None
    finally:
        await sub.close()


async def test_subscriber_ends_on_unknown_channel(start_server):
    srv = await start_server()
    sub = TrickleSubscriber(srv.url("missing"))
    try:
        assert await asyncio.wait_for(sub.next_segment(), 10) is None
        assert sub.end_reason == "not_found" and sub.errors == 0
        assert len(srv.requests("GET", "/missing/-2")) == 1  # no retry on 404
    finally:
        await sub.close()


async def test_subscriber_retries_are_bounded(start_server):
    srv = await start_server()
    srv.flaky_plan = [503] * 10
    sub = TrickleSubscriber(f"{srv.base}/flaky", start_seq=0, max_retries=3, retry_delay=0.01)
    try:
        assert await asyncio.wait_for(sub.next_segment(), 10) is None
        assert sub.end_reason == "retries_exhausted"
        assert sub.errors == 3
        assert len(srv.requests("GET", "/flaky/0")) == 3
    finally:
        await sub.close()

    srv.flaky_plan = [500, 502]
    sub = TrickleSubscriber(f"{srv.base}/flaky", start_seq=5, max_retries=5, retry_delay=0.01)
    try:
        segment = await asyncio.wait_for(sub.next_segment(), 10)
        assert segment is not None and segment.seq == 5 and await read_all(segment) == b"ok"
        assert sub.errors == 2 and not sub.ended
    finally:
        await sub.close()


async def test_every_request_sends_connection_close(start_server):
    srv = await start_server()
    url = srv.url("hdr")
    pub = TricklePublisher(url, mime="video/mp2t")
    sub = TrickleSubscriber(url, start_seq=0)
    await publish(pub, b"abc")
    segment = await asyncio.wait_for(sub.next_segment(), 10)
    assert segment is not None and await read_all(segment) == b"abc"
    await sub.close()
    await pub.close()
    trickle = [(m, h) for m, p, h in srv.seen if p.startswith(PREFIX)]
    assert {m for m, _ in trickle} >= {"GET", "POST", "DELETE"}
    assert all(h.get("Connection", "").lower() == "close" for _, h in trickle)
    posts = srv.requests("POST", "/hdr/0")
    assert posts[0]["Content-Type"] == "video/mp2t"
    assert posts[0].get("Transfer-Encoding", "").lower() == "chunked"


async def test_publisher_preconnects_next_segment(start_server):
    srv = await start_server()
    srv.server.create_channel("pre")
    pub = TricklePublisher(srv.url("pre"))
    try:
        writer = await pub.next_segment()
        assert writer.seq == 0
        # Before anyone asks for segment 1, its POST is already open on the server.
        assert await wait_until(lambda: bool(srv.requests("POST", "/pre/1")))
        await writer.write(b"zero")
        assert await writer.close() == 200
        second = await pub.next_segment()
        assert second.seq == 1
        assert len(srv.requests("POST", "/pre/1")) == 1  # the preconnected one was handed out
        await second.write(b"one")
        assert await second.close() == 200
    finally:
        await pub.close()


async def test_publisher_marks_closed_on_404_and_does_not_retry(start_server):
    srv = await start_server(autocreate=False)
    pub = TricklePublisher(srv.url("gone"))
    try:
        writer = await pub.next_segment()
        assert await wait_until(lambda: pub.closed)  # the preconnected POST already got 404
        assert pub.end_reason == "not_found"
        with pytest.raises(TrickleChannelClosedError):
            await writer.write(b"data")
        assert await writer.close() == 404
        with pytest.raises(TrickleChannelClosedError):
            await pub.next_segment()
    finally:
        await pub.close()
    # counted once closed (every request the publisher started has ended): current + preconnect, no retries
    assert len([1 for m, p, _ in srv.seen if m == "POST"]) <= 2
    assert not srv.requests("DELETE", "/gone")  # nothing to delete after a 404


async def test_publisher_close_deletes_channel_unless_told_not_to(start_server):
    srv = await start_server()
    keep = TricklePublisher(srv.url("keep"))
    await publish(keep, b"k")
    await keep.close(delete_channel=False)
    assert srv.server.has_channel("keep") and keep.closed

    drop = TricklePublisher(srv.url("drop"))
    await publish(drop, b"d")
    await drop.close()
    assert not srv.server.has_channel("drop")
    assert srv.requests("DELETE", "/drop")


async def test_publisher_backpressure_is_bounded():
    gate = asyncio.Event()

    async def slow_sink(request: web.Request) -> web.Response:
        await gate.wait()  # read nothing until released
        total = 0
        while chunk := await request.content.readany():
            total += len(chunk)
        return web.Response(status=200, headers={"Lp-Trickle-Seq": request.match_info["seq"]}, text=str(total))

    # A second app on another port whose POST handler stalls: the publisher must stall too.
    app = web.Application()
    app.router.add_post("/sink/{seq}", slow_sink)
    runner = web.AppRunner(app, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    pub = TricklePublisher(f"http://127.0.0.1:{runner.addresses[0][1]}/sink", write_queue_chunks=2)
    try:
        writer = await pub.next_segment()
        chunk = b"z" * (256 * 1024)
        blocked = False
        for _ in range(256):  # at most 64 MiB
            try:
                await asyncio.wait_for(writer.write(chunk), 0.5)
            except TimeoutError:
                blocked = True
                break
        assert blocked, "writes never blocked: the publisher buffers without bound"
        assert writer.bytes_written < 64 * 1024 * 1024
        gate.set()
        assert await asyncio.wait_for(writer.close(), 20) == 200
    finally:
        gate.set()
        await pub.close(delete_channel=False)
        await runner.cleanup()


async def test_oversize_segment_fails_alone(start_server):
    srv = await start_server(max_segment_bytes=50_000)
    url = srv.url("big")
    pub = TricklePublisher(url)
    try:
        status = await publish(pub, b"x" * 200_000, piece=10_000)
        assert status == 413
        assert not pub.closed
        assert await publish(pub, b"small") == 200  # the publisher goes on
        sub = TrickleSubscriber(url, start_seq=1)
        segment = await asyncio.wait_for(sub.next_segment(), 10)
        assert segment is not None and await read_all(segment) == b"small"
        await sub.close()
    finally:
        await pub.close()


async def test_abort_ends_segment_for_readers(start_server):
    srv = await start_server()
    srv.server.create_channel("ab")
    pub = TricklePublisher(srv.url("ab"))
    sub = TrickleSubscriber(srv.url("ab"))
    try:
        writer = await pub.next_segment()
        await writer.write(b"half")
        segment = await asyncio.wait_for(sub.next_segment(), 10)
        assert segment is not None and await asyncio.wait_for(segment.read(), 10) == b"half"
        await writer.abort()
        assert await read_all(segment) == b""  # the server ended the segment
        assert await publish(pub, b"next") == 200
    finally:
        await sub.close()
        await pub.close()


async def test_close_leaves_no_tasks(start_server):
    srv = await start_server()
    before = asyncio.all_tasks()
    url = srv.url("leak")
    pub = TricklePublisher(url)
    sub = TrickleSubscriber(url, start_seq=0)
    await publish(pub, b"a" * 10_000)
    segment = await asyncio.wait_for(sub.next_segment(), 10)
    assert segment is not None and len(await read_all(segment)) == 10_000
    # Leave a segment half written and half read, with both sides holding a preconnected
    # request and a next_segment() call waiting on it.
    open_writer = await pub.next_segment()
    await open_writer.write(b"unfinished")
    partial = await asyncio.wait_for(sub.next_segment(), 10)
    assert partial is not None and partial.seq == 1
    waiting = asyncio.create_task(sub.next_segment())
    assert await wait_until(lambda: bool(srv.requests("GET", "/leak/2")))  # the preconnect it waits on
    assert not waiting.done()
    await sub.close()
    assert await asyncio.wait_for(waiting, 5) is None
    assert partial.closed
    await pub.close()
    assert open_writer.done
    me = asyncio.current_task()
    # Server-side handlers of the closed connections finish too.
    assert await wait_until(lambda: not [t for t in asyncio.all_tasks() - before if t is not me])
