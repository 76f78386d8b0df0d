"""Fuzz the Proof of Neural Work decoders: work proofs judged against a context and a seen
state, validation votes added to a tally, and encoded seen states.

Typed answers only: a :class:`Verdict` with a snake_case reason (proofs, votes), SeenDecodeError
with a reason of SEEN_ERRORS (seen states). A proof that is not accepted leaves the seen state
byte-identical; a seen state that decodes re-encodes to the same bytes."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from p2pshard.core.gossip import Verdict
from p2pshard.core.gossip.signing import Secp256k1Signer
from p2pshard.core.wire import topics_pb2
from p2pshard.core.work import (
    SeenDecodeError,
    SeenEntry,
    SeenProofs,
    Tally,
    WorkContext,
    check_proof,
    make_proof,
    make_vote,
)
from p2pshard.core.work.seen import SEEN_ERRORS
from tests.fuzz.fuzzing import FUZZ, encoded, hostile, proto_message

KEYS = [Secp256k1Signer(bytes([i + 7]) * 32) for i in range(3)]
IDS = [k.peer_id for k in KEYS]
NOW = 1_700_000_000_000
SHARD = hashlib.sha256(b"shard").digest()
CTX = WorkContext(
    60_000, lambda _w, r: (SHARD,) if r < 10 else None, lambda w: 100.0 if w != IDS[2] else None
)
unsigned = st.integers(0, 3) | st.integers(0, (1 << 64) - 1)


def _proof(
    key: Secp256k1Signer, round_: int, tokens: int, batches: int, stamp: int, shards: list[bytes]
) -> bytes:
    return make_proof(
        key,
        round_=round_,
        model_hash=b"\x01" * 32,
        tokens=tokens,
        batches=batches,
        layers=(0, 4),
        data_shards=shards,
        update_hash=b"\x02" * 32,
        timestamp_ms=stamp,
        nonce=b"\x03" * 16,
    )


proofs = st.builds(
    _proof,
    st.sampled_from(KEYS),
    st.integers(0, 12),
    st.integers(0, 8_000) | unsigned,
    st.integers(0, 20) | unsigned,
    st.sampled_from([NOW, NOW - 400_000]) | unsigned,
    st.lists(st.sampled_from([SHARD, b"\x00" * 32, b"\x01"]), max_size=3),
)
SEEN = SeenProofs(capacity=8)
SEEN.add(SeenEntry(NOW - 10, hashlib.sha256(b"x").digest(), IDS[0], 3))
SEEN_BYTES = SEEN.encode()


@FUZZ
@given(hostile(proofs | encoded(proto_message(topics_pb2.WorkProof))))
def test_work_proofs(data: bytes) -> None:
    seen = SeenProofs.decode(SEEN_BYTES, capacity=8)
    verdict, proof = check_proof(data, CTX, seen, NOW)
    assert isinstance(verdict, Verdict) and verdict.reason.islower()
    if verdict.accepted:
        assert proof is not None and seen.seen(proof.proof_id) and len(seen) == 2
    else:
        assert seen.encode() == SEEN_BYTES


P1 = hashlib.sha256(b"p1").digest()
votes = st.builds(
    lambda k, p, v, s, r, t: make_vote(k, p, v, score=s, round_=r, timestamp_ms=t),
    st.sampled_from(KEYS),
    st.sampled_from([P1, b"\x00" * 32, b"\x01"]),
    st.booleans(),
    st.integers(-(1 << 63), (1 << 63) - 1) | st.integers(-3, 3),
    st.integers(0, 2) | unsigned,
    st.just(NOW) | unsigned,
)


@FUZZ
@given(st.lists(hostile(votes | encoded(proto_message(topics_pb2.ValidationVote))), max_size=4))
def test_work_votes(data: list[bytes]) -> None:
    tally = Tally(1, {IDS[0]: 5, IDS[1]: 3}, {P1: IDS[2]})
    for item in data:
        verdict = tally.add(item, NOW)
        assert isinstance(verdict, Verdict) and verdict.reason.islower()
    settlement = tally.close()
    (outcome,) = settlement.outcomes
    assert outcome.stake_for + outcome.stake_against <= outcome.eligible_stake == 8


@FUZZ
@given(hostile(st.just(SEEN_BYTES) | st.just(SeenProofs().encode())))
def test_work_seen_states(data: bytes) -> None:
    try:
        seen = SeenProofs.decode(data, capacity=8)
    except SeenDecodeError as exc:
        assert exc.reason in SEEN_ERRORS
    else:
        assert seen.encode() == data
