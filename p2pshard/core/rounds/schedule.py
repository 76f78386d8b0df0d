"""Round timing: when round ``r`` opens, until when it accepts announcements, until when it fetches.

Rounds are a pure function of the network's genesis time and a period, so every node computes the
same windows from its own clock (no coordinator)::

    opens_at(r)       = genesis_time + r * period
    deadline(r)       = opens_at(r) + announce_deadline      announcements accepted in [open, deadline]
    fetch_deadline(r) = deadline(r) + fetch_timeout          payloads not here by then are dropped

``clock_skew`` widens the accepted window on both sides, tolerating peers whose clocks differ a
little from ours. :meth:`RoundSchedule.offered` builds a schedule from values a peer sent (or we
chose), checking them against our clock ``now``; the skew allowance is derived, never sent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["MAX_GENESIS_OFFSET_S", "MAX_PERIOD_S", "MIN_PERIOD_S", "RoundSchedule"]

MIN_PERIOD_S = 0.5
MAX_PERIOD_S = 86400.0
MAX_GENESIS_OFFSET_S = 365 * 86400.0
"""A schedule whose round 0 is further than this from our clock is refused (a peer's bad clock)."""


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

    @classmethod
    def offered(
        cls, genesis_time: float, period: float, announce_deadline: float, fetch_timeout: float, now: float
    ) -> RoundSchedule:
        """A schedule from the four values nodes exchange; ValueError names what is wrong.

        The clock-skew allowance is a quarter of the fetch window (at most 1 s), so the widened
        announce window always closes well before fetching must end."""
        values = (genesis_time, period, announce_deadline, fetch_timeout)
        if not all(math.isfinite(v) for v in values):
            raise ValueError("schedule values must be finite")
        if not MIN_PERIOD_S <= period <= MAX_PERIOD_S:
            raise ValueError(f"round period {period}s outside [{MIN_PERIOD_S}, {MAX_PERIOD_S}]")
        if abs(genesis_time - now) > MAX_GENESIS_OFFSET_S:
            raise ValueError("genesis time is more than a year away from this node's clock")
        skew = min(1.0, fetch_timeout / 4, announce_deadline / 4)
        return cls(genesis_time, period, announce_deadline, fetch_timeout, clock_skew=skew)

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
