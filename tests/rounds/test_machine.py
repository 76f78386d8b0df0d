"""The round state machine, driven by a number for ``now`` (no clock, no network)."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from p2pshard.core.gossip import ValidationResult
from p2pshard.core.rounds import (
    Aggregate,
    Announcement,
    Fetch,
    MajorityTracker,
    Phase,
    Resync,
    RoundConfig,
    RoundMachine,
    RoundSchedule,
    RoundStateError,
)

SCHED = RoundSchedule(genesis_time=1000.0, period=60.0, announce_deadline=40.0, fetch_timeout=15.0)
R = 3  # round under test: opens 1180, deadline 1220 (window 1179..1221), fetch deadline 1235
OPEN, DEADLINE, FETCH_DEADLINE = 1180.0, 1220.0, 1235.0
LOCAL = hashlib.sha256(b"model").digest()
OTHER = hashlib.sha256(b"other model").digest()


def h(s: str) -> bytes:
    return hashlib.sha256(s.encode()).digest()


def ann(who: str = "peer-a", **kw: object) -> Announcement:
    base = Announcement(R, who, LOCAL, h(who), size=1000, tokens=4096, loss=3.0)
    return replace(base, **kw)  # type: ignore[arg-type]


def machine(**kw: object) -> RoundMachine:
    m = RoundMachine(R, SCHED, None, **kw)  # type: ignore[arg-type]
    m.begin(LOCAL)
    return m


def test_schedule_windows() -> None:
    assert (SCHED.opens_at(R), SCHED.deadline(R), SCHED.fetch_deadline(R)) == (
        OPEN,
        DEADLINE,
        FETCH_DEADLINE,
    )
    assert SCHED.round_at(999.0) == -1
    assert SCHED.round_at(1000.0) == 0
    assert SCHED.round_at(OPEN + 59.9) == R
    with pytest.raises(ValueError):
        RoundSchedule(0.0, period=10.0, announce_deadline=8.0, fetch_timeout=5.0)


@pytest.mark.parametrize(
    ("announcement", "now", "kind", "reason"),
    [
        (ann(), OPEN + 1, ValidationResult.ACCEPT, "ok"),
        (ann(), OPEN - 0.5, ValidationResult.ACCEPT, "ok"),  # within the clock-skew allowance
        (ann(), OPEN - 1.5, ValidationResult.IGNORE, "too_early"),
        (ann(), DEADLINE + 0.9, ValidationResult.ACCEPT, "ok"),
        (ann(), DEADLINE + 1.1, ValidationResult.IGNORE, "too_late"),
        (ann(round=R - 1), OPEN + 1, ValidationResult.IGNORE, "stale_round"),
        (ann(round=R + 1), OPEN + 1, ValidationResult.IGNORE, "future_round"),
        (ann(model_hash=b"short"), OPEN + 1, ValidationResult.REJECT, "bad_hash_length"),
        (ann(content_hash=b""), OPEN + 1, ValidationResult.REJECT, "bad_hash_length"),
        (ann(size=0), OPEN + 1, ValidationResult.REJECT, "bad_size_or_tokens"),
        (ann(size=1 << 40), OPEN + 1, ValidationResult.REJECT, "bad_size_or_tokens"),
        (ann(tokens=0), OPEN + 1, ValidationResult.REJECT, "bad_size_or_tokens"),
        (ann(loss=float("nan")), OPEN + 1, ValidationResult.REJECT, "bad_loss"),
        (ann(loss=-1.0), OPEN + 1, ValidationResult.REJECT, "bad_loss"),
        (ann(model_hash=OTHER), OPEN + 1, ValidationResult.IGNORE, "other_model"),
    ],
)
def test_announcement_rules(
    announcement: Announcement, now: float, kind: ValidationResult, reason: str
) -> None:
    m = machine()
    m.tick(now)
    verdict = m.announce(announcement, now)
    assert (verdict.result, verdict.reason) == (kind, reason)
    assert (announcement.contributor in m.announced) == (kind is ValidationResult.ACCEPT)


def test_duplicates_are_ignored_and_equivocation_rejected() -> None:
    m = machine()
    assert m.announce(ann("a"), OPEN).accepted
    assert m.announce(ann("a"), OPEN + 1).reason == "duplicate"
    v = m.announce(ann("a", content_hash=h("different payload")), OPEN + 2)
    assert (v.result, v.reason) == (ValidationResult.REJECT, "equivocation")
    assert m.announced["a"].content_hash == h("a")  # the first statement stands


def full_round(m: RoundMachine, peers: list[str]) -> list[object]:
    for p in peers:
        assert m.announce(ann(p), OPEN + 5).accepted
    return list(m.tick(DEADLINE + 2))


def test_happy_path_fetch_aggregate_commit() -> None:
    m = machine()
    assert m.tick(OPEN - 10) == [] and m.phase is Phase.WAITING
    assert m.tick(OPEN) == [] and m.phase is Phase.COLLECTING
    cmds = full_round(m, ["c", "a", "b"])
    assert cmds == [Fetch(R, (ann("a"), ann("b"), ann("c")))]
    assert m.phase is Phase.FETCHING
    assert m.fetched("b", h("b")) == []
    assert m.fetched("a", h("a")) == []
    assert m.fetched("c", h("c")) == [Aggregate(R, ("a", "b", "c"))]
    assert m.phase is Phase.AGGREGATING
    new = h("new model")
    m.aggregated(new)
    assert m.phase is Phase.COMMITTED and m.committed_hash == new


def test_bad_payload_hash_and_timeouts_drop_contributors() -> None:
    m = machine()
    full_round(m, ["a", "b", "c"])
    assert m.fetched("a", h("something else")) == []  # content hash mismatch
    assert m.fetch_failed("b", "no_provider") == []
    assert m.tick(FETCH_DEADLINE - 1) == []
    assert m.tick(FETCH_DEADLINE + 0.1) == [Aggregate(R, ())]
    assert m.failed == {"a": "content_hash_mismatch", "b": "no_provider", "c": "fetch_timeout"}
    assert m.fetched("c", h("c")) == []  # the round went on without it


def test_empty_round_aggregates_nothing() -> None:
    m = machine()
    m.tick(OPEN)
    assert m.tick(DEADLINE + 2) == [Fetch(R, ()), Aggregate(R, ())]


def test_choice_is_bounded_deterministic_and_order_independent() -> None:
    peers = [f"peer-{i:02d}" for i in range(20)]
    chosen = []
    for order in (peers, list(reversed(peers))):
        m = machine(cfg=RoundConfig(max_contributions=5))
        cmds = full_round(m, order)
        fetch = cmds[-1]
        assert isinstance(fetch, Fetch)
        chosen.append(fetch.contributions)
    assert chosen[0] == chosen[1]
    assert len(chosen[0]) == 5
    names = [a.contributor for a in chosen[0]]
    assert names == sorted(names)


def test_phase_errors_are_local_errors() -> None:
    m = machine()
    assert m.fetched("a", h("a")) == []  # nothing is being fetched: a late arrival changes nothing
    with pytest.raises(RoundStateError):
        m.aggregated(LOCAL)
    m.abandon()
    with pytest.raises(RoundStateError):
        m.abandon()


def test_majority_on_another_hash_asks_for_resync() -> None:
    m = machine()
    m.tick(OPEN)
    assert m.announce(ann("a"), OPEN + 1).accepted
    for p in ("b", "c"):
        assert m.announce(ann(p, model_hash=OTHER), OPEN + 1).reason == "other_model"
    cmds = m.tick(DEADLINE + 2)
    assert cmds[0] == Resync(R, OTHER)
    assert cmds[1] == Fetch(R, (ann("a"),))


def test_majority_tracker_weights_and_ties() -> None:
    t = MajorityTracker()
    t.record("a", LOCAL)
    t.record("b", OTHER)
    assert t.majority() is None  # a tie is no majority
    t.record("c", OTHER, weight=0.5)
    assert t.majority() == OTHER and t.must_resync(LOCAL) == OTHER
    t.record("b", LOCAL)  # a peer's latest statement replaces its earlier one
    assert t.majority() == LOCAL and t.must_resync(LOCAL) is None


def test_a_machine_for_a_round_ahead_keeps_announcements_until_it_learns_its_model() -> None:
    m = RoundMachine(R, SCHED, None)
    m.tick(OPEN)
    assert m.announce(ann("a"), OPEN + 1).accepted
    assert m.announce(ann("b", model_hash=OTHER), OPEN + 1).accepted  # no model to compare yet
    m.begin(LOCAL)
    assert list(m.announced) == ["a"] and list(m.other_model) == ["b"]
    assert m.votes.tally() == {LOCAL: 1.0, OTHER: 1.0}
    assert m.announce(ann("b", model_hash=OTHER), OPEN + 2).reason == "duplicate"


def test_announcements_over_the_limit_are_ignored() -> None:
    m = machine(cfg=RoundConfig(max_announcements=2))
    m.tick(OPEN)
    assert m.announce(ann("a"), OPEN).accepted and m.announce(ann("b"), OPEN).accepted
    assert m.announce(ann("c"), OPEN).reason == "over_limit"
