"""The ledger's state: accounts, parameters, the canonical encoding and the state root (specs/ledger.md).

Amounts are integers of base units (``CREDIT`` base units make one credit); nothing here is a
float. Every value is bounded: the sum of all balances, stakes and unbonding amounts (the
``supply``) never exceeds ``MAX_SUPPLY``, so no field can overflow a signed 64-bit integer
(SQLite's INTEGER) and no sum needs a check of its own.

The state root is ``SHA-256(encode_state(state))``. The encoding is canonical: parameters, the
round, then the accounts in ascending byte order of their ids, every integer a minimal uvarint;
:func:`decode_state` refuses anything else, so one state has exactly one encoding and two nodes
holding the same state hold the same root, byte for byte.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from p2pshard.core.wire.framing import MalformedVarint, decode_uvarint, encode_uvarint

STATE_TAG: Final = b"p2pshard-ledger-state:"
"""First bytes of every encoded state (domain separation of the state root)."""
CREDIT: Final = 10**9
"""Base units in one credit."""
MAX_SUPPLY: Final = 2**63 - 1
"""Largest sum of every account's balance, stake and unbonding amounts (fits SQLite's INTEGER)."""
MAX_AMOUNT: Final = 10**18
"""Largest amount one operation may name (base units)."""
MAX_REPUTATION: Final = 10_000
INITIAL_REPUTATION: Final = 5_000
"""Reputation of a new account, in [0, MAX_REPUTATION]."""
ACCOUNT_ID_PREFIX: Final = bytes.fromhex("002508021221")
"""An account id is a raw secp256k1 peer id: identity multihash of the marshalled 33-byte key."""
ACCOUNT_ID_SIZE: Final = 39
MAX_STATE_ACCOUNTS: Final = 1_000_000
"""Upper bound of ``max_accounts`` (what any node must be able to hold)."""
MAX_STATE_UNBONDING: Final = 64
"""Upper bound of ``max_unbonding``."""
MAX_UNBONDING_ROUNDS: Final = 100_000
"""Upper bound of ``unbonding_rounds``."""

STATE_ERRORS: Final = (
    "bad_state_tag",
    "truncated",
    "malformed_varint",
    "bad_params",
    "too_many_accounts",
    "bad_account_id",
    "unsorted_accounts",
    "bad_value",
    "too_many_unbonding",
    "unsorted_unbonding",
    "supply_overflow",
    "trailing_bytes",
)
"""The reasons of :class:`StateDecodeError`."""


class StateDecodeError(ValueError):
    """Bytes that are not a canonical ledger state: ``reason`` is one of :data:`STATE_ERRORS`."""

    def __init__(self, reason: str, message: str = "") -> None:
        if reason not in STATE_ERRORS:
            raise ValueError(f"unknown state error reason {reason!r}")
        super().__init__(message or reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class LedgerParams:
    """The network's ledger parameters: fixed at genesis, part of every state root."""

    min_validator_stake: int = 100 * CREDIT
    """Stake an account needs to be in the validator set (base units, ≥ 1)."""
    unbonding_rounds: int = 10
    """Rounds an unstaked amount stays locked (and slashable) before it returns to the balance."""
    max_accounts: int = 100_000
    max_unbonding: int = 16
    """Unbonding entries one account may hold at once."""

    def problem(self) -> str | None:
        """What is wrong with these parameters, or None."""
        if not 1 <= self.min_validator_stake <= MAX_AMOUNT:
            return "min_validator_stake must be in [1, MAX_AMOUNT]"
        if not 0 <= self.unbonding_rounds <= MAX_UNBONDING_ROUNDS:
            return "unbonding_rounds must be in [0, MAX_UNBONDING_ROUNDS]"
        if not 1 <= self.max_accounts <= MAX_STATE_ACCOUNTS:
            return "max_accounts must be in [1, MAX_STATE_ACCOUNTS]"
        if not 1 <= self.max_unbonding <= MAX_STATE_UNBONDING:
            return "max_unbonding must be in [1, MAX_STATE_UNBONDING]"
        return None


