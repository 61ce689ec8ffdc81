"""The one bounded least-recently-used map (an OrderedDict with a max size).

Not thread-safe on its own: a caller shared between threads holds its own lock around it."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """At most `max_size` items; `put` evicts the least recently put (or refreshed) ones first."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._items: OrderedDict[K, V] = OrderedDict()

    def put(self, key: K, value: V) -> int:
        """Store `key` as the most recent item; returns how many old items were evicted."""
        self._items[key] = value
        self._items.move_to_end(key)
        evicted = 0
        while len(self._items) > self.max_size:
            self._items.popitem(last=False)
            evicted += 1
        return evicted

    def get(self, key: K, refresh: bool = False) -> V | None:
        """The item (None when absent); `refresh` makes it the most recent."""
        if refresh and key in self._items:
            self._items.move_to_end(key)
        return self._items.get(key)

    def refresh(self, key: K) -> None:
        self._items.move_to_end(key)

    def pop(self, key: K) -> V | None:
        return self._items.pop(key, None)

    def oldest(self) -> V | None:
        """The least recent item, without touching it."""
        return next(iter(self._items.values()), None)

    def pop_oldest(self) -> V:
        return self._items.popitem(last=False)[1]

    def clear(self) -> None:
        self._items.clear()

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)
