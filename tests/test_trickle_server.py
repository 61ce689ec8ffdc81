"""Built-in trickle server, driven over real loopback HTTP with a plain aiohttp client.

These tests check the wire contract go-livepeer's trickle clients rely on (status codes, headers,
streaming while the POST uploads); tests/test_trickle_client.py covers our own clients.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import wait_until
from trickle.client import HeadersFirstBody
from trickle.server import TrickleChannelLimitError, TrickleServer

PREFIX = "/ai/trickle/"


@dataclass
class Running:
    server: TrickleServer
    runner: web.AppRunner
    base: str  # http://127.0.0.1:port/ai/trickle

    def url(self, path: str) -> str:
        return f"{self.base}/{path}"


@pytest.fixture
async def start_server() -> AsyncIterator:
    runners: list[web.AppRunner] = []

    async def start(**kwargs) -> Running:
        server = TrickleServer(**kwargs)
        app = web.Application()
        server.add_routes(app, PREFIX)
        runner = web.AppRunner(app, shutdown_timeout=5.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return Running(server, runner, f"http://127.0.0.1:{port}{PREFIX.rstrip('/')}")

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True), timeout=aiohttp.ClientTimeout(total=20)
    )
    yield session
    await session.close()


class BodyFeed:
    """A chunked request body fed piece by piece from the test (None ends it)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=16)
        self.sent = 0

    async def _chunks(self) -> AsyncIterator[bytes]:
        while (chunk := await self.queue.get()) is not None:
            self.sent += len(chunk)
            yield chunk

    def body(self) -> HeadersFirstBody:
        # Headers go out at once, so the server sees the POST before its first byte (a preconnect).
        return HeadersFirstBody(self._chunks())


async def post(http: aiohttp.ClientSession, url: str, data: object, **headers: str) -> tuple[int, dict, bytes]:
    async with http.post(url, data=data, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, dict, bytes]:
    async with http.get(url) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def parked_readers(srv, count: int = 1) -> None:
    """Wait until `count` GETs are being served (parked server-side waiting for data)."""
    assert await wait_until(lambda: srv.server.stats()["subscribers"] == count)


async def segments_open(srv, channel: str, count: int = 1) -> None:
    """Wait until the channel holds `count` segments (a preconnected POST has reached the server)."""
    assert await wait_until(lambda: srv.server.stats()["per_channel"][channel]["segments_held"] == count)


async def test_post_then_get_returns_same_bytes_and_headers(start_server, http):
    srv = await start_server()
    payload = bytes(range(256)) * 400
    status, headers, _ = await post(http, srv.url("ch/0"), payload, **{"Content-Type": "video/mp2t"})
    assert status == 200 and headers["Lp-Trickle-Seq"] == "0"

    status, headers, body = await get(http, srv.url("ch/0"))
    assert status == 200
    assert body == payload
    assert headers["Lp-Trickle-Seq"] == "0"
    assert headers["Content-Type"] == "video/mp2t"  # set on first use, echoed on GET
    assert headers["Lp-Trickle-Latest"] == "1"  # idx != latest, so the leading edge is reported
    assert srv.server.stats()["segments_published"] == 1


async def test_subscriber_gets_bytes_while_post_still_uploading(start_server, http):
    srv = await start_server()
    srv.server.create_channel("live")
    feed = BodyFeed()
    post_task = asyncio.create_task(post(http, srv.url("live/0"), feed.body()))
    await feed.queue.put(b"first-chunk;")
    async with http.get(srv.url("live/0")) as resp:
        assert resp.status == 200 and resp.headers["Lp-Trickle-Seq"] == "0"
        got = await asyncio.wait_for(resp.content.readexactly(len(b"first-chunk;")), 5)
        assert got == b"first-chunk;"
        assert not post_task.done()  # the body is still uploading
        await feed.queue.put(b"second")
        await feed.queue.put(None)
        assert await resp.read() == b"second"
    status, headers, _ = await post_task
    assert status == 200 and headers["Lp-Trickle-Seq"] == "0"


async def test_next_write_advances_on_first_byte(start_server, http):
    srv = await start_server()
    srv.server.create_channel("ch")
    feed = BodyFeed()
    post_task = asyncio.create_task(post(http, srv.url("ch/0"), feed.body()))
    await segments_open(srv, "ch")
    assert (await get(http, srv.url("ch/next")))[2] == b"0"  # preconnected, no byte yet
    await feed.queue.put(b"x")
    assert await wait_until(lambda: srv.server.stats()["per_channel"]["ch"]["next_write"] == 1)
    status, headers, body = await get(http, srv.url("ch/next"))
    assert (status, body, headers["Lp-Trickle-Latest"]) == (200, b"1", "1")
    await feed.queue.put(None)
    assert (await post_task)[0] == 200


