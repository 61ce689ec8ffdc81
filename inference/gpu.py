"""GPU memory manager: stream admission and pressure relief from free device memory.

Reading free memory: NVML (``pynvml``, from the ``nvidia-ml-py`` package) when importable — cheap
and it also gives the device name and utilisation; otherwise ``torch.cuda.mem_get_info``. Both
imports are guarded: on a machine without either, or without a CUDA device, the manager is
*unavailable*, does nothing, admits every stream (there is no GPU memory to protect) and reports
``{"available": False, "reason": "no CUDA device"}`` (or the precise reason) in ``snapshot()``.

Thresholds (``GpuSettings``, environment ``GPU_*``):

- ``min_free_mb``: ``can_accept_stream()`` refuses a new stream when less than this is free.
- ``pressure_free_mb``: below this the manager is *under pressure*: the watcher loop asks every
  tracked model that is really loaded, can be unloaded and is idle to unload (at most once per
  model per ``unload_cooldown`` seconds), until enough memory is back.

What it tracks is what the server really loads (wired in ``server.features.install_gpu``): the
TensorRT vision engine (unloadable: it is rebuilt on its next use) and the speech model pool
(tracked and reported, never unloaded: every live caption stream shares it). Every decision —
an unload, a model kept because it is busy or pinned, a refused stream — is logged and kept in a
short history that ``snapshot()`` (``/health`` → ``details.gpu``) shows.
"""

from __future__ import annotations

import abc
import asyncio
import importlib.util
import inspect
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from media.cuda import nvidia_device_visible

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MAX_REGISTERED_MODELS = 64
MAX_DECISIONS = 32  # recent decisions kept for /health


class GpuSettings(BaseSettings):
    """GPU memory management; environment variables GPU_DEVICE_INDEX, GPU_MIN_FREE_MB,
    GPU_PRESSURE_FREE_MB, GPU_WATCH_INTERVAL, GPU_UNLOAD_COOLDOWN."""

    model_config = SettingsConfigDict(env_prefix="GPU_", extra="ignore")

    device_index: int = Field(0, ge=0, description="CUDA device the manager watches")
    min_free_mb: int = Field(2048, ge=0, description="free MiB needed to admit a new stream")
    pressure_free_mb: int = Field(1024, ge=0, description="below this many free MiB, idle models are unloaded")
    watch_interval: float = Field(2.0, gt=0, description="seconds between memory readings of the watcher")
    unload_cooldown: float = Field(30.0, ge=0, description="seconds before the same model is asked to unload again")

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
            total_mb=total / MIB,
            free_mb=free / MIB,
            used_mb=(total - free) / MIB,
            device_name=self._device_name,
            source=self.name,
        )


def detect_probe(device_index: int = 0) -> tuple[MemoryProbe | None, str]:
    """The best available probe, or (None, reason)."""
    if not nvidia_device_visible():
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


UnloadCallback = Callable[[], Any]  # sync or async


@dataclass
class _ManagedModel:
    name: str
    loaded: Callable[[], bool]
    unload: UnloadCallback | None  # None: pinned (reported, never unloaded)
    is_idle: Callable[[], bool]
    pinned_reason: str = ""
    last_unload: float = float("-inf")
    last_kept: float = float("-inf")  # "kept" decisions are recorded once per cooldown, not per tick
    unloads: int = 0

    def describe(self) -> dict[str, Any]:
        try:
            loaded = bool(self.loaded())
        except Exception:
            loaded = False
        entry: dict[str, Any] = {
            "name": self.name,
            "loaded": loaded,
            "unloadable": self.unload is not None,
            "unloads": self.unloads,
        }
        if self.unload is None:
            entry["pinned"] = self.pinned_reason
        return entry


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
        self.decisions: deque[dict[str, Any]] = deque(maxlen=MAX_DECISIONS)
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
            reason = (
                f"GPU {self.settings.device_index} has {reading.free_mb:.0f} MiB free, "
                f"below min_free_mb={self.settings.min_free_mb}"
            )
            self._decide("refuse_stream", "", reading.free_mb, reason)
            return False, reason
        return True, f"{reading.free_mb:.0f} MiB free"

    # -- model registry and pressure relief --------------------------------------------------------

    def track_model(
        self,
        name: str,
        loaded: Callable[[], bool],
        unload: UnloadCallback | None = None,
        is_idle: Callable[[], bool] = lambda: True,
        pinned_reason: str = "",
    ) -> None:
        """Track a model the server loads on this device. `loaded` says whether it holds device
        memory now; `unload` (sync, run in a thread, or async) gives it back — None pins the model
        (it is reported with `pinned_reason`, never unloaded); `is_idle` says whether unloading now
        would not interrupt work."""
        with self._lock:
            if name not in self._models and len(self._models) >= MAX_REGISTERED_MODELS:
                raise RuntimeError(f"too many GPU models tracked (max {MAX_REGISTERED_MODELS})")
            self._models[name] = _ManagedModel(name, loaded, unload, is_idle, pinned_reason)

    def _decide(self, action: str, model: str, free_mb: float, detail: str) -> None:
        entry = {
            "time": round(time.time(), 3),
            "action": action,
            "model": model,
            "free_mb": round(free_mb, 1),
            "detail": detail,
        }
        self.decisions.append(entry)
        log.warning("GPU memory decision: %s %s (%.0f MiB free): %s", action, model or "-", free_mb, detail)

    async def relieve_pressure(self) -> list[str]:
        """When under pressure, unload idle loaded models that can be unloaded. Returns their names."""
        reading = self.refresh()
        if reading is None or reading.free_mb >= self.settings.pressure_free_mb:
            return []
        self.pressure_events += 1
        log.warning("GPU memory pressure: %.0f MiB free < %d MiB", reading.free_mb, self.settings.pressure_free_mb)
        now = self._clock()
        with self._lock:
            models = list(self._models.values())
        unloaded: list[str] = []
        for model in models:
            try:
                if not model.loaded():
                    continue
                if model.unload is None or not model.is_idle():
                    if now - model.last_kept >= self.settings.unload_cooldown:
                        model.last_kept = now
                        why = f"pinned: {model.pinned_reason}" if model.unload is None else "busy"
                        self._decide("keep", model.name, reading.free_mb, why)
                    continue
                if now - model.last_unload < self.settings.unload_cooldown:
                    continue
                model.last_unload = now
                result = (
                    model.unload()
                    if inspect.iscoroutinefunction(model.unload)
                    else await asyncio.to_thread(model.unload)
                )
                if inspect.isawaitable(result):
                    await result
                model.unloads += 1
                self.unloads += 1
                unloaded.append(model.name)
                after = self.refresh()
                freed = "" if after is None else f"; {after.free_mb:.0f} MiB free after"
                self._decide("unload", model.name, reading.free_mb, f"idle under pressure{freed}")
                reading = after or reading
            except Exception:
                log.exception("unloading GPU model %s failed", model.name)
            if reading.free_mb >= self.settings.pressure_free_mb:
                break  # enough memory back; keep the rest loaded
        return unloaded

    async def run(self, interval: float | None = None) -> None:
        """Watcher loop: read memory every `interval` seconds and relieve pressure. Returns at once
        when unavailable; cancel the task to stop it."""
        if self._probe is None:
            return
        period = interval or self.settings.watch_interval
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
            "models": [m.describe() for m in list(self._models.values())],
            "decisions": list(self.decisions),
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
