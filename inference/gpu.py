"""GPU memory manager: admission, pressure relief and batch-size advice from free device memory.

Reading free memory: NVML (``pynvml``, from the ``nvidia-ml-py`` package) when importable — cheap
and it also gives the device name and utilisation; otherwise ``torch.cuda.mem_get_info``. Both
imports are guarded: on a machine without either, or without a CUDA device, the manager is
*unavailable*, does nothing, admits every stream (there is no GPU memory to protect) and reports
``{"available": False, "reason": "no CUDA device"}`` (or the precise reason) in ``snapshot()``.

Thresholds (``GpuSettings``):

- ``min_free_mb``: ``can_accept_stream()`` refuses a new stream when less than this is free.
- ``pressure_free_mb``: below this the manager is *under pressure*: the watcher loop asks every
  registered model whose ``is_idle()`` says so to unload (idle first, at most once per model per
  ``unload_cooldown`` seconds), and ``recommended_batch_size(n)`` shrinks batches: half of ``n``
  under pressure, 1 when less than half of ``pressure_free_mb`` is free.
"""

from __future__ import annotations

import abc
import asyncio
import importlib.util
import inspect
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel, Field, model_validator

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MAX_REGISTERED_MODELS = 64


class GpuSettings(BaseModel):
    device_index: int = Field(0, ge=0)
    min_free_mb: int = Field(2048, ge=0)  # needed to admit a new stream
    pressure_free_mb: int = Field(1024, ge=0)  # below: unload idle models, shrink batches
    interval: float = Field(2.0, gt=0)  # watcher loop period, seconds
    unload_cooldown: float = Field(30.0, ge=0)  # don't ask the same model to unload more often

    @model_validator(mode="after")
    def _pressure_below_admission(self) -> GpuSettings:
        if self.pressure_free_mb > self.min_free_mb:
            raise ValueError("pressure_free_mb must not exceed min_free_mb")
        return self


@dataclass(frozen=True)
class MemoryReading:
    total_mb: float
    free_mb: float
    used_mb: float
    device_name: str = ""
    utilization_pct: float | None = None
    source: str = ""  # "nvml" | "torch" | a test probe's name


class MemoryProbe(abc.ABC):
    """Reads one device's memory. Implementations must be cheap and thread-safe."""

    name = "probe"

    @abc.abstractmethod
    def read(self) -> MemoryReading: ...

    def close(self) -> None:
        pass


class NvmlProbe(MemoryProbe):
    name = "nvml"

    def __init__(self, device_index: int = 0) -> None:
        import pynvml  # guarded by the caller

        self._nvml = pynvml
        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() <= device_index:
            pynvml.nvmlShutdown()
            raise RuntimeError(f"no CUDA device with index {device_index}")
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        name = pynvml.nvmlDeviceGetName(self._handle)
        self._device_name = name.decode() if isinstance(name, bytes) else str(name)

    def read(self) -> MemoryReading:
        info = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
        try:
            utilization: float | None = float(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)
        except self._nvml.NVMLError:
            utilization = None
        return MemoryReading(
            total_mb=info.total / MIB,
            free_mb=info.free / MIB,
            used_mb=info.used / MIB,
            device_name=self._device_name,
            utilization_pct=utilization,
            source=self.name,
        )

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception:  # shutting down; nothing useful to do
            pass


class TorchProbe(MemoryProbe):
    name = "torch"

    def __init__(self, device_index: int = 0) -> None:
        import torch  # guarded by the caller

        if not torch.cuda.is_available() or torch.cuda.device_count() <= device_index:
            raise RuntimeError("no CUDA device")
        self._torch = torch
        self._device = torch.device("cuda", device_index)
        self._device_name = torch.cuda.get_device_name(self._device)

    def read(self) -> MemoryReading:
        free, total = self._torch.cuda.mem_get_info(self._device)
        return MemoryReading(
            total_mb=total / MIB, free_mb=free / MIB, used_mb=(total - free) / MIB,
            device_name=self._device_name, source=self.name,
        )


