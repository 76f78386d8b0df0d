"""One training round as a state machine (sans-IO: no clock, no network, no torch).

A :class:`RoundMachine` follows one round through its phases::

    WAITING --tick(now >= open)--> COLLECTING --tick(now > deadline + skew)--> FETCHING
    FETCHING --every chosen payload arrived or failed, and our own update's fate is known,
               or tick(now > fetch deadline)--> AGGREGATING
    AGGREGATING --aggregated(hash)--> COMMITTED

Our own update counts only if most of the round's other contributors took it (:meth:`taken`: the
driver saw the payload sent to them by the fetch deadline). An update whose announcement or
payload reached the others late is left out by them; leaving it out here too keeps our model the
network's, so the next round trains from the right model and the late round costs that round only.

Machines for the next rounds exist before their round is ours (announcements arrive early from
peers that finished the previous round first); such a machine does not yet know the model it will
start from (``local_hash`` is None) and learns it in :meth:`begin`. :class:`RoundProtocol` owns
the machines; this module holds the rules of one round.

Announcement checks are one table (:data:`ANNOUNCEMENT_RULES`), applied in order, the first broken
rule deciding: early and late announcements, and those for rounds we hold no machine for, are
judged by the same table. REJECT means the sender broke a rule (gossip scoring penalises it, P4);
IGNORE means the message is of no use to us but not provably wrong (a duplicate, an update from
another model, or one outside its time window). Every reason is snake_case, a metric label.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from p2pshard.core.gossip.message import ACCEPT, ValidationResult, Verdict
from p2pshard.core.rounds.majority import MajorityTracker
from p2pshard.core.rounds.schedule import RoundSchedule

__all__ = [
    "ANNOUNCEMENT_RULES",
    "Aggregate",
    "Announcement",
    "Fetch",
    "Phase",
    "Resync",
    "RoundConfig",
    "RoundMachine",
    "RoundStateError",
    "Rule",
]

HASH_SIZE = 32


class Phase(Enum):
    WAITING = "waiting"
    COLLECTING = "collecting"
    FETCHING = "fetching"
    AGGREGATING = "aggregating"
    COMMITTED = "committed"


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
    max_announcements: int = 1024
    """Announcements kept per round; more are ignored (counted), so memory stays bounded."""


@dataclass(frozen=True)
class Fetch:
    """Fetch these payloads (verified by content hash); report each with fetched / fetch_failed."""

    round: int
    contributions: tuple[Announcement, ...]  # in contributor order


@dataclass(frozen=True)
class Aggregate:
    """Screen, aggregate and apply these contributors' payloads (contributor order)."""

    round: int
    contributors: tuple[str, ...]


@dataclass(frozen=True)
class Resync:
    """The stated majority holds another model than ours: load a checkpoint with ``model_hash``."""

    round: int
    model_hash: bytes


class RoundStateError(RuntimeError):
    """A method was called in a phase that does not allow it (a local bug, not a peer's)."""


# ---------------------------------------------------------------------------- announcement rules


@dataclass(frozen=True)
class Rule:
    result: ValidationResult
    reason: str
    broken: Callable[[RoundMachine, Announcement, float], bool]


def _bad_number(m: RoundMachine, a: Announcement, now: float) -> bool:
    return not (0 < a.size <= m.cfg.max_payload_bytes and 0 < a.tokens <= m.cfg.max_tokens)


def _too_late(m: RoundMachine, a: Announcement, now: float) -> bool:
    return now > m.window[1] or m.phase not in (Phase.WAITING, Phase.COLLECTING)


def _bad_hash_length(m: RoundMachine, a: Announcement, now: float) -> bool:
    return len(a.model_hash) != HASH_SIZE or len(a.content_hash) != HASH_SIZE


def _duplicate(m: RoundMachine, a: Announcement, now: float) -> bool:
    prev = m.announced.get(a.contributor) or m.other_model.get(a.contributor)
    return prev is not None and prev.content_hash == a.content_hash


def _equivocation(m: RoundMachine, a: Announcement, now: float) -> bool:
    return a.contributor in m.announced or a.contributor in m.other_model


def _other_model(m: RoundMachine, a: Announcement, now: float) -> bool:
    return m.local_hash is not None and a.model_hash != m.local_hash