@dataclass(frozen=True, slots=True)
class Account:
    """One account. ``unbonding``: (release round, amount) pairs, release rounds ascending."""

    balance: int = 0
    stake: int = 0
    reputation: int = INITIAL_REPUTATION
    nonce: int = 0
    """The nonce of the last applied signed operation (the next must be ``nonce + 1``)."""
    unbonding: tuple[tuple[int, int], ...] = ()

    @property
    def held(self) -> int:
        """Everything this account owns: balance, stake and unbonding amounts."""
        return self.balance + self.stake + sum(a for _, a in self.unbonding)


@dataclass(slots=True)
class LedgerState:
    """Parameters, the next round to settle, and the accounts (frozen :class:`Account` values).

    Mutable only through :mod:`p2pshard.core.ledger.transitions`, which checks every rule of an
    operation before it changes anything; :meth:`copy` is cheap (the accounts are immutable)."""

    params: LedgerParams = field(default_factory=LedgerParams)
    round: int = 0
    accounts: dict[bytes, Account] = field(default_factory=dict)
    supply: int = 0
    """Sum of :attr:`Account.held` over all accounts (kept, not encoded: it is derived)."""

    def copy(self) -> LedgerState:
        return LedgerState(self.params, self.round, dict(self.accounts), self.supply)

    def account(self, account_id: bytes) -> Account | None:
        return self.accounts.get(account_id)

    def put(self, account_id: bytes, account: Account) -> None:
        old = self.accounts.get(account_id)
        self.supply += account.held - (old.held if old is not None else 0)
        self.accounts[account_id] = account

    def root(self) -> bytes:
        return state_root(self)

    def validators(self) -> list[tuple[bytes, int]]:
        """The validator set: (account id, stake) with stake ≥ ``min_validator_stake``, by id."""
        floor = self.params.min_validator_stake
        return [(k, a.stake) for k, a in sorted(self.accounts.items()) if a.stake >= floor]


def is_account_id_form(account_id: bytes) -> bool:
    """The shape of an account id (prefix, length, a compressed-point first byte); no curve check."""
    return (
        len(account_id) == ACCOUNT_ID_SIZE
        and account_id.startswith(ACCOUNT_ID_PREFIX)
        and account_id[len(ACCOUNT_ID_PREFIX)] in (2, 3)
    )


def is_account_id(account_id: bytes) -> bool:
    """An account id whose key is a point of secp256k1 (what an operation may name)."""
    if not is_account_id_form(account_id):
        return False
    import coincurve

    try:
        coincurve.PublicKey(account_id[len(ACCOUNT_ID_PREFIX) :])
    except Exception:  # not a point of the curve
        return False
    return True


def genesis(params: LedgerParams, allocations: Iterable[tuple[bytes, int, int]] = ()) -> LedgerState:
    """The state before round 0: ``allocations`` are (account id, balance, stake).

    Raises ValueError on bad parameters or allocations (genesis is configuration, not peer input)."""
    problem = params.problem()
    if problem:
        raise ValueError(problem)
    state = LedgerState(params)
    for account_id, balance, stake in allocations:
        if not is_account_id(account_id):
            raise ValueError(f"genesis account {account_id.hex()} is not a secp256k1 peer id")
        if account_id in state.accounts:
            raise ValueError(f"genesis account {account_id.hex()} is allocated twice")
        if balance < 0 or stake < 0 or balance + stake > MAX_SUPPLY - state.supply:
            raise ValueError("genesis allocations must be non-negative and sum to at most MAX_SUPPLY")
        state.put(account_id, Account(balance=balance, stake=stake))
    if len(state.accounts) > params.max_accounts:
        raise ValueError("more genesis accounts than max_accounts")
    return state


# ------------------------------------------------------------------------------------ encoding


def encode_params(params: LedgerParams) -> bytes:
    return b"".join(
        encode_uvarint(v)
        for v in (
            params.min_validator_stake,
            params.unbonding_rounds,
            params.max_accounts,
            params.max_unbonding,
        )
    )


