"""Streaming captions with the real embedded faster-whisper tiny.en model and espeak-ng speech.

Audio reaches the transcriber the way a WebRTC decoder delivers it: PyAV 48 kHz stereo s16
frames of 20 ms, resampled by the transcriber to 16 kHz mono. Most tests drive the transcriber
with a clock they control (`step()` after every second of fed audio: the stream as it runs in real
time on an infinitely fast machine); one test runs the live loop at real-time pace, fed from a
thread like the decode thread. WER is always compared with what the same model (same beam) gives
offline on the same audio.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never fetch model weights in tests

import av  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from inference.asr.audio import AudioRing, Resampler16k  # noqa: E402
from inference.asr.model import AsrModelPool, AsrSettings, resolve_model  # noqa: E402
from inference.asr.stage import CaptionStage  # noqa: E402
from inference.asr.streaming import StreamingTranscriber  # noqa: E402
from inference.asr.vad import StreamingVad  # noqa: E402
from media.events import CaptionEvent, EventBus  # noqa: E402
from media.frames import AudioItem  # noqa: E402
from media.stage import StageContext  # noqa: E402
from tests.conftest import wait_until  # noqa: E402
from tests.speech import (  # noqa: E402
    SAMPLE_RATE,
    audio_items,
    build_track,
    normalize_text,
    speech_tools_available,
    synthesize,
    word_error_rate,
)

pytestmark = pytest.mark.skipif(not speech_tools_available(), reason="needs espeak-ng and sox")

PHRASES = [
    "We will meet at the library after lunch.",
    "Please send me the report before the end of the week.",
    "The train to the city leaves from the north station.",
    "My brother likes to play the guitar in the evening.",
]
MEDIA_START = 100.0  # the stream's media clock does not start at zero
FRAMES_PER_SECOND = 50  # 20 ms frames


@pytest.fixture(scope="module")
def pool() -> Iterable[AsrModelPool]:
    """One loaded model for the whole module (as one model serves all streams in the server)."""
    pool = AsrModelPool(AsrSettings())
    pool.load()
    yield pool
    pool.close()


def offline_text(pool: AsrModelPool, audio: np.ndarray) -> str:
    segments, _ = pool.model.transcribe(audio, language="en", beam_size=pool.settings.beam_size)
    return " ".join(s.text.strip() for s in segments)


class Recorder:
    """Collects what a transcriber publishes, with the media time fed when it came out."""

    def __init__(self) -> None:
        self.fed = 0.0
        self.timed: list[tuple[float, CaptionEvent]] = []

    def __call__(self, event: CaptionEvent) -> None:
        self.timed.append((self.fed, event))

    @property
    def events(self) -> list[CaptionEvent]:
        return [e for _, e in self.timed]


def transcriber_for(pool: AsrModelPool, settings: AsrSettings | None = None, name: str = "test"):
    recorder = Recorder()
    return StreamingTranscriber(pool, settings, on_event=recorder, name=name), recorder


async def drive(
    transcriber: StreamingTranscriber,
    items: list[AudioItem],
    recorder: Recorder | None = None,
    on_second: Callable[[float], None] | None = None,
    steps_per_second: int = 2,
) -> None:
    """Feed frames and step every half second of audio (a controlled clock; a partial in
    flight finishes before the next audio comes), then flush."""
    every = FRAMES_PER_SECOND // steps_per_second
    for n, item in enumerate(items, 1):
        transcriber.feed(item)
        if n % every == 0:
            fed = item.media_time + item.frame.samples / item.frame.sample_rate
            if recorder is not None:
                recorder.fed = fed
            await transcriber.step()
            await transcriber.settle()
            if on_second is not None and n % FRAMES_PER_SECOND == 0:
                on_second(fed)
    await transcriber.flush()


def finals_text(events: Iterable[CaptionEvent]) -> str:
    return " ".join(e.text for e in events if e.final and e.text)


def assert_finals_never_change(events: list[CaptionEvent]) -> None:
    closed: set[int] = set()
    for e in events:
        assert e.id not in closed, f"caption {e.id} changed after its final: {e}"
        if e.final:
            closed.add(e.id)


# ---- audio plumbing (no model) ----------------------------------------------------------------


def test_resampler_turns_48k_stereo_frames_into_16k_mono() -> None:
    t = np.arange(48000) / 48000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    stereo = np.stack([tone, tone], axis=1).reshape(1, -1)
    resampler = Resampler16k()
    out = []
    for offset in range(0, 48000, 960):
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(stereo[:, offset * 2 : (offset + 960) * 2]), format="s16", layout="stereo"
        )
        frame.sample_rate = 48000
        out.append(resampler.convert(frame))
    mono = np.concatenate(out)
    assert mono.dtype == np.float32
    assert abs(len(mono) - 16000) < 200  # libswresample keeps a few samples of filter delay
    spectrum = np.abs(np.fft.rfft(mono[: 16000 - 200]))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / (16000 - 200)
    assert abs(peak_hz - 440) < 5
    assert 0.3 < np.abs(mono).max() < 0.6  # stereo downmix keeps the level
    # the source changes format mid-stream (e.g. a renegotiated track): rebuilt, still 16 kHz
    planar = av.AudioFrame.from_ndarray(np.zeros((1, 4410), np.float32), format="fltp", layout="mono")
    planar.sample_rate = 44100
    assert abs(len(resampler.convert(planar)) - 1600) < 100


def test_ring_is_bounded_and_maps_samples_to_media_time() -> None:
    ring = AudioRing(max_seconds=1.0)
    ring.append(np.ones(12000, np.float32), media_time=10.0)
    ring.append(np.full(12000, 2.0, np.float32), media_time=10.75)  # continuous: no new anchor
    assert len(ring) == 16000 and ring.dropped_samples == 8000
    assert ring.start_index == 8000 and ring.end_index == 24000
    assert ring.read(0, 8100).size == 100  # clipped to what is still held
    assert ring.read(11990, 12010).tolist() == [1.0] * 10 + [2.0] * 10
    assert ring.media_time(12000) == pytest.approx(10.75)
    ring.append(np.zeros(1600, np.float32), media_time=50.0)  # the source jumped
    assert ring.jumps == 1
    assert ring.media_time(24000) == pytest.approx(50.0)
    assert ring.media_time(24800) == pytest.approx(50.05)
    assert ring.media_time(20000) == pytest.approx(11.25)  # before the jump: old mapping
    ring.trim(20000)
    assert ring.start_index == 20000 and len(ring) == 5600


def test_streaming_vad_finds_each_phrase_and_ignores_noise() -> None:
    track = build_track(PHRASES[:3], pause_seconds=1.0)
    vad = StreamingVad(threshold=0.5, min_silence_ms=500)
    events = []
    for i in range(0, len(track.audio), 1600):  # 100 ms pieces, as the live loop sees them
        events += vad.process(track.audio[i : i + 1600])
    starts = [e.index / SAMPLE_RATE for e in events if e.kind == "start"]
    ends = [e.index / SAMPLE_RATE for e in events if e.kind == "end"]
    assert len(starts) == len(ends) == 3
    for phrase, start, end in zip(track.phrases, starts, ends):
        assert abs(start - phrase.start) < 0.15 and abs(end - phrase.end) < 0.15
    noise = np.random.default_rng(3).normal(0, 0.01, SAMPLE_RATE * 5).astype(np.float32)
    assert StreamingVad().process(noise) == []


# ---- model pool ---------------------------------------------------------------------------------


def test_model_resolution_never_downloads_by_default(tmp_path) -> None:
    path, local = resolve_model("embedded:tiny.en")
    assert local and os.path.isfile(os.path.join(path, "model.bin"))
    assert os.path.isfile(os.path.join(path, "tokenizer.json"))  # else faster-whisper fetches one
    assert resolve_model("small") == ("small", False)  # a named hub model is passed on as named
    with pytest.raises(ValueError):
        resolve_model(str(tmp_path / "missing" / "model"))
    with pytest.raises(ValueError):
        resolve_model(str(tmp_path))  # a directory without model.bin


async def test_load_error_is_reported_not_raised() -> None:
    broken = AsrModelPool(AsrSettings(model="/nonexistent/asr/model"))
    broken.start_loading()
    await wait_until(lambda: not broken.loading, timeout=5)
    assert not broken.loaded and "does not exist" in (broken.load_error or "")
    errors: list[str | None] = []
    recorder = Recorder()
    transcriber = StreamingTranscriber(broken, on_event=recorder, on_error=errors.append)
    track = build_track(PHRASES[:1], tail_seconds=1.0)
    await drive(transcriber, list(audio_items(track.audio)), recorder)
    assert [e for e in recorder.events if e.text] == []
    assert errors and "does not exist" in errors[0]
    assert transcriber.stats()["last_error"] == errors[0]
    broken.close()


# ---- streaming with the real model --------------------------------------------------------------


async def test_streaming_captions_match_offline_and_stay_silent_in_noise(pool: AsrModelPool) -> None:
    # two phrases, 4 s of low-level noise only, two more phrases
    track = build_track(PHRASES, pause_seconds=[1.0, 4.0, 1.0], noise_level=0.002)
    offline = offline_text(pool, track.audio)
    items = list(audio_items(track.audio, start_time=MEDIA_START))

    gap_from = MEDIA_START + track.phrases[1].end + 1.5  # the second final is out by then
    gap_to = MEDIA_START + track.phrases[2].start
    calls_at: dict[str, int] = {}

    transcriber, recorder = transcriber_for(pool)

    def watch(fed: float) -> None:
        if fed >= gap_from and "gap_from" not in calls_at:
            calls_at["gap_from"] = transcriber.model_calls
        if fed <= gap_to:
            calls_at["gap_to"] = transcriber.model_calls

    await drive(transcriber, items, recorder, on_second=watch)
    events = recorder.events
    finals = [e for e in events if e.final and e.text]

    # accuracy: streaming finals within 0.03 WER of offline with the same model
    streaming_wer = word_error_rate(track.text, finals_text(events))
    offline_wer = word_error_rate(track.text, offline)
    assert streaming_wer <= offline_wer + 0.03, (finals_text(events), offline)

    # each pause closed one sentence, on the stream's media timeline
    assert len(finals) == len(PHRASES)
    for final, phrase in zip(finals, track.phrases):
        assert abs(final.end - (MEDIA_START + phrase.end)) < 0.6, (final, phrase)
        assert abs(final.start - (MEDIA_START + phrase.start)) < 0.6, (final, phrase)
        assert final.pts == final.start and final.lang == "en"
        assert final.lag >= 0.0

    # partials arrive before their final, under the same id; finals never change
    for final in finals:
        first_index = next(i for i, e in enumerate(events) if e.id == final.id)
        assert not events[first_index].final, f"no partial before final {final.text!r}"
    assert_finals_never_change(events)
    assert len({f.id for f in finals}) == len(finals)

    # the noise-only stretch: no model call, no caption
    assert calls_at["gap_from"] == calls_at["gap_to"]
    assert not [e for fed, e in recorder.timed if gap_from <= fed <= gap_to]

    stats = transcriber.stats()
    assert stats["finals"] == len(finals) and stats["partials"] >= len(finals)
    assert stats["model_calls"] > 0 and stats["rtf"] > 0
    assert stats["dropped_audio_seconds"] == 0 and stats["buffer_seconds"] == 0.0
    assert stats["lag_seconds"] < 0.6


# Sentence pairs with short pauses between them: the second sentence follows within a breath
# (one utterance), after a short pause the VAD may or may not close on, or after a real pause.
JOIN_PAIRS = [
    ("Today we are testing live captions in the browser.", "The weather is sunny and the river is calm."),
    ("Please send me the report before the end of the week.", "My brother likes to play the guitar."),
    ("The train to the city leaves from the north station.", "We will meet at the library after lunch."),
]
JOIN_PAUSES = [0.25, 0.45, 0.7]


async def test_no_word_is_lost_at_sentence_joins(pool: AsrModelPool) -> None:
    phrases = [sentence for pair in JOIN_PAIRS for sentence in pair]
    pauses: list[float] = []
    for pause in JOIN_PAUSES:
        pauses += [pause, 1.2]  # short pause inside each pair, a real one between pairs
    track = build_track(phrases, pause_seconds=pauses[:-1])
    transcriber, recorder = transcriber_for(pool)
    await drive(transcriber, list(audio_items(track.audio)), recorder)
    events = recorder.events
    streamed = finals_text(events)
    offline = offline_text(pool, track.audio)
    assert word_error_rate(track.text, streamed) <= word_error_rate(track.text, offline) + 0.03, (streamed, offline)
    # every sentence of every pair reached a final: no clause dropped at a join
    heard = normalize_text(streamed)
    for sentence in phrases:
        content = [w for w in normalize_text(sentence).split() if len(w) > 4]
        found = [w for w in content if w in heard]
        assert len(found) >= len(content) - 1, (sentence, streamed)
    # finals tile the speech: in time order, never overlapping
    finals = [e for e in events if e.final and e.text]
    for before, after in zip(finals, finals[1:]):
        assert before.end <= after.start + 0.05, (before, after)
    assert_finals_never_change(events)


async def test_each_final_hears_the_caption_before_it(pool: AsrModelPool) -> None:
    """A final is decoded after the previous caption's audio, that caption's text given as its
    lead (as offline, where a sentence is read with its neighbours in one window); the ring keeps
    that audio through the pause, and a caption closed without a decode leads nothing."""
    track = build_track(PHRASES[:3], pause_seconds=[0.8, 1.0])
    transcriber, recorder = transcriber_for(pool)
    leads: list[tuple[str, float] | None] = []
    decode = pool.decode

    async def spy(audio, **kwargs):
        if kwargs["final"]:
            lead = kwargs.get("lead")
            leads.append((lead.text, lead.seconds) if lead is not None else None)
        return await decode(audio, **kwargs)

    transcriber.pool = type("SpyPool", (), {"__getattr__": lambda _, name: getattr(pool, name)})()
    transcriber.pool.decode = spy
    await drive(transcriber, list(audio_items(track.audio)), recorder)
    finals = [e for e in recorder.events if e.final and e.text]
    assert len(finals) == 3 and len(leads) == 3
    assert leads[0] is None  # nothing before the first
    for lead, before, phrase in zip(leads[1:], finals, track.phrases[1:]):
        assert lead is not None and lead[0] == before.text
        # the lead reaches back to the previous caption's start: its sentence and the pause
        assert lead[1] >= (phrase.start - before.start) - 0.05
    # each final is its own sentence: the lead's words are not said again
    assert word_error_rate(track.text, finals_text(finals)) <= 0.1, finals_text(finals)
    for before, after in zip(finals, finals[1:]):
        assert normalize_text(before.text) not in normalize_text(after.text)
    # a caption closed without a decode (disable/stop) leads nothing
    transcriber.feed_samples(synthesize(PHRASES[3]))
    await transcriber.step()
    transcriber.finish_now()
    assert transcriber._lead_for(transcriber.ring.end_index, transcriber.ring.end_index) is None


async def test_silence_and_low_noise_cost_no_model_call(pool: AsrModelPool) -> None:
    rng = np.random.default_rng(11)
    audio = np.concatenate(
        [np.zeros(SAMPLE_RATE * 3, np.float32), rng.normal(0, 0.003, SAMPLE_RATE * 5).astype(np.float32)]
    )
    transcriber, recorder = transcriber_for(pool)
    await drive(transcriber, list(audio_items(audio)), recorder)
    assert recorder.events == []
    assert transcriber.model_calls == 0
    assert len(transcriber.ring) <= SAMPLE_RATE  # silence is not kept


async def test_long_speech_without_pauses_is_cut_at_a_breath_and_loses_no_word(pool: AsrModelPool) -> None:
    # ~13 s of speech with 0.2 s breaths (too short to close a caption), 5 s utterance limit
    settings = AsrSettings(max_utterance_seconds=5.0)
    track = build_track(PHRASES + PHRASES[:1], pause_seconds=0.2)
    transcriber, recorder = transcriber_for(pool, settings)
    open_sizes: list[float] = []
    await drive(
        transcriber,
        list(audio_items(track.audio)),
        recorder,
        on_second=lambda fed: open_sizes.append(transcriber.stats()["buffer_seconds"]),
    )
    events = recorder.events
    assert max(open_sizes) <= settings.max_utterance_seconds + 1.0
    assert transcriber.forced_cuts >= 2
    speech_end = track.phrases[-1].end
    early_finals = [e for fed, e in recorder.timed if e.final and e.text and fed < speech_end]
    assert len(early_finals) >= 2, "captions must become final during long speech, not only at pauses"
    assert_finals_never_change(events)
    assert transcriber.stats()["dropped_audio_seconds"] == 0
    offline_wer = word_error_rate(track.text, offline_text(pool, track.audio))
    assert word_error_rate(track.text, finals_text(events)) <= offline_wer + 0.05, finals_text(events)


async def test_two_streams_share_one_model(pool: AsrModelPool) -> None:
    tracks = [build_track(PHRASES[2:3]), build_track(PHRASES[3:4])]
    pairs = [transcriber_for(pool, name=f"s{i}") for i in range(2)]
    finals_before = pool.counters.finals
    await asyncio.gather(*(drive(t, list(audio_items(track.audio)), r) for (t, r), track in zip(pairs, tracks)))
    for track, (_, recorder) in zip(tracks, pairs):
        finals = [e for e in recorder.events if e.final and e.text]
        assert len(finals) == 1
        assert word_error_rate(track.text, finals[0].text) <= 0.25  # its own speech, not the other's
    ids = [{e.id for e in r.events} for _, r in pairs]
    assert not ids[0] & ids[1]
    # one model decoded both finals, each stream's once
    assert pool.counters.finals - finals_before == 2
    assert pool.pending == 0


def feed_in_real_time(feed: Callable[[AudioItem], None], items: list[AudioItem], speed: float = 1.0) -> None:
    """The decode thread: hand over each frame when its time has come."""
    began = time.perf_counter()
    origin = items[0].media_time
    for item in items:
        delay = (item.media_time - origin) / speed - (time.perf_counter() - began)
        if delay > 0:
            time.sleep(delay)
        feed(item)


async def test_live_loop_at_real_time_pace(pool: AsrModelPool) -> None:
    track = build_track(PHRASES[:1], lead_seconds=0.3, tail_seconds=1.5)
    offline_wer = word_error_rate(track.text, offline_text(pool, track.audio))
    events: list[CaptionEvent] = []
    transcriber = StreamingTranscriber(pool, on_event=events.append, name="live")
    transcriber.start()
    feeder = threading.Thread(target=feed_in_real_time, args=(transcriber.feed, list(audio_items(track.audio))))
    feeder.start()
    await asyncio.to_thread(feeder.join, 30)
    await wait_until(lambda: any(e.final for e in events), timeout=10)  # the final needs the pause + one model call
    await transcriber.close()
    finals = [e for e in events if e.final and e.text]
    assert len(finals) == 1
    assert not events[0].final and events[0].id == finals[0].id  # a partial came first
    assert word_error_rate(track.text, finals[0].text) <= offline_wer + 0.05
    assert_finals_never_change(events)
    assert transcriber.stats()["chunks_processed"] > 10  # woken by audio, not once at the end


OVERLOAD_SPEECH = [
    ["We will meet at the library after lunch.", "The museum is closed during the winter."],
    ["The train to the city leaves from the north station.", "Please turn off the lights."],
    ["My brother likes to play the guitar in the evening.", "A small boat was sailing across the lake."],
    ["She opened the window because the room was warm.", "The doctor told him to drink more water."],
]


async def test_overloaded_model_still_gives_every_stream_its_finals(pool: AsrModelPool) -> None:
    # four live streams fed at 4x real time: 16x real time of audio for one 2-core model
    tracks = [build_track(s, pause_seconds=0.8, tail_seconds=1.5) for s in OVERLOAD_SPEECH]
    recorders = [Recorder() for _ in tracks]
    transcribers = [StreamingTranscriber(pool, on_event=r, name=f"busy{i}") for i, r in enumerate(recorders)]
    for t in transcribers:
        t.start()
    feeders = [
        threading.Thread(target=feed_in_real_time, args=(t.feed, list(audio_items(track.audio)), 4.0))
        for t, track in zip(transcribers, tracks)
    ]
    for f in feeders:
        f.start()
    for f in feeders:
        await asyncio.to_thread(f.join, 30)

    def done() -> bool:
        return all(t.stats()["finals"] >= 2 and not t.in_speech and t.lag_seconds < 0.3 for t in transcribers)

    await wait_until(done, timeout=60)
    for t in transcribers:
        await t.close()
    for sentences, recorder, t in zip(OVERLOAD_SPEECH, recorders, transcribers):
        finals = [e for e in recorder.events if e.final and e.text]
        # every stream got a final per sentence, of its own speech
        assert len(finals) == len(sentences), [e.text for e in finals]
        for sentence, final in zip(sentences, finals):
            assert word_error_rate(sentence, final.text) <= 0.35, (sentence, final.text)
        assert t.stats()["dropped_audio_seconds"] == 0
        assert_finals_never_change(recorder.events)
    # under overload the partials gave way, not the finals
    assert sum(t.partials_skipped for t in transcribers) + pool.counters.partials_skipped > 0
    assert pool.counters.finals_refused == 0
    assert not pool.streams


# ---- the stage on a real event bus --------------------------------------------------------------


class Translated(tuple):
    """(text, error) plus the translator's confidence, as the translation service returns it."""

    confidence: float | None = None
    quality_flags: tuple[str, ...] = ()