async def test_minus_two_replays_current_from_byte_zero_then_live(start_server, http):
    srv = await start_server()
    await post(http, srv.url("ch/0"), b"old")
    feed = BodyFeed()
    post_task = asyncio.create_task(post(http, srv.url("ch/1"), feed.body()))
    await feed.queue.put(b"head-")
    assert await wait_until(lambda: srv.server.stats()["per_channel"]["ch"]["next_write"] == 2)
    async with http.get(srv.url("ch/-2")) as resp:
        assert resp.headers["Lp-Trickle-Seq"] == "1"
        assert await asyncio.wait_for(resp.content.readexactly(5), 5) == b"head-"  # from byte 0
        await feed.queue.put(b"tail")
        await feed.queue.put(None)
        assert await resp.read() == b"tail"  # then live
    await post_task


async def test_minus_one_waits_for_next_segment(start_server, http):
    srv = await start_server()
    await post(http, srv.url("ch/0"), b"zero")
    await post(http, srv.url("ch/1"), b"one")
    waiting = asyncio.create_task(get(http, srv.url("ch/-1")))
    await parked_readers(srv)
    assert not waiting.done()  # -1 = next write: blocks until seq 2 starts
    await post(http, srv.url("ch/2"), b"two")
    status, headers, body = await asyncio.wait_for(waiting, 5)
    assert (status, headers["Lp-Trickle-Seq"], body) == (200, "2", b"two")
    assert "Lp-Trickle-Latest" not in headers  # served the leading edge itself

    # POST to -1 writes at the write head.
    status, headers, _ = await post(http, srv.url("ch/-1"), b"three")
    assert (status, headers["Lp-Trickle-Seq"]) == (200, "3")
    assert (await get(http, srv.url("ch/3")))[2] == b"three"

    # On a fresh channel -2 resolves to 0 and also waits for it.
    srv.server.create_channel("fresh")
    first = asyncio.create_task(get(http, srv.url("fresh/-2")))
    await parked_readers(srv)
    assert not first.done()
    ahead = asyncio.create_task(get(http, srv.url("fresh/1")))  # one ahead of an empty channel: waits too
    await parked_readers(srv, 2)
    assert not ahead.done()
    await post(http, srv.url("fresh/0"), b"a")
    assert (await asyncio.wait_for(first, 5))[1]["Lp-Trickle-Seq"] == "0"
    await post(http, srv.url("fresh/1"), b"b")
    assert (await asyncio.wait_for(ahead, 5))[2] == b"b"


async def test_evicted_segment_is_470_with_latest(start_server, http):
    srv = await start_server()
    for i in range(7):
        await post(http, srv.url(f"ch/{i}"), f"seg{i}".encode())
    status, headers, _ = await get(http, srv.url("ch/0"))
    assert status == 470
    assert headers["Lp-Trickle-Latest"] == "7" and headers["Lp-Trickle-Seq"] == "0"
    assert (await get(http, srv.url("ch/2")))[2] == b"seg2"  # still in the ring of 5
    assert (await get(http, srv.url("ch/100")))[0] == 470  # too far ahead
    stats = srv.server.stats()
    assert stats["segments_held"] <= 5


async def test_closed_channel_wakes_readers_with_closed_header(start_server, http):
    srv = await start_server()
    srv.server.create_channel("ch")
    waiting = asyncio.create_task(get(http, srv.url("ch/0")))  # pre-created, blocks
    await parked_readers(srv)
    assert not waiting.done()
    assert await srv.server.close_channel("ch") is True
    status, headers, body = await asyncio.wait_for(waiting, 5)
    assert status == 200 and body == b""
    assert headers["Lp-Trickle-Closed"] == "terminated"
    assert headers["Lp-Trickle-Seq"] == "0"
    assert (await get(http, srv.url("ch/0")))[0] == 404  # removed
    assert await srv.server.close_channel("ch") is False


async def test_unknown_channel_and_bad_index(start_server, http):
    srv = await start_server()
    status, _, body = await get(http, srv.url("nope/0"))
    assert status == 404 and b"error" in body
    assert (await get(http, srv.url("nope/next")))[0] == 404
    async with http.delete(srv.url("nope/0")) as resp:
        assert resp.status == 404
    async with http.delete(srv.url("nope")) as resp:
        assert resp.status == 400  # "Invalid stream"
    srv.server.create_channel("ch")
    assert (await get(http, srv.url("ch/abc")))[0] == 400
    assert (await get(http, srv.url("ch/-7")))[0] == 400
    assert (await post(http, srv.url("ch/1.5"), b"x"))[0] == 400


