"""Runner ``ledger``: the ledger's state encoding and state transitions (specs/ledger.md).

Handlers:

* ``state``: bytes that may be a canonical ledger state → its root, or the decode error's reason;
* ``transaction``: a pre-state and one signed operation (a ``topics.Transaction`` or
  ``topics.Stake``) → the verdict, its reason and the post-state root (the pre-state root when the
  operation is refused: nothing changes);
* ``settle``: a pre-state and one ``SettledRound`` → the round's verdict, each operation's verdict
  and the post-state root.
"""

from __future__ import annotations

from collections.abc import Mapping

from p2pshard.conformance.model import JSON, AnswerError, Case, Runner, exact, unhex
from p2pshard.core.gossip import Verdict
from p2pshard.core.gossip.signing import Secp256k1Signer
from p2pshard.core.ledger import (
    CREDIT,
    Account,
    Fee,
    LedgerParams,
    LedgerState,
    Op,
    Reward,
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
)
from p2pshard.core.ledger.ops import MAX_ROUND_OPS, MAX_TX_SIZE, make_stake, make_transfer
from p2pshard.core.ledger.state import (
    MAX_AMOUNT,
    MAX_REPUTATION,
    MAX_SUPPLY,
    STATE_TAG,
    encode_account,
    encode_params,
    with_account,
)
from p2pshard.core.wire import ledger_pb2, topics_pb2
from p2pshard.core.wire.framing import encode_uvarint

NAME = "ledger"
FILES = {
    "state": frozenset({"state.bin"}),
    "transaction": frozenset({"input.json", "pre.bin", "tx.bin"}),
    "settle": frozenset({"input.json", "pre.bin", "round.bin"}),
}

KEYS = [Secp256k1Signer((60 + i).to_bytes(32, "big")) for i in range(5)]
KA, KB, KC, KD, KE = KEYS
A, B, C, D, E = (k.peer_id for k in KEYS)
OFF_CURVE = A[:-1] + bytes([A[-1] ^ 1])  # the right form, but (for this key) not a point of the curve
PARAMS = LedgerParams(min_validator_stake=10 * CREDIT, unbonding_rounds=2, max_accounts=4, max_unbonding=2)
STAMP = 1_700_000_000_000


def _pre() -> LedgerState:
    """A (100 credits, 20 staked, nonce 0), B (50), C (1 staked); round 0."""
    return genesis(PARAMS, [(A, 100 * CREDIT, 20 * CREDIT), (B, 50 * CREDIT, 0), (C, 0, CREDIT)])


def _off_curve_ok() -> bytes:
    from p2pshard.core.ledger.state import is_account_id, is_account_id_form

    assert is_account_id_form(OFF_CURVE) and not is_account_id(OFF_CURVE)
    return OFF_CURVE


def _raw_state(params: bytes, round_: int, accounts: list[bytes], count: int | None = None) -> bytes:
    n = len(accounts) if count is None else count
    return STATE_TAG + params + encode_uvarint(round_) + encode_uvarint(n) + b"".join(accounts)


