"""A thread-safe LRU bounded in bytes, not entries: the gateway's caches are keyed by whole
JSON Schemas (up to limits.max_schema_bytes each), so a count bound lets a client that sends
unique large tool lists hold hundreds of MB. Each entry is charged `size(key, value)`, an
estimate of what it keeps alive; without `size`, one per entry (a count bound, for values whose
keys are not client-sized). The gateway's one LRU. Pure: stdlib only.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def _one(key: object, value: object) -> int:
    return 1


class ByteLRU(Generic[K, V]):
    def __init__(self, budget: int, size: Callable[[K, V], int] = _one) -> None:
        self.budget = budget
        self.used = 0
        self.hits = self.misses = 0
        self._size = size
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                self.misses += 1
                return None
            self.hits += 1
            self._items.move_to_end(key)
            return found[0]

    def put(self, key: K, value: V) -> None:
        cost = self._size(key, value)
        with self._lock:
            old = self._items.pop(key, None)
            self.used -= old[1] if old else 0
            if cost > self.budget:
                return  # larger than the whole budget: computed again next time
            self._items[key] = (value, cost)
            self.used += cost
            while self.used > self.budget:
                self.used -= self._items.popitem(last=False)[1][1]

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.used = self.hits = self.misses = 0
