"""The translation HTTP API over a real aiohttp server on an ephemeral loopback port, with the
real Apertium backend and with the OpenAI-compatible backend (pointed at tests/openai_stub.py,
a local server that follows the OpenAI chat-completions API — no engine with weights runs here).
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from inference.translate import TranslateSettings, TranslationError, TranslationService
from server.routes_translate import add_translate_routes, translate_capability
from tests.openai_stub import OpenAIStub, user_text

needs_apertium = pytest.mark.skipif(shutil.which("apertium") is None, reason="apertium is not installed")


async def serve(service: TranslationService) -> TestClient:
    app = web.Application(client_max_size=1024 * 1024)
    add_translate_routes(app, service)
    client = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await client.start_server()
    return client


@pytest.fixture
async def apertium_api() -> AsyncIterator[TestClient]:
    service = TranslationService(TranslateSettings(backend="apertium", max_batch_texts=4, max_text_chars=200))
    client = await serve(service)
    yield client
    await client.close()
    await service.close()


@pytest.fixture
async def stub() -> AsyncIterator[OpenAIStub]:
    async with OpenAIStub(model="stub-translator", responder=lambda r: f"ES:{user_text(r)}") as server:
        yield server


@pytest.fixture
async def openai_service(stub: OpenAIStub) -> AsyncIterator[TranslationService]:
    service = TranslationService(
        TranslateSettings(
            vllm_endpoint=f"{stub.base_url}/v1",
            vllm_model="stub-translator",
            vllm_api_key="k",
            vllm_max_retries=0,
            vllm_breaker_threshold=2,
            vllm_timeout_s=0.5,
        )
    )
    yield service
    await service.close()


@pytest.fixture
async def openai_api(openai_service: TranslationService) -> AsyncIterator[TestClient]:
    client = await serve(openai_service)
    yield client
    await client.close()


async def expect_error(resp: Any, status: int, code: str) -> str:
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    return body["error"]["message"]


# --- Apertium backend ------------------------------------------------------------------------


@needs_apertium
async def test_translate_with_apertium(apertium_api: TestClient) -> None:
    resp = await apertium_api.post("/translate", json={"text": "The cat is black", "source_lang": "en", "target_lang": "es"})
    assert resp.status == 200
    body = await resp.json()
    assert "gato" in body["translated_text"] and "negro" in body["translated_text"]
    assert body["source_language"] == "en" and body["target_language"] == "es"
    assert body["model_info"] == "apertium:eng-spa"
    assert body["usage"] is None


@needs_apertium
async def test_batch_with_apertium(apertium_api: TestClient) -> None:
    resp = await apertium_api.post(
        "/translate/batch", json={"texts": ["Hello world", "The cat is black"], "source_lang": "en", "target_lang": "es"}
    )
    assert resp.status == 200
    body = await resp.json()
    texts = [t["translated_text"] for t in body["translations"]]
    assert "Hola" in texts[0] and "gato" in texts[1]
    assert body["model_info"] == "apertium:eng-spa"


@needs_apertium
async def test_health_with_apertium(apertium_api: TestClient) -> None:
    resp = await apertium_api.get("/translate/health")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "healthy" and body["backend"] == "apertium"
    assert "eng-spa" in body["details"]["pairs"] and body["breaker"] is None


@needs_apertium
async def test_request_errors(apertium_api: TestClient) -> None:
    resp = await apertium_api.post("/translate", data=b"{not json", headers={"Content-Type": "application/json"})
    await expect_error(resp, 400, "invalid_request")

    resp = await apertium_api.post("/translate", json={"text": "Hello", "source_lang": "en"})
    assert "target_lang" in await expect_error(resp, 400, "invalid_request")

    resp = await apertium_api.post("/translate", json={"text": 5, "source_lang": "en", "target_lang": "es"})
    assert "'text'" in await expect_error(resp, 400, "invalid_request")

    resp = await apertium_api.post("/translate", json=["Hello"])
    await expect_error(resp, 400, "invalid_request")

    resp = await apertium_api.post("/translate", json={"text": "Hi", "source_lang": "en; rm", "target_lang": "es"})
    assert "source_lang" in await expect_error(resp, 400, "invalid_request")

    resp = await apertium_api.post("/translate", json={"text": "Bonjour", "source_lang": "fr", "target_lang": "de"})
    assert "eng-spa" in await expect_error(resp, 400, "unsupported_language_pair")


@needs_apertium
async def test_size_limits(apertium_api: TestClient) -> None:
    resp = await apertium_api.post("/translate", json={"text": "a" * 201, "source_lang": "en", "target_lang": "es"})
    assert "200" in await expect_error(resp, 413, "text_too_long")
    resp = await apertium_api.post(
        "/translate/batch", json={"texts": ["a"] * 5, "source_lang": "en", "target_lang": "es"}
    )
    await expect_error(resp, 413, "too_many_texts")
    resp = await apertium_api.post("/translate/batch", json={"texts": [], "source_lang": "en", "target_lang": "es"})
    assert "texts" in await expect_error(resp, 400, "invalid_request")


@needs_apertium
async def test_capability_accepts_text_and_texts() -> None:
    service = TranslationService(TranslateSettings(backend="apertium"))
    try:
        single = await translate_capability({"text": "Hello world", "source_lang": "en", "target_lang": "es"}, service)
        batch = await translate_capability(
            {"texts": ["Hello world", "The cat is black"], "source_lang": "en", "target_lang": "es"}, service
        )
        with pytest.raises(TranslationError) as bad:
            await translate_capability({"text": "Hello"}, service)
    finally:
        await service.close()
    assert "Hola" in single["translated_text"]
    assert [("gato" in t["translated_text"]) for t in batch["translations"]] == [False, True]
    assert bad.value.http_status == 400 and "source_lang" in str(bad.value)


# --- OpenAI-compatible backend ---------------------------------------------------------------


async def test_translate_with_openai_backend(openai_api: TestClient, stub: OpenAIStub) -> None:
    resp = await openai_api.post("/translate", json={"text": "Hello world", "source_lang": "en", "target_lang": "es"})
    assert resp.status == 200
    body = await resp.json()
    assert body["translated_text"] == "ES:Hello world"
    assert body["model_info"] == "stub-translator"
    assert body["usage"]["completion_tokens"] == 2 and body["usage"]["total_tokens"] > 2
    assert stub.chat_requests[0].headers["Authorization"] == "Bearer k"


async def test_batch_with_openai_backend_sums_usage(openai_api: TestClient, stub: OpenAIStub) -> None:
    resp = await openai_api.post(
        "/translate/batch", json={"texts": ["one", "two", "three"], "source_lang": "en", "target_lang": "fr"}
    )
    assert resp.status == 200
    body = await resp.json()
    assert [t["translated_text"] for t in body["translations"]] == ["ES:one", "ES:two", "ES:three"]
    assert body["usage"]["completion_tokens"] == 3
    assert stub.chat_count == 3


async def test_backend_failures_map_to_503_then_circuit_open(openai_api: TestClient, stub: OpenAIStub) -> None:
    stub.mode = "http_500"
    payload = {"text": "Hello", "source_lang": "en", "target_lang": "es"}
    for _ in range(2):
        await expect_error(await openai_api.post("/translate", json=payload), 503, "backend_error")
    message = await expect_error(await openai_api.post("/translate", json=payload), 503, "circuit_open")
    assert "circuit open" in message
    assert stub.chat_count == 2

    resp = await openai_api.get("/translate/health")
    assert resp.status == 503
    health = await resp.json()
    assert health["status"] == "unhealthy" and health["backend"] == "openai"
    assert health["model"] == "stub-translator" and health["breaker"]["state"] == "open"


async def test_backend_timeout_maps_to_504(openai_api: TestClient, stub: OpenAIStub) -> None:
    stub.fail_next("delay")
    stub.delay_s = 2.0
    resp = await openai_api.post("/translate", json={"text": "Hello", "source_lang": "en", "target_lang": "es"})
    await expect_error(resp, 504, "backend_timeout")


async def test_openai_health_when_up(openai_api: TestClient) -> None:
    resp = await openai_api.get("/translate/health")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "healthy" and body["breaker"]["state"] == "closed"
    assert body["details"]["checked"] == "/health"


async def test_disabled_backend_answers_503() -> None:
    service = TranslationService(TranslateSettings(backend="none"))
    client = await serve(service)
    try:
        resp = await client.post("/translate", json={"text": "Hello", "source_lang": "en", "target_lang": "es"})
        await expect_error(resp, 503, "translation_disabled")
        assert (await client.get("/translate/health")).status == 503
    finally:
        await client.close()
