"""A bounded drop-oldest mailbox: the one queue every slow-consumer fan-out uses.

A publisher must never block on (or grow memory for) a slow reader, so when the queue is full
the oldest item goes and `dropped` counts it; the reader always sees the newest items.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

T = TypeVar("T")


class DropOldestMailbox(asyncio.Queue[T]):
    """An `asyncio.Queue` whose `offer` never blocks: when full it drops the oldest item."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize=maxsize)
        self.dropped = 0

    def offer(self, item: T) -> None:
        """Queue `item`, dropping (and counting) the oldest items while the queue is full."""
        while True:
            try:
                self.put_nowait(item)
                return
            except asyncio.QueueFull:
                try:
                    self.get_nowait()
                    self.dropped += 1
                except asyncio.QueueEmpty:  # pragma: no cover - raced with a reader
                    pass
