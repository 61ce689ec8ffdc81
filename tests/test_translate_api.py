"""The translation HTTP API over a real aiohttp server on an ephemeral loopback port, behind the
server's own middleware (roles, tokens, error shape), with the real Apertium backend and with the
OpenAI-compatible backend pointed at tests/openai_stub.py (a local server that follows the
OpenAI chat-completions API — no engine with weights runs here).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient

from httpapi.errors import status_of
from inference.translate import TranslateSettings, TranslationError, TranslationService
from server.routes_translate import translate_capability
from tests.openai_stub import OpenAIStub, user_text
from tests.translate_helpers import expect_error, serve


@pytest.fixture
async def apertium_api() -> AsyncIterator[TestClient]:
    service = TranslationService(TranslateSettings(backends="apertium", max_batch_texts=4, max_text_chars=200))
    client = await serve(service)
    yield client
    await client.close()
    await service.close()


@pytest.fixture
async def stub() -> AsyncIterator[OpenAIStub]:
    async with OpenAIStub(model="stub-translator", responder=lambda r: f"ES:{user_text(r)}") as server:
        yield server


def llm_settings(stub: OpenAIStub, backends: str = "openai", **overrides) -> TranslateSettings:
    values = dict(
        backends=backends,
        vllm_endpoint=f"{stub.base_url}/v1",
        vllm_model="stub-translator",
        vllm_api_key="k",
        vllm_max_retries=0,
        breaker_threshold=2,
        vllm_timeout_s=0.5,
    )
    values.update(overrides)
    return TranslateSettings(**values)


@pytest.fixture
async def openai_api(stub: OpenAIStub) -> AsyncIterator[TestClient]:
    service = TranslationService(llm_settings(stub))
    client = await serve(service)
    yield client
    await client.close()
    await service.close()


# --- Apertium backend ------------------------------------------------------------------------


async def test_translate_with_apertium(apertium_api: TestClient) -> None:
    resp = await apertium_api.post(
        "/translate", json={"text": "The cat is black", "source_lang": "en", "target_lang": "es"}
    )
    assert resp.status == 200
    body = await resp.json()
    assert "gato" in body["translated_text"] and body["backend"] == "apertium"
    assert body["source_language"] == "en" and body["target_language"] == "es"
    assert body["model_info"] == "apertium:eng-spa" and body["cached"] is False
    assert body["untranslated"] is False and 0.0 <= body["confidence"] <= 1.0
    assert isinstance(body["quality_flags"], list)


async def test_batch_with_apertium(apertium_api: TestClient) -> None:
    resp = await apertium_api.post(
        "/translate/batch",
        json={"texts": ["The cat is black", "Good morning"], "source_lang": "en", "target_lang": "es"},
    )
    assert resp.status == 200
    body = await resp.json()
    texts = [t["translated_text"] for t in body["translations"]]
    assert "gato" in texts[0] and "días" in texts[1]
    assert all(t["backend"] == "apertium" for t in body["translations"])


async def test_health_and_languages_with_apertium(apertium_api: TestClient) -> None:
    resp = await apertium_api.get("/translate/health")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "healthy" and body["backend"] == "apertium"
    assert "eng-spa" in body["details"]["pairs"] and body["breaker"]["state"] == "closed"
    assert body["stream"]["open"] == 0

    resp = await apertium_api.get("/translate/languages")
    assert resp.status == 200
    languages = await resp.json()
    (apertium,) = languages["backends"]
    assert apertium["backend"] == "apertium" and apertium["any_pair"] is False
    assert {"source": "en", "target": "es"} in apertium["pairs"]
    assert languages["auto_detect"] is True


async def test_unknown_pair_is_a_400_naming_the_available_pairs(apertium_api: TestClient) -> None:
    resp = await apertium_api.post("/translate", json={"text": "Bonjour", "source_lang": "fr", "target_lang": "de"})
    message = await expect_error(resp, 400, "unsupported_language_pair")
    assert "fr->de" in message and "en->es" in message and "es->en" in message


async def test_request_errors(apertium_api: TestClient) -> None:
    resp = await apertium_api.post("/translate", data=b"{not json", headers={"Content-Type": "application/json"})
    await expect_error(resp, 400, "bad_request")
    resp = await apertium_api.post("/translate", json={"text": "Hello", "source_lang": "en"})
    assert "target_lang" in await expect_error(resp, 400, "bad_request")
    resp = await apertium_api.post("/translate", json={"text": 5, "source_lang": "en", "target_lang": "es"})
    assert "text" in await expect_error(resp, 400, "bad_request")
    resp = await apertium_api.post("/translate", json=["Hello"])
    await expect_error(resp, 400, "bad_request")
    resp = await apertium_api.post("/translate", json={"text": "Hi", "source_lang": "en; rm", "target_lang": "es"})
    assert "source_lang" in await expect_error(resp, 400, "bad_request")
    resp = await apertium_api.post(
        "/translate", json={"text": "Hi", "source_lang": "en", "target_lang": "es", "session_id": "bad id with spaces"}
    )
    assert "session_id" in await expect_error(resp, 400, "bad_request")
    resp = await apertium_api.post("/translate", data=b"text=hi", headers={"Content-Type": "text/plain"})
    await expect_error(resp, 415, "unsupported_media_type")


async def test_size_limits(apertium_api: TestClient) -> None:
    resp = await apertium_api.post("/translate", json={"text": "a" * 201, "source_lang": "en", "target_lang": "es"})
    assert "200" in await expect_error(resp, 413, "text_too_long")
    resp = await apertium_api.post(
        "/translate/batch", json={"texts": ["a"] * 5, "source_lang": "en", "target_lang": "es"}
    )
    await expect_error(resp, 413, "too_many_texts")
    resp = await apertium_api.post("/translate/batch", json={"texts": [], "source_lang": "en", "target_lang": "es"})
    assert "texts" in await expect_error(resp, 400, "bad_request")


async def test_auto_detects_the_source_language(apertium_api: TestClient) -> None:
    resp = await apertium_api.post(
        "/translate", json={"text": "El gato es negro y la casa es grande.", "source_lang": "auto", "target_lang": "en"}
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["detected_language"] == "es" and body["source_language"] == "es"
    assert "cat" in body["translated_text"].lower()
    resp = await apertium_api.post("/translate", json={"text": "12345 !!!", "source_lang": "auto", "target_lang": "en"})
    await expect_error(resp, 400, "language_not_detected")


async def test_capability_accepts_text_and_texts() -> None:
    service = TranslationService(TranslateSettings(backends="apertium"))
    try:
        single = await translate_capability({"text": "Hello world", "source_lang": "en", "target_lang": "es"}, service)
        batch = await translate_capability(
            {"texts": ["Hello world", "The cat is black"], "source_lang": "en", "target_lang": "es"}, service
        )
        with pytest.raises(TranslationError) as bad:
            await translate_capability({"text": "Hello"}, service)
    finally:
        await service.close()
    assert "Hola" in single["translated_text"] and single["backend"] == "apertium"
    assert [("gato" in t["translated_text"]) for t in batch["translations"]] == [False, True]
    assert status_of(bad.value) == 400 and "source_lang" in str(bad.value)


# --- OpenAI-compatible backend, fallback ------------------------------------------------------


async def test_translate_with_openai_backend(openai_api: TestClient, stub: OpenAIStub) -> None:
    resp = await openai_api.post("/translate", json={"text": "Hello world", "source_lang": "en", "target_lang": "es"})
    assert resp.status == 200
    body = await resp.json()
    assert body["translated_text"] == "ES:Hello world" and body["backend"] == "openai"
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


async def test_failing_backend_answers_the_source_marked_untranslated(openai_api: TestClient, stub: OpenAIStub) -> None:
    stub.mode = "http_500"
    payload = {"text": "Hello there", "source_lang": "en", "target_lang": "es"}
    for _ in range(3):
        resp = await openai_api.post("/translate", json=payload)
        assert resp.status == 200
        body = await resp.json()
        assert body["untranslated"] is True and body["translated_text"] == "Hello there"
        assert body["backend"] == "none" and body["confidence"] == 0.0 and "untranslated" in body["quality_flags"]
    assert stub.chat_count == 2  # the third call found the breaker open

    resp = await openai_api.get("/translate/health")
    assert resp.status == 503
    health = await resp.json()
    assert health["status"] == "unhealthy" and health["breaker"]["state"] == "open"


async def test_dead_llm_falls_back_to_apertium_and_names_it(stub: OpenAIStub) -> None:
    stub.mode = "delay"
    stub.delay_s = 3.0  # slow: past the per-backend limit
    service = TranslationService(llm_settings(stub, backends="vllm,apertium", backend_timeout_s=0.3))
    client = await serve(service)
    try:
        resp = await client.post(
            "/translate", json={"text": "The cat is black", "source_lang": "en", "target_lang": "es"}
        )
        body = await resp.json()
        assert resp.status == 200 and body["backend"] == "apertium" and "gato" in body["translated_text"]
        snapshot = {b["name"]: b for b in service.stats()["backends"]}
        assert snapshot["vllm"]["failed"] == 1 and "backend_timeout" in snapshot["vllm"]["last_error"]
        assert snapshot["apertium"]["answered"] == 1
    finally:
        await client.close()
        await service.close()


async def test_disabled_translation_answers_503() -> None:
    service = TranslationService(TranslateSettings(backends="none"))
    client = await serve(service)
    try:
        resp = await client.post("/translate", json={"text": "Hello", "source_lang": "en", "target_lang": "es"})
        await expect_error(resp, 503, "translation_disabled")
        assert (await client.get("/translate/health")).status == 503
    finally:
        await client.close()


# --- sessions and auth -----------------------------------------------------------------------


async def test_sessions_show_history_and_end(openai_api: TestClient, stub: OpenAIStub) -> None:
    for text in ("Maria bought a car.", "She drives it every day."):
        resp = await openai_api.post(
            "/translate", json={"text": text, "source_lang": "en", "target_lang": "es", "session_id": "talk-1"}
        )
        assert resp.status == 200 and (await resp.json())["session_id"] == "talk-1"
    resp = await openai_api.post(
        "/translate/batch",
        json={"texts": ["Third one."], "source_lang": "en", "target_lang": "es", "session_id": "talk-1"},
    )
    assert resp.status == 200

    resp = await openai_api.get("/translate/sessions/talk-1")
    assert resp.status == 200
    session = await resp.json()
    assert [h["source"] for h in session["history"]] == [
        "Maria bought a car.",
        "She drives it every day.",
        "Third one.",
    ]
    assert session["history"][0]["translation"] == "ES:Maria bought a car." and session["translations"] == 3
    # the second and third prompts carried the earlier sentences as prior turns
    assert "Maria bought a car." in [m["content"] for m in stub.chat_requests[1].json["messages"]]
    assert len(stub.chat_requests[2].json["messages"]) == 1 + 2 * 2 + 1

    assert (await openai_api.delete("/translate/sessions/talk-1")).status == 200
    await expect_error(await openai_api.get("/translate/sessions/talk-1"), 404, "not_found")
    await expect_error(await openai_api.delete("/translate/sessions/talk-1"), 404, "not_found")


async def test_translation_routes_need_the_api_token() -> None:
    service = TranslationService(TranslateSettings(backends="apertium"))
    client = await serve(service, api_token="s3cret")
    payload = {"text": "Hello", "source_lang": "en", "target_lang": "es"}
    try:
        await expect_error(await client.post("/translate", json=payload), 401, "unauthorized")
        await expect_error(await client.get("/translate/languages"), 401, "unauthorized")
        await expect_error(await client.get("/translate/stream"), 401, "unauthorized")
        resp = await client.post("/translate", json=payload, headers={"Authorization": "Bearer s3cret"})
        assert resp.status == 200
    finally:
        await client.close()
        await service.close()