def encode_account(account_id: bytes, account: Account) -> bytes:
    parts = [
        encode_uvarint(len(account_id)),
        account_id,
        encode_uvarint(account.balance),
        encode_uvarint(account.stake),
        encode_uvarint(account.reputation),
        encode_uvarint(account.nonce),
        encode_uvarint(len(account.unbonding)),
    ]
    for release, amount in account.unbonding:
        parts += [encode_uvarint(release), encode_uvarint(amount)]
    return b"".join(parts)


def encode_state(state: LedgerState) -> bytes:
    parts = [
        STATE_TAG,
        encode_params(state.params),
        encode_uvarint(state.round),
        encode_uvarint(len(state.accounts)),
    ]
    parts += [encode_account(k, state.accounts[k]) for k in sorted(state.accounts)]
    return b"".join(parts)


def state_root(state: LedgerState) -> bytes:
    return hashlib.sha256(encode_state(state)).digest()


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def uint(self, limit: int = MAX_SUPPLY) -> int:
        try:
            got = decode_uvarint(self.data, self.pos)
        except MalformedVarint as exc:
            raise StateDecodeError("malformed_varint", str(exc)) from None
        if got is None:
            raise StateDecodeError("truncated", f"state ends inside an integer at byte {self.pos}")
        value, self.pos = got
        if value > limit:
            raise StateDecodeError("bad_value", f"{value} exceeds {limit} at byte {self.pos}")
        return value

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise StateDecodeError("truncated", f"state ends inside {n} bytes at byte {self.pos}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out


def decode_state(data: bytes) -> LedgerState:
    """The state ``data`` encodes canonically; raises :class:`StateDecodeError` on anything else."""
    if not data.startswith(STATE_TAG):
        raise StateDecodeError("bad_state_tag", "not a ledger state")
    r = _Reader(data)
    r.pos = len(STATE_TAG)
    params = LedgerParams(r.uint(), r.uint(), r.uint(), r.uint())
    problem = params.problem()
    if problem:
        raise StateDecodeError("bad_params", problem)
    state = LedgerState(params, r.uint())
    count = r.uint()
    if count > params.max_accounts:
        raise StateDecodeError("too_many_accounts", f"{count} accounts, max_accounts {params.max_accounts}")
    previous = b""
    for _ in range(count):
        account_id = r.take(r.uint(ACCOUNT_ID_SIZE))
        if not is_account_id_form(account_id):
            raise StateDecodeError("bad_account_id", f"account id {account_id.hex()}")
        if account_id <= previous:
            raise StateDecodeError("unsorted_accounts", "account ids must be strictly ascending")
        previous = account_id
        balance, stake, reputation, nonce = r.uint(), r.uint(), r.uint(MAX_REPUTATION), r.uint()
        n = r.uint()
        if n > params.max_unbonding:
            raise StateDecodeError("too_many_unbonding", f"{n} unbonding entries")
        entries: list[tuple[int, int]] = []
        for _ in range(n):
            release, amount = r.uint(), r.uint()
            if amount == 0:
                raise StateDecodeError("bad_value", "an unbonding entry of 0")
            if release < state.round or (entries and release <= entries[-1][0]):
                raise StateDecodeError("unsorted_unbonding", "release rounds must ascend from the round")
            entries.append((release, amount))
        account = Account(balance, stake, reputation, nonce, tuple(entries))
        if account.held > MAX_SUPPLY - state.supply:
            raise StateDecodeError("supply_overflow", "the accounts hold more than MAX_SUPPLY")
        state.put(account_id, account)
    if r.pos != len(data):
        raise StateDecodeError("trailing_bytes", f"{len(data) - r.pos} bytes after the state")
    return state


def with_account(state: LedgerState, account_id: bytes, account: Account) -> LedgerState:
    """A copy of ``state`` with one account set (tests and vector builders)."""
    out = state.copy()
    out.put(account_id, account)
    return out