def _state_cases() -> list[Case]:
    cases: list[Case] = []

    def case(name: str, desc: str, data: bytes, root: str | None, error: str | None) -> None:
        cases.append(
            Case(
                NAME,
                "state",
                name,
                desc,
                error is None,
                input_bin={"state": data},
                expected={"root": root, "error": error},
            )
        )

    pre = _pre()
    params = encode_params(PARAMS)
    acc = encode_account(A, Account(balance=5))
    case("genesis", "a genesis state of three accounts", encode_state(pre), pre.root().hex(), None)
    empty = genesis(LedgerParams())
    case("empty", "default parameters, no accounts", encode_state(empty), empty.root().hex(), None)
    busy = with_account(
        pre, D, Account(balance=1, stake=2, reputation=0, nonce=9, unbonding=((3, 4), (7, 1)))
    )
    busy.round = 3
    case(
        "unbonding",
        "an account with two unbonding entries, round 3",
        encode_state(busy),
        busy.root().hex(),
        None,
    )
    good = encode_state(pre)
    case(
        "bad_tag",
        "does not start with STATE_TAG",
        b"p2pshard-ledger-stat!" + good[len(STATE_TAG) :],
        None,
        "bad_state_tag",
    )
    case("truncated", "the last byte is missing", good[:-1], None, "truncated")
    case("trailing_bytes", "one byte after the last account", good + b"\x00", None, "trailing_bytes")
    case(
        "malformed_varint",
        "the round is a non-minimal uvarint (0x80 0x00)",
        STATE_TAG + params + b"\x80\x00" + b"\x00",
        None,
        "malformed_varint",
    )
    case(
        "bad_params",
        "min_validator_stake of 0",
        STATE_TAG + b"\x00" + params[1:] + b"\x00\x00",
        None,
        "bad_params",
    )
    case(
        "too_many_accounts",
        "an account count above max_accounts (4)",
        _raw_state(params, 0, [], count=5),
        None,
        "too_many_accounts",
    )
    case(
        "bad_account_id",
        "an account id that is not a secp256k1 identity peer id",
        _raw_state(params, 0, [encode_account(b"\x00\x25\x08\x01" + A[4:], Account())]),
        None,
        "bad_account_id",
    )
    first, second = sorted([A, B])
    case(
        "unsorted_accounts",
        "two accounts in descending id order",
        _raw_state(params, 0, [encode_account(second, Account()), encode_account(first, Account())]),
        None,
        "unsorted_accounts",
    )
    case(
        "duplicate_account",
        "the same account twice",
        _raw_state(params, 0, [acc, acc]),
        None,
        "unsorted_accounts",
    )
    case(
        "reputation_above_max",
        "reputation MAX_REPUTATION + 1",
        _raw_state(params, 0, [encode_account(A, Account(reputation=MAX_REPUTATION + 1))]),
        None,
        "bad_value",
    )
    case(
        "zero_unbonding",
        "an unbonding entry of amount 0",
        _raw_state(params, 0, [encode_account(A, Account(unbonding=((3, 0),)))]),
        None,
        "bad_value",
    )
    case(
        "too_many_unbonding",
        "three unbonding entries, max_unbonding 2",
        _raw_state(params, 0, [encode_account(A, Account(unbonding=((1, 1), (2, 1), (3, 1))))]),
        None,
        "too_many_unbonding",
    )
    case(
        "unsorted_unbonding",
        "unbonding release rounds not ascending",
        _raw_state(params, 0, [encode_account(A, Account(unbonding=((3, 1), (2, 1))))]),
        None,
        "unsorted_unbonding",
    )
    case(
        "unbonding_before_round",
        "an unbonding entry due before the state's round (it should have been released)",
        _raw_state(params, 5, [encode_account(A, Account(unbonding=((4, 1),)))]),
        None,
        "unsorted_unbonding",
    )
    case(
        "supply_overflow",
        "two accounts holding MAX_SUPPLY between them, plus one",
        _raw_state(params, 0, sorted([acc, encode_account(B, Account(balance=MAX_SUPPLY - 4))])),
        None,
        "supply_overflow",
    )
    return cases


def _tampered(
    data: bytes, msg_type: type[topics_pb2.Transaction] | type[topics_pb2.Stake], **changes: object
) -> bytes:
    msg = msg_type()
    msg.ParseFromString(data)
    for k, v in changes.items():
        setattr(msg, k, v)
    return msg.SerializeToString()


def _resigned_for(topic: str, data: bytes) -> bytes:
    """A transfer whose signature is over another topic's signing bytes (a moved signature)."""
    from p2pshard.core.topics import signing_bytes

    msg = topics_pb2.Transaction()
    msg.ParseFromString(data)
    msg.signature = KA.sign(signing_bytes(topic, msg))
    return msg.SerializeToString()


