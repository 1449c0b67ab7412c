"""A least-recently-used cache bounded in bytes, for results that are expensive to recompute.

The worker keeps two such caches (a house model's mask, a garment's conditioning); both hold
values whose size varies with the resolution, so the bound is in bytes, not in entries: an
entry count would let 1024x768 entries take several times what 512x384 ones do. A value larger
than the whole bound is not stored (it would evict everything and then itself).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class ByteBoundedLru(Generic[V]):
    """`get` / `put` with least-recently-used eviction; `size_of(value)` gives a value's bytes.

    Thread-safe (one lock), so a job and a start-up precomputation may share it. `max_bytes` 0
    disables the cache: `get` always misses and `put` stores nothing.
    """

    def __init__(self, max_bytes: int, size_of: Callable[[V], int]) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, not {max_bytes}")
        self._max_bytes = max_bytes
        self._size_of = size_of
        self._entries: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @property
    def nbytes(self) -> int:
        """Bytes held now (always <= `max_bytes`)."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def get(self, key: Hashable) -> V | None:
        """The value stored under `key` (now the most recently used), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: Hashable, value: V) -> bool:
        """Store `value`, evicting the least recently used entries to stay within the bound.

        Returns whether it was stored (not when the cache is disabled or the value alone is
        larger than the bound).
        """
        size = self._size_of(value)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size > self._max_bytes:
                return False
            self._entries[key] = (value, size)
            self._bytes += size
            self._evict()
            return True

    def resize(self, max_bytes: int) -> None:
        """Change the bound (a setting read per job), evicting at once if it shrank."""
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, not {max_bytes}")
        with self._lock:
            self._max_bytes = max_bytes
            self._evict()

    def clear(self) -> None:
        """Drop every entry and start the hit/miss counts anew (they describe what is held)."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self.hits = 0
            self.misses = 0

    def _evict(self) -> None:
        while self._bytes > self._max_bytes:
            _, (_, size) = self._entries.popitem(last=False)
            self._bytes -= size
