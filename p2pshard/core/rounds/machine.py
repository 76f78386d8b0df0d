"""The training-round state machine (sans-IO: no clock, no network, no torch).

One :class:`RoundMachine` follows one round through its phases::

    WAITING --tick(now >= open)--> COLLECTING --tick(now > deadline)--> FETCHING
    FETCHING --all fetched, or tick(now > fetch deadline)--> AGGREGATING
    AGGREGATING --aggregated(hash)--> COMMITTED

The driver feeds it announcements (:meth:`announce` returns a :class:`Verdict`), payload arrivals
(:meth:`fetched` / :meth:`fetch_failed`), the engine's result (:meth:`aggregated`) and the time
(:meth:`tick`), and carries out the :data:`Command` values it returns: fetch these payloads,
aggregate these contributors, commit this hash, resync to that hash.

Announcement checks are a table (:data:`ANNOUNCEMENT_RULES`), applied in order; the first that
fails decides. REJECT means the sender broke a rule (a gossip layer penalises it); IGNORE means the
message is not useful to us but not wrong (a duplicate, an update from another model).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from p2pshard.core.rounds.majority import MajorityTracker
from p2pshard.core.rounds.schedule import RoundSchedule

__all__ = [
    "ANNOUNCEMENT_RULES",
    "Aggregate",
    "Announcement",
    "Command",
    "Commit",
    "Fetch",
    "Phase",
    "Resync",
    "RoundConfig",
    "RoundMachine",
    "RoundStateError",
    "Verdict",
    "VerdictKind",
]


class Phase(Enum):
    WAITING = "waiting"
    COLLECTING = "collecting"
    FETCHING = "fetching"
    AGGREGATING = "aggregating"
    COMMITTED = "committed"


class VerdictKind(Enum):
    ACCEPT = "accept"
    REJECT = "reject"
    IGNORE = "ignore"


@dataclass(frozen=True)
class Verdict:
    kind: VerdictKind
    reason: str = ""

    @property
    def accepted(self) -> bool:
        return self.kind is VerdictKind.ACCEPT


ACCEPT = Verdict(VerdictKind.ACCEPT)


@dataclass(frozen=True)
class Announcement:
    """What a contributor states about its update (signature checks happen before this layer)."""

    round: int
    contributor: str
    model_hash: bytes  # the model the update was trained from
    content_hash: bytes  # SHA-256 of the payload
    size: int
    tokens: int
    loss: float
    weight: float = 1.0  # the contributor's stake, for the majority vote


@dataclass(frozen=True)
class RoundConfig:
    max_contributions: int = 32
    max_payload_bytes: int = 256 << 20
    max_tokens: int = 1 << 30


# ------------------------------------------------------------------------------------ commands


@dataclass(frozen=True)
class Fetch:
    round: int
    contributions: tuple[Announcement, ...]  # in contributor order


@dataclass(frozen=True)
class Aggregate:
    round: int
    contributors: tuple[str, ...]  # whose payloads arrived, in contributor order


@dataclass(frozen=True)
class Commit:
    round: int
    model_hash: bytes


@dataclass(frozen=True)
class Resync:
    """The stated majority holds another model: load a checkpoint with ``model_hash``."""

    round: int
    model_hash: bytes


Command = Fetch | Aggregate | Commit | Resync


class RoundStateError(RuntimeError):
    """The driver called a method the current phase does not allow (a local bug, not a peer's)."""


# ---------------------------------------------------------------------------- announcement rules


@dataclass(frozen=True)
class Rule:
    kind: VerdictKind
    reason: str
    broken: Callable[[RoundMachine, Announcement, float], bool]


def _bad_number(m: RoundMachine, a: Announcement, now: float) -> bool:
    return not (0 < a.size <= m.cfg.max_payload_bytes and 0 < a.tokens <= m.cfg.max_tokens)


def _too_late(m: RoundMachine, a: Announcement, now: float) -> bool:
    return now > m.window[1] or m.phase not in (Phase.WAITING, Phase.COLLECTING)


def _bad_hash_length(m: RoundMachine, a: Announcement, now: float) -> bool:
    return len(a.model_hash) != 32 or len(a.content_hash) != 32


def _duplicate(m: RoundMachine, a: Announcement, now: float) -> bool:
    prev = m.announced.get(a.contributor)
    return prev is not None and prev.content_hash == a.content_hash


ANNOUNCEMENT_RULES: tuple[Rule, ...] = (
    Rule(VerdictKind.REJECT, "stale-round", lambda m, a, now: a.round < m.round),
    Rule(VerdictKind.IGNORE, "future-round", lambda m, a, now: a.round > m.round),
    Rule(VerdictKind.REJECT, "too-early", lambda m, a, now: now < m.window[0]),
    Rule(VerdictKind.REJECT, "too-late", _too_late),
    Rule(VerdictKind.REJECT, "bad-hash-length", _bad_hash_length),
    Rule(VerdictKind.REJECT, "bad-size-or-tokens", _bad_number),
    Rule(VerdictKind.REJECT, "bad-loss", lambda m, a, now: not (math.isfinite(a.loss) and a.loss >= 0)),
    Rule(VerdictKind.IGNORE, "duplicate", _duplicate),
    Rule(VerdictKind.REJECT, "equivocation", lambda m, a, now: a.contributor in m.announced),
    # Trained from another model: useless to aggregate, but it is a vote on the majority hash.
    Rule(VerdictKind.IGNORE, "other-model", lambda m, a, now: a.model_hash != m.local_hash),
)


# ---------------------------------------------------------------------------------- the machine


@dataclass
class RoundMachine:
    round: int
    schedule: RoundSchedule
    local_hash: bytes
    cfg: RoundConfig = field(default_factory=RoundConfig)
    phase: Phase = Phase.WAITING
    announced: dict[str, Announcement] = field(default_factory=dict)
    votes: MajorityTracker = field(default_factory=MajorityTracker)
    chosen: tuple[Announcement, ...] = ()
    arrived: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)
    committed_hash: bytes | None = None

    @property
    def window(self) -> tuple[float, float]:
        """Announcements are accepted with ``window[0] <= now <= window[1]``."""
        skew = self.schedule.clock_skew
        return self.schedule.opens_at(self.round) - skew, self.schedule.deadline(self.round) + skew

    # -- events ----------------------------------------------------------------------------

    def announce(self, a: Announcement, now: float) -> Verdict:
        """Judge an announcement; accepted ones become candidates for this round."""
        for rule in ANNOUNCEMENT_RULES:
            if rule.broken(self, a, now):
                if rule.reason == "other-model":
                    self.votes.record(a.contributor, a.model_hash, a.weight)
                return Verdict(rule.kind, rule.reason)
        self.announced[a.contributor] = a
        self.votes.record(a.contributor, a.model_hash, a.weight)
        return ACCEPT

    def tick(self, now: float) -> list[Command]:
        """Advance on time alone; call it whenever the driver wakes (and at least at deadlines)."""
        out: list[Command] = []
        if self.phase is Phase.WAITING and now >= self.schedule.opens_at(self.round):
            self.phase = Phase.COLLECTING
        if self.phase is Phase.COLLECTING and now > self.window[1]:
            out.extend(self._close_collection())
        if self.phase is Phase.FETCHING and now > self.schedule.fetch_deadline(self.round):
            for a in self.chosen:
                if a.contributor not in self.arrived:
                    self.failed.setdefault(a.contributor, "fetch-timeout")
            out.extend(self._maybe_aggregate())
        return out

    def fetched(self, contributor: str, content_hash: bytes) -> list[Command]:
        """A payload arrived and its SHA-256 is ``content_hash`` (the driver hashes it)."""
        self._require(Phase.FETCHING, Phase.AGGREGATING, Phase.COMMITTED)
        if self.phase is not Phase.FETCHING:
            return []  # too late: the round went on without it
        wanted = {a.contributor: a.content_hash for a in self.chosen}
        if contributor not in wanted or contributor in self.failed:
            return []
        if wanted[contributor] != content_hash:
            self.failed[contributor] = "content-hash-mismatch"
        else:
            self.arrived.add(contributor)
        return self._maybe_aggregate()

    def fetch_failed(self, contributor: str, reason: str) -> list[Command]:
        self._require(Phase.FETCHING, Phase.AGGREGATING, Phase.COMMITTED)
        if self.phase is Phase.FETCHING and contributor not in self.arrived:
            self.failed.setdefault(contributor, reason)
            return self._maybe_aggregate()
        return []

    def aggregated(self, model_hash: bytes) -> list[Command]:
        """The engine applied the round; ``model_hash`` is the result."""
        self._require(Phase.AGGREGATING)
        self.phase = Phase.COMMITTED
        self.committed_hash = model_hash
        return [Commit(self.round, model_hash)]

    # -- internals -------------------------------------------------------------------------

    def _require(self, *phases: Phase) -> None:
        if self.phase not in phases:
            raise RoundStateError(f"round {self.round} is {self.phase.value}")

    def _close_collection(self) -> list[Command]:
        self.chosen = self.choose()
        self.phase = Phase.FETCHING
        out: list[Command] = []
        resync = self.votes.must_resync(self.local_hash)
        if resync is not None:
            out.append(Resync(self.round, resync))
        out.append(Fetch(self.round, self.chosen))
        out.extend(self._maybe_aggregate())
        return out

    def choose(self) -> tuple[Announcement, ...]:
        """At most ``max_contributions`` announcements, picked by a hash of (round, contributor),
        so that nodes that saw the same announcements choose the same set; contributor order."""

        def key(a: Announcement) -> bytes:
            return hashlib.sha256(f"{self.round}\x00{a.contributor}".encode()).digest()

        picked = sorted(self.announced.values(), key=key)[: self.cfg.max_contributions]
        return tuple(sorted(picked, key=lambda a: a.contributor))

    def _maybe_aggregate(self) -> list[Command]:
        if self.phase is not Phase.FETCHING:
            return []
        if all(a.contributor in self.arrived or a.contributor in self.failed for a in self.chosen):
            self.phase = Phase.AGGREGATING
            ready = tuple(a.contributor for a in self.chosen if a.contributor in self.arrived)
            return [Aggregate(self.round, ready)]
        return []
