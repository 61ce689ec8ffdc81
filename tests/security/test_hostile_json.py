"""Hostile input that is not a body: JSON carried as a string (a `params` string in a body, WHIP's
`?params=`, multipart form fields, the Livepeer header, WebSocket and control-channel messages)
goes through the same depth-limited parser as bodies, and every parse error is a 400 in the one
error shape, never a 500 (a RecursionError included). Also: undecodable Authorization bytes are a
401, and a manifest id must match its pattern in full (no trailing newline)."""

from __future__ import annotations

import asyncio
import base64
import json

import aiohttp
import pytest

from byoc.capabilities import CapabilityRegistry
from byoc.control_channel import ControlReader
from byoc.params import ParamsApplier
from httpapi.json_body import JSONBodyError, loads_limited
from media.manager import STREAMS_KEY
from tests.conftest import wait_until

API = "api-secret-j"
DEPTHS = (900, 5000)  # accepted before (limit 32), and a RecursionError (500) before


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def deep_object(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


async def start(server, orch_trickle, manifest_id: str) -> None:
    orch_trickle.trickle.create_channel(manifest_id)
    body = {"subscribe_url": orch_trickle.trickle_url(manifest_id), "manifest_id": manifest_id}
    resp = await server.session.post(server.url("/stream/start"), json=body)
    assert resp.status == 200, await resp.text()


async def bad_request(resp: aiohttp.ClientResponse, *words: str) -> None:
    text = await resp.text()
    assert resp.status == 400, (resp.status, text[:300])
    body = json.loads(text)
    assert body["error"]["code"] == "bad_request", body
    for word in words:
        assert word in body["error"]["message"], body


def test_the_parser_limits_depth_and_size_and_never_recurses_out():
    assert loads_limited('{"a": [1, {"b": 2}]}') == {"a": [1, {"b": 2}]}
    for text in (deep(33), deep(900), deep(5000), deep(200_000), deep_object(5000)):
        with pytest.raises(JSONBodyError, match="nested too deeply"):
            loads_limited(text)
    with pytest.raises(JSONBodyError, match="larger than 10 bytes"):
        loads_limited("[" + "1," * 10 + "1]", max_bytes=10)
    for raw in (b"\xff\xfe{", "{", "", b"\x80"):
        with pytest.raises(JSONBodyError, match="invalid JSON"):
            loads_limited(raw)


@pytest.mark.parametrize("depth", DEPTHS)
async def test_a_deep_params_string_is_400_on_every_start_and_update_route(server, orch_trickle, depth):
    await start(server, orch_trickle, f"deep-{depth}")
    channel = orch_trickle.trickle_url(f"deep-in-{depth}")
    for path, body, headers in (
        ("/stream/start", {"subscribe_url": channel, "manifest_id": f"n-{depth}", "params": deep(depth)}, {}),
        (
            "/stream/start",
            {"subscribe_url": channel, "gateway_request_id": f"g-{depth}", "params": deep(depth)},
            {"X-Stream-Id": f"g-{depth}"},
        ),
        ("/live-video-to-video", {"subscribe_url": channel, "manifest_id": f"l-{depth}", "params": deep(depth)}, {}),
        ("/stream/params", {"params": deep(depth)}, {"X-Stream-Id": f"deep-{depth}"}),
    ):
        resp = await server.session.post(server.url(path), json=body, headers=headers)
        await bad_request(resp, "nested too deeply")
    assert [s.manifest_id for s in server.app[STREAMS_KEY].active()] == [f"deep-{depth}"]


@pytest.mark.parametrize("depth", (900, 1200))  # 1200 passes Python's recursion limit; longer URLs hit 8 KiB
async def test_a_deep_whip_params_query_is_400(server, depth):
    resp = await server.session.post(
        server.url("/whip"), params={"params": deep(depth)}, data="v=0\r\n", headers={"Content-Type": "application/sdp"}
    )
    await bad_request(resp, "params", "nested too deeply")


@pytest.mark.parametrize("depth", DEPTHS)
async def test_a_deep_multipart_field_is_400(make_server, depth):
    server = await make_server(asr_preload=False)
    form = aiohttp.FormData()
    form.add_field("tag_list", deep(depth))
    form.add_field("transcript", "false")
    form.add_field("video", b"\x00" * 1024, filename="v.mp4", content_type="video/mp4")
    resp = await server.session.post(server.url("/v1/analyze"), data=form)
    await bad_request(resp, "tag_list", "nested too deeply")


async def test_a_deep_livepeer_header_is_400(server):
    for payload in ({"request": deep(2000), "capability": "analyze"}, {"parameters": deep(900)}):
        header = base64.b64encode(json.dumps(payload).encode()).decode()
        resp = await server.session.post(server.url("/process/request/analyze"), json={}, headers={"Livepeer": header})
        await bad_request(resp, "Livepeer header")


async def test_a_deep_stop_body_still_stops_the_stream(server, orch_trickle):
    """/stream/stop takes any body; a deep one is kept as text, not parsed into a 500."""
    await start(server, orch_trickle, "deep-stop")
    resp = await server.session.post(
        server.url("/stream/stop"),
        data=deep(5000).encode(),
        headers={"X-Stream-Id": "deep-stop", "Content-Type": "text/plain"},
    )
    assert resp.status == 200, await resp.text()
    assert await wait_until(lambda: server.app[STREAMS_KEY].get_active("deep-stop") is None, timeout=10)


async def test_a_deep_websocket_message_gets_an_error_reply(make_server):
    server = await make_server(asr_preload=False)
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(server.url("/translate/stream"), headers=server.auth_headers("api")) as ws,
    ):
        for depth in DEPTHS:
            await ws.send_str(deep(depth))
            reply = await asyncio.wait_for(ws.receive_json(), 10)
            assert reply["error"]["code"] == "invalid_message", reply
        assert not ws.closed


