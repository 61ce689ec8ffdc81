"""Per-stream streaming transcription: ring + VAD + utterance decodes on the shared model.

Data flow of one stream:

    decode thread: feed(AudioItem) → Resampler16k → AudioRing (bounded)       [cheap, never blocks]
    stream task:   step() → StreamingVad over the new audio (VAD pool thread), 1 s at a time
                   speech start → an utterance opens (a little before it: `vad_speech_pad_ms`)
                   while it is spoken → partial decodes of the utterance so far, in the background,
                           at a cadence that stretches with the model's load (skipped first)
                   pause ≥ vad_min_silence_ms → the utterance is decoded once, whole: its final
                           (heard after the previous caption's audio, whose text is given: a lead)
                   speech longer than max_utterance_seconds → cut at its quietest point; the part
                           before becomes final, the rest opens the next utterance

Utterances tile the timeline: the next starts where the previous ended at the earliest, so every
word of the audio is in exactly one final, and a final is the model's reading of exactly its
audio (as offline, with the encoder window sized to the utterance). Nothing is committed word by
word, so no join, trim or VAD boundary can drop a clause.

Times: the transcriber's own timeline is the absolute 16 kHz sample index of the ring; events
carry media time (seconds on the stream's timeline, from `AudioItem.media_time`) via the ring's
anchors, so captions line up with the video. Each event also says the stream's `lag`: seconds of
audio that arrived but is not decoded yet.

`step()` can also be driven by hand (tests, offline tools): feed audio, `await step()`, and
`await settle()` to let a partial in flight finish. `start()` runs the live loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from inference.asr.audio import SAMPLE_RATE, AudioRing, Resampler16k
from inference.asr.decode import Lead
from inference.asr.metrics import latency_histogram
from inference.asr.model import LOG_PROB_THRESHOLD, AsrModelPool, AsrSettings, UtteranceResult
from inference.asr.policy import clean_hypothesis, quietest_cut
from inference.asr.vad import StreamingVad, VadEvent, vad_executor
from media.events import CaptionEvent, next_event_id
from media.frames import AudioItem
from media.stats import LatencyWindow

log = logging.getLogger(__name__)

# a VAD "utterance" shorter than this with nothing shown yet is a click, not speech
MIN_UTTERANCE_SECONDS = 0.2
# wake the stream task after this much new audio (VAD granularity of the live loop)
WAKE_SECONDS = 0.1
# the VAD runs over at most this much audio at a time, so cuts and ends are found in order
VAD_PIECE_SECONDS = 1.0
# audio the ring holds beyond the longest utterance: what a stream may lag before audio drops
RING_HEADROOM_SECONDS = 30.0
# no partials while this much audio waits for the VAD: the final is what the viewer needs
PARTIAL_MAX_LAG_SECONDS = 1.5
# previous captions are decoding context only while they are this recent (seconds of audio)
CONTEXT_MAX_AGE_SECONDS = 30.0
# a final hears the previous caption's audio first (a `Lead`) when that began at most this long
# before it; the ring keeps that much audio through the pause between them
LEAD_MAX_SECONDS = 8.0
# the model's busy share above which partials are spaced out, and above which none is started
LOAD_KNEE = 0.5
PARTIALS_OFF_LOAD = 0.85
# arrival times kept to date the end of speech (one per fed frame: ~80 s at 20 ms frames)
ARRIVALS_KEPT = 4096
# latency samples per stream behind its status p50/p95
LATENCY_WINDOW = 256
# finals whose audio is kept for Whisper's speech translation into English (ids, ≤ 28 s each)
SPEECH_KEPT = 4


class StreamingTranscriber:
    """Streaming captions for one stream. Not shared between streams; the model pool is."""

    def __init__(
        self,
        pool: AsrModelPool,
        settings: AsrSettings | None = None,
        *,
        language: str | None = None,
        allowed_languages: list[str] | tuple[str, ...] | None = None,
        on_event: Callable[[CaptionEvent], None] | None = None,
        on_error: Callable[[str | None], None] | None = None,
        id_factory: Callable[[], int] = next_event_id,
        name: str = "",
    ) -> None:
        self.pool = pool
        self.settings = s = settings or pool.settings
        self.language = language or s.language
        self.allowed_languages: tuple[str, ...] | None = tuple(allowed_languages) if allowed_languages else None
        self.on_event = on_event
        self.on_error = on_error
        self.name = name or f"asr-{id(self):x}"
        self._new_id = id_factory
        self.ring = AudioRing(s.max_utterance_seconds + RING_HEADROOM_SECONDS)
        self._resampler = Resampler16k()
        self._vad: StreamingVad | None = None  # built in the VAD thread (loads the ONNX session)
        self._pad = int(s.vad_speech_pad_ms * SAMPLE_RATE / 1000)
        self._min_chunk = int(s.min_chunk_seconds * SAMPLE_RATE)
        self._max_utterance = int(s.max_utterance_seconds * SAMPLE_RATE)
        self._wake_samples = int(WAKE_SECONDS * SAMPLE_RATE)
        # positions are absolute sample indices in the ring
        self._vad_pos = 0  # audio before this went through the VAD
        self._last_end = 0  # end of the last closed utterance: the next one starts here at the earliest
        self._utt_start: int | None = None  # audio of the open utterance starts here (None: none open)
        self._speech_start = 0  # where the VAD heard its speech begin (the caption's start time)
        self._utt_id: int | None = None  # caption id, given at its first partial or its final
        self._utt_serial = 0  # which utterance a partial in flight belongs to
        self._partial_text = ""
        self._partial_end = 0  # end of the audio the newest shown partial decoded
        self._next_partial_at = 0
        self._partial_backoff = 1.0
        self._partial_task: asyncio.Task | None = None
        self.in_speech = False
        # the newest finals' text (and where they ended): what the model hears as context
        self._history: deque[str] = deque(maxlen=3)
        self._history_end = 0
        # the newest final's audio span and text: the lead of the next final
        self._lead_span: tuple[int, int, str] | None = None
        self._lead_max = int(LEAD_MAX_SECONDS * SAMPLE_RATE)
        self._detected_language: str | None = None
        # the stream's terms to spell right, asked at each decode (captions.vocabulary + screen)
        self.vocabulary: Callable[[], tuple[str, ...]] | None = None
        self.last_hotwords: tuple[str, ...] = ()  # those in the newest decode's prompt
        self._detected_probability: float | None = None
        # latency as the field measures it (inference/asr/metrics.py): when each fed frame arrived
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=ARRIVALS_KEPT)
        self._first_text_due = False  # the open utterance has shown no text yet
        self.time_to_final = LatencyWindow(LATENCY_WINDOW)
        self.time_to_first_partial = LatencyWindow(LATENCY_WINDOW)
        # Whisper's own speech translation into English: the newest finals' audio (bounded)
        self.keep_speech = False
        self._speech: deque[tuple[int, np.ndarray, str]] = deque(maxlen=SPEECH_KEPT)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._unsignalled = 0
        self._task: asyncio.Task | None = None
        self._lock: asyncio.Lock | None = None  # serialises step() with finish()/areset()
        self.closed = False
        # stats
        self.chunks_processed = 0
        self.model_calls = 0
        self.model_seconds = 0.0  # this stream's share of the batches it was in
        self.vad_seconds = 0.0
        self.max_lag_seconds = 0.0
        self.finals = 0
        self.partials = 0
        self.partials_skipped = 0
        self.retracted_chars = 0  # flicker: characters removed between partials of one caption
        self.forced_cuts = 0
        self.repetitions_cut = 0
        self.utterances_ignored = 0
        self.final_fallbacks = 0
        self.bad_frames = 0
        self.errors = 0
        self.last_error: str | None = None
        self._final_ids: deque[int] = deque(maxlen=256)

    # -- input (decode thread) ----------------------------------------------------------------

    def feed(self, item: AudioItem) -> None:
        """Resample one decoded frame into the ring. Cheap; safe from any thread."""
        if self.closed:
            return
        try:
            samples = self._resampler.convert(item.frame)
        except Exception as exc:  # a broken frame must not kill the decode thread
            self.bad_frames += 1
            log.debug("%s: audio frame dropped: %s", self.name, exc)
            return
        self.feed_samples(samples, item.media_time)

    def feed_samples(self, samples: np.ndarray, media_time: float | None = None) -> None:
        """Append 16 kHz mono float32 samples whose first sample is at `media_time`."""
        if self.closed or len(samples) == 0:
            return
        self.ring.append(samples, media_time)
        self._arrivals.append((self.ring.end_index, time.perf_counter()))
        self._unsignalled += len(samples)
        if self._unsignalled >= self._wake_samples and self._loop is not None and self._wake is not None:
            self._unsignalled = 0
            try:
                self._loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:  # loop closed while the stream shuts down
                pass

    # -- live loop ----------------------------------------------------------------------------

    def start(self) -> asyncio.Task:
        """Start the live loop on the running event loop (wakes whenever audio arrives)."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        if len(self.pool.streams) < 1024:  # bounded: the streams that run
            self.pool.streams[self.name] = self
        self._task = self._loop.create_task(self._run(), name=f"asr-{self.name}")
        return self._task

    async def _run(self) -> None:
        assert self._wake is not None
        while not self.closed:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=0.5)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep captioning the rest of the stream
                self._record_error(exc)
                await asyncio.sleep(0.5)

    async def close(self, finalize: bool = True) -> None:
        """Stop the live loop; by default publish the open caption as final (no model call)."""
        self.closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self.pool.streams.get(self.name) is self:
            del self.pool.streams[self.name]
        if finalize:
            await self.finish()
        else:
            await self._cancel_partial()

    # -- processing ---------------------------------------------------------------------------

    async def step(self, until: int | None = None) -> list[CaptionEvent]:
        """Process the audio that arrived since the last step (up to absolute sample `until`).

        Returns the finals it produced (every event, partials included, goes to `on_event`)."""
        async with self._guard():
            return await self._step(until)

    def _guard(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def _step(self, until: int | None) -> list[CaptionEvent]:
        events: list[CaptionEvent] = []
        ring_start, ring_end = self.ring.start_index, self.ring.end_index
        end = ring_end if until is None else min(until, ring_end)
        if self._vad_pos < ring_start:
            # the ring overflowed before the VAD saw this audio (counted in dropped_samples)
            log.warning(
                "%s: %.1f s of audio dropped before it was decoded",
                self.name,
                (ring_start - self._vad_pos) / SAMPLE_RATE,
            )
            self._vad_pos = self._last_end = ring_start
            self._lead_span = None
            if self._vad is not None:
                self._vad.reset(ring_start)
            if self._utt_start is not None:
                self._utt_start = max(self._utt_start, ring_start)
        piece = int(VAD_PIECE_SECONDS * SAMPLE_RATE)
        while self._vad_pos < end:
            stop = min(end, self._vad_pos + piece)
            chunk = self.ring.read(self._vad_pos, stop)
            self._vad_pos = stop
            began = time.perf_counter()
            vad_events = await asyncio.get_running_loop().run_in_executor(vad_executor(), self._run_vad, chunk)
            self.vad_seconds += time.perf_counter() - began
            self.chunks_processed += 1
            for event in vad_events:
                if event.kind == "start":
                    self._open(event.index)
                else:
                    events += await self._close(
                        min(event.index + self._pad, event.detected_at), event.index, speech_ended=True
                    )
            if (
                self.in_speech
                and self._utt_start is not None
                and self._vad_pos - self._utt_start >= self._max_utterance
            ):
                events += await self._cut_long_speech()
        if self.in_speech and self._utt_start is not None:
            self._maybe_partial(end)
        elif self._utt_start is None:
            # silence and nothing open: keep only a pre-roll for the next speech start, and the
            # last caption's audio while it can still lead the next final
            keep = max(self._last_end, end - self._pad)
            if self._lead_span is not None:
                keep = max(min(keep, self._lead_span[0]), end - self._lead_max)
            self.ring.trim(keep)
        self.max_lag_seconds = max(self.max_lag_seconds, self.lag_seconds)
        return events

    def _run_vad(self, chunk: np.ndarray) -> list[VadEvent]:
        if self._vad is None:
            s = self.settings
            self._vad = StreamingVad(s.vad_threshold, s.vad_min_silence_ms, start_index=self._vad_pos - len(chunk))
        return self._vad.process(chunk)

    def _open(self, speech_index: int, audio_start: int | None = None) -> None:
        self.in_speech = True
        # the rest of a cut utterance (audio_start given) is no new speech: no first-partial time
        self._first_text_due = audio_start is None
        if audio_start is None:
            audio_start = max(self._last_end, speech_index - self._pad, self.ring.start_index)
        self._utt_start = audio_start
        self._speech_start = speech_index
        self._utt_id = None
        self._utt_serial += 1
        self._partial_text = ""
        self._partial_end = audio_start
        self._next_partial_at = speech_index + self._min_chunk

    async def _cut_long_speech(self) -> list[CaptionEvent]:
        """Speech without a pause reached max_utterance_seconds: cut it at its quietest point."""
        assert self._utt_start is not None
        recent = list(self._vad.recent) if self._vad is not None else []
        cut = quietest_cut(recent, self._utt_start, self._vad_pos - self._pad)
        self.forced_cuts += 1
        events = await self._close(cut, cut, keep_speaking=True)
        self._open(cut, audio_start=cut)
        return events

    async def _close(
        self, audio_end: int, speech_end: int, keep_speaking: bool = False, speech_ended: bool = False
    ) -> list[CaptionEvent]:
        """The open utterance ends at `audio_end`: decode it whole, once, and publish its final
        (`speech_ended`: the VAD heard the speech end at `speech_end`; its time to final counts)."""
        self.in_speech = keep_speaking
        if self._utt_start is None:
            return []
        await self._cancel_partial()
        start, caption_id, shown = self._utt_start, self._utt_id, self._partial_text
        speech_start = self._speech_start
        self._utt_start = None
        self._last_end = max(self._last_end, audio_end)
        spoke = (speech_end - speech_start) / SAMPLE_RATE
        if spoke < MIN_UTTERANCE_SECONDS and caption_id is None:
            self.utterances_ignored += 1
            return []
        text = shown  # what the viewer saw, should the model fail now
        looped_before = self.repetitions_cut
        result = await self._decode(start, audio_end, final=True, lead=self._lead_for(start, audio_end))
        if result is not None:
            text = self._caption_text(result)
            if result.fallback:
                self.final_fallbacks += 1
        if self.repetitions_cut > looped_before or result is None:
            self._history.clear()  # a loop feeds on its context: start the next one afresh
            self._lead_span = None
        elif text:
            self._history.append(text)
            self._history_end = audio_end
            self._lead_span = (start, audio_end, text)
        else:
            self._lead_span = None
        if not text and caption_id is None:
            return []
        if caption_id is None:
            caption_id = self._new_id()
        if text and self._first_text_due:
            self._observe_first_text(speech_start)
        event = self._event(caption_id, text, True, speech_start, max(speech_end, speech_start))
        if event is not None and speech_ended:
            heard = self._arrival(speech_end)
            if heard is not None:
                delay = max(0.0, time.perf_counter() - heard)
                self.time_to_final.add(delay)
                latency_histogram("final", self.pool.settings.model).observe(delay)
        if event is not None and text and self.keep_speech:
            self._speech.append((caption_id, self.ring.read(max(start, self.ring.start_index), audio_end), event.lang))
        return [event] if event is not None else []

    def _arrival(self, index: int) -> float | None:
        """When the frame holding absolute sample `index` arrived (None: no longer known)."""
        arrivals = list(self._arrivals)  # one C call: safe beside feed() in the decode thread
        found: float | None = None
        for end, at in reversed(arrivals):
            if end <= index:
                return found
            found = at
        # every kept frame ends after it: the first kept frame holds it, unless older ones were dropped
        return found if len(arrivals) < ARRIVALS_KEPT else None

    def _observe_first_text(self, speech_start: int) -> None:
        self._first_text_due = False
        heard = self._arrival(speech_start)
        if heard is not None:
            delay = max(0.0, time.perf_counter() - heard)
            self.time_to_first_partial.add(delay)
            latency_histogram("first_partial", self.pool.settings.model).observe(delay)

    def _maybe_partial(self, end: int) -> None:
        """Start a partial decode of the utterance so far when one is due and the model has room:
        none while finals wait or this stream lags, and further apart the busier the model is."""
        if self._partial_task is not None or end < self._next_partial_at or self._utt_start is None:
            return
        behind = (self.ring.end_index - self._vad_pos) / SAMPLE_RATE  # this stream's own backlog
        if self.pool.finals_waiting or behind > PARTIAL_MAX_LAG_SECONDS:
            self._next_partial_at = end + self._min_chunk // 4  # look again soon
            self.partials_skipped += 1
            return
        s = self.settings
        # load matters when streams share the model: one stream's partials cannot delay another's
        # final (and a lone stream has one partial in flight at most anyway)
        busy = self.pool.busy_fraction() if len(self.pool.streams) > 1 else 0.0
        if busy >= PARTIALS_OFF_LOAD:  # the model is saturated: finals only, until it has room
            self._next_partial_at = end + self._min_chunk // 2
            self.partials_skipped += 1
            return
        knee = (busy - LOAD_KNEE) / (PARTIALS_OFF_LOAD - LOAD_KNEE)
        stretch = 1.0 + max(0.0, knee) * (s.max_partial_interval_seconds / s.min_chunk_seconds - 1)
        interval = min(s.max_partial_interval_seconds, s.min_chunk_seconds * stretch * self._partial_backoff)
        self._next_partial_at = end + int(interval * SAMPLE_RATE)
        start = self._utt_start
        if end - start > self._max_utterance:
            return
        self._partial_task = asyncio.get_running_loop().create_task(
            self._partial(self._utt_serial, start, end), name=f"asr-partial-{self.name}"
        )

    async def _partial(self, serial: int, start: int, end: int) -> None:
        try:
            result = await self._decode(start, end, final=False)
            if result is None:
                self.partials_skipped += 1
                self._partial_backoff = min(4.0, self._partial_backoff * 2)
                return
            self._partial_backoff = max(1.0, self._partial_backoff / 2)
            if serial != self._utt_serial or self._utt_start is None:
                self.partials_skipped += 1
                return  # the utterance closed meanwhile: its final decides
            text = self._caption_text(result)
            if not text or text == self._partial_text:
                return
            if self._utt_id is None:
                self._utt_id = self._new_id()
            if self._first_text_due:
                self._observe_first_text(self._speech_start)
            common = len(_common_prefix(self._partial_text, text))
            self.retracted_chars += len(self._partial_text) - common
            self._partial_text, self._partial_end = text, end
            self._event(self._utt_id, text, False, self._speech_start, end - self._pad)
        finally:
            if asyncio.current_task() is self._partial_task:
                self._partial_task = None

    async def _cancel_partial(self) -> None:
        """The utterance closes: a partial still in flight gives way to its final."""
        task, self._partial_task = self._partial_task, None
        if task is not None and not task.done():
            self.partials_skipped += 1
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def settle(self) -> None:
        """Wait for the partial decode in flight, if any (hand-driven tests and tools)."""
        task = self._partial_task
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _lead_for(self, start: int, end: int) -> tuple[int, str] | None:
        """(where its audio starts, its text): the previous caption, when its audio is still in
        the ring and began at most LEAD_MAX_SECONDS before this utterance."""
        if self._lead_span is None:
            return None
        lead_start, lead_end, text = self._lead_span
        if lead_start < self.ring.start_index or lead_end > start or start - lead_start > self._lead_max:
            return None
        if end - lead_start > self._max_utterance + self._lead_max:
            return None
        return lead_start, text

    async def _decode(
        self, start: int, end: int, final: bool, lead: tuple[int, str] | None = None
    ) -> UtteranceResult | None:
        if end - start < SAMPLE_RATE // 10:
            return None
        context = self._context(start, skip_last=lead is not None)  # the lead's text is said in it
        lead_start, decode_lead = start, None
        if lead is not None:
            lead_start, decode_lead = lead[0], Lead(lead[1], (start - lead[0]) / SAMPLE_RATE)
        audio = self.ring.read(lead_start, end)
        try:
            result = await self.pool.decode(
                audio,
                final=final,
                stream=self.name,
                language=self.language,
                context=context,
                lead=decode_lead,
                allowed=self.allowed_languages if self.language in ("", "auto") else None,
                vocabulary=self.vocabulary() if self.vocabulary is not None else (),
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._record_error(exc)
            return None
        if result is None:
            return None
        self._record_ok()
        self.model_calls += 1
        self.model_seconds += result.elapsed / max(1, result.batch_size)
        self.last_hotwords = result.hotwords
        if result.language:
            self._detected_language = result.language
            self._detected_probability = result.language_probability
        return result

    async def translate_speech(self, caption_id: int) -> str | None:
        """Whisper's own translation into English of a final's speech (kept while `keep_speech`
        is on, for the newest SPEECH_KEPT finals); None when its audio is gone or it failed."""
        kept = next(((audio, lang) for i, audio, lang in self._speech if i == caption_id), None)
        if kept is None:
            return None
        audio, language = kept
        try:
            result = await self.pool.decode(
                audio, final=True, stream=f"{self.name}:translate", language=language, task="translate"
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._record_error(exc)
            return None
        if result is None:
            return None
        return self._caption_text(result) or None

    def _context(self, start: int, skip_last: bool = False) -> str:
        """The stream's previous captions, when they were said shortly before `start` (without
        the newest when it leads the decode)."""
        if not self._history or start - self._history_end > CONTEXT_MAX_AGE_SECONDS * SAMPLE_RATE:
            return ""
        history = list(self._history)
        return " ".join(history[:-1] if skip_last else history[-2:])

    def _caption_text(self, result: UtteranceResult) -> str:
        s = self.settings
        if result.no_speech_prob > s.no_speech_threshold and result.avg_logprob < LOG_PROB_THRESHOLD:
            return ""  # Whisper's own silence rule
        doubtful = result.no_speech_prob > 0.3 or result.avg_logprob < LOG_PROB_THRESHOLD
        text, looped = clean_hypothesis(result.text, doubtful=doubtful)
        if looped:
            self.repetitions_cut += 1
        return text

    # -- output -------------------------------------------------------------------------------

    @property
    def lag_seconds(self) -> float:
        """Audio that arrived but is not decoded yet: not through the VAD, or in the open
        utterance past what its newest partial covered."""
        decided = self._vad_pos if self._utt_start is None else max(self._utt_start, self._partial_end)
        return max(0.0, (self.ring.end_index - decided) / SAMPLE_RATE)

    @property
    def caption_language(self) -> str:
        """The language of the captions: what the model actually used (an English-only model
        transcribes English whatever was asked; 'auto' resolves per call), else the setting."""
        if self._detected_language:
            return self._detected_language
        return "und" if self.language in (None, "", "auto") else self.language

    @property
    def caption_language_probability(self) -> float | None:
        """The detection's probability of `caption_language` (None: the language was given)."""
        return self._detected_probability if self._detected_language else None

    def _event(self, caption_id: int, text: str, final: bool, start: int, end: int) -> CaptionEvent | None:
        if final:
            if caption_id in self._final_ids:  # never let a second final of one id slip out
                log.error("%s: caption %d was already final; update dropped", self.name, caption_id)
                return None
            self._final_ids.append(caption_id)
            self.finals += 1
        else:
            self.partials += 1
        media_start = self.ring.media_time(start)
        media_end = self.ring.media_time(max(start, end))
        lag = self.lag_seconds
        self.max_lag_seconds = max(self.max_lag_seconds, lag)
        event = CaptionEvent(
            id=caption_id,
            text=text,
            final=final,
            start=media_start,
            end=media_end,
            lang=self.caption_language,
            lang_prob=self.caption_language_probability,
            pts=media_start,
            lag=round(lag, 3),
        )
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                log.exception("%s: caption consumer failed", self.name)
        return event

    async def finish(self) -> list[CaptionEvent]:
        """`finish_now` once no step is running."""
        async with self._guard():
            await self._cancel_partial()
            return self.finish_now()

    def finish_now(self) -> list[CaptionEvent]:
        """Close the open caption with the text it shows (no model call): disable/stop paths."""
        if self._utt_start is None:
            return []
        caption_id, text = self._utt_id, self._partial_text
        speech_start, end = self._speech_start, max(self._partial_end, self._speech_start)
        self._last_end = max(self._last_end, self._vad_pos)
        self._utt_start = None
        self._utt_serial += 1
        self.in_speech = False
        self._lead_span = None  # its words were not decoded whole: no lead over them
        if caption_id is None:
            return []
        event = self._event(caption_id, text, True, speech_start, end)
        return [event] if event is not None else []

    async def flush(self) -> list[CaptionEvent]:
        """End of input: process what is left and finalise the open utterance with a model call."""
        events = await self.step()
        async with self._guard():
            if self._utt_start is not None:
                end = self.ring.end_index
                events += await self._close(end, end)
        return events

    async def areset(self) -> list[CaptionEvent]:
        """`reset` once no step is running; returns the final it closed, if any."""
        async with self._guard():
            await self._cancel_partial()
            return self.reset()

    def reset(self) -> list[CaptionEvent]:
        """Forget all audio and state (e.g. captions re-enabled after a while off)."""
        events = self.finish_now()
        end = self.ring.end_index
        self.ring.trim(end)
        self._vad_pos = self._last_end = end
        if self._vad is not None:
            self._vad.reset(end)
        self.in_speech = False
        self._history.clear()
        self._lead_span = None
        return events

    def set_language(self, language: str, allowed_languages: list[str] | tuple[str, ...] | None = None) -> None:
        """Takes effect at the next model call."""
        language = language or self.settings.language
        self.allowed_languages = tuple(allowed_languages) if allowed_languages else None
        if language != self.language:
            self.language = language
            self._detected_language = None
            self._detected_probability = None

    def set_pool(self, pool: AsrModelPool) -> None:
        """Decode on another model from the next call (the stream's language needs it)."""
        if pool is self.pool:
            return
        if self.pool.streams.get(self.name) is self:
            del self.pool.streams[self.name]
            if len(pool.streams) < 1024:
                pool.streams[self.name] = self
        self.pool = pool
        self._history.clear()  # the other model's context and lead start afresh
        self._lead_span = None

    # -- errors and stats ---------------------------------------------------------------------

    def _record_error(self, exc: BaseException) -> None:
        message = f"{type(exc).__name__}: {exc}"
        self.errors += 1
        if message != self.last_error:
            log.warning("%s: ASR failed: %s", self.name, message)
            self.last_error = message
            if self.on_error is not None:
                self.on_error(message)

    def _record_ok(self) -> None:
        if self.last_error is not None:
            self.last_error = None
            if self.on_error is not None:
                self.on_error(None)

    def stats(self) -> dict[str, Any]:
        audio_seconds = self.ring.appended_samples / SAMPLE_RATE
        busy = self.model_seconds + self.vad_seconds
        open_seconds = 0.0 if self._utt_start is None else (self.ring.end_index - self._utt_start) / SAMPLE_RATE
        return {
            "audio_seconds": round(audio_seconds, 3),
            "chunks_processed": self.chunks_processed,
            "model_calls": self.model_calls,
            "model_seconds": round(self.model_seconds, 3),
            "vad_seconds": round(self.vad_seconds, 3),
            "rtf": round(busy / audio_seconds, 4) if audio_seconds else 0.0,
            "lag_seconds": round(self.lag_seconds, 3),
            "max_lag_seconds": round(self.max_lag_seconds, 3),
            "buffer_seconds": round(open_seconds, 3),
            "dropped_audio_seconds": round(self.ring.dropped_samples / SAMPLE_RATE, 3),
            "in_speech": self.in_speech,
            "partials": self.partials,
            "partials_skipped": self.partials_skipped,
            "finals": self.finals,
            "retracted_chars": self.retracted_chars,
            "forced_cuts": self.forced_cuts,
            "repetitions_cut": self.repetitions_cut,
            "utterances_ignored": self.utterances_ignored,
            "final_fallbacks": self.final_fallbacks,
            "language_probability": self.caption_language_probability,
            "time_to_final": _seconds_summary(self.time_to_final),
            "time_to_first_partial": _seconds_summary(self.time_to_first_partial),
            "bad_frames": self.bad_frames,
            "errors": self.errors,
            "last_error": self.last_error,
            "vocabulary_in_prompt": list(self.last_hotwords),
        }


def _seconds_summary(window: LatencyWindow) -> dict[str, float | int | None]:
    p50, p95 = window.percentile(50), window.percentile(95)
    return {
        "p50": None if p50 is None else round(p50, 3),
        "p95": None if p95 is None else round(p95, 3),
        "count": window.count,
    }


def _common_prefix(a: str, b: str) -> str:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return a[:n]