def _nvidia_device_visible() -> bool:
    """Cheap check before importing anything heavy: an NVIDIA driver node or CUDA env hint."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0")


def detect_probe(device_index: int = 0) -> tuple[MemoryProbe | None, str]:
    """The best available probe, or (None, reason)."""
    if not _nvidia_device_visible():
        return None, "no CUDA device"
    reasons: list[str] = []
    if importlib.util.find_spec("pynvml") is not None:
        try:
            return NvmlProbe(device_index), ""
        except Exception as exc:  # driver/library mismatch, no device...
            reasons.append(f"nvml: {exc}")
    else:
        reasons.append("pynvml not installed (pip install nvidia-ml-py)")
    if importlib.util.find_spec("torch") is not None:
        try:
            return TorchProbe(device_index), ""
        except Exception as exc:
            reasons.append(f"torch: {exc}")
    else:
        reasons.append("torch not installed")
    return None, "no usable GPU memory probe: " + "; ".join(reasons)


UnloadCallback = Callable[[], Any]  # sync or async; returns freed MiB (or None)


@dataclass
class _ManagedModel:
    name: str
    unload: UnloadCallback
    is_idle: Callable[[], bool]
    last_unload: float = float("-inf")
    unloads: int = 0


class GpuMemoryManager:
    """One per process (per device). All methods are cheap and safe from the loop; `run` is the
    optional watcher. `probe` may be given explicitly (e.g. a fixed-reading probe in tests);
    otherwise it is detected, and `probe=False` forces the unavailable path."""

    def __init__(
        self,
        settings: GpuSettings | None = None,
        probe: MemoryProbe | None | bool = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings or GpuSettings()
        self._clock = clock
        if probe is None:
            self._probe, self.reason = detect_probe(self.settings.device_index)
        elif probe is False:
            self._probe, self.reason = None, "GPU management disabled"
        else:
            assert isinstance(probe, MemoryProbe)
            self._probe, self.reason = probe, ""
        self._lock = threading.Lock()
        self._models: dict[str, _ManagedModel] = {}
        self._last: MemoryReading | None = None
        self._last_read_at: float | None = None
        self.read_errors = 0
        self.pressure_events = 0
        self.unloads = 0
        self.refusals = 0
        if self._probe is None:
            log.info("GPU memory manager inactive: %s", self.reason)

    @property
    def available(self) -> bool:
        return self._probe is not None

    # -- readings -----------------------------------------------------------------------------

    def refresh(self) -> MemoryReading | None:
        """Read the device now (microseconds with NVML). None when unavailable or the read failed."""
        if self._probe is None:
            return None
        try:
            reading = self._probe.read()
        except Exception as exc:
            self.read_errors += 1
            log.warning("GPU memory read failed: %s", exc)
            return None
        with self._lock:
            self._last, self._last_read_at = reading, self._clock()
        return reading

    def _current(self, max_age: float = 0.5) -> MemoryReading | None:
        with self._lock:
            last, at = self._last, self._last_read_at
        if last is not None and at is not None and self._clock() - at <= max_age:
            return last
        return self.refresh()

    def under_pressure(self, reading: MemoryReading | None = None) -> bool:
        reading = reading or self._current()
        return reading is not None and reading.free_mb < self.settings.pressure_free_mb

    # -- decisions ----------------------------------------------------------------------------

    def can_accept_stream(self) -> tuple[bool, str]:
        """(accept?, reason). Without a GPU every stream is accepted (nothing to protect)."""
        if self._probe is None:
            return True, f"GPU memory not managed ({self.reason})"
        reading = self.refresh()
        if reading is None:
            return True, "GPU memory unreadable; admitting"
        if reading.free_mb < self.settings.min_free_mb:
            self.refusals += 1
            return False, (
                f"GPU {self.settings.device_index} has {reading.free_mb:.0f} MiB free, "
                f"below min_free_mb={self.settings.min_free_mb}"
            )
        return True, f"{reading.free_mb:.0f} MiB free"

    def recommended_batch_size(self, requested: int) -> int:
        """`requested`, or a smaller batch while memory is short (never below 1)."""
        requested = max(1, int(requested))
        reading = self._current()
        if reading is None or reading.free_mb >= self.settings.pressure_free_mb:
            return requested
        if reading.free_mb < self.settings.pressure_free_mb / 2:
            return 1
        return max(1, requested // 2)

    # -- model registry and pressure relief --------------------------------------------------------

    def register_model(self, name: str, unload: UnloadCallback, is_idle: Callable[[], bool] = lambda: True) -> None:
        """A model that can give its device memory back. `unload` may be sync (run in a thread) or
        async; `is_idle` says whether unloading now would not interrupt work."""
        with self._lock:
            if name not in self._models and len(self._models) >= MAX_REGISTERED_MODELS:
                raise RuntimeError(f"too many GPU models registered (max {MAX_REGISTERED_MODELS})")
            self._models[name] = _ManagedModel(name, unload, is_idle)

    def unregister_model(self, name: str) -> None:
        with self._lock:
            self._models.pop(name, None)

    async def relieve_pressure(self) -> list[str]:
        """When under pressure, ask idle registered models to unload. Returns the names unloaded."""
        reading = self.refresh()
        if reading is None or reading.free_mb >= self.settings.pressure_free_mb:
            return []
        self.pressure_events += 1
        log.warning(
            "GPU memory pressure: %.0f MiB free < %d MiB; unloading idle models",
            reading.free_mb, self.settings.pressure_free_mb,
        )
        now = self._clock()
        with self._lock:
            candidates = [m for m in self._models.values() if now - m.last_unload >= self.settings.unload_cooldown]
        unloaded: list[str] = []
        for model in candidates:
            try:
                if not model.is_idle():
                    continue
                model.last_unload = now
                result = model.unload()
                if inspect.isawaitable(result):
                    await result
                model.unloads += 1
                self.unloads += 1
                unloaded.append(model.name)
            except Exception:
                log.exception("unloading GPU model %s failed", model.name)
            reading = self.refresh()
            if reading is not None and reading.free_mb >= self.settings.pressure_free_mb:
                break  # enough memory back; keep the rest loaded
        return unloaded

    async def run(self, interval: float | None = None) -> None:
        """Watcher loop: read memory every `interval` seconds and relieve pressure. Returns at once
        when unavailable; cancel the task to stop it."""
        if self._probe is None:
            return
        period = interval or self.settings.interval
        while True:
            try:
                await self.relieve_pressure()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bad callback must not end the watcher
                log.exception("GPU memory watcher step failed")
            await asyncio.sleep(period)

    # -- reporting ----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """For /health and /metrics."""
        if self._probe is None:
            return {"available": False, "reason": self.reason}
        reading = self._current()
        out: dict[str, Any] = {
            "available": True,
            "device_index": self.settings.device_index,
            "min_free_mb": self.settings.min_free_mb,
            "pressure_free_mb": self.settings.pressure_free_mb,
            "read_errors": self.read_errors,
            "pressure_events": self.pressure_events,
            "unloads": self.unloads,
            "refusals": self.refusals,
            "models": sorted(self._models),
        }
        if reading is None:
            out["reason"] = "memory reading failed"
            return out
        out.update({k: (round(v, 1) if isinstance(v, float) else v) for k, v in asdict(reading).items()})
        out["under_pressure"] = reading.free_mb < self.settings.pressure_free_mb
        out["accepting_streams"] = reading.free_mb >= self.settings.min_free_mb
        return out

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()


__all__ = [
    "GpuMemoryManager",
    "GpuSettings",
    "MemoryProbe",
    "MemoryReading",
    "NvmlProbe",
    "TorchProbe",
    "detect_probe",
]
