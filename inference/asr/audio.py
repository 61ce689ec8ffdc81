"""Audio for ASR: any decoded frame → 16 kHz mono float32, kept in a bounded ring.

`Resampler16k.convert` runs on the decode thread (it only resamples with libswresample and copies);
`AudioRing` is the hand-off between that thread and the transcriber: a fixed-capacity buffer
addressed by absolute sample indices on the stream's 16 kHz timeline, so readers never have to
care what was trimmed or dropped before them. It also maps sample indices back to the stream's
media time (the `AudioItem.media_time` of the samples), so captions line up with the video even
when the source skipped or jumped.
"""

from __future__ import annotations

import bisect
import threading
from collections import deque

import av
import numpy as np

SAMPLE_RATE = 16000


class Resampler16k:
    """Converts `av.AudioFrame`s of any format/layout/rate to 16 kHz mono float32 samples
    (the mean of the channels).

    One instance per stream (libswresample keeps filter state between frames); it is rebuilt when
    the input format changes mid-stream."""

    def __init__(self) -> None:
        self._resampler: av.AudioResampler | None = None
        self._input_key: tuple[str, str, int] | None = None

    def convert(self, frame: av.AudioFrame) -> np.ndarray:
        key = (frame.format.name, frame.layout.name, int(frame.sample_rate))
        if key != self._input_key:
            # keep the channel layout and average the channels ourselves: libswresample's
            # stereo→mono matrix adds +3 dB (L+R at -3 dB each), which can push speech past 1.0
            self._resampler = av.AudioResampler(format="fltp", layout=frame.layout.name, rate=SAMPLE_RATE)
            self._input_key = key
        assert self._resampler is not None
        chunks = [out.to_ndarray() for out in self._resampler.resample(frame)]  # (channels, n) each
        if not chunks:
            return np.zeros(0, dtype=np.float32)
        planes = chunks[0] if len(chunks) == 1 else np.concatenate(chunks, axis=1)
        mono = planes[0] if planes.shape[0] == 1 else planes.mean(axis=0)
        return np.ascontiguousarray(mono, dtype=np.float32)


class AudioRing:
    """Bounded, thread-safe buffer of 16 kHz mono float32 samples with absolute indices.

    `append` (producer thread) adds samples; when capacity is exceeded the oldest samples are
    dropped and counted. `read`/`trim` (consumer) address samples by absolute index: index 0 is the
    first sample ever appended. Media times are tracked with a bounded list of anchors
    (index, media_time) added whenever the source's timestamps stop following the sample count."""

    # timestamps within this distance of the sample count are jitter, not a jump
    JUMP_TOLERANCE_S = 0.2

    def __init__(self, max_seconds: float, sample_rate: int = SAMPLE_RATE) -> None:
        self.sample_rate = sample_rate
        self.capacity = max(1, int(max_seconds * sample_rate))
        # twice the capacity so appends compact the buffer only once per `capacity` samples
        self._data = np.zeros(2 * self.capacity, dtype=np.float32)
        self._offset = 0  # position of the oldest kept sample in _data
        self._length = 0
        self._start = 0  # absolute index of the oldest kept sample
        self._lock = threading.Lock()
        self._anchor_index: deque[int] = deque(maxlen=256)
        self._anchor_time: deque[float] = deque(maxlen=256)
        self.dropped_samples = 0  # overflow: oldest audio discarded before it was consumed
        self.appended_samples = 0
        self.jumps = 0

    # -- producer -----------------------------------------------------------------------------

    def append(self, samples: np.ndarray, media_time: float | None = None) -> None:
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        with self._lock:
            end = self._start + self._length
            if media_time is not None:
                self._anchor(end, media_time)
            n = len(samples)
            if n == 0:
                return
            if n >= self.capacity:  # larger than the whole ring: keep the newest part
                skip = n - self.capacity
                self._drop(self._length)
                self._start += skip
                self.dropped_samples += skip
                samples = samples[skip:]
                n = len(samples)
            overflow = self._length + n - self.capacity
            if overflow > 0:
                self.dropped_samples += overflow
                self._drop(overflow)
            if self._offset + self._length + n > len(self._data):
                self._data[: self._length] = self._data[self._offset : self._offset + self._length]
                self._offset = 0
            pos = self._offset + self._length
            self._data[pos : pos + n] = samples
            self._length += n
            self.appended_samples += n

    def _anchor(self, index: int, media_time: float) -> None:
        if self._anchor_index:
            expected = self._anchor_time[-1] + (index - self._anchor_index[-1]) / self.sample_rate
            if abs(media_time - expected) <= self.JUMP_TOLERANCE_S:
                return
            self.jumps += 1
        self._anchor_index.append(index)
        self._anchor_time.append(float(media_time))

    def _drop(self, count: int) -> None:
        count = min(count, self._length)
        self._offset += count
        self._length -= count
        self._start += count

    # -- consumer -----------------------------------------------------------------------------

    @property
    def start_index(self) -> int:
        with self._lock:
            return self._start

    @property
    def end_index(self) -> int:
        with self._lock:
            return self._start + self._length

    def __len__(self) -> int:
        return self._length

    def read(self, start: int, end: int | None = None) -> np.ndarray:
        """A copy of samples [start, end) (clipped to what the ring still holds)."""
        with self._lock:
            lo = max(start, self._start)
            hi = self._start + self._length if end is None else min(end, self._start + self._length)
            if hi <= lo:
                return np.zeros(0, dtype=np.float32)
            a = self._offset + (lo - self._start)
            return self._data[a : a + (hi - lo)].copy()

    def trim(self, index: int) -> None:
        """Forget samples before absolute `index` (consumed or not needed any more)."""
        with self._lock:
            if index > self._start:
                self._drop(index - self._start)

    def media_time(self, index: int) -> float:
        """Media time (seconds) of absolute sample `index`."""
        with self._lock:
            if not self._anchor_index:
                return index / self.sample_rate
            i = bisect.bisect_right(self._anchor_index, index) - 1
            i = max(i, 0)  # before the oldest anchor kept: extrapolate backwards from it
            return self._anchor_time[i] + (index - self._anchor_index[i]) / self.sample_rate

    def clear(self) -> None:
        with self._lock:
            self._drop(self._length)
