"""Budgets of the built-in trickle server (issue 9 item 6), against the real server over loopback:
a flood across many channels stays under TRICKLE_MAX_TOTAL_BYTES (RSS measured) while a small
live channel keeps every segment; a write nothing can make room for gets 503; a stalled POST body
is closed after TRICKLE_BODY_TIMEOUT; reader caps answer 503; refusals are counted. The trickle
subscriber's own read timeout ends a stalled segment and moves on."""

from __future__ import annotations

import asyncio
import gc

import aiohttp
import psutil

from server.keys import TRICKLE_KEY
from server.trickle_metrics import trickle_metrics
from tests.conftest import wait_until
from tests.trickle_helpers import token_policy
from trickle.client import TricklePublisher, TrickleSubscriber

MiB = 1 << 20


async def trickle_server_with(make_server, **settings):
    """A real server with these TRICKLE_* settings, failing at once if they did not reach it."""
    server = await make_server(**settings)
    trickle = server.app[TRICKLE_KEY]
    applied = {
        "trickle_max_total_bytes": trickle.stats()["max_total_bytes"],
        "trickle_body_timeout": trickle.body_timeout,
        "trickle_max_subscribers_per_channel": trickle.max_subscribers_per_channel,
        "trickle_max_subscribers": trickle.max_subscribers,
    }
    for name, value in settings.items():
        if name in applied:
            assert applied[name] == value, f"create_app did not pass {name.upper()} to the TrickleServer"
    return server


async def post_segment(
    session: aiohttp.ClientSession, url: str, data: bytes, chunk: int = 256 << 10, delay: float = 0.0
) -> int:
    async def body():
        for i in range(0, len(data), chunk):
            yield data[i : i + chunk]
            if delay:
                await asyncio.sleep(delay)

    async with session.post(url, data=body(), headers={"Connection": "close"}) as response:
        return response.status


async def test_flood_across_channels_stays_under_the_budget(make_server):
    budget = 8 * MiB
    server = await trickle_server_with(make_server, trickle_max_total_bytes=budget, trickle_max_segment_bytes=4 * MiB)
    trickle = server.app[TRICKLE_KEY]
    process = psutil.Process()
    gc.collect()
    rss_before = process.memory_info().rss
    peak = {"rss": rss_before, "held": 0}
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            peak["rss"] = max(peak["rss"], process.memory_info().rss)
            peak["held"] = max(peak["held"], trickle.stats()["bytes_held"])
            await asyncio.sleep(0.02)

    blob = b"\x47" * (2 * MiB)  # one MPEG-TS-looking 2 MiB segment, shared by every POST

    async def flood_channel(session: aiohttp.ClientSession, channel: int) -> list[int]:
        url = server.trickle_url(f"flood-{channel}")
        return [await post_segment(session, f"{url}/{seq}", blob, delay=0.002) for seq in range(5)]

    # a small live channel published and read meanwhile: it must lose nothing
    live_url = server.trickle_url("live")
    trickle.create_channel("live")  # so its reader can wait on it before the first segment
    live_segments = [bytes([i]) * (48 << 10) for i in range(10)]
    received: list[bytes] = []
    policy = token_policy(server.token("trickle"))

    async def live_publish() -> None:
        async with TricklePublisher(live_url, policy=policy) as publisher:
            for data in live_segments:
                writer = await publisher.next_segment()
                await writer.write(data)
                await writer.close()
                await asyncio.sleep(0.05)

    async def live_read() -> None:
        async with TrickleSubscriber(live_url, start_seq=0, policy=policy) as subscriber:
            while len(received) < len(live_segments):
                segment = await subscriber.next_segment()
                if segment is None:
                    return
                parts = []
                while chunk := await segment.read():
                    parts.append(chunk)
                received.append(b"".join(parts))

    sampler = asyncio.create_task(sample())
    connector = aiohttp.TCPConnector(limit=64, force_close=True)
    async with aiohttp.ClientSession(connector=connector, headers=server.auth_headers("trickle")) as session:
        reader = asyncio.create_task(live_read())
        assert await wait_until(lambda: trickle.stats()["subscribers"] >= 1, timeout=10)  # reading before the flood
        results = await asyncio.gather(live_publish(), *(flood_channel(session, c) for c in range(32)))
        await asyncio.wait_for(reader, 30)
    done.set()
    await sampler

    stats = trickle.stats()
    statuses = [s for per_channel in results[1:] for s in per_channel]
    assert peak["held"] <= budget and stats["bytes_held"] <= budget
    # without the budget the ring would hold 32 channels x 5 x 2 MiB = 320 MiB
    assert peak["rss"] - rss_before <= budget + 64 * MiB, (peak["rss"] - rss_before) / MiB
    assert stats["segments_evicted_budget"] + stats["rejected_budget"] > 0
    assert set(statuses) <= {200, 503}
    assert received == live_segments


