"""The shared speech-model pool with the real embedded tiny.en model: utterances of several
streams batched into one model call, finals before partials, bounded waiting, and a cancelled
call that keeps its slot until the model is really done with it (issue 13)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never fetch model weights in tests

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from inference.asr.model import AsrModelPool, AsrSettings  # noqa: E402
from tests.speech import build_track, speech_tools_available, synthesize, word_error_rate  # noqa: E402

pytestmark = pytest.mark.skipif(not speech_tools_available(), reason="needs espeak-ng and sox")

SENTENCES = [
    "We will meet at the library after lunch.",
    "The train to the city leaves from the north station.",
    "My brother likes to play the guitar in the evening.",
]


@pytest.fixture(scope="module")
def pool() -> Iterable[AsrModelPool]:
    pool = AsrModelPool(AsrSettings())
    pool.load()
    yield pool
    pool.close()


def long_audio() -> np.ndarray:
    """~10 s of speech: a whole-file call that keeps the one worker busy for a while."""
    return build_track(SENTENCES, pause_seconds=0.5).audio


async def wait_running(pool: AsrModelPool, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while pool.stats()["running"] == 0:
        assert time.monotonic() < deadline, "the worker never started the call"
        await asyncio.sleep(0.01)


async def test_utterances_of_several_streams_share_one_model_call(pool: AsrModelPool) -> None:
    busy = asyncio.create_task(pool.transcribe(long_audio(), beam_size=1))
    await wait_running(pool)
    batches_before = pool.counters.batches
    results = await asyncio.gather(*(
        pool.decode(synthesize(text), final=True, stream=f"s{i}") for i, text in enumerate(SENTENCES)))
    assert (await busy) is not None
    # one model call decoded all three, each its own speech
    assert pool.counters.batches == batches_before + 1
    for text, result in zip(SENTENCES, results):
        assert result is not None and result.batch_size == 3
        assert word_error_rate(text, result.text) <= 0.2, (text, result.text)
        assert result.audio_seconds == pytest.approx(len(synthesize(text)) / 16000)
    assert pool.pending == 0


async def test_finals_go_first_and_partials_are_what_overload_skips(pool: AsrModelPool) -> None:
    skipped_before = pool.counters.partials_skipped
    pool.partial_max_age = 60.0  # no partial goes stale while the busy call runs
    busy = asyncio.create_task(pool.transcribe(long_audio(), beam_size=1))
    await wait_running(pool)
    first_partial = asyncio.create_task(pool.decode(synthesize(SENTENCES[0]), final=False, stream="a"))
    await asyncio.sleep(0.05)
    newer_partial = asyncio.create_task(pool.decode(synthesize(SENTENCES[0]), final=False, stream="a"))
    final = asyncio.create_task(pool.decode(synthesize(SENTENCES[1]), final=True, stream="b"))
    # a stream has one partial waiting at most: the newer one replaced the older at once
    assert await asyncio.wait_for(first_partial, 5) is None
    await busy
    final_result, partial_result = await final, await newer_partial
    assert final_result is not None and "station" in final_result.text.lower()
    assert partial_result is not None
    # the final waited for the busy call only; the partial also waited for the final
    assert final_result.queued < partial_result.queued
    # a partial that waited past its age is dropped when the model gets to it
    pool.partial_max_age = 0.05
    try:
        busy = asyncio.create_task(pool.transcribe(long_audio(), beam_size=1))
        await wait_running(pool)
        stale = await pool.decode(synthesize(SENTENCES[2]), final=False, stream="c")
        await busy
    finally:
        pool.partial_max_age = AsrModelPool.PARTIAL_MAX_AGE
    assert stale is None
    assert pool.counters.partials_skipped == skipped_before + 2
    assert pool.pending == 0


async def test_cancelled_call_keeps_its_slot_until_the_model_is_done(pool: AsrModelPool) -> None:
    saved = pool.max_pending
    pool.max_pending = 1
    try:
        running = asyncio.create_task(pool.transcribe(long_audio(), beam_size=1))
        await wait_running(pool)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        # the caller gave up, the model did not: the slot is still taken
        assert pool.pending == 1
        assert await pool.transcribe(synthesize(SENTENCES[0])) is None
        deadline = time.monotonic() + 60
        while pool.pending:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert pool.stats()["running"] == 0
        # freed once the call really ended
        result = await pool.transcribe(synthesize(SENTENCES[0]))
        assert result is not None and "library" in result.text.lower()
    finally:
        pool.max_pending = saved
    # a request cancelled before any worker took it is withdrawn at once
    busy = asyncio.create_task(pool.transcribe(long_audio(), beam_size=1))
    await wait_running(pool)
    queued = asyncio.create_task(pool.decode(synthesize(SENTENCES[1]), final=True, stream="x"))
    await asyncio.sleep(0.05)
    assert pool.stats()["waiting"]["finals"] == 1
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert pool.stats()["waiting"]["finals"] == 0
    await busy
    assert pool.pending == 0


async def test_transcribe_refuses_past_its_bound(pool: AsrModelPool) -> None:
    audio = synthesize(SENTENCES[0])
    saved = pool.max_pending
    pool.max_pending = 1
    try:
        skipped_before = pool.counters.skipped_busy
        first, second = await asyncio.gather(pool.transcribe(audio, beam_size=1), pool.transcribe(audio, beam_size=1))
    finally:
        pool.max_pending = saved
    assert second is None and first is not None
    assert "library" in first.text.lower()
    assert pool.counters.skipped_busy == skipped_before + 1
    assert pool.pending == 0


def test_settings_come_from_asr_environment_variables(monkeypatch) -> None:
    monkeypatch.setenv("ASR_FINAL_BEAM_SIZE", "2")
    monkeypatch.setenv("ASR_MAX_UTTERANCE_SECONDS", "8")
    monkeypatch.setenv("ASR_BATCH_MAX", "4")
    settings = AsrSettings()
    assert (settings.final_beam_size, settings.max_utterance_seconds, settings.batch_max) == (2, 8.0, 4)
    monkeypatch.setenv("ASR_BATCH_MAX", "0")
    with pytest.raises(ValueError):
        AsrSettings()