def _transaction_cases() -> list[Case]:
    cases: list[Case] = []
    pre = _pre()

    def case(name: str, desc: str, topic: str, tx: bytes, state: LedgerState | None = None) -> None:
        state = state or pre
        post = state.copy()
        verdict = apply_transaction(post, topic, tx)
        cases.append(
            Case(
                NAME,
                "transaction",
                name,
                desc,
                verdict.accepted,
                input_json={"topic": topic, "pre_root": state.root().hex()},
                input_bin={"pre": encode_state(state), "tx": tx},
                expected={
                    "result": verdict.result.name,
                    "reason": verdict.reason,
                    "post_root": post.root().hex(),
                },
            )
        )

    t, s = "transactions", "stakes"
    case("transfer", "A sends 5 credits to B", t, make_transfer(KA, B, 5 * CREDIT, 1, STAMP))
    case(
        "transfer_new_account",
        "A sends 1 base unit to D, who has no account yet",
        t,
        make_transfer(KA, D, 1, 1),
    )
    case("transfer_whole_balance", "A sends its whole balance", t, make_transfer(KA, B, 100 * CREDIT, 1))
    after_one = pre.copy()
    apply_transaction(after_one, t, make_transfer(KA, B, 1, 1))
    case("transfer_second_nonce", "A's second transfer (nonce 2)", t, make_transfer(KA, C, 1, 2), after_one)
    case("stake", "B stakes 10 credits (and joins the validator set)", s, make_stake(KB, 10 * CREDIT, 1))
    case("unstake", "A unstakes 5 credits: unbonding until round 2", s, make_stake(KA, -5 * CREDIT, 1))
    unbonding = pre.copy()
    apply_transaction(unbonding, s, make_stake(KA, -CREDIT, 1))
    case(
        "unstake_merged",
        "a second unstake in the same round joins the same entry",
        s,
        make_stake(KA, -1, 2),
        unbonding,
    )
    case("unstake_all", "C unstakes all it has staked", s, make_stake(KC, -CREDIT, 1))
    case(
        "unknown_field_signed",
        "an unknown field the signer signed is kept and verifies",
        t,
        _resign(make_transfer(KA, B, 1, 1) + b"\xf8\x07\x01"),
    )
    # refused: the operation itself is wrong (REJECT)
    case("undecodable", "bytes that are not a Transaction", t, b"\x0a\xff\x01")
    case(
        "oversized",
        f"a transaction over MAX_TX_SIZE ({MAX_TX_SIZE} bytes)",
        t,
        make_transfer(KA, B, 1, 1) + b"\xc2\x3e" + encode_uvarint(MAX_TX_SIZE) + b"\x00" * MAX_TX_SIZE,
    )
    case(
        "bad_sender",
        "the sender is not a secp256k1 peer id",
        t,
        _tampered(make_transfer(KA, B, 1, 1), topics_pb2.Transaction, sender=b"\x01" * 39),
    )
    case(
        "bad_recipient",
        "the recipient's key is not a point of the curve",
        t,
        make_transfer(KA, _off_curve_ok(), 1, 1),
    )
    case("self_transfer", "A sends to A", t, make_transfer(KA, A, 1, 1))
    case("zero_amount", "an amount of 0", t, make_transfer(KA, B, 0, 1))
    case("amount_above_max", "MAX_AMOUNT + 1", t, make_transfer(KA, B, MAX_AMOUNT + 1, 1))
    case("zero_nonce", "nonce 0 (the first is 1)", t, make_transfer(KA, B, 1, 0))
    case(
        "tampered_amount",
        "the amount changed after signing",
        t,
        _tampered(make_transfer(KA, B, 1, 1), topics_pb2.Transaction, amount=2),
    )
    case(
        "wrong_key",
        "signed by B's key in A's name",
        t,
        _tampered(make_transfer(KB, B, 1, 1), topics_pb2.Transaction, sender=A, recipient=C),
    )
    case(
        "moved_signature",
        "signed over the stakes topic's signing bytes",
        t,
        _resigned_for("stakes", make_transfer(KA, B, 1, 1)),
    )
    case(
        "unknown_topic",
        "a transaction for a topic the ledger does not apply",
        "votes",
        make_transfer(KA, B, 1, 1),
    )
    case("stake_zero", "a stake of 0", s, make_stake(KB, 0, 1))
    case("stake_above_max", "an unstake of MAX_AMOUNT + 1", s, make_stake(KB, -(MAX_AMOUNT + 1), 1))
    # refused: the operation does not fit this state (IGNORE)
    case("replayed", "A's first transfer applied again", t, make_transfer(KA, B, 1, 1), after_one)
    case("nonce_gap", "nonce 2 before nonce 1", t, make_transfer(KA, B, 1, 2))
    case("insufficient_balance", "more than A's balance", t, make_transfer(KA, B, 100 * CREDIT + 1, 1))
    case("unknown_sender", "D has no account", t, make_transfer(KD, B, 1, 1))
    full = with_account(pre, D, Account(balance=1))
    case("too_many_accounts", "a fifth account with max_accounts 4", t, make_transfer(KA, E, 1, 1), full)
    case(
        "stake_insufficient_balance", "B stakes more than its balance", s, make_stake(KB, 50 * CREDIT + 1, 1)
    )
    case("insufficient_stake", "B unstakes with nothing staked", s, make_stake(KB, -1, 1))
    two = with_account(pre, A, Account(balance=1, stake=5, unbonding=((1, 1), (2, 1))))
    case(
        "too_many_unbonding",
        "a third unbonding entry with max_unbonding 2",
        s,
        make_stake(KA, -1, 1),
        _at_round(two, 1),
    )
    return cases