ANNOUNCEMENT_RULES: tuple[Rule, ...] = (
    # Timing rules IGNORE: a message outside its window is not provably its sender's fault (clocks
    # differ, gossip delays it, our own process may have been suspended), and a REJECT would lower
    # the score of every honest peer that forwarded it.
    Rule(ValidationResult.IGNORE, "stale_round", lambda m, a, now: a.round < m.round),
    Rule(ValidationResult.IGNORE, "future_round", lambda m, a, now: a.round > m.round),
    Rule(ValidationResult.IGNORE, "too_early", lambda m, a, now: now < m.window[0]),
    Rule(ValidationResult.IGNORE, "too_late", _too_late),
    Rule(ValidationResult.REJECT, "bad_hash_length", _bad_hash_length),
    Rule(ValidationResult.REJECT, "bad_size_or_tokens", _bad_number),
    Rule(ValidationResult.REJECT, "bad_loss", lambda m, a, now: not (math.isfinite(a.loss) and a.loss >= 0)),
    Rule(ValidationResult.IGNORE, "duplicate", _duplicate),
    Rule(ValidationResult.REJECT, "equivocation", _equivocation),
    Rule(
        ValidationResult.IGNORE,
        "over_limit",
        lambda m, a, now: len(m.announced) + len(m.other_model) >= m.cfg.max_announcements,
    ),
    # Trained from another model: useless to aggregate, but it is a vote on the majority hash.
    Rule(ValidationResult.IGNORE, "other_model", _other_model),
)


# ---------------------------------------------------------------------------------- the machine