def test_a_deep_control_message_is_counted_and_ignored():
    applied: list[dict] = []
    reader = ControlReader("http://127.0.0.1:9/control", "t", ParamsApplier(applied.append, lambda _e: None))
    for depth in DEPTHS:
        reader.handle_message(deep_object(depth).encode())
    assert reader.invalid == 2 and not applied


# -- Authorization bytes and ids ------------------------------------------------------------------------
async def raw_status(server, request: bytes) -> int:
    host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        return int(status_line.split()[1])
    finally:
        writer.close()
        await writer.wait_closed()


async def test_an_undecodable_authorization_header_is_401(make_server):
    server = await make_server(api_token=API)
    for path in (b"/streams", b"/stream/x1/captions.vtt", b"/ai/trickle/ch/next", b"/metrics"):
        for value in (b"Bearer \xff", b"Bearer \xff\xfe" + API.encode(), b"\xff"):
            request = (
                b"GET "
                + path
                + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: "
                + value
                + b"\r\nConnection: close\r\n\r\n"
            )
            assert await raw_status(server, request) == 401, (path, value)


async def test_a_manifest_id_with_a_trailing_newline_is_400(server, orch_trickle):
    channel = orch_trickle.trickle_url("nl-in")
    resp = await server.session.post(
        server.url("/stream/start"), json={"subscribe_url": channel, "manifest_id": "abc\n"}
    )
    await bad_request(resp, "manifest id")
    resp = await server.session.post(
        server.url("/offer"), json={"sdp": "v=0\r\n", "type": "offer", "manifest_id": "abc\n"}
    )
    await bad_request(resp, "manifest id")
    resp = await server.session.post(
        server.url("/whip/abc%0A"), data="v=0\r\n", headers={"Content-Type": "application/sdp"}
    )
    await bad_request(resp, "stream key")
    assert not server.app[STREAMS_KEY].active()
    with pytest.raises(ValueError, match="invalid capability name"):
        CapabilityRegistry().register("name\n", lambda body, ctx: None)
