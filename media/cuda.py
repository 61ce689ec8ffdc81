"""The one cheap "is an NVIDIA CUDA device visible here?" check, shared by every GPU path."""

from __future__ import annotations

import os


def nvidia_device_visible() -> bool:
    """True when an NVIDIA driver node exists and CUDA_VISIBLE_DEVICES does not hide every device.
    Cheap on purpose: callers run it before importing anything heavy (torch, pynvml, tensorrt)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0")
