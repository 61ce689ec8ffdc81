"""The server trusts itself, nobody else (server/self_trust.py): with any token set, a stream whose
URLs are this server's own `/ai/trickle/...` routes runs (its subscriber, publisher and Livepeer
side channels reach the trickle server), while a request from anyone else without the token gets
401, and the server's own credential never goes to another host or port."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any, Self

import aiohttp
import pytest
from aiohttp import web

from media.manager import STREAMS_KEY
from media.stream import StreamState
from server.keys import TRICKLE_KEY
from server.self_trust import SELF_TRUST_KEY
from server.settings import Settings
from tests.conftest import start_server, stop_server, wait_until
from tests.media_gen import decode_ts, make_segments
from trickle.client import TricklePublisher, TrickleSubscriber

API = "self-trust-api-token"
AUTH = "self-trust-livepeer-token"
TRICKLE = "self-trust-trickle-token"
TOKEN_SETS = {
    "trickle_token": {"api_token": API, "trickle_token": TRICKLE},
    "api_token_only": {"api_token": API},
    "auth_token_only": {"auth_token": AUTH},
}
FAST = {"events_interval": 0.5, "data_flush_interval": 0.1, "data_keepalive_interval": 1.0}


def token_session(server, role: str) -> aiohttp.ClientSession:
    """A client outside the server, presenting the configured token of `role`."""
    return aiohttp.ClientSession(headers=server.auth_headers(role))


def own_token(server) -> str:
    token = server.app[SELF_TRUST_KEY].bearer_for(server.trickle_url("probe"))
    assert token and token not in {API, AUTH, TRICKLE}
    return token


async def publish(url: str, session: aiohttp.ClientSession, segments: list[bytes], seconds: float) -> None:
    """Publish like a live source: segment i starts at i × `seconds`."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    publisher = TricklePublisher(url, session=session)
    try:
        for index, segment in enumerate(segments):
            await asyncio.sleep(max(0.0, start + index * seconds - loop.time()))
            writer = await publisher.next_segment()
            await writer.write(segment)
            assert await writer.close() == 200
    finally:
        await publisher.close(delete_channel=False)  # the stream ends by DELETE, not by its input going


async def collect(url: str, session: aiohttp.ClientSession, into: list[bytes]) -> None:
    async with TrickleSubscriber(url, session=session) as subscriber:
        while (segment := await subscriber.next_segment()) is not None:
            parts = [chunk async for chunk in _chunks(segment)]
            into.append(b"".join(parts))


async def _chunks(segment):
    while chunk := await segment.read():
        yield chunk


async def collect_json(url: str, session: aiohttp.ClientSession, into: list[Any]) -> None:
    """Every JSON value of every segment (one value, or JSON lines) of a side channel."""
    async with TrickleSubscriber(url, session=session) as subscriber:
        while (segment := await subscriber.next_segment()) is not None:
            data = b"".join([chunk async for chunk in _chunks(segment)])
            into.extend(json.loads(line) for line in data.splitlines() if line.strip())


@pytest.mark.parametrize("tokens", list(TOKEN_SETS.values()), ids=list(TOKEN_SETS))
async def test_a_stream_on_the_servers_own_trickle_server(make_server, tokens, caplog):
    server = await make_server(**tokens)
    caller = "api" if "api_token" in tokens else "livepeer"
    mid = "self-1"
    trickle = server.app[TRICKLE_KEY]
    trickle.create_channel(mid)
    trickle.create_channel(f"{mid}-out")
    resp = await server.session.post(
        server.url("/stream/start"),
        headers={"X-Stream-Id": mid, **server.auth_headers(caller)},
        json={"subscribe_url": server.trickle_url(mid), "publish_url": server.trickle_url(f"{mid}-out")},
    )
    answer = await resp.text()
    assert resp.status == 200, answer
    stream = server.app[STREAMS_KEY].get(mid)
    output: list[bytes] = []
    async with token_session(server, "trickle") as session:
        collector = asyncio.create_task(collect(server.trickle_url(f"{mid}-out"), session, output))
        publisher = asyncio.create_task(publish(server.trickle_url(mid), session, make_segments(4, 256, 256), 1.0))
        try:
            assert await wait_until(lambda: stream.state is StreamState.ONLINE, timeout=20), stream.status()
            assert await wait_until(lambda: sum(len(s) for s in output) > 0, timeout=20), stream.status()
            await asyncio.wait_for(publisher, 20)
        finally:
            publisher.cancel()
            resp = await server.session.delete(server.url(f"/stream/{mid}"), headers=server.auth_headers("api"))
            await asyncio.wait_for(asyncio.gather(collector, return_exceptions=True), 20)
    frames, _ = decode_ts(b"".join(output))
    assert frames and stream.end_reason == "stopped by DELETE"  # not "input channel ended: retries_exhausted"
    assert stream.source.stats()["segments"] >= 1
    assert not trickle.has_channel(f"{mid}-out")  # the publisher's DELETE got in too
    token = own_token(server)
    assert token not in caplog.text and token not in answer


