"""One error path: every error answer, from every route group (server, byoc, trickle, WebSocket
messages), has the one body `{"error": {"code", "message"}, "detail": {"msg"}}`; domain errors are
mapped to statuses by one table (httpapi/errors.py); an unexpected exception is a 500 with the
same body and a redacted traceback in the log.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from httpapi.errors import DOMAIN_CODES, DOMAIN_ERRORS, STATUS, ApiError, error_middleware, status_of
from media.webrtc_sdp import OfferError, OfferFailed, UnsupportedOffer
from server.openapi import STATUS_TEXT
from tests.conftest import RunningServer
from tests.translate_helpers import serve

# the keys every error body has, whichever group answered
BODY_KEYS = {"success", "status", "error", "detail"}


async def assert_one_shape(resp: aiohttp.ClientResponse, status: int, code: str | None = None) -> dict[str, Any]:
    assert resp.status == status, (resp.url, resp.status, await resp.text())
    assert resp.content_type == "application/json", (resp.url, resp.content_type)
    body = await resp.json()
    assert set(body) == BODY_KEYS, (resp.url, body)
    assert body["success"] is False and body["status"] == "error"
    assert set(body["error"]) == {"code", "message"} and body["error"]["message"], body
    assert body["detail"] == {"msg": body["error"]["message"]}, body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body


async def test_server_routes_answer_errors_in_the_one_shape(server: RunningServer) -> None:
    s = server.session
    # aiohttp's own 404 (no route)
    await assert_one_shape(await s.get(server.url("/no/such/route")), 404, "not_found")
    # a handler's ApiError
    await assert_one_shape(await s.get(server.url("/v1/jobs/nope")), 404, "not_found")
    await assert_one_shape(await s.get(server.url("/v1/jobs?limit=x")), 400, "bad_request")
    # the access middleware's HTTPException (invalid JSON) and a validation error
    bad_json = await s.post(server.url("/stream/start"), data=b"{x", headers={"Content-Type": "application/json"})
    await assert_one_shape(bad_json, 400, "bad_request")
    await assert_one_shape(await s.post(server.url("/stream/start"), json={}), 400, "bad_request")
    # a domain OfferError mapped by the table: malformed → 400
    whip = await s.post(server.url("/whip"), data=b"hello", headers={"Content-Type": "application/sdp"})
    await assert_one_shape(whip, 400, "bad_request")
    # a WHIP session PATCH without If-Match: 404 first (no such session)
    patch = await s.patch(
        server.url("/whip/sessions/nope"), data=b"", headers={"Content-Type": "application/trickle-ice-sdpfrag"}
    )
    assert patch.status in (404, 415)
    await assert_one_shape(patch, patch.status)
    # no token where one is required (token mode) or a foreign Origin: the access middleware's 401/403
    async with aiohttp.ClientSession() as bare:
        foreign = await bare.post(server.url("/stream/start"), json={}, headers={"Origin": "https://evil.example"})
        assert foreign.status in (401, 403)
        await assert_one_shape(foreign, foreign.status)


async def test_byoc_routes_answer_errors_in_the_one_shape(server: RunningServer) -> None:
    s = server.session
    unknown = await s.post(server.url("/process/request/no-such-capability"), json={})
    await assert_one_shape(unknown, 404, "not_found")
    lv2v = await s.post(server.url("/live-video-to-video"), data=b"[1]", headers={"Content-Type": "application/json"})
    await assert_one_shape(lv2v, 400, "bad_request")
    stop = await s.post(server.url("/stream/stop"), json={}, headers={"X-Stream-Id": "nobody"})
    await assert_one_shape(stop, stop.status)
    assert stop.status in (400, 404)
    if server.token("livepeer"):  # token mode: ai-runner's exact 401 wording, in the one shape
        async with aiohttp.ClientSession() as bare:
            body = await assert_one_shape(await bare.post(server.url("/live-video-to-video"), json={}), 401)
            assert body["detail"]["msg"] == "Invalid bearer token."


async def test_trickle_routes_answer_errors_in_the_one_shape(server: RunningServer) -> None:
    s = server.session
    missing = await s.get(server.trickle_url("no-such-channel") + "/0")
    await assert_one_shape(missing, 404, "channel_not_found")
    # a POST segment whose index is not a number
    await assert_one_shape(await s.post(server.trickle_url("no-such-channel") + "/x"), 400, "invalid_idx")


async def test_websocket_errors_use_the_same_code_strings() -> None:
    """/translate/stream error messages carry `{"error": {"code", "message"}}` with the table's codes."""
    from inference.translate import TranslateSettings, TranslationService

    service = TranslationService(TranslateSettings(backends="apertium"))
    client = await serve(service)
    try:
        async with client.ws_connect("/translate/stream") as ws:
            await ws.send_str(json.dumps({"id": 1, "text": "Bonjour", "source_lang": "fr", "target_lang": "xx"}))
            message = await asyncio.wait_for(ws.receive(), 10)
        reply = json.loads(message.data)
        assert set(reply["error"]) == {"code", "message"} and reply["error"]["message"]
        assert (
            reply["error"]["code"] in DOMAIN_CODES
            or reply["error"]["code"] in {i.code for i in STATUS.values()}
            or (reply["error"]["code"] == "invalid_message")
        )
        # the HTTP answer for the same request: same code, status from the table
        resp = await client.post("/translate", json={"text": "Bonjour", "source_lang": "fr", "target_lang": "xx"})
        body = await assert_one_shape(resp, resp.status)
        assert resp.status == DOMAIN_CODES.get(body["error"]["code"], resp.status)
        # a plain GET (no Upgrade) is an ApiError from the handler
        await assert_one_shape(await client.get("/translate/stream"), 400, "bad_request")
    finally:
        await client.close()
        await service.close()


