"""The OpenAI-compatible (vLLM) translator and the TranslationService around it.

No engine with weights can run here, so the client talks over real loopback HTTP to
tests/openai_stub.py, a small aiohttp server that follows the OpenAI chat-completions API and
can be told to fail (delay, 500, 429, garbage JSON, empty choices, dropped connections).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import pytest

from httpapi.errors import status_of
from inference.openai_client import chat_completions_url, server_root
from inference.translate import (
    LRUCache,
    OpenAICompatTranslator,
    TranslateSettings,
    TranslationError,
    TranslationService,
)
from inference.translate.openai_compat import clean_model_output
from tests.openai_stub import OpenAIStub, image_urls, user_text

SPANISH = {"Hello world": "Hola mundo", "The cat is black": "El gato es negro", "Good morning": "Buenos días"}


def spanish_responder(request: dict[str, Any]) -> str:
    text = user_text(request)
    return SPANISH.get(text, f"ES[{text}]")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def stub():
    async with OpenAIStub(model="stub-translator", responder=spanish_responder) as server:
        yield server


def make_client(stub: OpenAIStub, **overrides: Any) -> OpenAICompatTranslator:
    options: dict[str, Any] = {
        "timeout": 5.0,
        "max_retries": 0,
        "retry_base_delay": 0.01,
        "retry_max_delay": 0.05,
    }
    options.update(overrides)
    return OpenAICompatTranslator(stub.base_url, "stub-translator", **options)


# --- request and answer shape ---------------------------------------------------------------


async def test_request_follows_the_chat_completions_shape(stub: OpenAIStub) -> None:
    stub.api_key = "secret-key"
    client = OpenAICompatTranslator(f"{stub.base_url}/v1/", "stub-translator", api_key="secret-key")
    try:
        result = await client.translate("Hello world", "en", "es")
    finally:
        await client.close()
    assert result.text == "Hola mundo"
    assert result.model_info == "stub-translator"
    assert result.usage is not None and result.usage["total_tokens"] == (
        result.usage["prompt_tokens"] + result.usage["completion_tokens"]
    )
    assert result.usage["completion_tokens"] == 2
    (request,) = stub.chat_requests
    assert request.headers["Authorization"] == "Bearer secret-key"
    body = request.json
    assert body["model"] == "stub-translator"
    assert body["temperature"] == 0
    assert body["stream"] is False
    assert body["logprobs"] is True  # the confidence evidence
    assert isinstance(body["max_tokens"], int) and 16 <= body["max_tokens"] <= 1024
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["messages"][1]["content"] == "Hello world"
    system = body["messages"][0]["content"]
    assert "English" in system and "Spanish" in system and "only" in system


async def test_extra_body_and_max_tokens_cap(stub: OpenAIStub) -> None:
    client = make_client(stub, extra_body={"chat_template_kwargs": {"enable_thinking": False}}, max_output_tokens=64)
    try:
        await client.translate("word " * 200, "en", "es")
    finally:
        await client.close()
    body = stub.chat_requests[0].json
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert body["max_tokens"] == 64


async def test_model_is_discovered_when_not_configured(stub: OpenAIStub) -> None:
    client = OpenAICompatTranslator(stub.base_url, None, timeout=5.0)
    try:
        result = await client.translate("The cat is black", "en", "es")
    finally:
        await client.close()
    assert result.text == "El gato es negro"
    assert client.model == "stub-translator"
    assert [r.path for r in stub.requests] == ["/v1/models", "/v1/chat/completions"]


async def test_wrapping_quotes_and_prefixes_are_stripped(stub: OpenAIStub) -> None:
    replies = iter(['"Hola mundo"', "Translation: Hola mundo", "<think>ok</think>\nSpanish: «Hola mundo»"])
    stub.responder = lambda request: next(replies)
    client = make_client(stub)
    try:
        results = [await client.translate(f"Hello world {i}", "en", "es") for i in range(3)]
    finally:
        await client.close()
    assert [r.text for r in results] == ["Hola mundo"] * 3


def test_clean_model_output_keeps_what_the_source_had() -> None:
    assert clean_model_output('"Hola"', '"Hello"', "es") == '"Hola"'
    assert clean_model_output("Translation: fin", "Translation: end", "es") == "Translation: fin"
    assert clean_model_output("  Bonjour  ", "Hello", "fr") == "Bonjour"
    assert clean_model_output("French: Bonjour", "Hello", "fr") == "Bonjour"


def test_endpoint_forms_are_normalised() -> None:
    for form in ("http://h:8001", "http://h:8001/", "http://h:8001/v1", "http://h:8001/v1/chat/completions"):
        assert server_root(form) == "http://h:8001"
        assert chat_completions_url(form) == "http://h:8001/v1/chat/completions"
    assert server_root("https://proxy/llm/v1") == "https://proxy/llm"  # a proxy's prefix is kept
    with pytest.raises(ValueError):
        chat_completions_url("h:8001")


async def test_batch_runs_concurrently_but_bounded(stub: OpenAIStub) -> None:
    stub.delay_s = 0.2
    client = make_client(stub, max_concurrency=2)
    texts = ["Hello world", "The cat is black", "Good morning", "one", "two", "three"]
    try:
        results = await client.translate_batch(texts, "en", "es")
    finally:
        await client.close()
    assert [r.text for r in results] == [
        "Hola mundo",
        "El gato es negro",
        "Buenos días",
        "ES[one]",
        "ES[two]",
        "ES[three]",
    ]
    assert stub.chat_count == 6
    assert stub.peak_in_flight == 2  # concurrent, and never past the limit


async def test_waiters_past_max_pending_are_refused(stub: OpenAIStub) -> None:
    stub.delay_s = 0.3
    client = make_client(stub, max_concurrency=1, max_pending=1)
    try:
        outcomes = await asyncio.gather(
            *(client.translate(f"t{i}", "en", "es") for i in range(3)), return_exceptions=True
        )
    finally:
        await client.close()
    refused = [o for o in outcomes if isinstance(o, TranslationError)]
    assert len(refused) == 1 and refused[0].code == "overloaded"
    assert stub.chat_count == 2


# --- failures and retries --------------------------------------------------------------------


async def test_timeout_is_a_clear_error(stub: OpenAIStub) -> None:
    stub.mode = "delay"
    stub.delay_s = 3.0
    client = make_client(stub, timeout=0.3)
    try:
        with pytest.raises(TranslationError) as caught:
            await client.translate("Hello world", "en", "es")
    finally:
        await client.close()
    assert caught.value.code == "backend_timeout" and status_of(caught.value) == 504


async def test_server_errors_are_retried_until_success(stub: OpenAIStub) -> None:
    stub.fail_next("http_500", times=2)
    client = make_client(stub, max_retries=2)
    try:
        result = await client.translate("Hello world", "en", "es")
    finally:
        await client.close()
    assert result.text == "Hola mundo"
    assert stub.chat_count == 3 and client.retries == 2


async def test_429_and_dropped_connections_are_retried(stub: OpenAIStub) -> None:
    stub.fail_next("http_429")
    stub.fail_next("disconnect")
    client = make_client(stub, max_retries=3)
    try:
        result = await client.translate("Good morning", "en", "es")
    finally:
        await client.close()
    assert result.text == "Buenos días"
    assert stub.chat_count == 3


async def test_retries_give_up_with_the_last_error(stub: OpenAIStub) -> None:
    stub.mode = "http_429"
    client = make_client(stub, max_retries=2)
    try:
        with pytest.raises(TranslationError) as caught:
            await client.translate("Hello world", "en", "es")
    finally:
        await client.close()
    assert caught.value.code == "backend_overloaded" and status_of(caught.value) == 503
    assert "rate limit" in str(caught.value)
    assert stub.chat_count == 3


async def test_client_errors_are_not_retried(stub: OpenAIStub) -> None:
    stub.mode = "http_400"
    client = make_client(stub, max_retries=3)
    try:
        for _ in range(2):
            with pytest.raises(TranslationError) as caught:
                await client.translate("Hello world", "en", "es")
            assert caught.value.code == "backend_rejected" and status_of(caught.value) == 502
    finally:
        await client.close()
    assert stub.chat_count == 2  # one attempt each


async def test_unknown_model_is_reported(stub: OpenAIStub) -> None:
    client = OpenAICompatTranslator(stub.base_url, "no-such-model", max_retries=2)
    try:
        with pytest.raises(TranslationError) as caught:
            await client.translate("Hello world", "en", "es")
    finally:
        await client.close()
    assert caught.value.code == "backend_rejected" and "no-such-model" in str(caught.value)
    assert stub.chat_count == 1


@pytest.mark.parametrize("mode", ["garbage", "empty_choices", "no_content"])
async def test_malformed_answers_count_as_failures(stub: OpenAIStub, mode: str) -> None:
    stub.mode = mode
    client = make_client(stub, max_retries=2)
    try:
        with pytest.raises(TranslationError) as caught:
            await client.translate("Hello world", "en", "es")
    finally:
        await client.close()
    assert caught.value.code == "bad_backend_response" and status_of(caught.value) == 502
    assert stub.chat_count == 1  # a malformed answer is not retried (the service moves to the next backend)


async def test_unreachable_backend_is_unavailable() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = OpenAICompatTranslator(f"http://127.0.0.1:{port}", "m", max_retries=1, retry_base_delay=0.01)
    try:
        with pytest.raises(TranslationError) as caught:
            await client.translate("Hello", "en", "es")
        health = await client.health()
    finally:
        await client.close()
    assert caught.value.code == "backend_unavailable" and status_of(caught.value) == 503
    assert client.retries == 1
    assert health["status"] == "unhealthy" and "error" in health


# --- circuit breaker (the service's, one per backend) ------------------------------------------


async def test_breaker_opens_fails_fast_then_half_opens_and_closes(stub: OpenAIStub) -> None:
    clock = FakeClock()
    stub.mode = "http_500"
    service = TranslationService(openai_settings(stub, breaker_threshold=3, breaker_reset_s=10.0), clock=clock)
    breaker = service.chain.slots[0].breaker
    try:
        for _ in range(3):
            result = await service.translate("Hello world", "en", "es")
            assert result.untranslated and result.text == "Hello world" and result.backend == "none"
        assert breaker.state == "open"
        for _ in range(5):
            result = await service.translate("Hello world", "en", "es")
            assert result.untranslated
        assert stub.chat_count == 3  # open: nothing reached the backend
        assert breaker.snapshot()["rejected_count"] == 5
        assert service.stats()["backends"][0]["skipped_open"] == 5

        clock.now += 10.0
        assert breaker.state == "half_open"
        stub.mode = "ok"
        result = await service.translate("Hello world", "en", "es")  # the probe
        assert result.text == "Hola mundo" and result.backend == "openai" and not result.untranslated
        assert breaker.state == "closed" and stub.chat_count == 4
        assert (await service.translate("Good morning", "en", "es")).text == "Buenos días"
    finally:
        await service.close()


async def test_failed_probe_reopens_the_breaker(stub: OpenAIStub) -> None:
    clock = FakeClock()
    stub.mode = "garbage"
    service = TranslationService(openai_settings(stub, breaker_threshold=2, breaker_reset_s=5.0), clock=clock)
    breaker = service.chain.slots[0].breaker
    try:
        for i in range(2):
            assert (await service.translate(f"x{i}", "en", "es")).untranslated
        assert breaker.state == "open"
        clock.now += 5.0
        assert (await service.translate("x2", "en", "es")).untranslated  # the probe, answered garbage
        assert stub.chat_count == 3
        assert (await service.translate("x3", "en", "es")).untranslated
        assert stub.chat_count == 3 and breaker.state == "open"
        health = await service.health()
        assert health["status"] == "unhealthy" and "circuit" in health["details"]["error"]
    finally:
        await service.close()


async def test_client_errors_do_not_trip_the_breaker(stub: OpenAIStub) -> None:
    stub.mode = "http_400"
    service = TranslationService(openai_settings(stub, breaker_threshold=1))
    try:
        for i in range(3):
            assert (await service.translate(f"Hello {i}", "en", "es")).untranslated
    finally:
        await service.close()
    assert stub.chat_count == 3  # each request reached the backend: a 4xx proves it is up
    assert service.chain.slots[0].breaker.state == "closed"


async def test_health_uses_vllm_health_route(stub: OpenAIStub) -> None:
    client = make_client(stub)
    try:
        healthy = await client.health()
        stub.health_status = 503
        unhealthy = await client.health()
    finally:
        await client.close()
    assert healthy["status"] == "healthy" and healthy["checked"] == "/health"
    assert unhealthy["status"] == "unhealthy" and unhealthy["http_status"] == 503


async def test_stub_accepts_content_parts_for_vision_requests(stub: OpenAIStub) -> None:
    seen: list[dict[str, Any]] = []

    def responder(request: dict[str, Any]) -> str:
        seen.append(request)
        return "a cat"

    stub.responder = responder
    body = {
        "model": "stub-translator",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}},
                ],
            }
        ],
    }
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{stub.base_url}/v1/chat/completions", json=body) as resp:
            answer = await resp.json()
    assert answer["choices"][0]["message"]["content"] == "a cat"
    assert answer["object"] == "chat.completion"
    assert user_text(seen[0]) == "What is in this image?"
    assert image_urls(seen[0]) == ["data:image/jpeg;base64,AAAA"]


# --- the service -----------------------------------------------------------------------------


def openai_settings(stub: OpenAIStub, **overrides: Any) -> TranslateSettings:
    values: dict[str, Any] = {
        "vllm_endpoint": stub.base_url,
        "vllm_model": "stub-translator",
        "vllm_max_retries": 0,
        "breaker_threshold": 2,
        "vllm_timeout_s": 5.0,
        "backends": "openai",
    }
    values.update(overrides)
    return TranslateSettings(**values)


def test_backend_is_chosen_from_settings() -> None:
    assert TranslateSettings().effective_backend == "apertium"
    assert TranslateSettings(vllm_endpoint="http://vllm:8000").effective_backend == "openai"
    assert TranslateSettings(backend="apertium", vllm_endpoint="http://vllm:8000").effective_backend == "apertium"
    assert TranslateSettings(backend="none").effective_backend == "none"
    assert TranslateSettings(vllm_endpoint="http://vllm:8000").backend_list == ["openai", "apertium"]
    assert TranslateSettings(backends="vllm,triton,apertium").backend_list == ["vllm", "triton", "apertium"]
    with pytest.raises(ValueError):
        TranslateSettings(backends="vllm,nonsense")
    with pytest.raises(ValueError):
        TranslateSettings(vllm_endpoint="not a url")


async def test_service_caches_and_counts(stub: OpenAIStub) -> None:
    service = TranslationService(openai_settings(stub))
    try:
        first = await service.translate("Hello world", "en", "es")
        second = await service.translate("Hello world", "en", "es")
        batch = await service.translate_batch(["Hello world", "Good morning", "Good morning"], "en", "es")
    finally:
        await service.close()
    assert service.backend == "openai"
    assert first.cached is False and second.cached is True and second.text == "Hola mundo"
    assert [r.text for r in batch] == ["Hola mundo", "Buenos días", "Buenos días"]
    assert stub.chat_count == 2  # "Hello world" once, "Good morning" once
    stats = service.stats()
    assert stats["requests"] == 5 and stats["cache_hits"] == 2 and stats["failures"] == 0
    assert stats["latency_ms"]["p50"] is not None
    assert stats["breaker"]["state"] == "closed"


async def test_service_returns_error_values_when_the_backend_fails(stub: OpenAIStub) -> None:
    stub.mode = "http_500"
    service = TranslationService(openai_settings(stub))
    try:
        outcomes = [await service.translate_for_captions(f"line {i}", "en", "es") for i in range(4)]
        health = await service.health()
    finally:
        await service.close()
    assert all(text is None for text, _ in outcomes)  # the caption stage marks them untranslated
    assert all(error.startswith("untranslated") for _, error in outcomes)
    assert all(o.confidence == 0.0 and "untranslated" in o.quality_flags for o in outcomes)
    assert stub.chat_count == 2  # then the breaker is open and the backend is skipped
    stats = service.stats()
    assert stats["untranslated"] == 4 and stats["backends"][0]["skipped_open"] == 2
    assert health["status"] == "unhealthy" and health["breaker"]["state"] == "open"


async def test_disabled_service_answers_with_an_error_value() -> None:
    service = TranslationService(TranslateSettings(backend="none"))
    text, error = await service.translate_for_captions("Hello", "en", "es")
    assert text is None and error is not None and error.startswith("translation_disabled")
    assert (await service.health())["status"] == "unhealthy"
    await service.close()


async def test_service_limits_are_enforced(stub: OpenAIStub) -> None:
    service = TranslationService(openai_settings(stub, max_text_chars=10, max_batch_texts=2))
    try:
        with pytest.raises(TranslationError) as long_text:
            await service.translate("x" * 11, "en", "es")
        with pytest.raises(TranslationError) as many:
            await service.translate_batch(["a", "b", "c"], "en", "es")
        same = await service.translate("Hello", "en", "en-US")
    finally:
        await service.close()
    assert status_of(long_text.value) == 413 and status_of(many.value) == 413
    assert same.text == "Hello"  # same language: passed through without a backend call
    assert stub.chat_count == 0


def test_lru_cache_is_bounded_and_evicts_least_recent() -> None:
    cache: LRUCache[str, int] = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3
    assert len(cache) == 2 and cache.evictions == 1
    disabled: LRUCache[str, int] = LRUCache(0)
    disabled.put("a", 1)
    assert disabled.get("a") is None and len(disabled) == 0
