"""Validation votes: decoding, each tally rule, and settlement by 2/3 of validator stake."""

from __future__ import annotations

import random

from p2pshard.core.gossip import Verdict
from p2pshard.core.wire import topics_pb2
from p2pshard.core.work import Outcome, Tally, decode_vote, make_vote, tally_votes
from p2pshard.core.work.votes import MAX_SCORE

from .helpers import IDS, KEYS, NOW

P1, P2, P3 = (bytes([i]) * 32 for i in (1, 2, 3))
# four validators A..D with stakes 40, 30, 20, 10; E (IDS[4]) is a worker without stake
STAKES = {IDS[0]: 40, IDS[1]: 30, IDS[2]: 20, IDS[3]: 10}
PROOFS = {P1: IDS[4], P2: IDS[4], P3: IDS[0]}  # P3 is A's own proof


def vote(key: int, proof: bytes, valid: bool, round_: int = 7, **kw: int) -> bytes:
    return make_vote(
        KEYS[key], proof, valid, score=kw.get("score", 1000), round_=round_, timestamp_ms=kw.get("ts", NOW)
    )


def reasons(verdicts: list[Verdict]) -> list[tuple[str, str]]:
    return [(v.result.name, v.reason) for v in verdicts]


def test_decode_rejects_malformed_votes() -> None:
    good = vote(0, P1, True)
    assert not isinstance(decode_vote(good), Verdict)
    msg = topics_pb2.ValidationVote()
    msg.ParseFromString(good)
    bad = {
        "undecodable": b"\x0a\xff",
        "oversized": good + b"\xfa\x07\x80\x04" + b"\x00" * 512,
        "bad_validator": make_vote(KEYS[0], P1, True, score=0, round_=7, timestamp_ms=NOW).replace(
            IDS[0], b"\x01" * 39
        ),
        "bad_proof_id": vote(0, b"\x01" * 31, True),
        "bad_score": vote(0, P1, True, score=MAX_SCORE + 1),
    }
    msg.valid = False
    bad["bad_signature"] = msg.SerializeToString()
    for reason, data in bad.items():
        got = decode_vote(data)
        assert isinstance(got, Verdict) and (got.result.name, got.reason) == ("REJECT", reason), reason


def test_two_thirds_of_stake_settle_a_proof_and_dissenters_are_listed() -> None:
    verdicts, s = tally_votes(
        7,
        STAKES,
        PROOFS,
        [
            vote(0, P1, True),  # 40
            vote(1, P1, True),  # 30: 70 of 100 >= 2/3
            vote(3, P1, False),  # dissenter
            vote(0, P2, False),  # 40
            vote(2, P2, False),  # 20: 60 of 100 < 2/3 -> unsettled
            vote(1, P3, False),  # 30 of 60 eligible (A's own stake left out)
            vote(2, P3, False),  # 50 of 60 >= 2/3: rejected
        ],
        NOW,
    )
    assert all(v.accepted for v in verdicts)
    got = {o.proof_id: (o.outcome, o.stake_for, o.stake_against, o.eligible_stake) for o in s.outcomes}
    assert got == {
        P1: (Outcome.ACCEPTED, 70, 10, 100),
        P2: (Outcome.UNSETTLED, 0, 60, 100),
        P3: (Outcome.REJECTED, 0, 50, 60),
    }
    assert s.dissenters == ((IDS[3], P1),)
    assert s.equivocators == ()


def test_tally_rules() -> None:
    verdicts, s = tally_votes(
        7,
        STAKES,
        PROOFS,
        [
            vote(0, P1, True, ts=NOW - 300_001),  # outside the clock window
            vote(0, P1, True, round_=8),  # another round
            vote(4, P1, True),  # E has no stake
            vote(1, b"\x09" * 32, True),  # not a proof of this round
            vote(0, P3, True),  # A on its own proof
            vote(1, P1, True),
            vote(1, P1, True, score=5),  # the same vote again
            vote(2, P1, True),
            vote(2, P1, False),  # C votes both ways: counts for neither
            vote(2, P1, True),
        ],
        NOW,
    )
    assert reasons(verdicts) == [
        ("IGNORE", "outside_clock_window"),
        ("IGNORE", "wrong_round"),
        ("IGNORE", "not_a_validator"),
        ("IGNORE", "unknown_proof"),
        ("REJECT", "self_vote"),
        ("ACCEPT", "ok"),
        ("IGNORE", "duplicate_vote"),
        ("ACCEPT", "ok"),
        ("IGNORE", "conflicting_vote"),
        ("IGNORE", "conflicting_vote"),
    ]
    assert s.equivocators == ((IDS[2], P1),)
    assert s.outcomes[0].stake_for == 30


def test_votes_after_the_close_are_ignored() -> None:
    tally = Tally(7, STAKES, PROOFS)
    assert tally.add(vote(0, P1, True), NOW).accepted
    settlement = tally.close()
    assert settlement.outcomes[0].outcome is Outcome.UNSETTLED
    late = tally.add(vote(1, P1, True), NOW)
    assert (late.result.name, late.reason) == ("IGNORE", "round_closed")


def test_the_outcome_does_not_depend_on_the_order_of_votes() -> None:
    votes = [vote(k, p, (k + p[0]) % 3 != 0) for k in range(4) for p in (P1, P2, P3)]
    votes += [vote(2, P2, False), vote(3, P1, True)]
    first = tally_votes(7, STAKES, PROOFS, votes, NOW)[1]
    rng = random.Random(5)
    for _ in range(20):
        rng.shuffle(votes)
        assert tally_votes(7, STAKES, PROOFS, votes, NOW)[1] == first
