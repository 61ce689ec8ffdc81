"""Per-stream streaming transcription: ring + VAD + LocalAgreement-2 + the shared model.

Data flow of one stream:

    decode thread: feed(AudioItem) → Resampler16k → AudioRing (bounded)       [cheap, never blocks]
    stream task:   step() → StreamingVad over the new audio (VAD pool thread)
                   speech: every `min_chunk_seconds` of new audio → pool.transcribe(buffer)
                           → LocalAgreement commit → CaptionAssembler → partial events (and a
                           final at each committed sentence end during long speech)
                   pause ≥ vad_min_silence_ms → the utterance becomes final, decided by one
                           call over all of it (with the previous utterance as left context);
                           the buffer restarts after the pause
                   silence: no model call; the ring keeps only a short pre-roll + context

Latency: that closing call starts as soon as the VAD has heard 200 ms of silence ("speculative"),
so its result is usually ready when the 500 ms pause is confirmed; if speech resumes instead, it
served as an ordinary partial hypothesis.

Cost stays flat: the buffer handed to Whisper starts at the oldest uncommitted audio; past
`buffer_trim_seconds` it is cut at a committed sentence/segment end and it never reaches
`max_buffer_seconds` (the tail is forced final first).

Times: the transcriber's own timeline is the absolute 16 kHz sample index of the ring; events
carry media time (seconds on the stream's timeline, from `AudioItem.media_time`) via the ring's
anchors, so captions line up with the video.

`step()` can also be driven by hand (tests, offline tools): feed audio, then `await step()`.
Driving it every `min_chunk_seconds` of fed audio is the stream as it would run in real time on
an infinitely fast machine; `start()` runs the live loop (computation-aware: when a call takes
long, the next step simply sees more audio).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from inference.asr.audio import SAMPLE_RATE, AudioRing, Resampler16k
from inference.asr.model import AsrModelPool, AsrSettings
from inference.asr.policy import (
    CaptionAssembler,
    CaptionUpdate,
    LocalAgreement,
    Word,
    choose_trim_time,
    cut_repetition,
    is_hallucination_phrase,
    join_words,
)
from inference.asr.vad import StreamingVad, VadEvent, vad_executor
from media.events import CaptionEvent, next_event_id
from media.frames import AudioItem

log = logging.getLogger(__name__)

# Whisper's gzip compression ratio above which a segment is a decoding loop (its own default)
MAX_COMPRESSION_RATIO = 2.4
# a VAD "utterance" shorter than this with nothing transcribed yet is a click, not speech
MIN_UTTERANCE_SECONDS = 0.25
# wake the stream task after this much new audio (VAD granularity of the live loop)
WAKE_SECONDS = 0.1
RING_HEADROOM_SECONDS = 5.0
# the closing call may retry hotter when greedy decoding fails Whisper's own checks (as offline)
FINAL_TEMPERATURES = (0.0, 0.2, 0.4, 0.6)
# a silence this long inside speech starts the closing model call before the pause is confirmed
SPECULATE_AFTER_SECONDS = 0.2
# left context is only used when the previous utterance ended at most this long before
MAX_CONTEXT_GAP_SECONDS = 2.0


class StreamingTranscriber:
    """Streaming captions for one stream. Not shared between streams; the model pool is."""

    def __init__(
        self,
        pool: AsrModelPool,
        settings: AsrSettings | None = None,
        *,
        language: str | None = None,
        on_event: Callable[[CaptionEvent], None] | None = None,
        on_error: Callable[[str | None], None] | None = None,
        id_factory: Callable[[], int] = next_event_id,
        name: str = "",
    ) -> None:
        self.pool = pool
        self.settings = s = settings or pool.settings
        self.language = language or s.language
        self.on_event = on_event
        self.on_error = on_error
        self.name = name
        # headroom past Whisper's buffer for audio that arrives while a call runs
        self.ring = AudioRing(s.max_buffer_seconds + s.context_seconds + RING_HEADROOM_SECONDS)
        self._resampler = Resampler16k()
        self._vad: StreamingVad | None = None  # built in the VAD thread (loads the ONNX session)
        self.agreement = LocalAgreement(right_context=s.commit_right_context)
        self.captions = CaptionAssembler(id_factory)
        self._min_chunk = int(s.min_chunk_seconds * SAMPLE_RATE)
        self._pad = int(s.vad_speech_pad_ms * SAMPLE_RATE / 1000)
        self._wake_samples = int(WAKE_SECONDS * SAMPLE_RATE)
        # positions are absolute sample indices in the ring
        self._vad_pos = 0  # audio before this went through the VAD
        self._buf_start = 0  # Whisper's buffer starts here
        self._last_call_end = 0  # end of the audio the last model call saw
        self._speech_start = 0
        self._utterances: deque[tuple[int, int]] = deque(maxlen=8)  # recent (start, end) indices
        # (buffer start, audio end, result) of a closing call made while the pause was unconfirmed
        self._speculation: tuple[int, int, tuple[list[Word], list[float], float]] | None = None
        self._speculate_after = max(int(SPECULATE_AFTER_SECONDS * SAMPLE_RATE), self._pad)
        self.in_speech = False
        self._prompt_suspended = False
        self._detected_language: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._unsignalled = 0
        self._task: asyncio.Task | None = None
        self._lock: asyncio.Lock | None = None  # serialises step() with finish()/areset()
        self.closed = False
        # stats
        self.chunks_processed = 0
        self.model_calls = 0
        self.skipped_ticks = 0
        self.model_seconds = 0.0
        self.vad_seconds = 0.0
        self.lag_seconds = 0.0
        self.max_lag_seconds = 0.0
        self.segments_dropped = 0
        self.repetitions_cut = 0
        self.forced_cuts = 0
        self.speculative_hits = 0
        self.speculative_misses = 0
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
        self._task = self._loop.create_task(self._run(), name=f"asr-{self.name}")
        return self._task

    async def _run(self) -> None:
        assert self._wake is not None
        while not self.closed:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=0.5)
            except asyncio.TimeoutError:
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
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
        if finalize:
            await self.finish()

    # -- processing ---------------------------------------------------------------------------

    async def step(self, until: int | None = None) -> list[CaptionEvent]:
        """Process the audio that arrived since the last step (up to absolute sample `until`).

        Returns the caption events it produced (also passed to `on_event`)."""
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
            self._vad_pos = ring_start
            if self._vad is not None:
                self._vad.reset(ring_start)
            self.in_speech = False
        self._buf_start = max(self._buf_start, ring_start)
        if end <= self._vad_pos:
            return events
        chunk = self.ring.read(self._vad_pos, end)
        self._vad_pos = end
        began = time.perf_counter()
        vad_events = await asyncio.get_running_loop().run_in_executor(vad_executor(), self._run_vad, chunk)
        self.vad_seconds += time.perf_counter() - began
        self.chunks_processed += 1

        for event in vad_events:
            if event.kind == "start":
                self._on_speech_start(event)
            else:
                events += await self._on_speech_end(event)
        if self.in_speech:
            silence = self._vad.silence_since if self._vad is not None else None
            speculation_end = None if silence is None else silence + self._pad
            if (
                silence is not None
                and end - silence >= self._speculate_after
                and silence - self._speech_start >= MIN_UTTERANCE_SECONDS * SAMPLE_RATE
                and (self._speculation is None or self._speculation[1] != speculation_end)
            ):
                events += await self._speculate_final(speculation_end)
            elif end - self._last_call_end >= self._min_chunk:
                events += await self._transcribe_partial(end)
        elif self.captions.current_id is None:
            # silence and nothing open: keep only a pre-roll for the next speech start
            self._cut_buffer_at(max(self._buf_start, end - self._pad))
        self.lag_seconds = max(0.0, (self.ring.end_index - end) / SAMPLE_RATE)
        self.max_lag_seconds = max(self.max_lag_seconds, self.lag_seconds)
        return events

    def _run_vad(self, chunk: np.ndarray) -> list[VadEvent]:
        if self._vad is None:
            s = self.settings
            self._vad = StreamingVad(s.vad_threshold, s.vad_min_silence_ms, start_index=self._vad_pos - len(chunk))
        return self._vad.process(chunk)

    def _on_speech_start(self, event: VadEvent) -> None:
        self.in_speech = True
        self._speculation = None
        self._speech_start = event.index
        self._cut_buffer_at(max(self._buf_start, event.index - self._pad))
        self._last_call_end = event.index  # first call once min_chunk of speech is in

    async def _on_speech_end(self, event: VadEvent) -> list[CaptionEvent]:
        self.in_speech = False
        end = min(event.index + self._pad, event.detected_at)
        spoke = (event.index - self._speech_start) / SAMPLE_RATE
        recognised = None
        speculation, self._speculation = self._speculation, None
        if speculation is not None and speculation[:2] == (self._buf_start, end):
            recognised = speculation[2]  # decoded while the pause was being confirmed
            self.speculative_hits += 1
        elif spoke >= MIN_UTTERANCE_SECONDS or self.captions.current_id is not None:
            if speculation is not None:
                self.speculative_misses += 1
            recognised = await self._recognise(self._buf_start, end, final=True)
        if recognised is not None and recognised[0]:
            # the pass over the whole utterance is the best hypothesis: it decides the final
            updates = self.captions.close_with(recognised[0], audio_start=recognised[2])
        else:  # model busy/failed or nothing heard: close with what was committed + the tail
            updates = self.captions.close(self.agreement.commit_all())
        self.agreement.clear_buffer()
        self.agreement.last_committed_time = max(self.agreement.last_committed_time, self.captions.final_time)
        if spoke >= MIN_UTTERANCE_SECONDS:
            self._utterances.append((self._speech_start, event.index))
        self._cut_buffer_at(end)
        return self._emit(updates)

    async def _speculate_final(self, stop: int) -> list[CaptionEvent]:
        """Speech paused: decode the utterance up to the pause now, as the closing call would,
        so the final is ready when the pause is confirmed `vad_min_silence_ms` later. If speech
        goes on instead, the result still served as an ordinary partial hypothesis."""
        self._last_call_end = stop
        recognised = await self._recognise(self._buf_start, stop, final=True)
        if recognised is None:
            self._speculation = None
            return []
        self._speculation = (self._buf_start, stop, recognised)
        self.agreement.insert(recognised[0], audio_end=stop / SAMPLE_RATE)
        committed = self.agreement.flush()
        return self._emit(self.captions.update(committed, self.agreement.tail()))

    async def _transcribe_partial(self, end: int) -> list[CaptionEvent]:
        self._last_call_end = end
        recognised = await self._recognise(self._buf_start, end)
        if recognised is None:
            return []
        words, segment_ends, _ = recognised
        self.agreement.insert(words, audio_end=end / SAMPLE_RATE)
        committed = self.agreement.flush()
        if committed:
            self._prompt_suspended = False
        updates = self.captions.update(committed, self.agreement.tail())
        s = self.settings
        trim_at = choose_trim_time(
            self._buf_start / SAMPLE_RATE,
            end / SAMPLE_RATE,
            segment_ends,
            self.agreement.last_committed_time,
            s.buffer_trim_seconds,
            self.captions.final_time,
        )
        if trim_at is not None:
            self._cut_buffer_at(int(round(trim_at * SAMPLE_RATE)))
        # hard cap: Whisper sees at most one 30 s window, and the ring must not overflow. Force
        # the tail final before the next call could reach the cap.
        if (end - self._buf_start) / SAMPLE_RATE > s.max_buffer_seconds - 2 * s.min_chunk_seconds:
            forced = self.agreement.commit_all()
            updates += self.captions.close(forced)
            cut = int(round(forced[-1].end * SAMPLE_RATE)) if forced else end - self._pad
            self._cut_buffer_at(max(cut, end - int(s.buffer_trim_seconds * SAMPLE_RATE)))
            self.agreement.clear_buffer()
            self.forced_cuts += 1
        return self._emit(updates)

    async def _recognise(
        self, start: int, end: int, final: bool = False
    ) -> tuple[list[Word], list[float], float] | None:
        """One model call on ring[start:end] (plus left context); returns the filtered words and
        segment ends inside [start, end] and `start` (seconds on the ring timeline), or None when
        the pool was busy or the call failed."""
        s = self.settings
        requested = start / SAMPLE_RATE
        if end - start < SAMPLE_RATE // 10:
            return [], [], requested
        start = self._context_start(start, end, final)
        audio = self.ring.read(start, end)
        prompt = self._prompt(start / SAMPLE_RATE)
        try:
            result = await self.pool.transcribe(
                audio,
                language=self.language,
                beam_size=(s.final_beam_size or s.beam_size) if final else s.beam_size,
                word_timestamps=True,
                condition_on_previous_text=False,
                temperature=FINAL_TEMPERATURES if final else 0.0,
                no_speech_threshold=s.no_speech_threshold,
                initial_prompt=prompt or None,
                vad_filter=False,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._record_error(exc)
            return None
        if result is None:
            self.skipped_ticks += 1
            return None
        self._record_ok()
        self.model_calls += 1
        self.model_seconds += result.elapsed
        self._detected_language = result.language
        offset = start / SAMPLE_RATE
        words: list[Word] = []
        segment_ends: list[float] = []
        for seg in result.segments:
            doubtful = seg.no_speech_prob > 0.3 or seg.avg_logprob < -1.0
            if (
                seg.no_speech_prob > s.no_speech_threshold
                or seg.compression_ratio > MAX_COMPRESSION_RATIO
                or is_hallucination_phrase(seg.text, doubtful=doubtful)
            ):
                self.segments_dropped += 1
                log.debug("%s: dropped segment %r (no_speech=%.2f)", self.name, seg.text, seg.no_speech_prob)
                continue
            words += [Word(offset + w.start, offset + w.end, w.text) for w in seg.words if w.text]
            segment_ends.append(offset + seg.end)
        if offset < requested:
            # the context was only there to be heard: its words are final already, and anything
            # else in it (e.g. a word made up in the pause) must not become a caption now
            words = [w for w in words if (w.start + w.end) / 2 >= requested]
            segment_ends = [e for e in segment_ends if e > requested]
        words, looped = cut_repetition(words)
        if looped:
            # a loop often feeds on the prompt: decode without it until the next commit
            self.repetitions_cut += 1
            self._prompt_suspended = True
        return words, segment_ends, requested

    def _prompt(self, before: float) -> str:
        limit = self.settings.prompt_chars
        if limit <= 0 or self._prompt_suspended:
            return ""
        text = join_words(self.captions.words_before(before + 0.01))
        if len(text) > limit:
            text = text[-limit:]
            text = text[text.find(" ") + 1 :] if " " in text else text
        return text

    def _context_start(self, start: int, end: int, final: bool) -> int:
        """Left audio context for a call: the recent utterances just before this one, from an
        utterance start, at most `context_seconds` back and never across a long silence.
        Whisper decodes an utterance better when it hears what came before (as it does offline);
        words from that context are already final and are filtered out by time."""
        s = self.settings
        if s.context_seconds <= 0 or (s.context_final_only and not final):
            return start
        earliest = max(self.ring.start_index, start - int(s.context_seconds * SAMPLE_RATE))
        earliest = max(earliest, end - int((s.max_buffer_seconds - 1.0) * SAMPLE_RATE))  # one window
        max_gap = int(MAX_CONTEXT_GAP_SECONDS * SAMPLE_RATE)
        context = start
        for utt_start, utt_end in reversed(self._utterances):
            if context - utt_end > max_gap or utt_start < earliest:
                break  # a long silence in front would only invite hallucinations
            context = min(context, utt_start)
        return max(0, context - self._pad) if context < start else start

    def _cut_buffer_at(self, index: int) -> None:
        index = min(index, self.ring.end_index)
        if index > self._buf_start:
            self._buf_start = index
            self.agreement.trim(index / SAMPLE_RATE)
        self.ring.trim(self._buf_start - int(self.settings.context_seconds * SAMPLE_RATE))

    # -- output -------------------------------------------------------------------------------

    @property
    def caption_language(self) -> str:
        """The language of the captions: what the model actually used (an English-only model
        transcribes English whatever was asked; 'auto' resolves per call), else the setting."""
        if self._detected_language:
            return self._detected_language
        return "und" if self.language in (None, "", "auto") else self.language

    def _emit(self, updates: list[CaptionUpdate]) -> list[CaptionEvent]:
        events = []
        for u in updates:
            if u.final:
                if u.id in self._final_ids:  # the assembler guarantees this; never let it slip out
                    log.error("%s: caption %d was already final; update dropped", self.name, u.id)
                    continue
                self._final_ids.append(u.id)
            start = self.ring.media_time(int(round(u.start * SAMPLE_RATE)))
            end = self.ring.media_time(int(round(u.end * SAMPLE_RATE)))
            event = CaptionEvent(
                id=u.id, text=u.text, final=u.final, start=start, end=end, lang=self.caption_language, pts=start
            )
            events.append(event)
            if self.on_event is not None:
                try:
                    self.on_event(event)
                except Exception:
                    log.exception("%s: caption consumer failed", self.name)
        return events

    async def finish(self) -> list[CaptionEvent]:
        """`finish_now` once no step is running."""
        async with self._guard():
            return self.finish_now()

    def finish_now(self) -> list[CaptionEvent]:
        """Close the open caption with the text it has (no model call): disable/stop paths.
        Call it from the loop when no step is running (or use `finish`)."""
        updates = self.captions.close(self.agreement.commit_all())
        self.agreement.clear_buffer()
        return self._emit(updates)

    async def flush(self) -> list[CaptionEvent]:
        """End of input: process what is left and finalise the open utterance with a model call."""
        events = await self.step()
        async with self._guard():
            if self.in_speech or self.captions.current_id is not None:
                end = self.ring.end_index
                events += await self._on_speech_end(VadEvent("end", end, end))
        return events

    async def areset(self) -> list[CaptionEvent]:
        """`reset` once no step is running; returns the final it closed, if any."""
        async with self._guard():
            return self.reset()

    def reset(self) -> list[CaptionEvent]:
        """Forget all audio and state (e.g. captions re-enabled after a while off)."""
        events = self.finish_now()
        end = self.ring.end_index
        self.ring.trim(end)
        self._vad_pos = self._buf_start = self._last_call_end = end
        if self._vad is not None:
            self._vad.reset(end)
        self.in_speech = False
        return events

    def set_language(self, language: str) -> None:
        """Takes effect at the next model call."""
        language = language or self.settings.language
        if language != self.language:
            self.language = language
            self._detected_language = None

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
        return {
            "audio_seconds": round(audio_seconds, 3),
            "chunks_processed": self.chunks_processed,
            "model_calls": self.model_calls,
            "skipped_ticks": self.skipped_ticks,
            "model_seconds": round(self.model_seconds, 3),
            "vad_seconds": round(self.vad_seconds, 3),
            "rtf": round(busy / audio_seconds, 4) if audio_seconds else 0.0,
            "lag_seconds": round(self.lag_seconds, 3),
            "max_lag_seconds": round(self.max_lag_seconds, 3),
            "buffer_seconds": round((self.ring.end_index - self._buf_start) / SAMPLE_RATE, 3),
            "dropped_audio_seconds": round(self.ring.dropped_samples / SAMPLE_RATE, 3),
            "in_speech": self.in_speech,
            "partials": self.captions.partials,
            "finals": self.captions.finals,
            "retracted_chars": self.captions.retracted_chars,
            "segments_dropped": self.segments_dropped,
            "repetitions_cut": self.repetitions_cut,
            "forced_cuts": self.forced_cuts,
            "speculative_hits": self.speculative_hits,
            "speculative_misses": self.speculative_misses,
            "bad_frames": self.bad_frames,
            "errors": self.errors,
            "last_error": self.last_error,
        }