async def test_autocreate_off_rejects_unknown_channels(start_server, http):
    srv = await start_server(autocreate=False)
    status, headers, body = await post(http, srv.url("ch/0"), b"data")
    assert status == 404
    assert headers.get("Connection", "").lower() == "close"
    assert b"error" in body
    assert not srv.server.has_channel("ch")
    async with http.post(srv.url("ch")) as resp:
        assert resp.status == 404  # create route needs autocreate

    srv.server.create_channel("ch", mime="application/json")
    assert srv.server.create_channel("ch") is srv.server.create_channel("ch")  # idempotent
    assert (await post(http, srv.url("ch/0"), b"{}"))[0] == 200
    assert (await get(http, srv.url("ch/0")))[1]["Content-Type"] == "application/json"


async def test_create_route_with_autocreate(start_server, http):
    srv = await start_server(autocreate=True)
    async with http.post(srv.url("made"), headers={"Expect-Content": "application/jsonl"}) as resp:
        assert resp.status == 200
    assert srv.server.has_channel("made")
    assert srv.server.channel_names() == ["made"]
    await post(http, srv.url("made/0"), b"{}\n")
    assert (await get(http, srv.url("made/0")))[1]["Content-Type"] == "application/jsonl"


async def test_oversize_post_is_413_and_readers_see_segment_end(start_server, http):
    srv = await start_server(max_segment_bytes=1000)
    srv.server.create_channel("ch")
    reader = asyncio.create_task(get(http, srv.url("ch/0")))
    await parked_readers(srv)
    feed = BodyFeed()
    post_task = asyncio.create_task(post(http, srv.url("ch/0"), feed.body()))
    await feed.queue.put(b"a" * 600)
    await feed.queue.put(b"b" * 600)  # crosses the limit
    status, _, body = await asyncio.wait_for(post_task, 5)
    assert status == 413
    assert b"segment_too_large" in body
    r_status, _, r_body = await asyncio.wait_for(reader, 5)
    assert r_status == 200 and r_body == b"a" * 600 + b"b" * 400  # stored up to the cap, then the end
    assert srv.server.stats()["rejected_oversize"] == 1


async def test_memory_is_bounded_by_window_times_segment_cap(start_server, http):
    srv = await start_server(max_segment_bytes=2000, window=5)
    for i in range(12):
        assert (await post(http, srv.url(f"ch/{i}"), bytes([i]) * 2000))[0] == 200
    stats = srv.server.stats()
    assert stats["segments_held"] == 5
    assert stats["bytes_held"] <= 5 * 2000
    assert stats["per_channel"]["ch"]["segments_published"] == 12


async def test_delete_segment_and_channel(start_server, http):
    srv = await start_server()
    srv.server.create_channel("ch")
    waiting = asyncio.create_task(get(http, srv.url("ch/0")))
    await parked_readers(srv)
    async with http.delete(srv.url("ch/0")) as resp:
        assert resp.status == 200
    status, headers, body = await asyncio.wait_for(waiting, 5)
    assert status == 200 and body == b"" and headers["Lp-Trickle-Seq"] == "0"
    assert "Lp-Trickle-Closed" not in headers  # the channel itself is still open
    async with http.delete(srv.url("ch/3")) as resp:
        assert resp.status == 400  # nonexistent segment
    async with http.delete(srv.url("ch")) as resp:
        assert resp.status == 200
    assert not srv.server.has_channel("ch")


async def test_delete_segment_wakes_preconnected_post(start_server, http):
    srv = await start_server()
    srv.server.create_channel("ch")
    feed = BodyFeed()
    post_task = asyncio.create_task(post(http, srv.url("ch/0"), feed.body()))
    await segments_open(srv, "ch")
    async with http.delete(srv.url("ch/0")) as resp:
        assert resp.status == 200
    status, headers, _ = await asyncio.wait_for(post_task, 5)
    assert status == 200 and headers["Lp-Trickle-Seq"] == "0"
    # The empty segment still advances the write head (clients don't error on the next seq).
    assert (await get(http, srv.url("ch/next")))[2] == b"1"


async def test_next_route_reports_write_head(start_server, http):
    srv = await start_server()
    srv.server.create_channel("ch")
    assert (await get(http, srv.url("ch/next")))[2] == b"0"
    await post(http, srv.url("ch/0"), b"a")
    await post(http, srv.url("ch/1"), b"b")
    status, headers, body = await get(http, srv.url("ch/next"))
    assert (status, body, headers["Lp-Trickle-Latest"]) == (200, b"2", "2")
    assert "Lp-Trickle-Closed" not in headers


async def test_idle_channels_are_swept_whatever_their_name(start_server, http):
    """No name parks a channel forever (a `_` prefix used to be exempt: a publisher could hold
    channels and memory past the idle sweep)."""
    srv = await start_server(idle_timeout=0.2, sweep_interval=0.05)
    srv.server.create_channel("idle")
    srv.server.create_channel("_internal")
    assert (await post(http, srv.url("_x/0"), b"held"))[0] == 200
    assert await wait_until(lambda: not srv.server.channel_names(), timeout=5)
    assert srv.server.stats()["channels_swept"] == 3
    assert (await get(http, srv.url("idle/0")))[0] == 404
    assert (await get(http, srv.url("_x/0")))[0] == 404