async def test_side_channels_on_the_servers_own_trickle_server(make_server):
    server = await make_server(api_token=API, trickle_token=TRICKLE, **FAST)
    mid = "self-ch"
    trickle = server.app[TRICKLE_KEY]
    for name in ("control", "events", "data"):
        trickle.create_channel(f"{mid}-{name}", "application/json")
    body = {name + "_url": server.trickle_url(f"{mid}-{name}") for name in ("control", "events", "data")}
    resp = await server.session.post(
        server.url("/stream/start"),
        json={**body, "params": {"p": 1}},
        headers={"X-Stream-Id": mid, **server.auth_headers("api")},
    )
    assert resp.status == 200, await resp.text()
    stream = server.app[STREAMS_KEY].get(mid)
    events: list[Any] = []
    lines: list[Any] = []
    async with token_session(server, "trickle") as session:
        readers = [
            asyncio.create_task(collect_json(server.trickle_url(f"{mid}-events"), session, events)),
            asyncio.create_task(collect_json(server.trickle_url(f"{mid}-data"), session, lines)),
        ]
        # events channel (the server publishes): its status reports arrive
        assert await wait_until(lambda: any(e.get("event", e).get("type") == "status" for e in events), timeout=10)
        # control channel (the server subscribes): a params message reaches the stream
        async with TricklePublisher(
            server.trickle_url(f"{mid}-control"), mime="application/json", session=session
        ) as control:
            writer = await control.next_segment()
            await writer.write(json.dumps({"params": {"p": 2}}).encode())
            assert await writer.close() == 200
            assert await wait_until(lambda: stream.params == {"p": 2}, timeout=10)
            # data channel (the server publishes JSON lines): the params change is announced
            assert await wait_until(
                lambda: any(d.get("detail", {}).get("reason") == "params_updated" for d in lines), timeout=10
            )
            assert stream.active
            resp = await server.session.post(
                server.url("/stream/stop"), headers={"X-Stream-Id": mid, **server.auth_headers("api")}
            )
            assert resp.status == 200
        await asyncio.wait_for(asyncio.gather(*readers, return_exceptions=True), 10)
    # the server's own DELETEs closed its output channels
    assert not trickle.has_channel(f"{mid}-events") and not trickle.has_channel(f"{mid}-data")
    assert "retries_exhausted" not in (stream.end_reason or "")