SESSIONS: list[str | None] = []


async def apertium_translate(text: str, source: str, target: str, session: str | None = None) -> Translated:
    """A real translator (Apertium, offline) behind the stage's translate callable; it says how
    sure it is by Apertium's unknown-word marks (`*word`) and records the session it was given."""
    SESSIONS.append(session)
    pair = {("en", "es"): "eng-spa"}.get((source, target))
    if pair is None:
        return Translated((None, f"no Apertium pair for {source}-{target}"))
    proc = await asyncio.create_subprocess_exec(
        "apertium",
        pair,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(text.encode()), 30)
    if proc.returncode:
        return Translated((None, err.decode(errors="replace").strip()))
    marked = out.decode().strip()
    words = marked.split()
    unknown = sum(1 for w in words if w.startswith("*"))
    result = Translated((marked.replace("*", ""), None))
    result.confidence = 1.0 - unknown / max(1, len(words))
    result.quality_flags = ("unknown_words",) if unknown else ()
    return result


async def collect_until(sub, done: Callable[[list[CaptionEvent]], bool], timeout: float) -> list[CaptionEvent]:
    events: list[CaptionEvent] = []
    deadline = time.monotonic() + timeout
    while not done(events) and time.monotonic() < deadline:
        event = await sub.get(timeout=0.2)
        if event is not None:
            events.append(event)
    return events


