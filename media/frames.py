"""Frames as they move through a stream, and the bounded queues between threads.

Video queues keep the newest frames: when a consumer falls behind, the oldest frame is dropped and
counted, so latency never grows. Both queues are safe to use from threads and from the loop.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import av
import numpy as np
from av.video.reformatter import VideoReformatter

T = TypeVar("T")


@dataclass
class VideoItem:
    """A decoded video frame plus the bookkeeping the pipeline needs.

    `media_time` is the frame's time in seconds on the stream's timeline (source pts relative to
    the stream's first timestamp); `ingest_time` is `time.perf_counter()` when it was decoded."""

    frame: av.VideoFrame
    media_time: float
    ingest_time: float = field(default_factory=time.perf_counter)
    seq: int = 0


@dataclass
class AudioItem:
    frame: av.AudioFrame
    media_time: float
    ingest_time: float = field(default_factory=time.perf_counter)


class DropOldestQueue(Generic[T]):
    """A thread-safe bounded FIFO that drops its oldest item when full (and counts it).

    `get` blocks up to `timeout`; `close` wakes every waiter, after which `get` returns None once
    the queue is drained."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.maxsize = maxsize
        self._items: deque[T] = deque(maxlen=maxsize)
        self._cond = threading.Condition()
        self._closed = False
        self.put_count = 0
        self.dropped = 0

    def put(self, item: T) -> bool:
        """Add `item`; returns False when an older item had to be dropped to make room."""
        with self._cond:
            if self._closed:
                return True
            dropped = len(self._items) >= self.maxsize
            if dropped:
                self.dropped += 1
            self._items.append(item)  # deque(maxlen) evicts the oldest
            self.put_count += 1
            self._cond.notify()
            return not dropped

    def get(self, timeout: float | None = None) -> T | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items:
                if self._closed:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return self._items.popleft()

    def get_latest(self, timeout: float | None = None) -> T | None:
        """Take the newest item and discard (and count) everything older."""
        item = self.get(timeout)
        if item is None:
            return None
        with self._cond:
            while self._items:
                self.dropped += 1
                item = self._items.popleft()
        return item

    def clear(self) -> None:
        with self._cond:
            self._items.clear()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._items)


class LatestSlot(Generic[T]):
    """Holds only the newest value (a queue of one, drop-oldest), e.g. the frame a vision sampler
    will look at next. Reading does not consume."""

    def __init__(self) -> None:
        self._value: T | None = None
        self._lock = threading.Lock()
        self.version = 0

    def set(self, value: T) -> None:
        with self._lock:
            self._value = value
            self.version += 1

    def get(self) -> tuple[T | None, int]:
        with self._lock:
            return self._value, self.version


# -- conversions ----------------------------------------------------------------------------------

# PyAV's `frame.reformat()` / `frame.to_ndarray(format=...)` build a new swscale context for each
# new frame, and swscale starts its slice threads with every context: a conversion per frame meant
# two threads created and torn down each time (the server's thread count never settled) and about
# 0.6 ms more per 720p frame than reusing a context (measured on this machine). One reformatter per
# thread keeps its context, and its threads, while the geometry stays the same.
_REFORMATTERS = threading.local()


def reformat(frame: av.VideoFrame, format: str, width: int | None = None, height: int | None = None) -> av.VideoFrame:
    """`frame` converted (and scaled when `width`/`height` differ) by this thread's reformatter;
    always a new frame, never a view of an earlier result."""
    reformatter = getattr(_REFORMATTERS, "reformatter", None)
    if reformatter is None:
        reformatter = _REFORMATTERS.reformatter = VideoReformatter()
    return reformatter.reformat(frame, format=format, width=width, height=height)


def rgb_array(frame: av.VideoFrame, width: int | None = None, height: int | None = None) -> np.ndarray:
    """The frame as an RGB uint8 (h, w, 3) array, scaled to `width` x `height` when given."""
    return reformat(frame, "rgb24", width, height).to_ndarray()


# -- frame geometry: any size from 16x16 up, odd or even ------------------------------------------


def plane_array(plane: av.video.plane.VideoPlane) -> np.ndarray:
    """A writable (rows, width) uint8 view of one plane of a planar 8-bit frame, skipping the
    line padding. Works for odd sizes, where PyAV's `to_ndarray` refuses yuv420p."""
    # memoryview: numpy's stubs do not take a bare buffer-protocol object; the view stays writable
    rows: np.ndarray = np.frombuffer(memoryview(plane), dtype=np.uint8).reshape(-1, plane.line_size)
    return rows[: plane.height, : plane.width]


def copy_i420(frame: av.VideoFrame, width: int | None = None, height: int | None = None) -> av.VideoFrame:
    """A private yuv420p copy of `frame`, optionally cropped to its top-left `width` x `height`
    (nothing is scaled). `frame` is converted to yuv420p first if it is in another format."""
    if frame.format.name != "yuv420p":
        frame = reformat(frame, "yuv420p")
    width = frame.width if width is None else min(width, frame.width)
    height = frame.height if height is None else min(height, frame.height)
    out = av.VideoFrame(width, height, "yuv420p")
    for source, target in zip(frame.planes, out.planes):
        dst = plane_array(target)
        dst[:] = plane_array(source)[: dst.shape[0], : dst.shape[1]]
    out.pts = frame.pts
    if frame.time_base is not None:
        out.time_base = frame.time_base
    return out


def even_size(width: int, height: int) -> tuple[int, int]:
    """The largest even size within `width` x `height` (H.264 and VP8 encode 4:2:0 in 2x2 blocks)."""
    return width - width % 2, height - height % 2


def crop_to_even(frame: av.VideoFrame) -> av.VideoFrame:
    """`frame` itself when its size is even (and yuv420p), else a copy without the odd last
    column/row: an encoder crops one pixel rather than rescaling the whole picture."""
    width, height = even_size(frame.width, frame.height)
    if (width, height) == (frame.width, frame.height) and frame.format.name == "yuv420p":
        return frame
    return copy_i420(frame, width, height)