async def test_anyone_else_needs_the_trickle_token(make_server):
    server = await make_server(api_token=API, trickle_token=TRICKLE)
    server.app[TRICKLE_KEY].create_channel("closed-door")
    url = server.trickle_url("closed-door")
    async with aiohttp.ClientSession() as anonymous:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {API}"}):
            for method, path in (("GET", "/-2"), ("POST", "/0"), ("DELETE", "")):
                async with anonymous.request(method, url + path, headers=headers, data=b"x") as resp:
                    assert resp.status == 401, (method, headers)
        # the server's own token opens the trickle routes only
        token = own_token(server)
        async with anonymous.get(server.url("/streams"), headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 401
        async with anonymous.post(url + "/0", headers={"Authorization": f"Bearer {TRICKLE}"}, data=b"x") as resp:
            assert resp.status == 200


class Recorder:
    """An HTTP server on a loopback address that records each request's Authorization header."""

    def __init__(self, host: str, port: int = 0) -> None:
        self.host = host
        self.port = port
        self.seen: list[tuple[str, str | None]] = []
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._record)
        self.runner = web.AppRunner(app)

    async def _record(self, request: web.Request) -> web.Response:
        self.seen.append((f"{request.method} {request.path}", request.headers.get("Authorization")))
        return web.Response(status=503)  # subscribers retry, publishers report: a few requests each

    async def __aenter__(self) -> Self:
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()

    def url(self, channel: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/ai/trickle/{channel}"


@pytest.mark.parametrize("where", ["other_port", "same_port_other_loopback_address", "same_port_ipv6_loopback"])
async def test_the_own_token_goes_to_no_other_listener(make_server, where):
    server = await make_server(api_token=API, trickle_token=TRICKLE, **FAST)
    port = server.runner.addresses[0][1]
    host, recorder_port = {
        "other_port": ("127.0.0.1", 0),
        "same_port_other_loopback_address": ("127.0.0.2", port),
        "same_port_ipv6_loopback": ("::1", port),
    }[where]
    async with Recorder(host, recorder_port) as recorder:
        body = {
            name: recorder.url(f"x-{name}")
            for name in ("subscribe_url", "publish_url", "control_url", "events_url", "data_url")
        }
        resp = await server.session.post(
            server.url("/stream/start"), json=body, headers={"X-Stream-Id": "elsewhere", **server.auth_headers("api")}
        )
        assert resp.status == 200, await resp.text()

        def methods() -> set[str]:
            return {seen.split(" ")[0] for seen, _ in recorder.seen}

        assert await wait_until(lambda: {"GET", "POST"} <= methods(), timeout=10), recorder.seen
        await server.session.delete(server.url("/stream/elsewhere"), headers=server.auth_headers("api"))
    assert all(auth is None for _, auth in recorder.seen), recorder.seen


async def test_which_urls_are_the_servers_own():
    server = await start_server(Settings(host="127.0.0.1", port=0, api_token=API))
    try:
        await _check_own_urls(server)
    finally:
        await stop_server(server)
    # once the server has stopped, nothing is trusted
    assert server.app[SELF_TRUST_KEY].bearer_for(server.trickle_url("a")) is None


async def _check_own_urls(server) -> None:
    trust = server.app[SELF_TRUST_KEY]
    port = server.runner.addresses[0][1]
    own = [
        f"http://127.0.0.1:{port}/ai/trickle/a",
        f"https://127.0.0.1:{port}/ai/trickle/a/0",
        f"http://user@127.0.0.1:{port}/ai/trickle/a?x=1",
    ]
    foreign = [
        f"http://127.0.0.1:{port + 1 if port < 65535 else port - 1}/ai/trickle/a",  # another port
        f"http://127.0.0.2:{port}/ai/trickle/a",
        f"http://[::1]:{port}/ai/trickle/a",  # not our socket
        f"http://127.0.0.1:{port}/stream/start",
        f"http://127.0.0.1:{port}/ai/trickle",  # not trickle
        f"http://127.0.0.1:{port}/ai/trickle/../stream/start",
        f"ftp://127.0.0.1:{port}/ai/trickle/a",
        f"http://example.com:{port}/ai/trickle/a",
        f"http://127.0.0.1.nip.io:{port}/ai/trickle/a",
        "http://127.0.0.1/ai/trickle/a",
        "not a url",
        f"http://127.0.0.1:{port}:9/ai/trickle/a",
    ]
    assert [url for url in own if trust.bearer_for(url) is None] == []
    assert [url for url in foreign if trust.bearer_for(url) is not None] == []
    # `localhost` counts only when every address it names is one this server listens on
    localhost = {info[4][0] for info in socket.getaddrinfo("localhost", None, type=socket.SOCK_STREAM)}
    expected = localhost <= {"127.0.0.1"}
    assert (trust.bearer_for(f"http://localhost:{port}/ai/trickle/a") is not None) is expected
    assert "token" not in repr(trust).lower() and trust.bearer_for(own[0]) not in repr(trust)
