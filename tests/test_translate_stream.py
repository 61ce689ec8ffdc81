"""WebSocket GET /translate/stream over a real loopback server: replies in order, bounded work per
connection, garbage and binary frames, and a client that stops reading. The LLM backend is
tests/openai_stub.py (an OpenAI-compatible server; no engine with weights runs here).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from inference.translate import TranslateSettings, TranslationService
from server.routes_translate import STREAM_STATS_KEY
from tests.conftest import wait_until
from tests.openai_stub import OpenAIStub
from tests.translate_helpers import serve, spanish_responder


@pytest.fixture
async def stub() -> AsyncIterator[OpenAIStub]:
    async with OpenAIStub(model="stub-translator", responder=spanish_responder) as server:
        yield server


async def start(stub: OpenAIStub, **overrides: Any) -> tuple[TestClient, TranslationService]:
    values: dict[str, Any] = dict(
        backends="vllm",
        vllm_endpoint=stub.base_url,
        vllm_model="stub-translator",
        vllm_max_retries=0,
        ws_send_timeout_s=0.5,
        ws_max_in_flight=2,
    )
    values.update(overrides)
    service = TranslationService(TranslateSettings(**values))
    return await serve(service), service


@pytest.fixture
async def api(stub: OpenAIStub) -> AsyncIterator[TestClient]:
    client, service = await start(stub)
    yield client
    await client.close()
    await service.close()


async def receive_json(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    message = await asyncio.wait_for(ws.receive(), 10)
    assert message.type == aiohttp.WSMsgType.TEXT, message
    return json.loads(message.data)


async def test_replies_come_in_order_with_confidence(api: TestClient, stub: OpenAIStub) -> None:
    stub.delay_s = 0.3  # the first message is slow; the second needs no backend and is ready first
    async with api.ws_connect("/translate/stream") as ws:
        await ws.send_json({"id": "a", "text": "Hello world", "source_lang": "en", "target_lang": "es"})
        await ws.send_json({"id": "b", "text": "Hello world", "source_lang": "en", "target_lang": "en"})
        await ws.send_json({"text": "Good morning", "source_lang": "en", "target_lang": "es"})
        first, second, third = [await receive_json(ws) for _ in range(3)]
    assert first["id"] == "a" and first["translated_text"] == "Hola mundo" and first["backend"] == "vllm"
    assert 0.0 <= first["confidence"] <= 1.0 and isinstance(first["quality_flags"], list)
    assert second["id"] == "b" and second["translated_text"] == "Hello world"
    assert third["id"] == 3 and third["translated_text"] == "Buenos días"  # no id: the message's number


async def test_in_flight_work_per_connection_is_bounded(api: TestClient, stub: OpenAIStub) -> None:
    stub.delay_s = 0.2
    async with api.ws_connect("/translate/stream") as ws:
        for i in range(6):
            await ws.send_json({"id": i, "text": f"line {i}", "source_lang": "en", "target_lang": "es"})
        replies = [await receive_json(ws) for _ in range(6)]
    assert [r["id"] for r in replies] == list(range(6))
    assert [r["translated_text"] for r in replies] == [f"ES[line {i}]" for i in range(6)]
    assert stub.peak_in_flight == 2  # TRANSLATE_WS_MAX_IN_FLIGHT, not 6


async def test_stream_sessions_carry_context(api: TestClient, stub: OpenAIStub) -> None:
    async with api.ws_connect("/translate/stream") as ws:
        for text in ("Maria bought a car.", "She drives it every day."):
            await ws.send_json({"text": text, "source_lang": "en", "target_lang": "es", "session_id": "live-1"})
        replies = [await receive_json(ws) for _ in range(2)]
    assert replies[1]["translated_text"] == "Ella lo conduce todos los días." and replies[1]["session_id"] == "live-1"
    assert "María compró un coche." in [m["content"] for m in stub.chat_requests[1].json["messages"]]


async def test_garbage_gets_errors_then_the_connection_is_closed(api: TestClient) -> None:
    async with api.ws_connect("/translate/stream") as ws:
        await ws.send_str("this is not json")
        not_json = await receive_json(ws)
        await ws.send_json({"id": 7, "text": "Hello", "source_lang": "en", "target_lang": "xx-!!"})
        invalid = await receive_json(ws)
        await ws.send_json({"id": 8, "text": "Hello", "source_lang": "fr", "target_lang": "zz"})
        unsupported = await receive_json(ws)  # a valid message the backend cannot do: not garbage
        await ws.send_json({"id": 9, "text": "Hello world", "source_lang": "en", "target_lang": "es"})
        still_works = await receive_json(ws)
        await ws.send_str("[1, 2")
        await receive_json(ws)
        closed = await asyncio.wait_for(ws.receive(), 10)
    assert not_json["error"]["code"] == "invalid_message" and not_json["id"] is None
    assert invalid["id"] == 7 and "target_lang" in invalid["error"]["message"]
    assert unsupported["id"] == 8 and unsupported["error"]["code"] == "unsupported_language_pair"
    assert still_works["translated_text"] == "Hola mundo"
    assert closed.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1008
    assert api.app[STREAM_STATS_KEY].closed_bad_messages == 1


async def test_binary_frames_are_a_protocol_error(api: TestClient) -> None:
    async with api.ws_connect("/translate/stream") as ws:
        await ws.send_bytes(b"\x00\x01")
        error = await receive_json(ws)
        closed = await asyncio.wait_for(ws.receive(), 10)
    assert error["error"]["code"] == "invalid_message"
    assert closed.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1003


async def test_a_plain_get_is_a_clear_400(api: TestClient) -> None:
    resp = await api.get("/translate/stream")
    assert resp.status == 400
    assert "WebSocket" in (await resp.json())["error"]["message"]


def _client_frame(payload: bytes) -> bytes:
    """A masked text frame (clients must mask; an all-zero key leaves the payload as is)."""
    size = len(payload)
    if size < 126:
        header = bytes([0x81, 0x80 | size])
    elif size < 1 << 16:
        header = bytes([0x81, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        header = bytes([0x81, 0x80 | 127]) + size.to_bytes(8, "big")
    return header + b"\x00\x00\x00\x00" + payload


async def test_a_client_that_stops_reading_is_closed_and_others_carry_on(api: TestClient) -> None:
    stats = api.app[STREAM_STATS_KEY]
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window fills fast
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", api.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1024)  # reads stop past 2 KiB
    writer.write(
        b"GET /translate/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101")
    # same-language messages need no backend, so replies (4 kB each) pile up as fast as we send
    frame = _client_frame(json.dumps({"text": "word " * 800, "source_lang": "en", "target_lang": "en"}).encode())
    deadline = loop.time() + 30
    sent = 0
    try:
        while stats.closed_slow_reader == 0 and loop.time() < deadline:
            writer.write(frame)
            sent += 1
            try:
                await asyncio.wait_for(writer.drain(), 0.2)
            except TimeoutError:
                await asyncio.sleep(0.1)  # the server stopped reading us: back-pressure
            except ConnectionError:
                break
        await wait_until(lambda: stats.closed_slow_reader, timeout=5)  # the close lands just after the counter
    finally:
        writer.transport.abort()
    assert stats.closed_slow_reader == 1, f"sent {sent} messages without being closed"
    assert sent < 5000  # the server pushed back long before that

    async with api.ws_connect("/translate/stream") as ws:  # nothing else was affected
        await ws.send_json({"text": "Hello world", "source_lang": "en", "target_lang": "es"})
        assert (await receive_json(ws))["translated_text"] == "Hola mundo"
    assert await wait_until(lambda: stats.open == 0, timeout=5)