async def test_a_write_nothing_can_make_room_for_gets_503(make_server):
    server = await trickle_server_with(make_server, trickle_max_total_bytes=1 * MiB, trickle_max_segment_bytes=4 * MiB)
    async with aiohttp.ClientSession(headers=server.auth_headers("trickle")) as session:
        async with session.post(server.trickle_url("big/0"), data=b"\0" * (2 * MiB)) as response:
            assert response.status == 503
            body = await response.json()
    assert body["error"]["code"] == "trickle_budget_full"
    assert "memory budget full" in body["error"]["message"]
    stats = server.app[TRICKLE_KEY].stats()
    assert stats["rejected_budget"] == 1 and stats["bytes_held"] <= 1 * MiB


async def test_stalled_post_body_is_closed_after_the_timeout(make_server):
    server = await trickle_server_with(make_server, trickle_body_timeout=0.5)
    port = int(server.base_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    auth = "".join(f"{k}: {v}\r\n" for k, v in server.auth_headers("trickle").items()).encode()
    writer.write(
        b"POST /ai/trickle/stall/0 HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        + auth
        + b"Content-Type: video/mp2t\r\n\r\n"
        + b"5\r\nhello\r\n"
    )
    await writer.drain()
    # a reader of that segment gets the bytes, then the end, once the server gives up on the body
    async with server.session.get(server.trickle_url("stall/0")) as response:
        assert await asyncio.wait_for(response.read(), 10) == b"hello"
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 408 ") and b"Connection: close" in head
    length = int(head.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0])
    assert b"body_timeout" in await asyncio.wait_for(reader.readexactly(length), 10)
    writer.close()
    assert server.app[TRICKLE_KEY].stats()["post_body_timeouts"] == 1


async def test_subscriber_caps_answer_503(make_server):
    server = await trickle_server_with(make_server, trickle_max_subscribers_per_channel=2, trickle_max_subscribers=3)
    trickle = server.app[TRICKLE_KEY]
    for name in ("a", "b", "c"):
        trickle.create_channel(name)
    async with aiohttp.ClientSession(headers=server.auth_headers("trickle")) as session:
        waiting = [asyncio.create_task(session.get(server.trickle_url(path))) for path in ("a/-1", "a/-1")]
        assert await wait_until(lambda: trickle.stats()["subscribers"] == 2)
        async with session.get(server.trickle_url("a/-1")) as response:
            assert response.status == 503
            assert "channel reader limit" in (await response.json())["error"]["message"]
        waiting.append(asyncio.create_task(session.get(server.trickle_url("b/-1"))))
        assert await wait_until(lambda: trickle.stats()["subscribers"] == 3)
        async with session.get(server.trickle_url("c/-1")) as response:
            assert response.status == 503
            assert "server reader limit" in (await response.json())["error"]["message"]
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        # the slots come back once the readers leave (the server notices within its poll interval)
        assert await wait_until(lambda: trickle.stats()["subscribers"] == 0, timeout=5)
    stats = trickle.stats()
    assert stats["rejected_subscribers_channel"] == 1 and stats["rejected_subscribers_total"] == 1
    names = {family.name: family.samples[0].value for family in trickle_metrics(trickle)}
    assert names["streamlens_trickle_rejected_subscribers_channel"] == 1
    assert names["streamlens_trickle_rejected_subscribers_server"] == 1


async def test_subscriber_read_timeout_ends_a_stalled_segment(server):
    """A publisher that stops mid-segment: the subscriber ends that segment after `read_timeout`
    and reads the next one (the stream is not stuck behind it)."""
    url = server.trickle_url("slow")
    server.app[TRICKLE_KEY].create_channel("slow")
    policy = token_policy(server.token("trickle"))
    async with (
        TricklePublisher(url, policy=policy) as publisher,
        TrickleSubscriber(url, start_seq=0, read_timeout=0.5, policy=policy) as subscriber,
    ):
        first = await publisher.next_segment()
        await first.write(b"part-one")  # ... and nothing more for a while
        segment = await subscriber.next_segment()
        assert await segment.read() == b"part-one"
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await segment.read() == b""
        assert 0.4 <= loop.time() - started < 5
        assert subscriber.stalls == 1 and "no data" in segment.error
        first.cancel()
        second = await publisher.next_segment()
        await second.write(b"segment-two")
        await second.close()
        following = await subscriber.next_segment()
        assert following.seq == 1 and await following.read() == b"segment-two"
