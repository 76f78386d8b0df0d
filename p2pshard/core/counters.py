"""Named event counters: every rejected or discarded input is counted under a stable reason."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping


class Counters:
    """A flat ``name -> count`` map. Names look like ``"reqresp.rejected.frame_too_large"``."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def incr(self, name: str, by: int = 1) -> None:
        self._counts[name] += by

    def get(self, name: str) -> int:
        return self._counts[name]

    def snapshot(self, prefix: str = "") -> Mapping[str, int]:
        return {k: v for k, v in sorted(self._counts.items()) if k.startswith(prefix)}

    def total(self, prefix: str) -> int:
        return sum(v for k, v in self._counts.items() if k.startswith(prefix))
