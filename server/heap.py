"""Freed media buffers go back to the operating system.

glibc's malloc gives a block above its mmap threshold its own mapping, unmapped as soon as it is
freed; but the threshold is dynamic: each time such a block is freed it rises to that block's size
(up to 32 MiB). After a few megabyte-sized trickle segments have come and gone, later ones are
carved out of the heap instead, and a heap full of freed segments stays resident and fragmented
(bench/bench_security.py's flood: ~80 MiB above the trickle budget). Setting the threshold
explicitly turns the dynamic rise off, so RSS follows what is really held. Blocks below it
(most Python objects, small frames) are untouched.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


def pin_mmap_threshold(nbytes: int) -> bool:
    """mallopt(M_MMAP_THRESHOLD, nbytes); False (and nothing changed) on a libc without mallopt
    (musl, macOS) or for nbytes <= 0 (keep glibc's dynamic threshold)."""
    if nbytes <= 0:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.info("this C library has no mallopt; the heap's mmap threshold stays as it is")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, int(nbytes)) == 1
