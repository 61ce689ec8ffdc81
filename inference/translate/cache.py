"""A bounded least-recently-used cache (live captions repeat phrases; re-translating them wastes
backend time)."""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Generic, TypeVar

from media.lru import LRU

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRUCache(Generic[K, V]):
    """At most `max_entries` items; the least recently read or written one is evicted first.
    `max_entries <= 0` disables caching. Thread-safe (a lock around each operation)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max(0, max_entries)
        self._items: LRU[K, V] = LRU(self.max_entries)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: K) -> V | None:
        with self._lock:
            if key in self._items:
                self.hits += 1
                return self._items.get(key, refresh=True)
            self.misses += 1
            return None

    def put(self, key: K, value: V) -> None:
        if self.max_entries == 0:
            return
        with self._lock:
            self.evictions += self._items.put(key, value)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def stats(self) -> dict[str, int]:
        with self._lock:
            size = len(self._items)
        return {
            "size": size,
            "max_entries": self.max_entries,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
        }
