"""The ledger's operations and their decoders (specs/ledger.md, "Operations").

Signed operations are the topic messages their accounts sign (``topics.Transaction`` for a
transfer, ``topics.Stake`` for a stake or unstake); their signature is the topic author
signature (specs/topics.md), checked here over the decoded message's canonical encoding.
System operations (reward, slash, fee) are unsigned and exist only inside a ``SettledRound``.

A decoder never raises on peer bytes: it returns the operation, or a REJECT :class:`Verdict`
with a stable reason. Structural rules (size, shape of ids, amount bounds) are checked here;
rules that depend on the state (nonce, balance, bounds of the state) in ``transitions``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol

from google.protobuf.message import DecodeError

from p2pshard.core.gossip import Verdict, reject
from p2pshard.core.ledger.state import MAX_AMOUNT, MAX_REPUTATION, MAX_SUPPLY, is_account_id
from p2pshard.core.topics import signing_bytes, verify_author
from p2pshard.core.wire import ledger_pb2, topics_pb2

MAX_TX_SIZE: Final = 1024
"""Largest encoded signed operation (a Transaction or Stake message), in bytes."""
MAX_ROUND_OPS: Final = 10_000
"""Most operations one settled round may hold."""
MAX_ROUND_SIZE: Final = 4 * 1024 * 1024
"""Largest encoded SettledRound, in bytes."""
MAX_NONCE: Final = MAX_SUPPLY
"""Largest nonce (an account's first signed operation has nonce 1)."""
TRANSFER_TOPIC: Final = "transactions"
STAKE_TOPIC: Final = "stakes"


@dataclass(frozen=True, slots=True)
class Transfer:
    sender: bytes
    recipient: bytes
    amount: int
    nonce: int
    raw: bytes
    """The bytes as received (what a settled round stores)."""


@dataclass(frozen=True, slots=True)
class StakeChange:
    """``amount > 0`` moves balance to stake; ``amount < 0`` unstakes ``-amount`` into unbonding."""

    staker: bytes
    amount: int
    nonce: int
    raw: bytes


@dataclass(frozen=True, slots=True)
class Reward:
    account: bytes
    amount: int
    reputation: int = 0


@dataclass(frozen=True, slots=True)
class Slash:
    account: bytes
    amount: int
    reputation: int = 0


@dataclass(frozen=True, slots=True)
class Fee:
    payer: bytes
    payee: bytes
    amount: int


SignedOp = Transfer | StakeChange
SystemOp = Reward | Slash | Fee
Op = SignedOp | SystemOp


@dataclass(frozen=True, slots=True)
class RoundBlock:
    """One settled round: the operations every node applies, in order (each op or its reason)."""

    round: int
    ops: tuple[Op | Verdict, ...]


def _parse(message: topics_pb2.Transaction | topics_pb2.Stake, data: bytes) -> Verdict | None:
    if len(data) > MAX_TX_SIZE:
        return reject("oversized")
    try:
        message.ParseFromString(data)
    except (DecodeError, RecursionError, ValueError):
        return reject("undecodable")
    return None


def decode_transfer(data: bytes) -> Transfer | Verdict:
    """A ``topics.Transaction``: structure and signature (rules T1 to T8 of specs/ledger.md)."""
    msg = topics_pb2.Transaction()
    bad = _parse(msg, data)
    if bad is not None:
        return bad
    if not is_account_id(msg.sender):
        return reject("bad_sender")
    if not is_account_id(msg.recipient):
        return reject("bad_recipient")
    if msg.recipient == msg.sender:
        return reject("self_transfer")
    if not 1 <= msg.amount <= MAX_AMOUNT:
        return reject("bad_amount")
    if not 1 <= msg.nonce <= MAX_NONCE:
        return reject("bad_nonce")
    if not verify_author(msg.sender, signing_bytes(TRANSFER_TOPIC, msg), msg.signature):
        return reject("bad_signature")
    return Transfer(bytes(msg.sender), bytes(msg.recipient), msg.amount, msg.nonce, bytes(data))


def decode_stake(data: bytes) -> StakeChange | Verdict:
    """A ``topics.Stake``: structure and signature (rules S1 to S6 of specs/ledger.md)."""
    msg = topics_pb2.Stake()
    bad = _parse(msg, data)
    if bad is not None:
        return bad
    if not is_account_id(msg.staker):
        return reject("bad_sender")
    if msg.amount == 0 or abs(msg.amount) > MAX_AMOUNT:
        return reject("bad_amount")
    if not 1 <= msg.nonce <= MAX_NONCE:
        return reject("bad_nonce")
    if not verify_author(msg.staker, signing_bytes(STAKE_TOPIC, msg), msg.signature):
        return reject("bad_signature")
    return StakeChange(bytes(msg.staker), msg.amount, msg.nonce, bytes(data))


def _system(pb: ledger_pb2.Reward | ledger_pb2.Slash) -> Verdict | None:
    if not is_account_id(pb.account):
        return reject("bad_account")
    if pb.amount > MAX_AMOUNT:
        return reject("bad_amount")
    if pb.reputation > MAX_REPUTATION:
        return reject("bad_reputation")
    if pb.amount == 0 and pb.reputation == 0:
        return reject("no_effect")
    return None


def op_from_pb(pb: ledger_pb2.LedgerOp) -> Op | Verdict:
    which = pb.WhichOneof("op")
    if which == "transfer":
        return decode_transfer(pb.transfer)
    if which == "stake":
        return decode_stake(pb.stake)
    if which == "reward" or which == "slash":
        sub = pb.reward if which == "reward" else pb.slash
        bad = _system(sub)
        if bad is not None:
            return bad
        cls = Reward if which == "reward" else Slash
        return cls(bytes(sub.account), sub.amount, sub.reputation)
    if which == "fee":
        fee = pb.fee
        if not is_account_id(fee.payer) or not is_account_id(fee.payee):
            return reject("bad_account")
        if fee.payer == fee.payee:
            return reject("self_transfer")
        if not 1 <= fee.amount <= MAX_AMOUNT:
            return reject("bad_amount")
        return Fee(bytes(fee.payer), bytes(fee.payee), fee.amount)
    return reject("empty_op")


def op_to_pb(op: Op) -> ledger_pb2.LedgerOp:
    if isinstance(op, Transfer):
        return ledger_pb2.LedgerOp(transfer=op.raw)
    if isinstance(op, StakeChange):
        return ledger_pb2.LedgerOp(stake=op.raw)
    if isinstance(op, Reward):
        return ledger_pb2.LedgerOp(
            reward=ledger_pb2.Reward(account=op.account, amount=op.amount, reputation=op.reputation)
        )
    if isinstance(op, Slash):
        return ledger_pb2.LedgerOp(
            slash=ledger_pb2.Slash(account=op.account, amount=op.amount, reputation=op.reputation)
        )
    return ledger_pb2.LedgerOp(fee=ledger_pb2.Fee(payer=op.payer, payee=op.payee, amount=op.amount))


def decode_op(data: bytes) -> Op | Verdict:
    """One ``LedgerOp`` (its own bytes)."""
    if len(data) > MAX_TX_SIZE + 16:
        return reject("oversized")
    pb = ledger_pb2.LedgerOp()
    try:
        pb.ParseFromString(data)
    except (DecodeError, RecursionError, ValueError):
        return reject("undecodable")
    return op_from_pb(pb)


def encode_round(round_: int, ops: list[Op]) -> bytes:
    pb = ledger_pb2.SettledRound(round=round_)
    pb.ops.extend(op_to_pb(op) for op in ops)
    return pb.SerializeToString(deterministic=True)


def decode_round(data: bytes) -> RoundBlock | Verdict:
    """A ``SettledRound``. Its operations are decoded one by one; a bad operation is kept as its
    REJECT verdict (it will change nothing), so one bad operation never hides the others. A
    round that is too large, undecodable or holds too many operations is rejected whole."""
    if len(data) > MAX_ROUND_SIZE:
        return reject("oversized")
    pb = ledger_pb2.SettledRound()
    try:
        pb.ParseFromString(data)
    except (DecodeError, RecursionError, ValueError):
        return reject("undecodable")
    if len(pb.ops) > MAX_ROUND_OPS:
        return reject("too_many_ops")
    return RoundBlock(pb.round, tuple(op_from_pb(op) for op in pb.ops))


class AccountKey(Protocol):
    """What signs an operation: a raw peer id and a secp256k1 signature (``gossip.Secp256k1Signer``)."""

    @property
    def peer_id(self) -> bytes: ...

    def sign(self, data: bytes) -> bytes: ...


def make_transfer(key: AccountKey, recipient: bytes, amount: int, nonce: int, timestamp_ms: int = 0) -> bytes:
    """A signed ``topics.Transaction`` (its bytes)."""
    msg = topics_pb2.Transaction(
        sender=key.peer_id, recipient=recipient, amount=amount, nonce=nonce, timestamp_ms=timestamp_ms
    )
    msg.signature = key.sign(signing_bytes(TRANSFER_TOPIC, msg))
    return msg.SerializeToString(deterministic=True)


def make_stake(key: AccountKey, amount: int, nonce: int, timestamp_ms: int = 0) -> bytes:
    """A signed ``topics.Stake`` (``amount < 0`` unstakes)."""
    msg = topics_pb2.Stake(staker=key.peer_id, amount=amount, nonce=nonce, timestamp_ms=timestamp_ms)
    msg.signature = key.sign(signing_bytes(STAKE_TOPIC, msg))
    return msg.SerializeToString(deterministic=True)
