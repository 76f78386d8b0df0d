"""Round timing: when round ``r`` opens, until when it accepts announcements, until when it fetches.

Rounds are a pure function of the network's genesis time and a period, so every node computes the
same windows from its own clock (no coordinator)::

    opens_at(r)       = genesis_time + r * period
    deadline(r)       = opens_at(r) + announce_deadline      announcements accepted in [open, deadline]
    fetch_deadline(r) = deadline(r) + fetch_timeout          payloads not here by then are dropped

``clock_skew`` widens the accepted window on both sides, tolerating peers whose clocks differ a
little from ours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["RoundSchedule"]


@dataclass(frozen=True)
class RoundSchedule:
    genesis_time: float
    period: float
    announce_deadline: float
    fetch_timeout: float
    clock_skew: float = 1.0

    def __post_init__(self) -> None:
        if not (self.period > 0 and self.announce_deadline > 0 and self.fetch_timeout > 0):
            raise ValueError("period, announce_deadline and fetch_timeout must be positive")
        if self.announce_deadline + self.fetch_timeout > self.period:
            raise ValueError("announce_deadline + fetch_timeout must fit in one period")
        if not 0 <= self.clock_skew < self.announce_deadline:
            raise ValueError("clock_skew must be in [0, announce_deadline)")

    def opens_at(self, r: int) -> float:
        return self.genesis_time + r * self.period

    def deadline(self, r: int) -> float:
        return self.opens_at(r) + self.announce_deadline

    def fetch_deadline(self, r: int) -> float:
        return self.deadline(r) + self.fetch_timeout

    def round_at(self, now: float) -> int:
        """The round whose period contains ``now`` (-1 before genesis)."""
        if now < self.genesis_time:
            return -1
        return math.floor((now - self.genesis_time) / self.period)