def _at_round(state: LedgerState, round_: int) -> LedgerState:
    out = state.copy()
    out.round = round_
    return out


def _resign(data: bytes) -> bytes:
    from p2pshard.core.topics import signing_bytes

    msg = topics_pb2.Transaction()
    msg.ParseFromString(data)
    msg.signature = KA.sign(signing_bytes("transactions", msg))
    return msg.SerializeToString()


def _settle_cases() -> list[Case]:
    cases: list[Case] = []
    pre = _pre()

    def case(name: str, desc: str, data: bytes, state: LedgerState | None = None) -> None:
        state = state or pre
        out = settle(state, data)
        if isinstance(out, Verdict):
            expected: dict[str, JSON] = {
                "result": out.result.name,
                "reason": out.reason,
                "verdicts": [],
                "post_root": state.root().hex(),
            }
        else:
            expected = {
                "result": "ACCEPT",
                "reason": "ok",
                "verdicts": [[v.result.name, v.reason] for v in out.verdicts],
                "post_root": out.state.root().hex(),
            }
        cases.append(
            Case(
                NAME,
                "settle",
                name,
                desc,
                not isinstance(out, Verdict) and all(v.accepted for v in out.verdicts),
                input_json={"pre_root": state.root().hex()},
                input_bin={"pre": encode_state(state), "round": data},
                expected=expected,
            )
        )

    def ops(*items: Op) -> list[Op]:
        return list(items)

    transfer = decode_transfer(make_transfer(KA, B, 5 * CREDIT, 1))
    unstake = decode_stake(make_stake(KA, -4 * CREDIT, 1))
    assert not isinstance(transfer, Verdict) and not isinstance(unstake, Verdict)
    case("empty", "a round with no operations: only the round advances", encode_round(0, []))
    case(
        "mixed",
        "a transfer, the same transfer again (stale_nonce), a reward, a slash and a fee",
        encode_round(
            0, ops(transfer, transfer, Reward(D, 3 * CREDIT, 10), Slash(C, CREDIT // 2, 100), Fee(B, A, 7))
        ),
    )
    case(
        "reward_new_account",
        "a reward creates D's account with reputation raised",
        encode_round(0, ops(Reward(D, 1, 0))),
    )
    case(
        "reputation_only",
        "a reward of reputation alone, capped at MAX_REPUTATION",
        encode_round(0, ops(Reward(A, 0, MAX_REPUTATION))),
    )
    case(
        "supply_overflow",
        "a reward past MAX_SUPPLY is ignored",
        encode_round(0, ops(Reward(B, MAX_AMOUNT), Reward(B, MAX_AMOUNT))),
        with_account(pre, D, Account(balance=MAX_SUPPLY - 171 * CREDIT - 2 * MAX_AMOUNT + 1)),
    )
    at1 = pre.copy()
    apply_transaction(at1, "stakes", make_stake(KA, -4 * CREDIT, 1))
    for _ in range(2):
        at1 = settle(at1, encode_round(at1.round, [])).state  # type: ignore[union-attr]
    case(
        "release",
        "A's unbonding entry (release round 2) returns to its balance when round 2 settles",
        encode_round(2, []),
        at1,
    )
    both = pre.copy()
    apply_transaction(both, "stakes", make_stake(KA, -4 * CREDIT, 1))
    case(
        "slash_into_unbonding",
        "a slash larger than the stake cuts the unbonding entry, then stops",
        encode_round(0, ops(Slash(A, 22 * CREDIT, 1), Slash(A, 100 * CREDIT, 0))),
        both,
    )
    case(
        "unknown_accounts",
        "a slash and a fee naming accounts that do not exist",
        encode_round(0, ops(Slash(D, 1, 1), Fee(D, A, 1))),
    )
    case("fee_insufficient", "a fee larger than the payer's balance", encode_round(0, ops(Fee(C, A, 1))))
    bad_ops = ledger_pb2.SettledRound(round=0)
    bad_ops.ops.add()  # empty
    bad_ops.ops.add().reward.CopyFrom(ledger_pb2.Reward(account=b"\x00" * 39, amount=1))
    bad_ops.ops.add().reward.CopyFrom(ledger_pb2.Reward(account=A))
    bad_ops.ops.add().slash.CopyFrom(ledger_pb2.Slash(account=A, amount=MAX_AMOUNT + 1))
    bad_ops.ops.add().reward.CopyFrom(ledger_pb2.Reward(account=A, amount=1, reputation=MAX_REPUTATION + 1))
    bad_ops.ops.add().fee.CopyFrom(ledger_pb2.Fee(payer=A, payee=A, amount=1))
    bad_ops.ops.add().fee.CopyFrom(ledger_pb2.Fee(payer=A, payee=B, amount=0))
    bad_ops.ops.add().transfer = b"\x0a\xff"
    bad_ops.ops.add().stake = make_stake(KA, 5, 1)
    case(
        "bad_operations",
        "operations refused on their own (empty, bad account, no effect, bad amounts, "
        "bad reputation, self fee, undecodable transfer) beside one good stake",
        bad_ops.SerializeToString(),
    )
    case("wrong_round", "round 1 offered to a state at round 0", encode_round(1, ops(transfer)))
    case("undecodable", "bytes that are not a SettledRound", b"\x12\xff")
    many = ledger_pb2.SettledRound(round=0)
    for _ in range(MAX_ROUND_OPS + 1):
        many.ops.add()
    case("too_many_ops", f"MAX_ROUND_OPS + 1 ({MAX_ROUND_OPS + 1}) operations", many.SerializeToString())
    return cases


def generate() -> list[Case]:
    return _state_cases() + _transaction_cases() + _settle_cases()


def _state_of(inp: Mapping[str, JSON]) -> LedgerState:
    try:
        return decode_state(unhex(inp.get("pre"), "pre"))
    except StateDecodeError as exc:
        raise AnswerError(f"pre is not a ledger state: {exc.reason}") from None


def answer(handler: str, inp: Mapping[str, JSON]) -> Mapping[str, JSON]:
    if handler == "state":
        try:
            state = decode_state(unhex(inp.get("state"), "state"))
        except StateDecodeError as exc:
            return {"root": None, "error": exc.reason}
        return {"root": state.root().hex(), "error": None}
    if handler == "transaction":
        state = _state_of(inp)
        verdict = apply_transaction(state, str(inp.get("topic")), unhex(inp.get("tx"), "tx"))
        return {"result": verdict.result.name, "reason": verdict.reason, "post_root": state.root().hex()}
    if handler == "settle":
        state = _state_of(inp)
        out = settle(state, unhex(inp.get("round"), "round"))
        if isinstance(out, Verdict):
            return {
                "result": out.result.name,
                "reason": out.reason,
                "verdicts": [],
                "post_root": state.root().hex(),
            }
        return {
            "result": "ACCEPT",
            "reason": "ok",
            "verdicts": [[v.result.name, v.reason] for v in out.verdicts],
            "post_root": out.state.root().hex(),
        }
    raise AnswerError(f"unknown handler {handler!r}")


RUNNER = Runner(NAME, FILES, generate, answer, exact)
