"""Translation benchmarks: latency per backend, batch throughput, cache hit rate on a caption
stream, and what session context costs.

    .venv/bin/python bench/bench_translate.py [--requests 40] [--no-triton]

Backends measured, each through the same TranslationService (breaker, cache off, quality checks):

- ``apertium``: the real Apertium eng-spa pair (the embedded default; the reference row);
- ``openai``: the OpenAI-compatible client against `tests.openai_stub.OpenAIStub` answering at
  once, so the figure is the client's own overhead (prompt, HTTP, parsing, logprobs) — a real
  vLLM adds its model time on top;
- ``triton``: a real `tritonserver` (nvidia-pytriton's, from `.venv-triton`) serving the small
  dictionary model of tests/triton_dictionary_model.py over KServe v2 HTTP on the CPU.

Prints tables; never passes or fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from inference.translate import TranslateSettings, TranslationService  # noqa: E402
from tests.openai_stub import OpenAIStub, user_text  # noqa: E402

SENTENCES = [
    "The cat is black.",
    "Good morning to everyone here.",
    "I like the red car.",
    "She drives it every day.",
    "The house is big and white.",
    "Thank you for coming today.",
    "Hello world.",
    "The dog is small.",
]
# A caption stream repeats itself: greetings, fillers, the same short answers.
CAPTION_PHRASES = [
    "Thank you.",
    "Yes.",
    "Okay.",
    "Right.",
    "Good morning.",
    "Let's get started.",
    "Any questions?",
    "That is a good point.",
    "Next slide, please.",
    "I agree.",
    "Can you hear me?",
    "Let me share my screen.",
]


ONE_BY_ONE = 8  # requests timed one by one for the batch table's reference column


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


async def timed(call: Callable[[], Awaitable[Any]], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return samples


def settings_for(backend: str, stub: OpenAIStub, triton_url: str | None, **overrides: Any) -> TranslateSettings:
    values: dict[str, Any] = dict(
        backends=backend, cache_size=0, vllm_endpoint=stub.base_url, vllm_model="bench", vllm_max_retries=0
    )
    if triton_url:
        values.update(triton_url=triton_url, triton_model="translator", triton_pairs="en-es")
    values.update(overrides)
    return TranslateSettings(**values)


async def bench_latency(backends: list[str], stub: OpenAIStub, triton_url: str | None, requests: int) -> None:
    print(f"\n## latency of one sentence, en->es, {requests} sequential requests per backend (cache off)")
    print("| backend | p50 ms | p95 ms | p50 vs apertium |")
    print("| --- | --- | --- | --- |")
    reference = None
    for backend in backends:
        service = TranslationService(settings_for(backend, stub, triton_url))
        sentences = iter(SENTENCES * (requests // len(SENTENCES) + 2))
        try:
            await service.translate("Warm up.", "en", "es")
            samples = await timed(lambda: service.translate(next(sentences), "en", "es"), requests)  # noqa: B023
        finally:
            await service.close()
        p50, p95 = percentile(samples, 50) * 1000, percentile(samples, 95) * 1000
        reference = reference or p50
        print(f"| {backend} | {p50:.1f} | {p95:.1f} | {p50 / reference:.3f}x |")


async def bench_batch(backends: list[str], stub: OpenAIStub, triton_url: str | None, rounds: int) -> None:
    size = 32
    print(f"\n## batch throughput: {size} sentences as one batch ({rounds} rounds) vs {ONE_BY_ONE} requests one by one")
    print("| backend | one by one, texts/s | batch, texts/s | batch speed-up |")
    print("| --- | --- | --- | --- |")
    texts = [f"{SENTENCES[i % len(SENTENCES)][:-1]} number {i}." for i in range(size)]
    for backend in backends:
        service = TranslationService(settings_for(backend, stub, triton_url))
        try:
            await service.translate("Warm up.", "en", "es")
            started = time.perf_counter()
            for text in texts[:ONE_BY_ONE]:
                await service.translate(text, "en", "es")
            single_rate = ONE_BY_ONE / (time.perf_counter() - started)
            started = time.perf_counter()
            for _ in range(rounds):
                await service.translate_batch(texts, "en", "es")
            batch_rate = rounds * size / (time.perf_counter() - started)
        finally:
            await service.close()
        print(f"| {backend} | {single_rate:.1f} | {batch_rate:.1f} | {batch_rate / single_rate:.2f}x |")


async def bench_caption_cache(stub: OpenAIStub, captions: int) -> None:
    rng = random.Random(7)
    stream = [rng.choice(CAPTION_PHRASES) for _ in range(captions)]
    print(f"\n## cache hit rate on a caption stream: {captions} finals drawn from {len(CAPTION_PHRASES)} phrases")
    print("| backend, mode | cache hits | hit rate | backend calls |")
    print("| --- | --- | --- | --- |")
    for label, backend, session in (
        ("apertium, stream session", "apertium", "m1"),
        ("openai, no session (no context)", "openai", None),
        ("openai, stream session (context keys)", "openai", "m1"),
    ):
        service = TranslationService(settings_for(backend, stub, None, cache_size=1024))
        try:
            for text in stream:
                await service.translate_for_captions(text, "en", "es", session=session)
        finally:
            await service.close()
        stats = service.stats()
        hits = stats["cache"]["hits"]
        print(f"| {label} | {hits} | {hits / captions:.0%} | {stats['backend_calls']} |")


async def bench_context_cost(stub: OpenAIStub, requests: int) -> None:
    print(f"\n## what context adds (openai client against the stub, {requests} sentences, cache off)")
    print("| mode | p50 ms | p95 ms | prompt tokens / request | p50 vs no context |")
    print("| --- | --- | --- | --- | --- |")
    reference = None
    for label, session, sentences in (
        ("no context", None, 0),
        ("context 3 sentences", "talk", 3),
        ("context 8 sentences", "talk8", 8),
    ):
        service = TranslationService(settings_for("openai", stub, None, context_sentences=sentences))
        texts = iter([f"{SENTENCES[i % len(SENTENCES)]}" for i in range(requests + 10)])
        before = len(stub.chat_requests)
        try:
            for _ in range(sentences + 1):  # fill the context first
                await service.translate(next(texts), "en", "es", session_id=session)
            prompt_tokens: list[int] = []
            samples = []
            for _ in range(requests):
                started = time.perf_counter()
                result = await service.translate(next(texts), "en", "es", session_id=session)
                samples.append(time.perf_counter() - started)
                prompt_tokens.append((result.usage or {}).get("prompt_tokens", 0))
        finally:
            await service.close()
        assert len(stub.chat_requests) > before
        p50, p95 = percentile(samples, 50) * 1000, percentile(samples, 95) * 1000
        reference = reference or p50
        print(f"| {label} | {p50:.2f} | {p95:.2f} | {statistics.mean(prompt_tokens):.0f} | {p50 / reference:.2f}x |")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20, help="requests per backend for the latency table")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of 32 texts for the batch table")
    parser.add_argument("--captions", type=int, default=300, help="captions in the cache-hit stream")
    parser.add_argument("--no-triton", action="store_true", help="skip the Triton rows")
    args = parser.parse_args()
    print(f"# translation benchmark (cpus: {os.cpu_count()}; figures from a shared, loaded machine vary)")

    proc = None
    triton_url = None
    if not args.no_triton:
        from tests.triton_process import TRITON_PYTHON, start_triton_server

        if TRITON_PYTHON.exists():
            started = time.perf_counter()
            proc, triton_url = start_triton_server()
            print(f"tritonserver up in {time.perf_counter() - started:.1f} s at {triton_url}")
        else:
            print("no .venv-triton (scripts/install_triton.sh): Triton rows skipped")
    backends = ["apertium", "openai"] + (["triton"] if triton_url else [])
    try:
        async with OpenAIStub(model="bench", responder=lambda r: f"ES {user_text(r)}") as stub:
            stub.token_logprob = -0.1
            await bench_latency(backends, stub, triton_url, args.requests)
            await bench_batch(backends, stub, triton_url, args.rounds)
            await bench_caption_cache(stub, args.captions)
            await bench_context_cost(stub, args.requests)
    finally:
        if proc is not None:
            from tests.triton_process import stop_triton_server

            stop_triton_server(proc)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
