"""`GET /hardware/info` and `/hardware/stats` in ai-runner's shape (runner/routes/hardware.py).

`gpu_info` / `gpu_stats` map a device index to `{id, name, memory_total, memory_free, major,
minor}` / `{id, name, memory_total, memory_free, utilization_compute, utilization_memory}`
(bytes, percent), read with NVML (`pynvml` from nvidia-ml-py, the `gpu` extra). Without NVML or an
NVIDIA GPU the maps are empty — exactly what ai-runner reports then — and `gpu_note` says why.
CPU figures ride along under `cpu` (extra keys; go-livepeer decodes only the ai-runner fields).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

log = logging.getLogger(__name__)

_nvml_lock = threading.Lock()
_nvml_ready: bool | None = None
_nvml_reason = ""


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvml():
    """The initialised pynvml module, or None (reason in `_nvml_reason`). Initialised once."""
    global _nvml_ready, _nvml_reason
    with _nvml_lock:
        if _nvml_ready is None:
            try:
                import pynvml  # optional: the `gpu` extra
            except ImportError:
                _nvml_ready, _nvml_reason = False, "NVML is not installed (pip install nvidia-ml-py)"
                return None
            try:
                pynvml.nvmlInit()
                _nvml_ready = True
            except Exception as exc:  # pynvml.NVMLError: no driver / no device
                _nvml_ready, _nvml_reason = False, f"no NVIDIA GPU available ({exc})"
        if not _nvml_ready:
            return None
        import pynvml

        return pynvml


def read_gpus() -> tuple[dict[int, dict[str, Any]], str | None]:
    """Every device's full record (compute + utilisation), or ({}, why not). Blocking: call in a thread."""
    nvml = _nvml()
    if nvml is None:
        return {}, _nvml_reason
    devices: dict[int, dict[str, Any]] = {}
    try:
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
            rates = nvml.nvmlDeviceGetUtilizationRates(handle)
            devices[index] = {
                "id": _decode(nvml.nvmlDeviceGetUUID(handle)),
                "name": _decode(nvml.nvmlDeviceGetName(handle)),
                "memory_total": int(memory.total),
                "memory_free": int(memory.free),
                "major": int(major),
                "minor": int(minor),
                "utilization_compute": int(rates.gpu),
                "utilization_memory": int(rates.memory),
            }
    except Exception as exc:
        log.warning("reading GPU information failed: %s", exc)
        return devices, f"reading GPU information failed ({exc})"
    return devices, None if devices else "no NVIDIA GPU found"


_COMPUTE_KEYS = ("id", "name", "memory_total", "memory_free", "major", "minor")
_STATS_KEYS = ("id", "name", "memory_total", "memory_free", "utilization_compute", "utilization_memory")


def hardware_info(pipeline: str, model_id: str) -> dict[str, Any]:
    devices, note = read_gpus()
    body: dict[str, Any] = {
        "pipeline": pipeline,
        "model_id": model_id,
        "gpu_info": {str(i): {k: d[k] for k in _COMPUTE_KEYS} for i, d in devices.items()},
        "cpu": {"count": os.cpu_count()},
    }
    if note:
        body["gpu_note"] = note
    return body


def hardware_stats(pipeline: str, model_id: str) -> dict[str, Any]:
    import psutil

    devices, note = read_gpus()
    memory = psutil.virtual_memory()
    body: dict[str, Any] = {
        "pipeline": pipeline,
        "model_id": model_id,
        "gpu_stats": {str(i): {k: d[k] for k in _STATS_KEYS} for i, d in devices.items()},
        "cpu": {
            "count": os.cpu_count(),
            "utilization": psutil.cpu_percent(interval=None),
            "memory_total": int(memory.total),
            "memory_available": int(memory.available),
        },
    }
    if note:
        body["gpu_note"] = note
    return body
