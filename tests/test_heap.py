"""Freed megabyte buffers go back to the OS once `streamlens serve` has pinned glibc's mmap
threshold (server/heap.py). Each case runs in a fresh interpreter, so its heap starts clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A big block freed first (it raises glibc's dynamic threshold), then 64 one-MiB buffers, each with
# a small malloc'd block above it that keeps the heap from shrinking, as segments and the objects
# made while handling them do in the server. Prints the MiB still resident once the buffers are freed.
SCRIPT = """
import sys
import psutil
from server.heap import pin_mmap_threshold
if sys.argv[1] == "pinned":
    assert pin_mmap_threshold(256 << 10)
process = psutil.Process()
rss = lambda: process.memory_info().rss / 2**20
first = bytearray(8 << 20)
del first
base = rss()
held, small = [], []
for _ in range(64):
    held.append(bytearray(1 << 20))
    small.append(bytearray(600))
del held
print(rss() - base)
"""


def retained_mib(mode: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    return float(out.stdout.strip())


def test_pinned_threshold_returns_freed_buffers_to_the_os() -> None:
    assert retained_mib("dynamic") > 32  # glibc's default keeps them: the fault this fixes
    assert retained_mib("pinned") < 8


def test_non_positive_threshold_keeps_glibc_default() -> None:
    from server.heap import pin_mmap_threshold

    assert pin_mmap_threshold(0) is False