@dataclass
class RoundMachine:
    round: int
    schedule: RoundSchedule
    local_hash: bytes | None  # the model this round starts from; None until the round is ours
    cfg: RoundConfig = field(default_factory=RoundConfig)
    phase: Phase = Phase.WAITING
    announced: dict[str, Announcement] = field(default_factory=dict)
    other_model: dict[str, Announcement] = field(default_factory=dict)
    votes: MajorityTracker = field(default_factory=MajorityTracker)
    chosen: tuple[Announcement, ...] = ()
    arrived: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)
    committed_hash: bytes | None = None
    me: str = ""
    """Our own contributor id ("" for a machine that never holds an update of ours)."""
    taken_by: set[str] = field(default_factory=set)
    """Peers that received our own payload of this round by the fetch deadline."""

    @property
    def window(self) -> tuple[float, float]:
        """Announcements are accepted with ``window[0] <= now <= window[1]``."""
        skew = self.schedule.clock_skew
        return self.schedule.opens_at(self.round) - skew, self.schedule.deadline(self.round) + skew

    def next_change(self) -> float | None:
        """The earliest time at which :meth:`tick` changes something (None: only events can)."""
        if self.phase is Phase.WAITING:
            return self.schedule.opens_at(self.round)
        if self.phase is Phase.COLLECTING:
            return math.nextafter(self.window[1], math.inf)
        if self.phase is Phase.FETCHING:
            return math.nextafter(self.schedule.fetch_deadline(self.round), math.inf)
        return None

    # -- events ----------------------------------------------------------------------------

    def begin(self, local_hash: bytes) -> None:
        """The round is ours, starting from ``local_hash``: announcements of updates trained from
        another model move out of the candidates (their votes stay)."""
        self.local_hash = local_hash
        for contributor, a in list(self.announced.items()):
            if a.model_hash != local_hash:
                self.other_model[contributor] = self.announced.pop(contributor)

    def rebase(self, local_hash: bytes) -> None:
        """We loaded the majority's model mid-round (a resync): sort the announcements already
        received again against it and go back to WAITING, so that the next tick closes collection
        and chooses from them (a fresh machine would know none and apply the round empty)."""
        if self.phase is Phase.COMMITTED:
            raise RoundStateError(f"round {self.round} is {self.phase.value}")
        every = {**self.other_model, **self.announced}
        self.announced = {c: a for c, a in every.items() if a.model_hash == local_hash}
        self.other_model = {c: a for c, a in every.items() if a.model_hash != local_hash}
        self.local_hash = local_hash
        self.phase = Phase.WAITING
        self.chosen, self.arrived, self.failed = (), set(), {}

    def judge(self, a: Announcement, now: float) -> Verdict:
        """The first rule ``a`` breaks, or ACCEPT; changes nothing."""
        for rule in ANNOUNCEMENT_RULES:
            if rule.broken(self, a, now):
                return Verdict(rule.result, rule.reason)
        return ACCEPT

    def announce(self, a: Announcement, now: float) -> Verdict:
        """Judge an announcement; accepted ones become candidates, and every statement of a
        model (accepted or trained from another model) is a vote on the majority."""
        verdict = self.judge(a, now)
        if verdict.accepted:
            self.announced[a.contributor] = a
        elif verdict.reason == "other_model":
            self.other_model[a.contributor] = a
        else:
            return verdict
        self.votes.record(a.contributor, a.model_hash, a.weight)
        return verdict

    def tick(self, now: float) -> list[Fetch | Aggregate | Resync]:
        """Advance on time alone; call it whenever the driver wakes (and at least at deadlines)."""
        out: list[Fetch | Aggregate | Resync] = []
        if self.phase is Phase.WAITING and now >= self.schedule.opens_at(self.round):
            self.phase = Phase.COLLECTING
        if self.phase is Phase.COLLECTING and now > self.window[1]:
            out.extend(self._close_collection())
        if self.phase is Phase.FETCHING and now > self.schedule.fetch_deadline(self.round):
            for a in self.chosen:
                if a.contributor not in self.arrived:
                    self.failed.setdefault(a.contributor, "fetch_timeout")
            out.extend(self._maybe_aggregate(final=True))
        return out

    def fetched(self, contributor: str, content_hash: bytes) -> list[Aggregate]:
        """A payload arrived and its SHA-256 is ``content_hash`` (the driver hashes it)."""
        if self.phase is not Phase.FETCHING:
            return []  # too late: the round went on without it
        wanted = {a.contributor: a.content_hash for a in self.chosen}
        if contributor not in wanted or contributor in self.failed:
            return []
        if wanted[contributor] != content_hash:
            self.failed[contributor] = "content_hash_mismatch"
        else:
            self.arrived.add(contributor)
        return self._maybe_aggregate()

    def taken(self, peer: str, now: float) -> list[Aggregate]:
        """``peer`` received our own payload of this round at ``now`` (counted up to the fetch
        deadline plus the clock skew: its clock may run behind ours)."""
        if peer != self.me and now <= self.schedule.fetch_deadline(self.round) + self.schedule.clock_skew:
            self.taken_by.add(peer)
        return self._maybe_aggregate()

    def fetch_failed(self, contributor: str, reason: str) -> list[Aggregate]:
        if self.phase is Phase.FETCHING and contributor not in self.arrived:
            self.failed.setdefault(contributor, reason)
            return self._maybe_aggregate()
        return []

    def abandon(self) -> Aggregate:
        """Apply this round with no contributions (we are alone, or the round is long over)."""
        if self.phase in (Phase.AGGREGATING, Phase.COMMITTED):
            raise RoundStateError(f"round {self.round} is {self.phase.value}")
        self.chosen = ()
        self.phase = Phase.AGGREGATING
        return Aggregate(self.round, ())

    def aggregated(self, model_hash: bytes) -> None:
        """The engine applied the round; ``model_hash`` is the result."""
        if self.phase is not Phase.AGGREGATING:
            raise RoundStateError(f"round {self.round} is {self.phase.value}")
        self.phase = Phase.COMMITTED
        self.committed_hash = model_hash

    # -- internals -------------------------------------------------------------------------

    def _close_collection(self) -> list[Fetch | Aggregate | Resync]:
        self.chosen = self.choose()
        self.phase = Phase.FETCHING
        out: list[Fetch | Aggregate | Resync] = []
        resync = self._resync_target()
        if resync is not None:
            out.append(Resync(self.round, resync))
        out.append(Fetch(self.round, self.chosen))
        out.extend(self._maybe_aggregate())
        return out

    def _resync_target(self) -> bytes | None:
        """The model to resync to: the strict majority's, or, when no hash holds one (a network
        split near evenly, e.g. 9/8/1), the hash stated with the most weight, ties broken by the
        larger hash. Every node that heard the same statements picks the same one, so a split
        heals in a round instead of lasting for the rest of the run."""
        tally = self.votes.tally()
        if self.local_hash is None or not tally:
            return None
        best = max(tally.items(), key=lambda kv: (kv[1], kv[0]))[0]
        return best if best != self.local_hash else None

    def choose(self) -> tuple[Announcement, ...]:
        """At most ``max_contributions`` announcements, picked by a hash of (round, contributor),
        so that nodes that saw the same announcements choose the same set; contributor order."""

        def key(a: Announcement) -> bytes:
            return hashlib.sha256(f"{self.round}\x00{a.contributor}".encode()).digest()

        picked = sorted(self.announced.values(), key=key)[: self.cfg.max_contributions]
        return tuple(sorted(picked, key=lambda a: a.contributor))

    def own_taken(self) -> tuple[int, int]:
        """(peers that took our update, other contributors whose payload reached us)."""
        others = {a.contributor for a in self.chosen if a.contributor != self.me} & self.arrived
        return len(self.taken_by & others), len(others)

    def _maybe_aggregate(self, final: bool = False) -> list[Aggregate]:
        if self.phase is not Phase.FETCHING:
            return []
        if all(a.contributor in self.arrived or a.contributor in self.failed for a in self.chosen):
            if self.me in self.arrived:
                took, others = self.own_taken()
                if 2 * (1 + took) <= 1 + others:  # most contributors, us included, left it out
                    if not final:
                        return []  # they may still fetch it: wait, at most until the fetch deadline
                    self.arrived.discard(self.me)
                    self.failed[self.me] = "not_taken"
            self.phase = Phase.AGGREGATING
            ready = tuple(a.contributor for a in self.chosen if a.contributor in self.arrived)
            return [Aggregate(self.round, ready)]
        return []
