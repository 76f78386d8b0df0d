"""A first-seen time cache (the seen-message cache): keys expire ``ttl`` seconds after insertion.

It is a ``dict`` of key -> expiry so that membership tests (the hottest operation of the router:
every received message and every IHAVE id) run at C speed. Entries sit in insertion order;
since the TTL is constant, expiry times are monotonic, so ``sweep`` pops from the front and stops
at the first live entry (O(expired)). ``now`` must not go backwards (the router's clock is
monotonic).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


class TimeCache(dict[K, float]):
    """Set of keys with a fixed time-to-live; ``add`` reports whether the key was new."""

    __slots__ = ("ttl",)

    def __init__(self, ttl: float) -> None:
        super().__init__()
        self.ttl = ttl

    def add(self, key: K, now: float) -> bool:
        """Insert ``key``; returns ``False`` (and keeps the first expiry) if it is present."""
        if key in self:
            return False
        self[key] = now + self.ttl
        return True

    def sweep(self, now: float) -> int:
        """Drop expired keys; returns how many went."""
        removed = 0
        while self:
            key = next(iter(self))
            if self[key] > now:
                break
            del self[key]
            removed += 1
        return removed
