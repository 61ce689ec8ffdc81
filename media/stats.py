"""Small, bounded measurement helpers: frame-rate meters and latency percentiles."""

from __future__ import annotations

import threading
import time
from collections import deque


class RateMeter:
    """Events per second over a sliding window (default 2 s), safe from any thread."""

    def __init__(self, window: float = 2.0, max_events: int = 2048) -> None:
        self.window = window
        self._times: deque[float] = deque(maxlen=max_events)
        self._lock = threading.Lock()
        self.count = 0
        self.last_time: float | None = None

    def mark(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._times.append(now)
            self.count += 1
            self.last_time = now

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._times and now - self._times[0] > self.window:
                self._times.popleft()
            n = len(self._times)
        return n / self.window if n else 0.0

    def idle_for(self, now: float | None = None) -> float | None:
        """Seconds since the last event, or None if there never was one."""
        if self.last_time is None:
            return None
        now = time.monotonic() if now is None else now
        return now - self.last_time


class LatencyWindow:
    """The last N samples (seconds); percentiles computed on demand."""

    def __init__(self, size: int = 512) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()
        self.count = 0

    def add(self, value: float) -> None:
        with self._lock:
            self._samples.append(value)
            self.count += 1

    def percentile(self, q: float) -> float | None:
        with self._lock:
            data = sorted(self._samples)
        if not data:
            return None
        index = min(len(data) - 1, max(0, round(q / 100 * (len(data) - 1))))
        return data[index]

    def summary_ms(self) -> dict[str, float | None]:
        p50, p95 = self.percentile(50), self.percentile(95)
        return {
            "p50": None if p50 is None else round(p50 * 1000, 2),
            "p95": None if p95 is None else round(p95 * 1000, 2),
        }