async def test_unexpected_exception_is_a_500_in_the_one_shape_with_a_redacted_trace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def boom(_request: web.Request) -> web.Response:
        raise RuntimeError("failed fetching https://user:hunter2@example.com/x?token=s3cret")

    async def offer_failed(_request: web.Request) -> web.Response:
        raise OfferFailed("the stream ended at once: decoder gone")

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/boom", boom)
    app.router.add_get("/offer-failed", offer_failed)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        with caplog.at_level(logging.ERROR, logger="httpapi.errors"):
            async with aiohttp.ClientSession() as s:
                body = await assert_one_shape(await s.get(base + "/boom"), 500, "internal_error")
                assert "hunter2" not in json.dumps(body) and "s3cret" not in json.dumps(body)
                failed = await assert_one_shape(await s.get(base + "/offer-failed"), 500, "internal_error")
                assert "ended at once" in failed["error"]["message"]  # a mapped domain error keeps its message
    finally:
        await runner.cleanup()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "Traceback" in logged and "RuntimeError" in logged
    assert "hunter2" not in logged and "s3cret" not in logged


def test_the_domain_table_names_real_classes_and_statuses() -> None:
    for path, (status, _code) in DOMAIN_ERRORS.items():
        module, _, name = path.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        assert isinstance(cls, type) and issubclass(cls, Exception), path
        assert status in STATUS, path
    assert all(status in STATUS for status in DOMAIN_CODES.values())
    assert status_of(OfferError("x")) == 400 and status_of(UnsupportedOffer("x")) == 422
    assert status_of(ApiError(412, "x")) == 412
    # one status table: the OpenAPI descriptions come from it
    assert STATUS_TEXT == {status: info.text for status, info in STATUS.items()}


def test_domain_errors_carry_no_http_status() -> None:
    from analysis.engine import JobFailed
    from analysis.inputs import InputError
    from inference.openai_client import OpenAIError, TransientOpenAIError
    from inference.translate.base import TranslationError

    for exc in (
        TranslationError("x", code="backend_timeout"),
        OpenAIError("x", code="bad_backend_response"),
        TransientOpenAIError("x"),
        OfferError("x"),
        JobFailed("x"),
        InputError("x"),
    ):
        assert not hasattr(exc, "status") and not hasattr(exc, "http_status"), type(exc)
    assert status_of(TranslationError("x", code="backend_timeout")) == 504
    assert status_of(TranslationError("x")) == 503
    assert status_of(OpenAIError("x", code="bad_backend_response")) == 502
    assert status_of(TransientOpenAIError("x", code="backend_error")) == 503
    assert status_of(JobFailed("x")) == 422 and status_of(JobFailed("x", code="bad_gateway")) == 502
    assert status_of(InputError("x")) == 400 and status_of(InputError("x", code="insufficient_storage")) == 507


async def test_raised_errors_keep_cors_headers(make_server) -> None:
    """An `ApiError` from a handler is answered inside the access middleware, so a browser on an
    allowed origin can read it (as it could an aiohttp HTTPException)."""
    server = await make_server(asr_preload=False, cors_origins="https://app.example")
    resp = await server.session.get(server.url("/v1/jobs/nope"), headers={"Origin": "https://app.example"})
    await assert_one_shape(resp, 404, "not_found")
    assert resp.headers.get("Access-Control-Allow-Origin") == "https://app.example"