async def test_reset_header_closes_lower_segments(start_server, http):
    srv = await start_server()
    srv.server.create_channel("ch")
    feed = BodyFeed()
    hung_post = asyncio.create_task(post(http, srv.url("ch/0"), feed.body()))
    await feed.queue.put(b"partial")
    async with http.get(srv.url("ch/0")) as resp:
        assert await asyncio.wait_for(resp.content.readexactly(7), 5) == b"partial"
        rest = asyncio.create_task(resp.read())
        await asyncio.sleep(0)  # let the read start
        assert srv.server.stats()["subscribers"] == 1 and not rest.done()  # publisher hung: the reader waits
        # A restarted publisher posts seq 1 with Lp-Trickle-Reset: seq 0 is closed for readers.
        status, headers, _ = await post(http, srv.url("ch/1"), b"fresh", **{"Lp-Trickle-Reset": "1"})
        assert status == 200 and headers["Lp-Trickle-Seq"] == "1"
        assert await asyncio.wait_for(rest, 5) == b""
    await feed.queue.put(None)
    await asyncio.wait_for(hung_post, 5)


async def test_slow_subscriber_does_not_hold_back_publisher(start_server, http):
    srv = await start_server()
    payload = bytes(range(251)) * 8000  # ~2 MB
    srv.server.create_channel("ch")
    resume = asyncio.Event()

    async def slow_reader() -> bytes:
        async with http.get(srv.url("ch/0")) as resp:
            head = await resp.content.read(10)
            await resume.wait()  # stop reading while the publisher uploads the rest
            return head + await resp.read()

    reader = asyncio.create_task(slow_reader())
    await parked_readers(srv)
    status, _, _ = await asyncio.wait_for(post(http, srv.url("ch/0"), io.BytesIO(payload)), 10)
    assert status == 200  # upload completed while the reader sat idle
    assert not reader.done()
    resume.set()
    assert await asyncio.wait_for(reader, 10) == payload


async def test_shutdown_wakes_blocked_requests_and_leaves_no_task(start_server, http):
    before = asyncio.all_tasks()
    srv = await start_server(sweep_interval=0.05)
    srv.server.create_channel("ch")
    reader = asyncio.create_task(get(http, srv.url("ch/0")))
    feed = BodyFeed()
    preconnect = asyncio.create_task(post(http, srv.url("ch/1"), feed.body()))
    await parked_readers(srv)
    await segments_open(srv, "ch", 2)  # the reader's seq 0 and the preconnected seq 1
    await asyncio.wait_for(srv.runner.cleanup(), 10)
    status, headers, _ = await asyncio.wait_for(reader, 5)
    assert status == 200 and headers["Lp-Trickle-Closed"] == "terminated"
    p_status, p_headers, _ = await asyncio.wait_for(preconnect, 5)
    assert p_status == 200 and p_headers["Lp-Trickle-Closed"] == "terminated"
    assert srv.server.channel_names() == []
    me = asyncio.current_task()
    assert await wait_until(lambda: not [t for t in asyncio.all_tasks() - before if t is not me])


async def test_log_lines_name_the_channel(start_server, http, caplog):
    srv = await start_server()
    with caplog.at_level(logging.INFO, logger="trickle.server"):
        await post(http, srv.url("named-chan/0"), b"x")
        await srv.server.close_channel("named-chan")
    lines = [r.getMessage() for r in caplog.records if r.name == "trickle.server"]
    assert lines and all("channel=named-chan" in line for line in lines)


async def test_channel_limit(start_server, http):
    srv = await start_server(max_channels=2)
    assert (await post(http, srv.url("a/0"), b"1"))[0] == 200
    assert (await post(http, srv.url("b/0"), b"1"))[0] == 200
    status, _, body = await post(http, srv.url("c/0"), b"1")
    assert status == 503 and b"too_many_channels" in body
    assert sorted(srv.server.channel_names()) == ["a", "b"]
    with pytest.raises(TrickleChannelLimitError):
        srv.server.create_channel("d")


async def test_waiting_get_ends_when_client_disconnects(start_server, http):
    srv = await start_server()
    srv.server.create_channel("ch")
    before = asyncio.all_tasks()
    waiting = asyncio.create_task(get(http, srv.url("ch/0")))  # blocks server-side
    await parked_readers(srv)
    waiting.cancel()  # the client goes away
    await asyncio.gather(waiting, return_exceptions=True)
    me = asyncio.current_task()
    # The server's handler notices and finishes: no task is left behind.
    assert await wait_until(lambda: not [t for t in asyncio.all_tasks() - before if t is not me], timeout=5)
