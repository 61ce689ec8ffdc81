"""The shared speech-model pool with the real embedded tiny.en model: utterances of several
streams batched into one model call, finals before partials, bounded waiting, and a cancelled
call that keeps its slot until the model is really done with it (issue 13)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never fetch model weights in tests

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from inference.asr.decode import Lead  # noqa: E402
from inference.asr.model import AsrModelPool, AsrSettings  # noqa: E402
from tests.conftest import wait_until  # noqa: E402
from tests.speech import (  # noqa: E402
    build_track,
    normalize_text,
    speech_tools_available,
    synthesize,
    word_error_rate,
)

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
    assert await wait_until(lambda: pool.stats()["running"] > 0, timeout=timeout), "the worker never started the call"


async def test_utterances_of_several_streams_share_one_model_call(pool: AsrModelPool) -> None:
    busy = asyncio.create_task(pool.transcribe(long_audio(), beam_size=1))
    await wait_running(pool)
    batches_before = pool.counters.batches
    results = await asyncio.gather(
        *(pool.decode(synthesize(text), final=True, stream=f"s{i}") for i, text in enumerate(SENTENCES))
    )
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
    assert await wait_until(lambda: pool.stats()["waiting"]["partials"] == 1, timeout=5)  # queued first
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
        assert await wait_until(lambda: not pool.pending, timeout=60)
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
    assert await wait_until(lambda: pool.stats()["waiting"]["finals"] == 1, timeout=5)
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


def led(lead_text: str, utterance_text: str, pause: float = 0.6) -> tuple[np.ndarray, Lead]:
    """One sentence, a pause, then the utterance: the audio a final with a lead is decoded from."""
    lead_audio = np.concatenate([synthesize(lead_text), np.zeros(int(pause * 16000), np.float32)])
    return np.concatenate([lead_audio, synthesize(utterance_text)]), Lead(lead_text, len(lead_audio) / 16000)


async def test_a_lead_is_heard_but_not_transcribed_again(pool: AsrModelPool) -> None:
    audio, lead = led(SENTENCES[0], SENTENCES[1])
    result = await pool.decode(audio, final=True, stream="lead", lead=lead)
    assert result is not None
    assert word_error_rate(SENTENCES[1], result.text) <= 0.2, result.text
    assert "library" not in normalize_text(result.text)  # the lead's words stay out
    # times and seconds are the utterance's own, from its start
    utterance_seconds = len(synthesize(SENTENCES[1])) / 16000
    assert result.audio_seconds == pytest.approx(utterance_seconds)
    assert result.segments and 0.0 <= result.segments[0].start < 1.0
    assert result.segments[-1].end <= utterance_seconds + 0.05


def test_leads_of_different_lengths_decode_as_they_do_alone(pool: AsrModelPool) -> None:
    """CTranslate2 mis-decodes a batch whose forced prefixes differ in length; the decoder splits
    such a batch by prompt shape, so each row reads as it does on its own."""
    decoder = pool._decoder
    assert decoder is not None
    items = [led("Thanks.", SENTENCES[1]), led(SENTENCES[0], SENTENCES[2]), led("", SENTENCES[0])]
    together = decoder.decode([a for a, _ in items], "en", 3, None, [lead for _, lead in items])
    alone = [decoder.decode([a], "en", 3, None, [lead])[0] for a, lead in items]
    assert [d.text for d in together] == [d.text for d in alone]
    for text, decoded in zip([SENTENCES[1], SENTENCES[2]], together):
        assert word_error_rate(text, decoded.text) <= 0.2, decoded.text


async def test_a_lead_that_leaves_nothing_to_say_is_decoded_again_without_it(pool: AsrModelPool) -> None:
    # the lead covers the sentence and the utterance is its trailing silence: the model reads the
    # forced lead again (dropped) and has nothing else to say, so the pool hears the utterance
    # alone (counted)
    speech = synthesize(SENTENCES[2])
    audio = np.concatenate([speech, np.zeros(16000, np.float32)])
    retries = pool.counters.lead_retries
    result = await pool.decode(audio, final=True, stream="empty", lead=Lead(SENTENCES[2], len(speech) / 16000))
    assert result is not None
    assert pool.counters.lead_retries == retries + 1
    # what came back is the silence's own reading (the transcriber's no-speech rule drops it)
    assert result.no_speech_prob > pool.settings.no_speech_threshold
    assert "guitar" not in normalize_text(result.text)
    assert pool.stats()["lead_retries"] == retries + 1
