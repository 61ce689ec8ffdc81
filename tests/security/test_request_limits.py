"""Hostile bodies: deeply nested JSON, oversize bodies, bodies that stall. Each gets a 4xx in the
one error shape, and a running stream carries on."""

from __future__ import annotations

import asyncio

from media.manager import STREAMS_KEY
from server.keys import TRICKLE_KEY
from tests.conftest import wait_until
from tests.media_gen import make_segments
from tests.trickle_helpers import publish_realtime


def nested(depth: int) -> bytes:
    return b'{"params": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b"}"


async def test_deep_json_is_400_not_500(make_server):
    server = await make_server(max_json_depth=32)
    for path in (
        "/stream/start",
        "/stream/params",
        "/offer",
        "/translate",
        "/vision/describe",
        "/live-video-to-video",
        "/process/request/text-reversal",
    ):
        for depth in (40, 5000, 100_000):
            resp = await server.session.post(
                server.url(path),
                data=nested(depth),
                headers={"Content-Type": "application/json", "X-Stream-Id": "deep"},
            )
            assert resp.status == 400, (path, depth, resp.status)
            assert "nested too deeply" in (await resp.json())["error"]["message"], path
    # within the limit it is an ordinary body
    resp = await server.session.post(
        server.url("/stream/start"), data=nested(5), headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400 and "subscribe_url" in (await resp.json())["error"]["message"]


async def test_oversize_and_stalled_bodies(make_server):
    server = await make_server(max_body_bytes=4096, max_sdp_bytes=2048, body_read_timeout=1.0)
    resp = await server.session.post(
        server.url("/stream/start"), data=b'{"a": "' + b"x" * 5000 + b'"}', headers={"Content-Type": "application/json"}
    )
    assert resp.status == 413 and "4096" in (await resp.json())["error"]["message"]
    resp = await server.session.post(
        server.url("/whip"), data=b"v=0\r\n" + b"a=x\r\n" * 1000, headers={"Content-Type": "application/sdp"}
    )
    assert resp.status == 413 and "2048" in (await resp.json())["error"]["message"]

    # a body that never finishes: answered 408 within the timeout, the connection freed
    host, port = server.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    auth = "".join(f"{k}: {v}\r\n" for k, v in server.auth_headers("api").items()).encode()
    writer.write(
        b"POST /stream/start HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + auth
        + b'Content-Length: 1000\r\n\r\n{"subscribe_url": '
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), timeout=10)
    assert b" 408 " in status_line, status_line
    writer.close()


async def test_bad_requests_leave_a_running_stream_alone(make_server):
    server = await make_server()
    server.app[TRICKLE_KEY].create_channel("calm")
    resp = await server.session.post(
        server.url("/stream/start"), json={"subscribe_url": server.trickle_url("calm"), "manifest_id": "calm"}
    )
    assert resp.status == 200
    stream = server.app[STREAMS_KEY].get_active("calm")
    feeding = asyncio.create_task(
        publish_realtime(server.trickle_url("calm"), make_segments(3, 128, 128), token=server.token("trickle"))
    )
    for _ in range(20):
        await server.session.post(
            server.url("/stream/params"),
            data=nested(10_000),
            headers={"Content-Type": "application/json", "X-Stream-Id": "calm"},
        )
        await server.session.post(
            server.url("/stream/start"), data=b"not json at all", headers={"Content-Type": "text/plain"}
        )
    await feeding
    assert await wait_until(lambda: stream.status()["frames_in"] > 60, timeout=20), (
        stream.status()["frames_in"],
        stream.end_reason,
    )
    assert stream.active


async def test_slow_request_heads_and_idle_connections_are_closed(make_server):
    server = await make_server(header_read_timeout=1.0)
    host, port = server.base_url.removeprefix("http://").split(":")

    async def seconds_until_closed(first: bytes, drip: bytes) -> float | None:
        """Send `first`, then `drip` every 0.25 s; when does the server hang up (None: not in 6 s)?"""
        reader, writer = await asyncio.open_connection(host, int(port))
        started = asyncio.get_running_loop().time()
        try:
            writer.write(first)
            for _ in range(24):
                try:
                    data = await asyncio.wait_for(reader.read(65536), 0.25)
                except TimeoutError:
                    data = None
                if data == b"":
                    return asyncio.get_running_loop().time() - started
                if drip:
                    writer.write(drip)
                    await writer.drain()
            return None
        except ConnectionError:
            return asyncio.get_running_loop().time() - started
        finally:
            writer.close()

    # nothing at all; a head that never ends (one header line every 0.25 s, slowloris style)
    for first, drip in ((b"", b""), (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"X-Slow: 1\r\n")):
        closed_after = await seconds_until_closed(first, drip)
        assert closed_after is not None and closed_after < 4.0, (first, closed_after)
    # a complete request is answered, and the idle connection after it is closed the same way
    closed_after = await seconds_until_closed(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"")
    assert closed_after is not None and closed_after < 4.0
    resp = await server.session.get(server.url("/health"))
    assert resp.status == 200
