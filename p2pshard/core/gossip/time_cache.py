"""A first-seen time cache (the seen-message cache): keys expire ``ttl`` seconds after insertion.

Entries sit in a dict in insertion order; since the TTL is constant, expiry times are
monotonic, so ``sweep`` pops from the front and stops at the first live entry (O(expired)).
``now`` must not go backwards between calls (the router's clock is monotonic).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class TimeCache(Generic[K]):
    """Set of keys with a fixed time-to-live; ``add`` reports whether the key was new."""

    __slots__ = ("_entries", "ttl")

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[K, float] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, key: K, now: float) -> bool:
        """Insert ``key``; returns ``False`` (and keeps the first expiry) if it is present."""
        entries = self._entries
        if key in entries:
            return False
        entries[key] = now + self.ttl
        return True

    def sweep(self, now: float) -> int:
        """Drop expired keys; returns how many went."""
        entries = self._entries
        removed = 0
        while entries:
            key = next(iter(entries))
            if entries[key] > now:
                break
            del entries[key]
            removed += 1
        return removed
