"""The ledger's transitions: each rule's verdict, that a refused operation changes nothing, that
value is conserved (only rewards mint, only slashes burn) and that the root names the state."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pshard.core.gossip import ValidationResult
from p2pshard.core.ledger import (
    CREDIT,
    Account,
    Fee,
    LedgerParams,
    Reward,
    RoundBlock,
    Settled,
    Slash,
    StateDecodeError,
    apply_transaction,
    decode_stake,
    decode_state,
    decode_transfer,
    encode_round,
    encode_state,
    genesis,
    settle,
    transition,
)
from p2pshard.core.ledger.ops import make_stake, make_transfer
from p2pshard.core.ledger.state import MAX_AMOUNT, MAX_REPUTATION, MAX_SUPPLY
from tests.ledger.helpers import KEYS, PARAMS, A, B, C, D, E, F, fresh

KA, KB, KC, KD = KEYS[:4]


def _reason(state, topic: str, data: bytes) -> str:
    before = encode_state(state)
    verdict = apply_transaction(state, topic, data)
    if not verdict.accepted:
        assert encode_state(state) == before, "a refused operation changed the state"
    return verdict.reason


def test_transfer_moves_balance_and_bumps_the_nonce() -> None:
    s = fresh()
    assert _reason(s, "transactions", make_transfer(KA, B, 5 * CREDIT, 1)) == "ok"
    assert s.accounts[A].balance == 95 * CREDIT and s.accounts[A].nonce == 1
    assert s.accounts[B].balance == 55 * CREDIT and s.accounts[B].nonce == 0
    assert _reason(s, "transactions", make_transfer(KA, D, 1, 2)) == "ok"
    assert s.accounts[D] == Account(balance=1)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (make_transfer(KA, B, 5, 1)[:-3], "undecodable"),
        (b"\x0a" + bytes([200]) + b"\x00" * 200 + b"x" * 1000, "oversized"),
        (make_transfer(KA, B, 0, 1), "bad_amount"),
        (make_transfer(KA, B, MAX_AMOUNT + 1, 1), "bad_amount"),
        (make_transfer(KA, A, 5, 1), "self_transfer"),
        (make_transfer(KA, b"\x00\x25" + b"\x01" * 37, 5, 1), "bad_recipient"),
        (make_transfer(KA, B, 5, 0), "bad_nonce"),
        (make_transfer(KA, B, 5, 2), "future_nonce"),
        (make_transfer(KA, B, 101 * CREDIT, 1), "insufficient_balance"),
        (make_transfer(KD, B, 1, 1), "unknown_account"),
    ],
)
def test_transfer_refusals(data: bytes, reason: str) -> None:
    assert _reason(fresh(), "transactions", data) == reason


def test_a_transfer_signed_by_another_key_or_replayed_is_refused() -> None:
    s = fresh()
    forged = make_transfer(KB, B, 5, 1)  # B signs a transfer naming A as sender: re-sign under A's name
    from p2pshard.core.wire import topics_pb2

    msg = topics_pb2.Transaction()
    msg.ParseFromString(forged)
    msg.sender, msg.recipient = A, C
    assert _reason(s, "transactions", msg.SerializeToString()) == "bad_signature"
    tx = make_transfer(KA, B, 5, 1)
    assert _reason(s, "transactions", tx) == "ok"
    assert _reason(s, "transactions", tx) == "stale_nonce"
    assert apply_transaction(s, "transactions", tx).result is ValidationResult.IGNORE
    assert decode_transfer(b"\x00garbage").result is ValidationResult.REJECT


def test_stake_unstake_and_release_after_the_unbonding_rounds() -> None:
    s = fresh()
    assert _reason(s, "stakes", make_stake(KB, 10 * CREDIT, 1)) == "ok"
    assert s.accounts[B].stake == 10 * CREDIT and s.accounts[B].balance == 40 * CREDIT
    assert [v for v, _ in s.validators()] == sorted([A, B])
    assert _reason(s, "stakes", make_stake(KB, -4 * CREDIT, 2)) == "ok"
    assert s.accounts[B].unbonding == ((2, 4 * CREDIT),)
    assert [v for v, _ in s.validators()] == [A]
    assert _reason(s, "stakes", make_stake(KB, -1 * CREDIT, 3)) == "ok"  # same release round: merged
    assert s.accounts[B].unbonding == ((2, 5 * CREDIT),)
    for r in range(3):
        out = settle(s, RoundBlock(r, ()))
        assert isinstance(out, Settled)
        s = out.state
        assert s.accounts[B].balance == (45 if r == 2 else 40) * CREDIT, r
    assert s.accounts[B].unbonding == () and s.round == 3


@pytest.mark.parametrize(
    ("key", "amount", "nonce", "reason"),
    [
        (KB, 0, 1, "bad_amount"),
        (KB, -(MAX_AMOUNT + 1), 1, "bad_amount"),
        (KB, 51 * CREDIT, 1, "insufficient_balance"),
        (KB, -1, 1, "insufficient_stake"),
        (KA, 1, 2, "future_nonce"),
        (KD, 1, 1, "unknown_account"),
    ],
)
def test_stake_refusals(key, amount: int, nonce: int, reason: str) -> None:
    assert _reason(fresh(), "stakes", make_stake(key, amount, nonce)) == reason


def test_unbonding_entries_are_bounded() -> None:
    s = fresh()
    for i in range(3):
        assert _reason(s, "stakes", make_stake(KA, -1, i + 1)) == "ok"
        s = settle(s, RoundBlock(s.round, ())).state
    assert len(s.accounts[A].unbonding) == 2  # the first was released after 2 rounds
    assert _reason(s, "stakes", make_stake(KA, -1, 4)) == "ok"
    assert _reason(s, "stakes", make_stake(KA, -1, 5)) == "ok"  # merged with the last
    s.params = LedgerParams(10 * CREDIT, 2, 8, 3)
    s2 = settle(s, RoundBlock(s.round, ())).state
    assert _reason(s2, "stakes", make_stake(KA, -1, 6)) == "ok"
    s3 = settle(s2, RoundBlock(s2.round, ())).state
    s3.params = LedgerParams(10 * CREDIT, 5, 8, len(s3.accounts[A].unbonding))
    assert _reason(s3, "stakes", make_stake(KA, -1, 7)) == "too_many_unbonding"


def test_accounts_are_bounded() -> None:
    s = genesis(LedgerParams(max_accounts=2), [(A, 10, 0)])
    assert _reason(s, "transactions", make_transfer(KA, B, 1, 1)) == "ok"
    assert _reason(s, "transactions", make_transfer(KA, C, 1, 2)) == "too_many_accounts"
    assert _reason(s, "transactions", make_transfer(KA, B, 1, 2)) == "ok"  # existing account: fine


def test_system_operations_only_through_settlement() -> None:
    s = fresh()
    block = RoundBlock(
        0,
        (
            Reward(D, 7 * CREDIT, 100),
            Slash(A, 25 * CREDIT, 6000),  # more than the stake: the unbonding is cut too, then nothing
            Fee(B, E, 2 * CREDIT),
            Fee(F, E, 1),
            Slash(F, 1, 0),
            Reward(E, MAX_SUPPLY, 0),
        ),
    )
    out = settle(s, block)
    assert isinstance(out, Settled)
    assert [v.reason for v in out.verdicts] == [
        "ok",
        "ok",
        "ok",
        "unknown_account",
        "unknown_account",
        "supply_overflow",
    ]
    post = out.state
    assert post.accounts[D] == Account(balance=7 * CREDIT, reputation=5100)
    assert post.accounts[A].stake == 0 and post.accounts[A].reputation == 0
    assert post.accounts[E].balance == 2 * CREDIT
    assert post.supply == s.supply + 7 * CREDIT - 20 * CREDIT
    assert encode_state(s) == encode_state(fresh()), "settle changed its input"
    assert settle(s, RoundBlock(1, ())).reason == "wrong_round"


def test_slash_takes_stake_then_unbonding_in_release_order() -> None:
    s = fresh()
    apply_transaction(s, "stakes", make_stake(KA, -5 * CREDIT, 1))
    s = settle(s, RoundBlock(0, ())).state
    apply_transaction(s, "stakes", make_stake(KA, -5 * CREDIT, 2))
    assert s.accounts[A].unbonding == ((2, 5 * CREDIT), (3, 5 * CREDIT))
    out = settle(s, RoundBlock(1, (Slash(A, 17 * CREDIT, 0),)))
    assert out.state.accounts[A].stake == 0
    assert out.state.accounts[A].unbonding == ((3, 3 * CREDIT),)
    assert Account(reputation=MAX_REPUTATION).reputation == MAX_REPUTATION


def test_settle_from_bytes_keeps_bad_operations_as_their_verdicts() -> None:
    s = fresh()
    from p2pshard.core.ledger.ops import decode_round

    good = decode_transfer(make_transfer(KA, B, 1, 1))
    data = encode_round(0, [good, Reward(B, 1)])
    data += b"\x12\x02\x0a\x00"  # a third op: an empty transfer (no sender)
    block = decode_round(data)
    assert isinstance(block, RoundBlock) and len(block.ops) == 3
    out = settle(s, data)
    assert [v.reason for v in out.verdicts] == ["ok", "ok", "bad_sender"]
    assert settle(s, b"\xff").reason == "undecodable"


def test_transition_is_functional() -> None:
    s = fresh()
    op = decode_transfer(make_transfer(KA, B, 1, 1))
    post = transition(s, op)
    assert not isinstance(post, type(op)) and post is not s
    assert encode_state(s) == encode_state(fresh())
    assert transition(s, decode_stake(make_stake(KA, -1000 * CREDIT, 1))).reason == "insufficient_stake"


def test_state_encoding_round_trips_and_is_canonical() -> None:
    s = fresh()
    apply_transaction(s, "stakes", make_stake(KA, -3, 1))
    data = encode_state(s)
    back = decode_state(data)
    assert encode_state(back) == data and back.supply == s.supply and back.root() == s.root()
    for bad, reason in [
        (data + b"\x00", "trailing_bytes"),
        (data[:-1], "truncated"),
        (b"x" + data, "bad_state_tag"),
    ]:
        with pytest.raises(StateDecodeError) as exc:
            decode_state(bad)
        assert exc.value.reason == reason


def test_genesis_refuses_bad_configuration() -> None:
    with pytest.raises(ValueError):
        genesis(LedgerParams(min_validator_stake=0))
    with pytest.raises(ValueError):
        genesis(PARAMS, [(A, 1, 0), (A, 1, 0)])
    with pytest.raises(ValueError):
        genesis(PARAMS, [(b"\x00" * 39, 1, 0)])
    with pytest.raises(ValueError):
        genesis(PARAMS, [(A, MAX_SUPPLY, 1)])


# ----------------------------------------------------------------------------- properties

_OPS = st.lists(
    st.tuples(
        st.sampled_from(["transfer", "stake", "unstake", "reward", "slash", "fee", "junk"]),
        st.integers(0, 3),
        st.integers(0, 3),
        st.integers(0, 60 * CREDIT),
        st.integers(0, 4),
    ),
    max_size=24,
)


def _build(plan: list[tuple[str, int, int, int, int]], nonces: dict[int, int]) -> list:
    ids = [A, B, C, D]
    out: list = []
    for kind, i, j, amount, nonce_skew in plan:
        key = KEYS[i]
        nonce = nonces.get(i, 0) + 1 if nonce_skew < 3 else nonce_skew
        if kind == "transfer":
            out.append(decode_transfer(make_transfer(key, ids[j], amount, nonce)))
        elif kind in ("stake", "unstake"):
            out.append(decode_stake(make_stake(key, amount if kind == "stake" else -amount, nonce)))
        elif kind == "reward":
            out.append(Reward(ids[i], amount, nonce_skew))
        elif kind == "slash":
            out.append(Slash(ids[i], amount, nonce_skew))
        elif kind == "fee":
            out.append(Fee(ids[i], ids[j], amount) if i != j and amount else Reward(ids[i], 1))
        else:
            from p2pshard.core.gossip import reject

            out.append(reject("undecodable"))
        if kind in ("transfer", "stake", "unstake"):
            nonces[i] = nonce
    return out


@settings(max_examples=150, deadline=None, derandomize=True)
@given(_OPS, _OPS)
def test_replaying_the_same_rounds_gives_the_same_root_and_value_is_conserved(plan1, plan2) -> None:
    nonces: dict[int, int] = {}
    rounds = [_build(plan1, nonces), _build(plan2, nonces)]
    roots = []
    for _ in range(2):
        s = fresh()
        for r, ops in enumerate(rounds):
            before = s
            out = settle(s, RoundBlock(r, tuple(ops)))
            assert isinstance(out, Settled)
            pairs = zip(ops, out.verdicts, strict=True)
            minted = sum(o.amount for o, v in pairs if isinstance(o, Reward) and v.accepted)
            burned = before.supply + minted - out.state.supply
            assert burned >= 0
            assert burned <= sum(o.amount for o in ops if isinstance(o, Slash))
            s = out.state
            assert decode_state(encode_state(s)).root() == s.root()
            assert sum(a.held for a in s.accounts.values()) == s.supply
        roots.append(s.root())
    assert roots[0] == roots[1]
    # encoded and decoded rounds settle to the same root
    s = fresh()
    for r, ops in enumerate(rounds):
        real = [o for o in ops if not hasattr(o, "result")]
        s = settle(s, encode_round(r, real)).state
    t = fresh()
    for r, ops in enumerate(rounds):
        t = settle(t, RoundBlock(r, tuple(o for o in ops if not hasattr(o, "result")))).state
    assert s.root() == t.root()


def test_the_root_depends_on_every_field() -> None:
    base = fresh()
    roots = {base.root()}
    rng = random.Random(1)
    for change in [
        {"balance": 1},
        {"stake": 1},
        {"reputation": 1},
        {"nonce": 1},
    ]:
        s = base.copy()
        acc = s.accounts[B]
        from dataclasses import replace

        s.put(B, replace(acc, **{k: getattr(acc, k) + v for k, v in change.items()}))
        roots.add(s.root())
    s = base.copy()
    s.round += 1
    roots.add(s.root())
    s = base.copy()
    s.params = LedgerParams(min_validator_stake=rng.randint(1, 5))
    roots.add(s.root())
    assert len(roots) == 7