@pytest.mark.skipif(shutil.which("apertium") is None, reason="needs apertium + apertium-eng-spa")
async def test_caption_stage_publishes_events_translations_and_follows_params(pool: AsrModelPool) -> None:
    track = build_track(PHRASES[:3], pause_seconds=1.5, tail_seconds=1.5)
    items = list(audio_items(track.audio))
    bounds = [track.phrases[1].start - 0.5, track.phrases[2].start - 0.5]
    sections = [
        [i for i in items if i.media_time < bounds[0]],
        [i for i in items if bounds[0] <= i.media_time < bounds[1]],
        [i for i in items if i.media_time >= bounds[1]],
    ]
    loop = asyncio.get_running_loop()
    bus = EventBus(loop)
    sub = bus.subscribe(kinds={"caption"})
    reported: list[str | None] = []
    ctx = StageContext(
        "asr-stage-test",
        loop,
        bus,
        params={"captions": {"enabled": True, "language": "en", "translate_to": ["es"]}},
        report_error=reported.append,
    )
    stage = CaptionStage(pool, translate=apertium_translate)
    await stage.start(ctx)
    try:
        # 1) captions on, translated to Spanish
        feeder = threading.Thread(target=feed_in_real_time, args=(stage.on_audio, sections[0], 2.0))
        feeder.start()

        def translated(events: list[CaptionEvent]) -> bool:
            return any(e.final and e.translations for e in events)

        first = await collect_until(sub, translated, timeout=60)
        await asyncio.to_thread(feeder.join, 30)
        finals = [e for e in first if e.final]
        # published once as a final, then updated in place with its translation (same id)
        assert [(e.sse_event, e.revision) for e in finals] == [("final", 0), ("update", 1)], first
        plain, with_es = finals
        assert plain.id == with_es.id and plain.text == with_es.text and plain.start == with_es.start
        assert plain.translations == {} and "library" in plain.text.lower()
        assert "biblioteca" in with_es.translations["es"].lower() and with_es.untranslated == []
        assert 0.5 < with_es.translation_confidence["es"] <= 1.0
        assert with_es.is_update and not plain.is_update
        assert all(e.burned_in for e in first)  # burn_in defaults to on, as the overlay draws it
        partials = [e for e in first if not e.final]
        assert partials and all(e.id == plain.id for e in partials)  # partials came first, same id
        assert first.index(partials[-1]) < first.index(plain)
        assert SESSIONS and set(SESSIONS) == {"asr-stage-test"}  # the stream's session for context

        # 2) captions off mid-stream: speech is not transcribed
        stage.update_params({"captions": {"enabled": False}})
        calls_before = stage.transcriber.model_calls
        feeder = threading.Thread(target=feed_in_real_time, args=(stage.on_audio, sections[1], 2.0))
        feeder.start()
        await asyncio.to_thread(feeder.join, 30)
        quiet = await collect_until(sub, lambda events: False, timeout=1.0)
        assert quiet == [] and stage.transcriber.model_calls == calls_before

        # 3) on again, translation off: a new final, published once
        stage.update_params({"captions": {"enabled": True, "translate_to": [], "burn_in": False}})
        feeder = threading.Thread(target=feed_in_real_time, args=(stage.on_audio, sections[2], 2.0))
        feeder.start()
        third = await collect_until(sub, lambda events: any(e.final for e in events), timeout=60)
        await asyncio.to_thread(feeder.join, 30)
        finals = [e for e in third if e.final]
        assert len(finals) == 1 and "station" in finals[0].text.lower() and finals[0].translations == {}
        assert not any(e.burned_in for e in third)  # players draw it themselves now
        # kept: "published once" means no repeat arrives afterwards; no event marks its absence
        await asyncio.sleep(0.3)
        assert [e for e in await collect_until(sub, lambda ev: False, 0.3) if e.final] == []

        stats = stage.stats()
        assert stats["enabled"] and stats["translations"] == 1 and stats["translation_errors"] == 0
        assert stats["finals"] == 2 and stats["model_loaded"] and stats["last_error"] is None
        assert reported == []  # the model never failed
    finally:
        await stage.stop()
        sub.close()
        bus.close()
