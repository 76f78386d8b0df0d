"""Fuzz the ledger's decoders: signed transfers and stakes (as applied to a state), settled
rounds and their operations, and ledger states.

Typed answers: a :class:`Verdict` with a known reason (operations, rounds), StateDecodeError with
a reason of STATE_ERRORS (states). A refused operation or round leaves the state byte-identical;
a state that decodes re-encodes to the same bytes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from p2pshard.core.gossip import Verdict
from p2pshard.core.gossip.signing import Secp256k1Signer
from p2pshard.core.ledger import (
    CREDIT,
    LedgerParams,
    Reward,
    Settled,
    StateDecodeError,
    apply_transaction,
    decode_op,
    decode_state,
    encode_round,
    encode_state,
    genesis,
    settle,
)
from p2pshard.core.ledger.ops import make_stake, make_transfer
from p2pshard.core.ledger.state import STATE_ERRORS
from p2pshard.core.wire import ledger_pb2, topics_pb2
from tests.fuzz.fuzzing import FUZZ, encoded, hostile, proto_message

KEYS = [Secp256k1Signer(bytes([i + 1]) * 32) for i in range(3)]
IDS = [k.peer_id for k in KEYS]
STATE = genesis(
    LedgerParams(min_validator_stake=CREDIT, unbonding_rounds=1, max_accounts=4, max_unbonding=2),
    [(IDS[0], 100 * CREDIT, 5 * CREDIT), (IDS[1], 3, 0)],
)
STATE_BYTES = encode_state(STATE)
REASONS = set(STATE_ERRORS)
amounts = st.integers(-3, 3) | st.integers(-(1 << 63), (1 << 63) - 1) | st.just(5 * CREDIT)
unsigned = st.integers(0, 3) | st.integers(0, (1 << 64) - 1)

transfers = st.builds(
    make_transfer, st.sampled_from(KEYS), st.sampled_from([*IDS, b"\x00" * 39]), unsigned, unsigned, unsigned
)
stakes = st.builds(make_stake, st.sampled_from(KEYS), amounts, unsigned, unsigned)
signed = (
    transfers
    | stakes
    | encoded(proto_message(topics_pb2.Transaction))
    | encoded(proto_message(topics_pb2.Stake))
)


@FUZZ
@given(st.sampled_from(["transactions", "stakes"]), hostile(signed))
def test_ledger_transactions(topic: str, data: bytes) -> None:
    state = STATE.copy()
    verdict = apply_transaction(state, topic, data)
    assert isinstance(verdict, Verdict) and verdict.reason.islower()
    if not verdict.accepted:
        assert encode_state(state) == STATE_BYTES
    else:
        assert state.supply == STATE.supply and state.root() != STATE.root()


def _round(ops: list[bytes], round_: int, reward: int) -> bytes:
    """A SettledRound of one reward and ``ops`` (encoded LedgerOps, appended as field 2)."""
    head = encode_round(round_, [Reward(IDS[2], reward)])
    return head + b"".join(b"\x12" + bytes([len(o)]) + o for o in ops if len(o) < 128)


ledger_ops = encoded(
    proto_message(
        ledger_pb2.LedgerOp,
        overrides={"account": st.sampled_from(IDS) | st.binary(max_size=40), "transfer": transfers},
    )
)
rounds = st.builds(
    _round,
    st.lists(ledger_ops, max_size=6),
    st.integers(0, 2),
    st.integers(1, 5),
)


@FUZZ
@given(hostile(ledger_ops))
def test_ledger_operations(data: bytes) -> None:
    op = decode_op(data)
    if isinstance(op, Verdict):
        assert not op.accepted and op.reason.islower()


@FUZZ
@given(hostile(rounds | encoded(proto_message(ledger_pb2.SettledRound))))
def test_ledger_rounds(data: bytes) -> None:
    out = settle(STATE, data)
    assert encode_state(STATE) == STATE_BYTES  # settle never changes its input
    if isinstance(out, Verdict):
        assert not out.accepted
    else:
        assert isinstance(out, Settled) and out.state.round == 1
        assert sum(a.held for a in out.state.accounts.values()) == out.state.supply
        assert decode_state(encode_state(out.state)).root() == out.state.root()


@FUZZ
@given(hostile(st.just(STATE_BYTES) | st.just(encode_state(genesis(LedgerParams())))))
def test_ledger_states(data: bytes) -> None:
    try:
        state = decode_state(data)
    except StateDecodeError as exc:
        assert exc.reason in REASONS
    else:
        assert encode_state(state) == data
