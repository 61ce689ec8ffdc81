"""Secrets in caller URLs (issue items 10, 11, 12): credentials and secret query values of a
subscribe/publish URL never reach a log record or an API answer, while the real URL still works
(the trickle segment index goes at the end of the path, before the query); percent-encoded
parameter names are redacted like plain ones; a batch capability's answer does not tell a caller
how the host behind a URL answered."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from httpapi.redact import redact_payload, redact_text, redact_url
from media.manager import STREAMS_KEY
from server.access import redact
from tests.conftest import wait_until
from tests.media_gen import make_segments
from tests.trickle_helpers import OutputCollector, publish_realtime
from trickle.client import TricklePublisher, TrickleSubscriber, segment_url
from trickle.server import TrickleServer

SECRETS = ("abc-user-pw", "abc-token-1", "abc-sig-2", "abc-pct-3")


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, (where, secret, text[:500])


def logged(caplog) -> str:
    return "\n".join(record.getMessage() for record in caplog.records)


# -- the redaction functions ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:abc@h:1/ch?token=abc&x=1", "http://h:1/ch?token=[redacted]&x=1"),
        ("http://h/ch?%74oken=abc", "http://h/ch?%74oken=[redacted]"),
        ("http://h/ch?%2574oken=abc", "http://h/ch?%2574oken=[redacted]"),
        (
            "https://h/o?X-Amz-Credential=abc&X-Amz-Signature=abc&X-Amz-Expires=60",
            "https://h/o?X-Amz-Credential=[redacted]&X-Amz-Signature=[redacted]&X-Amz-Expires=60",
        ),
        (
            "http://h/a?Access_Token=abc&sig=abc&api_key=abc&keyframes=2",
            "http://h/a?Access_Token=[redacted]&sig=[redacted]&api_key=[redacted]&keyframes=2",
        ),
        ("http://[::1]:8/c?secret=abc#access_token=abc", "http://[::1]:8/c?secret=[redacted]#access_token=[redacted]"),
        ("http://h/plain/path", "http://h/plain/path"),
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown
    assert redact_text(f"GET {url} failed: boom") == f"GET {shown} failed: boom"


def test_access_log_redaction_decodes_parameter_names():
    """`?%74oken=` is `token` to the server (it authenticates): the access log hides it too."""
    assert (
        redact('"GET /stream/a/captions.vtt?%74oken=abc123 HTTP/1.1"')
        == '"GET /stream/a/captions.vtt?%74oken=[redacted] HTTP/1.1"'
    )
    assert (
        redact('"GET /x?kinds=a&TOKEN=abc&sig=abc HTTP/1.1" 200')
        == '"GET /x?kinds=a&TOKEN=[redacted]&sig=[redacted] HTTP/1.1" 200'
    )
    assert redact_payload({"a": ["http://u:p@h/?token=abc"], "n": 1, "prompt": "what?"}) == {
        "a": ["http://h/?token=[redacted]"],
        "n": 1,
        "prompt": "what?",
    }


async def test_percent_encoded_token_in_a_live_request_is_not_logged(server, caplog):
    caplog.set_level(logging.INFO)
    async with aiohttp.ClientSession() as session:
        for path in ("/stream/none/captions.vtt?%74oken=abc-pct-3", "/health?%73ig=abc-sig-2&x=1"):
            async with session.get(server.url(path)) as response:
                await response.read()
    assert await wait_until(lambda: "captions.vtt" in logged(caplog) and "/health" in logged(caplog), timeout=5)
    assert_no_secret(logged(caplog), "access log")


# -- the segment index before the query ------------------------------------------------------------
def test_segment_index_ends_the_path_before_the_query():
    assert segment_url("http://h/ai/trickle/ch?token=X", -2) == "http://h/ai/trickle/ch/-2?token=X"
    assert segment_url("http://h/ai/trickle/ch/", 5) == "http://h/ai/trickle/ch/5"
    assert segment_url("https://h:8/ch/?a=1&b=2", 0) == "https://h:8/ch/0?a=1&b=2"


@pytest.fixture
async def recording_trickle() -> AsyncIterator[tuple[str, list[str]]]:
    """A loopback trickle server (no tokens) that records each request's path and query."""
    seen: list[str] = []

    @web.middleware
    async def record(request: web.Request, handler):
        if len(seen) < 1000:
            seen.append(f"{request.method} {request.path_qs}")
        return await handler(request)

    app = web.Application(middlewares=[record])
    TrickleServer().add_routes(app, "/ai/trickle/")
    runner = web.AppRunner(app, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/ai/trickle", seen
    finally:
        await runner.cleanup()


async def test_trickle_url_with_a_query_round_trips_and_its_secret_is_not_logged(recording_trickle, caplog):
    caplog.set_level(logging.DEBUG)
    base, seen = recording_trickle
    url = f"{base}/q?token=abc-token-1"
    async with TricklePublisher(url, mime="application/octet-stream") as publisher:
        writer = await publisher.next_segment()
        await writer.write(b"hello over a signed URL")
        assert await writer.close(timeout=10) == 200
        subscriber = TrickleSubscriber(url, start_seq=0, max_retries=2, retry_delay=0.05)
        try:
            segment = await subscriber.next_segment()
            assert segment is not None
            data = b""
            while chunk := await segment.read():
                data += chunk
            assert data == b"hello over a signed URL"
        finally:
            await subscriber.close()
    assert "POST /ai/trickle/q/0?token=abc-token-1" in seen
    assert "GET /ai/trickle/q/0?token=abc-token-1" in seen
    # a failing URL with credentials and a query: every warning names it without either
    failing = TrickleSubscriber("http://user:abc-user-pw@127.0.0.1:9/ch?sig=abc-sig-2", max_retries=2, retry_delay=0.01)
    assert await failing.next_segment() is None
    await failing.close()
    assert "127.0.0.1:9/ch/-2?sig=[redacted]" in logged(caplog)
    assert_no_secret(logged(caplog), "trickle client log")


async def test_stream_with_secret_urls_runs_and_no_answer_or_log_shows_them(make_server, orch_trickle, caplog):
    """The stream reads and publishes through URLs carrying credentials and signed queries; the
    start answer, status, listing, BYOC status and every log record show none of the secrets."""
    caplog.set_level(logging.DEBUG)
    server = await make_server()
    orch_trickle.trickle.create_channel("sec-in")
    orch_trickle.trickle.create_channel("sec-out")
    host = orch_trickle.base_url.removeprefix("http://")
    subscribe = f"http://user:abc-user-pw@{host}/ai/trickle/sec-in?token=abc-token-1"
    publish = f"{orch_trickle.trickle_url('sec-out')}?%74oken=abc-pct-3&sig=abc-sig-2"
    resp = await server.session.post(
        server.url("/stream/start"), json={"subscribe_url": subscribe, "publish_url": publish, "manifest_id": "sec"}
    )
    started = await resp.text()
    assert resp.status == 200, started
    assert_no_secret(started, "start answer")
    assert "sig=[redacted]" in started and f"{host}/ai/trickle/sec-in?token=[redacted]" in started

    collector = OutputCollector(orch_trickle.trickle_url("sec-out")).start()
    try:
        await publish_realtime(orch_trickle.trickle_url("sec-in"), make_segments(2, 256, 256, fps=30))
        stream = server.app[STREAMS_KEY].get("sec")
        assert await wait_until(lambda: stream.frames_out > 0 and collector.total > 0, timeout=20)
    finally:
        await collector.stop()
    answers = {
        "status": await (await server.session.get(server.url("/stream/sec/status"))).text(),
        "listing": await (await server.session.get(server.url("/streams"))).text(),
        "byoc status": await (
            await server.session.get(server.url("/stream/status"), headers={"X-Stream-Id": "sec"})
        ).text(),
    }
    for where, text in answers.items():
        assert_no_secret(text, where)
    status = json.loads(answers["status"])
    assert status["source"]["url"] == f"http://{host}/ai/trickle/sec-in?token=[redacted]"
    resp = await server.session.delete(server.url("/stream/sec"))
    assert resp.status == 200
    assert_no_secret(logged(caplog), "server log")


async def test_a_refused_url_is_not_echoed_with_its_secrets(server, caplog):
    caplog.set_level(logging.DEBUG)
    resp = await server.session.post(
        server.url("/stream/start"), json={"subscribe_url": "ftp://user:abc-user-pw@127.0.0.1/x?token=abc-token-1"}
    )
    text = await resp.text()
    assert resp.status == 400 and "subscribe_url must be an http(s) URL" in text, text
    assert_no_secret(text, "400 answer")
    assert_no_secret(logged(caplog), "server log")


# -- /process/request/*: one answer for every way a URL fails -------------------------------------------
async def test_batch_capability_answers_alike_for_a_refusing_and_a_failing_url(server, caplog):
    """A loopback port that refuses and a loopback server answering 500: the caller sees the same
    status and body; the server log keeps which (with the URL redacted)."""
    caplog.set_level(logging.INFO)

    async def fail(request: web.Request) -> web.Response:
        return web.Response(status=500, text="internal host says no")

    app = web.Application()
    app.router.add_get("/v.mp4", fail)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    answering = f"http://127.0.0.1:{runner.addresses[0][1]}/v.mp4?token=abc-token-1"
    closed = await _closed_port()
    refusing = f"http://127.0.0.1:{closed}/v.mp4?sig=abc-sig-2"
    answers = []
    try:
        for url in (refusing, answering):
            resp = await server.session.post(
                server.url("/process/request/analyze"), json={"video_url": url, "tag_list": ["face"]}
            )
            answers.append((resp.status, await resp.json()))
    finally:
        await runner.cleanup()
    assert answers[0] == answers[1], answers
    status, body = answers[0]
    assert status == 400 and body["error"] == {"code": "url_fetch_failed", "message": "the URL could not be fetched"}
    log_text = logged(caplog)
    assert "answered HTTP 500" in log_text and "could not be fetched: Cannot connect" in log_text
    assert_no_secret(log_text, "server log")


async def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port
