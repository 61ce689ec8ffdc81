"""The OpenAI-compatible VLM client and multiplexer.

No VLM weights exist on a test machine, so — as the project's test rules allow for this one part —
the endpoints are `tests.openai_stub.OpenAIStub`: real aiohttp servers on 127.0.0.1 that follow the
OpenAI chat-completions API. Everything else (HTTP, JPEG encoding, retries, breakers) is real."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random

import numpy as np
import pytest
import skimage.data
from PIL import Image

from inference.openai_client import chat_completions_url
from inference.resilience import CircuitBreaker
from inference.vision.base import BackendUnavailable, VisionRequest
from inference.vision.multiplexer import VlmConfig, VlmMultiplexer
from inference.vision.openai_vlm import (
    MalformedOutput,
    VlmEndpointConfig,
    fit_pixel_budget,
    parse_tag_output,
)
from tests.openai_stub import OpenAIStub, image_urls, user_text

TAGS = ["person", "dog", "car"]
FRAME = np.ascontiguousarray(np.dstack([np.linspace(0, 255, 1280, dtype=np.uint8)[None, :].repeat(720, 0)] * 3))


def tags_reply(_request: dict) -> str:
    return json.dumps(
        {
            "tags": [
                {"name": "person", "confidence": 0.9},
                {"name": "dog", "confidence": 0.3},
                {"name": "unicorn", "confidence": 0.99},
            ]
        }
    )


class FakeClock:
    """Steps time for circuit breakers without sleeping (the breaker's clock is injectable)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def endpoint(stub: OpenAIStub, name: str, **overrides) -> VlmEndpointConfig:
    return VlmEndpointConfig(base_url=stub.base_url + "/v1", name=name, **overrides)


def config(*endpoints: VlmEndpointConfig, **overrides) -> VlmConfig:
    values = {
        "model_id": "stub-model",
        "tag_list": TAGS,
        "multiplexer_endpoints": list(endpoints),
        "retry_attempts": 1,
        "retry_base_delay": 0.01,
        "max_pixels": 320 * 240,
    }
    values.update(overrides)
    return VlmConfig(**values)


@pytest.fixture
async def stubs():
    started: list[OpenAIStub] = []

    async def factory(**kwargs) -> OpenAIStub:
        kwargs.setdefault("responder", tags_reply)
        stub = await OpenAIStub(**kwargs).start()
        started.append(stub)
        return stub

    yield factory
    for stub in started:
        await stub.stop()


# -- request shape -----------------------------------------------------------------------------


async def test_request_shape_image_data_uri_and_parsed_tags(stubs) -> None:
    stub = await stubs(api_key="sekret")
    vlm = VlmMultiplexer(config(endpoint(stub, "one", api_key="sekret"), max_tokens=123))
    try:
        result = await vlm.analyze(FRAME, VisionRequest(threshold=0.5))
    finally:
        await vlm.close()
    assert result.error is None
    assert [(t.name, t.confidence) for t in result.tags] == [("person", 0.9)]  # dog < threshold, unicorn not listed
    assert result.model == "stub-model" and result.endpoint == "one"

    [recorded] = stub.chat_requests
    assert recorded.headers["Authorization"] == "Bearer sekret"
    body = recorded.json
    assert body["model"] == "stub-model"
    assert body["max_tokens"] == 123 and body["temperature"] == 0.0
    [message] = body["messages"]
    assert message["role"] == "user"
    kinds = [part["type"] for part in message["content"]]
    assert sorted(kinds) == ["image_url", "text"]
    [url] = image_urls(body)
    assert url.startswith("data:image/jpeg;base64,")
    jpeg = base64.b64decode(url.split(",", 1)[1])
    assert jpeg[:3] == b"\xff\xd8\xff"  # JPEG SOI marker
    with Image.open(io.BytesIO(jpeg)) as image:
        assert image.format == "JPEG"
        assert image.size == fit_pixel_budget(1280, 720, 320 * 240)
        assert image.size[0] * image.size[1] <= 320 * 240
        assert abs(image.size[0] / image.size[1] - 16 / 9) < 0.02
    prompt = user_text(body)
    assert all(tag in prompt for tag in TAGS) and '"tags"' in prompt


async def test_description_mode_sends_the_prompt_and_returns_text(stubs) -> None:
    stub = await stubs(responder=lambda req: "  A person walks a dog along a beach.  ")
    vlm = VlmMultiplexer(config(endpoint(stub, "one")))
    try:
        result = await vlm.analyze(FRAME, VisionRequest(mode="description", prompt="What is going on?"))
    finally:
        await vlm.close()
    assert result.text == "A person walks a dog along a beach." and result.tags == []
    assert user_text(stub.chat_requests[0].json) == "What is going on?"


def test_pixel_budget_and_url_forms() -> None:
    assert fit_pixel_budget(640, 480, 1_000_000) == (640, 480)
    for w, h, budget in ((1920, 1080, 262144), (1000, 3, 500), (7, 7001, 4096)):
        nw, nh = fit_pixel_budget(w, h, budget)
        assert nw * nh <= budget and nw >= 1 and nh >= 1
    assert chat_completions_url("http://h:8000") == "http://h:8000/v1/chat/completions"
    assert chat_completions_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
    assert chat_completions_url("http://h/x/chat/completions") == "http://h/x/chat/completions"


# -- lenient parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        '{"tags": [{"name": "person", "confidence": 0.8}, {"name": "car", "confidence": 0.6}]}',
        'Sure! Here you go:\n```json\n{"tags": [{"name": "Person", "confidence": 0.8}, {"name": "car", "confidence": 0.6}]}\n```\nHope that helps.',
        '{"tags": [{"name": "person", "confidence": 0.8}, {"name": "car", "confidence": 0.6}]} -- these are my tags {',
        "{'tags': [{'name': 'person', 'confidence': 0.8}, {'name': 'car', 'confidence': 0.6}]}",
        '[{"name": "person", "confidence": 0.8}, {"tag": "car", "score": "60%"}, {"name": "dragon", "confidence": 1}]',
        '{"person": 0.8, "car": 60, "dog": 0.1}',
        '[["person", 0.8], ["car", 0.6]]',
    ],
)
def test_lenient_tag_parsing(answer: str) -> None:
    tags = parse_tag_output(answer, TAGS, threshold=0.5)
    assert [(t.name, t.confidence) for t in tags] == [("person", 0.8), ("car", 0.6)]


