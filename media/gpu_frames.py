"""Decoded frames on the GPU: upload each frame once, share it between GPU stages.

When CUDA is present (torch importable and a CUDA device visible), a `GpuFrameUploader` takes
`VideoItem`s from the decode thread without blocking (a two-slot drop-oldest inbox), and a worker
thread uploads each one:

- yuv420p frames (what decoders give) are copied as raw planes and converted to RGB on the GPU
  (BT.601 limited range, the same matrix swscale uses for ``to_ndarray(format="rgb24")``), so the
  CPU never runs a colour conversion; other formats are converted to rgb24 on the CPU first;
- the copy goes through a **reused pinned host buffer** (a small ring, so the next frame never
  overwrites a buffer whose DMA is still running), as a ``non_blocking=True`` copy on a dedicated
  CUDA stream, and a CUDA event marks when the frame is ready;
- the result, a ``GpuFrame`` holding an ``(H, W, 3) uint8`` RGB CUDA tensor, goes into a bounded
  `GpuFrameQueue` (drop-oldest, drops counted) that every GPU stage reads.

A consumer calls ``GpuFrame.wait()`` on its own stream before using the tensor (orders its work
after the copy and tells the caching allocator the tensor is used there).

Without CUDA, ``available()`` is False and nothing here imports torch: the CPU path never pays for
it. This module lives in `media`, so it imports nothing from `inference` or `server`.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np

from media.cuda import nvidia_device_visible
from media.frames import DropOldestQueue, VideoItem, rgb_array

log = logging.getLogger(__name__)

_available_cache: bool | None = None
_available_reason = ""


def available() -> bool:
    """True when frames can be uploaded: torch is installed and sees a CUDA device. Checks the
    cheap things first (driver node, package presence) so a CPU-only machine never imports torch."""
    global _available_cache, _available_reason
    if _available_cache is not None:
        return _available_cache
    if not nvidia_device_visible():
        _available_cache, _available_reason = False, "no CUDA device"
    elif importlib.util.find_spec("torch") is None:
        _available_cache, _available_reason = False, "torch not installed"
    else:
        import torch

        ok = bool(torch.cuda.is_available())
        _available_cache, _available_reason = ok, "" if ok else "torch sees no CUDA device"
    return _available_cache


def unavailable_reason() -> str:
    available()
    return _available_reason


@dataclass
class GpuFrame:
    """One frame on the GPU. `tensor`: torch uint8 (H, W, 3) RGB on `tensor.device`; `ready`: the
    CUDA event recorded after the upload (and colour conversion)."""

    tensor: Any
    media_time: float
    seq: int
    ingest_time: float
    ready: Any
    width: int
    height: int
    uploaded_at: float = field(default_factory=time.perf_counter)

    def wait(self, stream: Any = None) -> Any:
        """Make `stream` (default: the current stream) wait for the upload; returns the tensor."""
        import torch

        stream = stream or torch.cuda.current_stream(self.tensor.device)
        stream.wait_event(self.ready)
        self.tensor.record_stream(stream)  # the allocator must not reuse it while `stream` works
        return self.tensor


class GpuFrameQueue:
    """Bounded drop-oldest queue of `GpuFrame`s shared by GPU stages, plus the newest frame for
    samplers that only want "the latest" (e.g. vision). Thread-safe; works without CUDA too (it
    only holds references), which keeps it testable anywhere."""

    def __init__(self, maxsize: int = 4) -> None:
        self._queue: DropOldestQueue[GpuFrame] = DropOldestQueue(maxsize)
        self._latest: GpuFrame | None = None
        self._lock = threading.Lock()

    def put(self, frame: GpuFrame) -> bool:
        with self._lock:
            self._latest = frame
        return self._queue.put(frame)

    def get(self, timeout: float | None = None) -> GpuFrame | None:
        return self._queue.get(timeout)

    def get_latest(self, timeout: float | None = None) -> GpuFrame | None:
        """The newest queued frame; older ones are discarded (and counted as drops)."""
        return self._queue.get_latest(timeout)

    def latest(self) -> GpuFrame | None:
        """The newest frame ever put, without consuming anything."""
        with self._lock:
            return self._latest

    def close(self) -> None:
        self._queue.close()
        with self._lock:
            self._latest = None

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def dropped(self) -> int:
        return self._queue.dropped

    def stats(self) -> dict[str, Any]:
        return {
            "queued": len(self._queue),
            "maxsize": self._queue.maxsize,
            "put": self._queue.put_count,
            "dropped": self.dropped,
        }


class _PinnedSlot:
    __slots__ = ("host", "event")

    def __init__(self, host: Any) -> None:
        self.host = host
        self.event: Any = None


class GpuFrameUploader:
    """Uploads frames to one CUDA device on its own thread. `offer` never blocks (decode thread);
    `upload` is the synchronous core, usable directly by code that already runs in a worker."""

    def __init__(
        self, queue: GpuFrameQueue, device_index: int = 0, inbox_size: int = 2, pinned_buffers: int = 2
    ) -> None:
        if not available():
            raise RuntimeError(f"GPU frame upload unavailable: {unavailable_reason()}")
        import torch

        self._torch = torch
        self.device = torch.device("cuda", device_index)
        self.queue = queue
        self._stream = torch.cuda.Stream(device=self.device)
        self._pinned_count = max(2, pinned_buffers)
        self._pinned: list[_PinnedSlot] = []
        self._pinned_shape: tuple[int, ...] | None = None
        self._next_slot = 0
        self._inbox: DropOldestQueue[VideoItem] = DropOldestQueue(inbox_size)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.uploaded = 0
        self.errors = 0
        self.gpu_converted = 0
        self.cpu_converted = 0

    # -- decode-thread side ------------------------------------------------------------------------

    def offer(self, item: VideoItem) -> None:
        """Queue a frame for upload; drops the oldest pending one when the worker is behind."""
        self._inbox.put(item)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._worker, name="gpu-frame-upload", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._inbox.close()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _worker(self) -> None:
        self._torch.cuda.set_device(self.device)
        while not self._stop.is_set():
            item = self._inbox.get(timeout=0.5)
            if item is None:
                if self._inbox.closed:
                    return
                continue
            try:
                self.queue.put(self.upload(item.frame, item.media_time, item.seq, item.ingest_time))
            except Exception:  # one bad frame must not end the uploader
                self.errors += 1
                log.exception("GPU frame upload failed")

    # -- the upload itself -------------------------------------------------------------------------

    def _slot(self, shape: tuple[int, ...]) -> _PinnedSlot:
        if shape != self._pinned_shape:
            for slot in self._pinned:  # let in-flight copies from the old buffers finish
                if slot.event is not None:
                    slot.event.synchronize()
            self._pinned = [
                _PinnedSlot(self._torch.empty(shape, dtype=self._torch.uint8, pin_memory=True))
                for _ in range(self._pinned_count)
            ]
            self._pinned_shape = shape
            self._next_slot = 0
        slot = self._pinned[self._next_slot]
        self._next_slot = (self._next_slot + 1) % len(self._pinned)
        if slot.event is not None:
            slot.event.synchronize()  # its previous DMA must be done before we overwrite it
        return slot

    def upload(
        self, frame: av.VideoFrame | np.ndarray, media_time: float = 0.0, seq: int = 0, ingest_time: float | None = None
    ) -> GpuFrame:
        torch = self._torch
        yuv: av.VideoFrame | None = None  # the frame, when it goes up as planar YUV for the GPU to convert
        if (
            isinstance(frame, av.VideoFrame)
            and frame.format.name in ("yuv420p", "yuvj420p")
            and frame.width % 2 == 0
            and frame.height % 2 == 0
        ):
            yuv = frame
        host_array: np.ndarray
        if yuv is not None:
            width, height = yuv.width, yuv.height
            host_array = yuv.to_ndarray().reshape(-1)  # Y, U, V planes back to back
        else:
            host_array = rgb_array(frame) if isinstance(frame, av.VideoFrame) else frame
            if host_array.ndim != 3 or host_array.shape[2] != 3 or host_array.dtype != np.uint8:
                raise ValueError(f"expected RGB uint8 (h, w, 3), got {host_array.dtype} {host_array.shape}")
            height, width = host_array.shape[:2]
        slot = self._slot(tuple(host_array.shape))
        slot.host.numpy()[...] = host_array
        with torch.cuda.stream(self._stream):
            device_copy = torch.empty(tuple(host_array.shape), dtype=torch.uint8, device=self.device)
            device_copy.copy_(slot.host, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(self._stream)
            slot.event = copied
            if yuv is not None:
                rgb = yuv420p_to_rgb(device_copy, width, height, limited_range=yuv.format.name == "yuv420p")
                self.gpu_converted += 1
            else:
                rgb = device_copy
                self.cpu_converted += 1
            ready = torch.cuda.Event()
            ready.record(self._stream)
        self.uploaded += 1
        return GpuFrame(
            tensor=rgb,
            media_time=media_time,
            seq=seq,
            ingest_time=time.perf_counter() if ingest_time is None else ingest_time,
            ready=ready,
            width=width,
            height=height,
        )

    def stats(self) -> dict[str, Any]:
        return {
            "device": str(self.device),
            "uploaded": self.uploaded,
            "errors": self.errors,
            "gpu_color_converted": self.gpu_converted,
            "cpu_color_converted": self.cpu_converted,
            "inbox_dropped": self._inbox.dropped,
            "queue": self.queue.stats(),
        }


def yuv420p_to_rgb(flat: Any, width: int, height: int, limited_range: bool = True) -> Any:
    """Planar 4:2:0 (a flat uint8 CUDA tensor: Y, then U, then V) -> (H, W, 3) uint8 RGB, on the GPU.
    BT.601 matrix; `limited_range` for yuv420p (16-235), full range for yuvj420p."""
    import torch

    luma_size = width * height
    chroma_size = luma_size // 4
    y = flat[:luma_size].view(height, width).float()
    u = flat[luma_size : luma_size + chroma_size].view(height // 2, width // 2).float() - 128.0
    v = flat[luma_size + chroma_size : luma_size + 2 * chroma_size].view(height // 2, width // 2).float() - 128.0
    u = u.repeat_interleave(2, dim=0).repeat_interleave(2, dim=1)
    v = v.repeat_interleave(2, dim=0).repeat_interleave(2, dim=1)
    if limited_range:
        c = (y - 16.0) * 1.164383
        r = c + 1.596027 * v
        g = c - 0.391762 * u - 0.812968 * v
        b = c + 2.017232 * u
    else:
        r = y + 1.402 * v
        g = y - 0.344136 * u - 0.714136 * v
        b = y + 1.772 * u
    return torch.stack((r, g, b), dim=-1).round_().clamp_(0, 255).to(torch.uint8)
