"""Streaming voice activity detection with the Silero model bundled in faster-whisper.

faster-whisper ships `assets/silero_vad_v6.onnx` (no download) and a batch helper that scores a
whole clip. Live audio arrives a few frames at a time, so this wrapper keeps the model's LSTM state
(`h`, `c`) and the 64-sample context between calls and scores every 512-sample window (32 ms at
16 kHz) exactly once. A small state machine in the spirit of Silero's VADIterator turns the
probabilities into `start` / `end` events: speech starts at the first window above `threshold`
and ends after `min_silence_ms` below `threshold - 0.15`.

The ONNX session is process-wide (onnxruntime sessions are thread-safe); the state is per
stream, and one stream's `process` calls must not overlap (the transcriber runs them serially).
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
WINDOW = 512  # samples per Silero window at 16 kHz
CONTEXT = 64  # samples of the previous window the model sees in front of each window
RECENT_WINDOWS = 1000

# VAD is cheap (~0.1 ms per window) but still model work: keep it off the event loop, in a small
# shared pool. Each stream has at most one call in flight, so the pool's queue is bounded by the
# number of streams.
_vad_executor: ThreadPoolExecutor | None = None


def vad_executor() -> ThreadPoolExecutor:
    global _vad_executor
    if _vad_executor is None:
        _vad_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="asr-vad")
    return _vad_executor


def _silero_session():
    from faster_whisper.vad import get_vad_model  # cached: one session per process

    return get_vad_model().session


@dataclass(frozen=True)
class VadEvent:
    kind: str  # "start" | "end"
    index: int  # sample index on the stream's 16 kHz timeline: speech start, or end of speech
    detected_at: int  # sample index at which the event became known (end: after the silence)


class StreamingVad:
    """Incremental Silero VAD over a 16 kHz mono float32 stream."""

    def __init__(
        self,
        threshold: float = 0.5,
        min_silence_ms: int = 500,
        neg_threshold: float | None = None,
        start_index: int = 0,
    ) -> None:
        self.threshold = threshold
        self.neg_threshold = neg_threshold if neg_threshold is not None else max(threshold - 0.15, 0.01)
        self.min_silence_samples = int(min_silence_ms * SAMPLE_RATE / 1000)
        self._session = _silero_session()
        self.reset(start_index)

    def reset(self, start_index: int = 0) -> None:
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self._next_index = start_index  # stream index of the first sample of `_pending`
        self.triggered = False
        self._temp_end = 0
        self.windows = 0
        self.last_probability = 0.0
        # (window start index, probability) of the last ~32 s: where long speech may be cut
        self.recent: deque[tuple[int, float]] = deque(maxlen=RECENT_WINDOWS)

    @property
    def position(self) -> int:
        """Stream index up to which audio has been handed to `process`."""
        return self._next_index + len(self._pending)

    def probabilities(self, samples: np.ndarray) -> np.ndarray:
        """Score the complete windows in `samples` (plus what was left over last time); keeps
        the remainder for the next call. Returns one probability per window."""
        data = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32)])
        count = len(data) // WINDOW
        self._pending = data[count * WINDOW :].copy()
        if count == 0:
            return np.zeros(0, dtype=np.float32)
        windows = data[: count * WINDOW].reshape(count, WINDOW)
        # each row = the previous window's last 64 samples followed by this window
        contexts = np.empty((count, CONTEXT), dtype=np.float32)
        contexts[0] = self._context
        if count > 1:
            contexts[1:] = windows[:-1, -CONTEXT:]
        batch = np.concatenate([contexts, windows], axis=1)
        probs, self._h, self._c = self._session.run(None, {"input": batch, "h": self._h, "c": self._c})
        self._context = windows[-1, -CONTEXT:].copy()
        self.windows += count
        return np.asarray(probs, dtype=np.float32).reshape(-1)

    def process(self, samples: np.ndarray) -> list[VadEvent]:
        """Feed the next samples of the stream; returns the speech starts/ends they complete."""
        first_window_index = self._next_index
        probs = self.probabilities(samples)
        self._next_index = first_window_index + len(probs) * WINDOW
        events: list[VadEvent] = []
        for i, p in enumerate(probs):
            index = first_window_index + i * WINDOW
            self.last_probability = float(p)
            self.recent.append((index, self.last_probability))
            if p >= self.threshold:
                self._temp_end = 0
                if not self.triggered:
                    self.triggered = True
                    events.append(VadEvent("start", index, index + WINDOW))
                continue
            if self.triggered and p < self.neg_threshold:
                if not self._temp_end:
                    self._temp_end = index
                if index + WINDOW - self._temp_end >= self.min_silence_samples:
                    events.append(VadEvent("end", self._temp_end, index + WINDOW))
                    self.triggered = False
                    self._temp_end = 0
        return events