def test_parsing_bare_names_free_tags_and_failures() -> None:
    assert [t.name for t in parse_tag_output('["dog", "car"]', TAGS, 0.5)] == ["dog", "car"]  # 1.0 each
    free = parse_tag_output('{"tags": [{"name": "sunset", "confidence": 0.7}]}', [], 0.5)
    assert [(t.name, t.confidence) for t in free] == [("sunset", 0.7)]
    assert parse_tag_output('{"tags": []}', TAGS, 0.5) == []
    for bad in (
        "",
        "I see a person and a dog.",
        '{"tags": "person"}',
        '{"tags": [{"confidence": 1}]}',
        "{'tags': [1, 2]}",
    ):
        with pytest.raises(MalformedOutput):
            parse_tag_output(bad, TAGS, 0.5)


async def test_malformed_model_output_is_counted_and_survived(stubs) -> None:
    stub = await stubs(responder=lambda req: "There is definitely a person here, trust me.")
    vlm = VlmMultiplexer(config(endpoint(stub, "one")))
    try:
        results = [await vlm.analyze(FRAME, VisionRequest()) for _ in range(3)]
        stats = vlm.stats()
    finally:
        await vlm.close()
    for result in results:
        assert result.tags == [] and result.error and "malformed" in result.error
    assert stats["malformed"] == 3 and stats["endpoints"][0]["malformed"] == 3
    # the endpoint itself worked: its breaker stays closed
    assert stats["endpoints"][0]["breaker"]["state"] == CircuitBreaker.CLOSED


# -- multiplexing ------------------------------------------------------------------------------


async def test_weighted_spread_follows_weights(stubs) -> None:
    heavy, light, backup = await stubs(), await stubs(), await stubs()
    vlm = VlmMultiplexer(
        config(
            endpoint(heavy, "heavy", weight=3, max_concurrent=8),
            endpoint(light, "light", weight=1, max_concurrent=8),
            endpoint(backup, "backup", is_fallback=True),
            max_pixels=64 * 64,
        ),
        rng=random.Random(1),  # seeded: reproducible draws (std of the share is ~1.8 % at n=600)
    )
    small = np.ascontiguousarray(FRAME[:64, :64])
    try:
        for _ in range(30):  # 600 calls, 20 at a time
            results = await asyncio.gather(*(vlm.analyze(small, VisionRequest()) for _ in range(20)))
            assert all(r.error is None for r in results)
    finally:
        await vlm.close()
    total = heavy.chat_count + light.chat_count
    assert total == 600
    assert abs(heavy.chat_count / total - 0.75) < 0.04, (heavy.chat_count, light.chat_count)
    assert backup.chat_count == 0  # primaries healthy: the fallback is never used


async def test_fallback_only_while_primaries_fail_then_breakers_recover(stubs) -> None:
    a, b, backup = await stubs(), await stubs(), await stubs()
    clock = FakeClock()
    vlm = VlmMultiplexer(
        config(
            endpoint(a, "a"),
            endpoint(b, "b"),
            endpoint(backup, "backup", is_fallback=True),
            breaker_failure_threshold=2,
            breaker_reset_timeout=10.0,
        ),
        rng=random.Random(1),
        clock=clock,
    )
    try:
        # healthy primaries: the fallback stays idle
        for _ in range(10):
            assert (await vlm.analyze(FRAME, VisionRequest())).endpoint in ("a", "b")
        assert backup.chat_count == 0

        a.mode = b.mode = "http_500"
        for _ in range(2):  # each primary fails twice -> both breakers open
            result = await vlm.analyze(FRAME, VisionRequest())
            assert result.endpoint == "backup" and result.tags
        states = {ep.name: ep.breaker.state for ep in vlm.endpoints}
        assert states == {"a": "open", "b": "open", "backup": "closed"}
        calls_to_primaries = a.chat_count + b.chat_count
        for _ in range(5):  # open primaries are skipped without a request
            assert (await vlm.analyze(FRAME, VisionRequest())).endpoint == "backup"
        assert a.chat_count + b.chat_count == calls_to_primaries
        assert backup.chat_count == 7

        # primaries come back; after the reset timeout they are half-open and get a trial call
        a.mode = b.mode = "ok"
        clock.now += 11
        assert {ep.breaker.state for ep in vlm.endpoints if not ep.config.is_fallback} == {"half_open"}
        for _ in range(10):
            assert (await vlm.analyze(FRAME, VisionRequest())).endpoint in ("a", "b")
        assert {ep.breaker.state for ep in vlm.endpoints} == {"closed"}
        assert backup.chat_count == 7  # not used again once primaries answer
        assert vlm.stats()["fallback_used"] == 7
    finally:
        await vlm.close()


