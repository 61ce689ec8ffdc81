"""SSE places per stream (SSE_MAX_PER_STREAM) always come back: a bad `Last-Event-ID` is a 400 that
holds nothing, a client that leaves before the answer starts frees its place, and a stream started
again under the same id counts its own places (server/routes_events.py)."""

from __future__ import annotations

import asyncio
import socket
import struct

import aiohttp
import pytest

from media.events import StatusEvent
from media.manager import STREAMS_KEY
from server.routes_events import SSE_OPEN_KEY
from tests.conftest import wait_until

API = "event-slots-api-token"
LIMIT = 4
# "²" and "١" are str.isdigit() but not event ids
BAD_IDS = ["²", "12²", "١٢", "-1", "+1", "1e3", "7 8", "0x10", "1" * 20, "abc"]
BAD_QUERY_IDS = [" 7", "7 ", "7\n"]  # a header value loses its outer white space in HTTP parsing


async def start(server, orch_trickle, manifest_id: str) -> str:
    """A running stream (input channel on the orchestrator's trickle server, nothing published);
    its viewer token."""
    orch_trickle.trickle.create_channel(manifest_id)
    resp = await server.session.post(
        server.url("/stream/start"),
        headers={"Authorization": f"Bearer {API}"},
        json={"subscribe_url": orch_trickle.trickle_url(manifest_id), "manifest_id": manifest_id},
    )
    assert resp.status == 200, await resp.text()
    return (await resp.json())["viewer_token"]


async def assert_sse_opens(server, manifest_id: str, token: str) -> None:
    async with server.session.get(server.url(f"/stream/{manifest_id}/events"), params={"token": token}) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.content.readline()).startswith(b":")


def slots(server):
    return server.app[SSE_OPEN_KEY]


async def raw_get(port: int, path: str, headers: bytes = b"") -> tuple[int, bytes]:
    """One HTTP/1.1 GET with raw header bytes (a non-ASCII header value as a client may send it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + headers + b"\r\n"
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        body = await asyncio.wait_for(reader.read(4096), 10)
        return int(head.split(b" ", 2)[1]), body
    finally:
        writer.close()


async def test_bad_last_event_ids_are_refused_and_hold_no_place(orch_trickle, make_server):
    server = await make_server(api_token=API, sse_max_per_stream=LIMIT)
    token = await start(server, orch_trickle, "bad-ids")
    port = server.runner.addresses[0][1]
    path = f"/stream/bad-ids/events?token={token}"
    for _ in range(20):  # the reported attack: more requests than there are places
        resp = await server.session.get(server.url(path) + "&last_event_id=%C2%B2")
        body = await resp.json()
        assert resp.status == 400 and "Last-Event-ID" in body["error"]["message"], body
        status, raw = await raw_get(port, path, "Last-Event-ID: ²\r\n".encode())
        assert status == 400 and b"Last-Event-ID" in raw, raw
    for bad in BAD_IDS + BAD_QUERY_IDS:
        attempts = [{"params": {"token": token, "last_event_id": bad}}]
        if bad not in BAD_QUERY_IDS:
            attempts.append({"params": {"token": token}, "headers": {"Last-Event-ID": bad}})
        for kwargs in attempts:
            async with server.session.get(server.url("/stream/bad-ids/captions"), **kwargs) as resp:
                assert resp.status == 400, (bad, kwargs)
                assert (await resp.json())["error"]["code"]
    assert slots(server).total() == 0
    await assert_sse_opens(server, "bad-ids", token)
    assert await wait_until(lambda: slots(server).total() == 0, timeout=10)


async def test_a_good_last_event_id_skips_what_the_client_saw(orch_trickle, make_server):
    server = await make_server(api_token=API, sse_max_per_stream=LIMIT)
    token = await start(server, orch_trickle, "good-id")
    stream = server.app[STREAMS_KEY].get("good-id")
    for n in range(3):
        stream.events.publish(StatusEvent(state="ONLINE", detail={"n": n}))
    ids = [event.id for event in stream.events.history if event.kind == "status" and "n" in (event.detail or {})]
    async with server.session.get(
        server.url("/stream/good-id/events"),
        params={"token": token, "kinds": "status"},
        headers={"Last-Event-ID": str(ids[0])},
    ) as resp:
        assert resp.status == 200
        seen: list[str] = []
        while len(seen) < 2:
            line = (await asyncio.wait_for(resp.content.readline(), 10)).decode()
            if line.startswith("id: "):
                seen.append(line[4:].strip())
        assert seen == [str(i) for i in ids[1:]]
    assert await wait_until(lambda: slots(server).total() == 0, timeout=10)


def _abandon(port: int, path: str) -> None:
    """Send a request and reset the connection at once (SO_LINGER 0): the client is gone before
    the server answers."""
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()


@pytest.mark.parametrize("route", ["events", "captions"])
async def test_clients_that_leave_at_once_free_their_places(orch_trickle, make_server, route):
    server = await make_server(api_token=API, sse_max_per_stream=LIMIT)
    token = await start(server, orch_trickle, "leavers")
    port = server.runner.addresses[0][1]
    path = f"/stream/leavers/{route}?token={token}"
    for _ in range(20):
        await asyncio.to_thread(_abandon, port, path)
    assert await wait_until(lambda: slots(server).total() == 0, timeout=15), slots(server).get("leavers")
    await assert_sse_opens(server, "leavers", token)
    assert await wait_until(lambda: slots(server).total() == 0, timeout=15)
    # clients that leave after the answer began: all places, three times over
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            opened = [await session.get(server.url(path)) for _ in range(LIMIT)]
            assert [resp.status for resp in opened] == [200] * LIMIT
            for resp in opened:
                resp.close()
            assert await wait_until(lambda: slots(server).total() == 0, timeout=15), slots(server).get("leavers")
    assert stream_subscribers(server, "leavers") == 0


def stream_subscribers(server, manifest_id: str) -> int:
    return len(server.app[STREAMS_KEY].get(manifest_id).events._subs)


async def test_a_stream_started_again_under_the_same_id_has_its_own_places(orch_trickle, make_server):
    server = await make_server(api_token=API, sse_max_per_stream=LIMIT)
    await start(server, orch_trickle, "again")
    old = server.app[STREAMS_KEY].get("again")
    for _ in range(LIMIT):  # places the old stream never gave back (whatever the cause)
        assert slots(server).take(old, LIMIT)
    resp = await server.session.delete(server.url("/stream/again"), headers={"Authorization": f"Bearer {API}"})
    assert resp.status == 200
    token = await start(server, orch_trickle, "again")
    assert server.app[STREAMS_KEY].get("again") is not old
    await assert_sse_opens(server, "again", token)
