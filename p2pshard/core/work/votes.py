"""Validation votes and their tally (specs/work.md, "Votes" and "Tally").

A validator publishes a signed ``topics.ValidationVote`` per proof it checked: the proof id,
accept or reject (``valid``), its Gauntlet score (informative) and the round. A round's
:class:`Tally` collects the votes of the validator set (accounts with stake, from the ledger)
on the round's accepted proofs until the round closes; :meth:`Tally.close` settles each proof:

* ``accepted`` when the validators voting ``valid`` hold at least 2/3 of the eligible stake;
* ``rejected`` when those voting ``invalid`` do;
* ``unsettled`` otherwise (no credit, no slash).

The eligible stake of a proof is the validator set's stake less its worker's own (a validator
never votes on its own proof). The settlement lists the validators whose vote disagrees with a
settled outcome (for reputation loss, and slashing once a proof is shown invalid) and those that
voted both ways on a proof (equivocation: their votes on that proof count for neither side).
All sums are integers; nothing depends on the order in which votes arrived except which of two
identical votes is kept (the first), which changes no outcome.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Final

from google.protobuf.message import DecodeError

from p2pshard.core.gossip import ACCEPT, Verdict, ignore, reject
from p2pshard.core.ledger.ops import AccountKey
from p2pshard.core.ledger.state import is_account_id
from p2pshard.core.topics import CLOCK_WINDOW_MS, HASH_SIZE, signing_bytes, verify_author
from p2pshard.core.wire import topics_pb2

VOTE_TOPIC: Final = "votes"
MAX_VOTE_SIZE: Final = 512
MAX_SCORE: Final = 10**12
"""Largest absolute vote score (millionths)."""
SETTLE_NUMERATOR: Final = 2
SETTLE_DENOMINATOR: Final = 3
"""A proof settles when votes holding this share of the eligible stake agree."""
MAX_VALIDATORS: Final = 10_000
MAX_ROUND_PROOFS: Final = 10_000
MAX_ROUND_VOTES: Final = 1_000_000
"""Most votes one tally holds (each validator votes on a sample of the round's proofs)."""


@dataclass(frozen=True, slots=True)
class Vote:
    validator: bytes
    proof_id: bytes
    valid: bool
    score: int
    round: int
    timestamp_ms: int


def decode_vote(data: bytes) -> Vote | Verdict:
    """Structure and signature of a ``topics.ValidationVote`` (rules 1 to 6)."""
    if len(data) > MAX_VOTE_SIZE:
        return reject("oversized")
    msg = topics_pb2.ValidationVote()
    try:
        msg.ParseFromString(data)
    except (DecodeError, RecursionError, ValueError):
        return reject("undecodable")
    if not is_account_id(msg.validator):
        return reject("bad_validator")
    if len(msg.proof_id) != HASH_SIZE:
        return reject("bad_proof_id")
    if abs(msg.score) > MAX_SCORE:
        return reject("bad_score")
    if not verify_author(msg.validator, signing_bytes(VOTE_TOPIC, msg), msg.signature):
        return reject("bad_signature")
    return Vote(bytes(msg.validator), bytes(msg.proof_id), msg.valid, msg.score, msg.round, msg.timestamp_ms)


def make_vote(
    key: AccountKey, proof_id: bytes, valid: bool, *, score: int, round_: int, timestamp_ms: int
) -> bytes:
    """A signed ``topics.ValidationVote`` (its bytes)."""
    msg = topics_pb2.ValidationVote(
        validator=key.peer_id,
        proof_id=proof_id,
        valid=valid,
        score=score,
        round=round_,
        timestamp_ms=timestamp_ms,
    )
    msg.signature = key.sign(signing_bytes(VOTE_TOPIC, msg))
    return msg.SerializeToString(deterministic=True)


class Outcome(Enum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    UNSETTLED = "unsettled"


@dataclass(frozen=True, slots=True)
class ProofOutcome:
    proof_id: bytes
    worker: bytes
    outcome: Outcome
    stake_for: int
    stake_against: int
    eligible_stake: int


@dataclass(frozen=True, slots=True)
class Settlement:
    round: int
    outcomes: tuple[ProofOutcome, ...]
    """One per proof, in ascending proof id order."""
    dissenters: tuple[tuple[bytes, bytes], ...]
    """(validator, proof id) of every counted vote against a settled outcome, sorted."""
    equivocators: tuple[tuple[bytes, bytes], ...]
    """(validator, proof id) of every validator that voted both ways on a proof, sorted."""


def settles(stake: int, eligible: int) -> bool:
    return eligible > 0 and stake * SETTLE_DENOMINATOR >= eligible * SETTLE_NUMERATOR


class Tally:
    """One round's votes (see the module doc). ``validators``: account id -> stake (> 0);
    ``proofs``: proof id -> worker, the round's accepted proofs."""

    def __init__(self, round_: int, validators: Mapping[bytes, int], proofs: Mapping[bytes, bytes]) -> None:
        if len(validators) > MAX_VALIDATORS or len(proofs) > MAX_ROUND_PROOFS:
            raise ValueError("too many validators or proofs for one tally")
        if any(stake <= 0 for stake in validators.values()):
            raise ValueError("a validator's stake must be > 0")
        self.round = round_
        self.validators = dict(validators)
        self.proofs = dict(proofs)
        self.total_stake = sum(self.validators.values())
        self.closed = False
        self._votes: dict[tuple[bytes, bytes], bool] = {}
        self._equivocated: set[tuple[bytes, bytes]] = set()

    def add_proof(self, proof_id: bytes, worker: bytes) -> None:
        """A proof accepted while the round is still open."""
        if len(self.proofs) >= MAX_ROUND_PROOFS and proof_id not in self.proofs:
            raise OverflowError("too many proofs in the round")
        self.proofs.setdefault(proof_id, worker)

    def add(self, vote: Vote | bytes, now_ms: int) -> Verdict:
        """Rules 7 to 15: count one vote (decoding it first when given bytes)."""
        if isinstance(vote, bytes):
            decoded = decode_vote(vote)
            if isinstance(decoded, Verdict):
                return decoded
            vote = decoded
        if abs(vote.timestamp_ms - now_ms) > CLOCK_WINDOW_MS:
            return ignore("outside_clock_window")
        if self.closed:
            return ignore("round_closed")
        if vote.round != self.round:
            return ignore("wrong_round")
        if vote.validator not in self.validators:
            return ignore("not_a_validator")
        worker = self.proofs.get(vote.proof_id)
        if worker is None:
            return ignore("unknown_proof")
        if worker == vote.validator:
            return reject("self_vote")
        key = (vote.validator, vote.proof_id)
        if key in self._equivocated:
            return ignore("conflicting_vote")
        earlier = self._votes.get(key)
        if earlier is not None and earlier != vote.valid:
            self._equivocated.add(key)
            del self._votes[key]
            return ignore("conflicting_vote")
        if earlier is not None:
            return ignore("duplicate_vote")
        if len(self._votes) + len(self._equivocated) >= MAX_ROUND_VOTES:
            return ignore("tally_full")
        self._votes[key] = vote.valid
        return ACCEPT

    def counted(self) -> dict[tuple[bytes, bytes], bool]:
        """The votes that count: (validator, proof id) -> valid (equivocations left out)."""
        return dict(self._votes)

    def close(self) -> Settlement:
        """Settle every proof (the round's close); later votes are ignored."""
        self.closed = True
        stake_for: dict[bytes, int] = dict.fromkeys(self.proofs, 0)
        stake_against: dict[bytes, int] = dict.fromkeys(self.proofs, 0)
        for (validator, proof_id), valid in self._votes.items():
            side = stake_for if valid else stake_against
            side[proof_id] += self.validators[validator]
        outcomes: list[ProofOutcome] = []
        decided: dict[bytes, bool] = {}
        for proof_id in sorted(self.proofs):
            worker = self.proofs[proof_id]
            eligible = self.total_stake - self.validators.get(worker, 0)
            pro, con = stake_for[proof_id], stake_against[proof_id]
            if settles(pro, eligible):
                outcome = Outcome.ACCEPTED
                decided[proof_id] = True
            elif settles(con, eligible):
                outcome = Outcome.REJECTED
                decided[proof_id] = False
            else:
                outcome = Outcome.UNSETTLED
            outcomes.append(ProofOutcome(proof_id, worker, outcome, pro, con, eligible))
        dissenters = sorted(
            (v, p) for (v, p), valid in self._votes.items() if p in decided and decided[p] != valid
        )
        return Settlement(self.round, tuple(outcomes), tuple(dissenters), tuple(sorted(self._equivocated)))


def tally_votes(
    round_: int,
    validators: Mapping[bytes, int],
    proofs: Mapping[bytes, bytes],
    votes: Iterable[bytes],
    now_ms: int,
) -> tuple[list[Verdict], Settlement]:
    """Count ``votes`` in order, then close: each vote's verdict and the settlement."""
    tally = Tally(round_, validators, proofs)
    verdicts = [tally.add(v, now_ms) for v in votes]
    return verdicts, tally.close()