async def test_breaker_opens_half_opens_and_closes(stubs) -> None:
    stub = await stubs()
    clock = FakeClock()
    vlm = VlmMultiplexer(
        config(endpoint(stub, "only"), breaker_failure_threshold=2, breaker_reset_timeout=5.0), clock=clock
    )
    breaker = vlm.endpoints[0].breaker
    try:
        stub.mode = "http_503"
        for _ in range(2):
            with pytest.raises(BackendUnavailable, match="503"):
                await vlm.analyze(FRAME, VisionRequest())
        assert breaker.state == "open"
        sent = stub.chat_count
        with pytest.raises(BackendUnavailable, match="circuit"):
            await vlm.analyze(FRAME, VisionRequest())
        assert stub.chat_count == sent  # failing fast, no request

        clock.now += 6
        assert breaker.state == "half_open"
        with pytest.raises(BackendUnavailable):  # the trial call fails -> open again
            await vlm.analyze(FRAME, VisionRequest())
        assert breaker.state == "open" and stub.chat_count == sent + 1

        clock.now += 6
        stub.mode = "ok"
        result = await vlm.analyze(FRAME, VisionRequest())  # trial succeeds -> closed
        assert result.tags and breaker.state == "closed"
        assert vlm.health() == {"available": True, "endpoints": {"only": "closed"}}
    finally:
        await vlm.close()


async def test_transient_errors_are_retried_with_backoff_but_client_errors_are_not(stubs) -> None:
    first, second = await stubs(), await stubs()
    vlm = VlmMultiplexer(
        config(
            endpoint(first, "first"),
            endpoint(second, "second", is_fallback=True),
            retry_attempts=3,
            retry_base_delay=0.01,
        )
    )
    try:
        first.fail_next("http_500", times=1)
        first.fail_next("http_429", times=1)
        result = await vlm.analyze(FRAME, VisionRequest())
        assert result.endpoint == "first" and result.tags
        assert first.chat_count == 3 and vlm.endpoints[0].retries == 2

        first.fail_next("http_400", times=1)  # not transient: no retry, next endpoint instead
        result = await vlm.analyze(FRAME, VisionRequest())
        assert result.endpoint == "second"
        assert first.chat_count == 4

        first.fail_next("garbage", times=1)  # 200 with a broken body: an endpoint failure
        assert (await vlm.analyze(FRAME, VisionRequest())).endpoint == "second"
    finally:
        await vlm.close()


async def test_timeouts_fail_over_and_surface_as_unavailable(stubs) -> None:
    slow, fast = await stubs(delay_s=2.0), await stubs()
    vlm = VlmMultiplexer(config(endpoint(slow, "slow", timeout=0.3), endpoint(fast, "fast", is_fallback=True)))
    try:
        result = await vlm.analyze(FRAME, VisionRequest())
        assert result.endpoint == "fast"
        assert "timeout" in vlm.endpoints[0].last_error
    finally:
        await vlm.close()

    only_slow = VlmMultiplexer(config(endpoint(slow, "slow", timeout=0.3)))
    try:
        with pytest.raises(BackendUnavailable, match="timeout"):
            await only_slow.analyze(FRAME, VisionRequest())
    finally:
        await only_slow.close()


async def test_per_endpoint_concurrency_is_limited(stubs) -> None:
    stub = await stubs(delay_s=0.2)
    vlm = VlmMultiplexer(config(endpoint(stub, "one", max_concurrent=2), max_pixels=64 * 64))
    small = np.ascontiguousarray(skimage.data.astronaut()[:64, :64])
    try:
        results = await asyncio.gather(*(vlm.analyze(small, VisionRequest()) for _ in range(6)))
    finally:
        await vlm.close()
    assert all(r.tags for r in results)
    assert stub.peak_in_flight == 2


def test_config_needs_an_endpoint() -> None:
    with pytest.raises(ValueError):
        VlmConfig(model_id="m")
    single = VlmConfig(model_id="m", api_base_url="http://127.0.0.1:9", timeout=3)
    [only] = single.endpoint_configs()
    assert only.base_url == "http://127.0.0.1:9" and only.timeout == 3 and not only.is_fallback
