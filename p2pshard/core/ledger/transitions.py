"""The ledger's state transitions (specs/ledger.md, "Transitions").

One ``_process_*`` function per operation, in the shape of the Ethereum consensus specs: every
rule is checked, in the order of the spec's table, before the function changes anything, so a
rejected operation leaves the state exactly as it was. A rule that fails gives a :class:`Verdict`:
REJECT when the operation itself is wrong (decided in :mod:`.ops`), IGNORE when it does not fit
this state (a nonce already used or not yet reached, a balance too small, a full state) and might
fit another.

Entry points:

* :func:`apply_signed` / :func:`transition`: one signed operation (transfer, stake, unstake), in
  place or on a copy — what a node uses to check a transaction before it enters a round;
* :func:`settle`: one settled round — its signed and system operations in order, then the release
  of unbonding entries due, then the next round. Rewards, slashes and fees are accepted only
  here; the settlement (not a peer) decides them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final

from p2pshard.core.gossip import ACCEPT, Verdict, ignore, reject
from p2pshard.core.ledger.ops import (
    Fee,
    Op,
    Reward,
    RoundBlock,
    SignedOp,
    Slash,
    StakeChange,
    Transfer,
    decode_round,
    decode_stake,
    decode_transfer,
)
from p2pshard.core.ledger.state import MAX_REPUTATION, MAX_SUPPLY, Account, LedgerState

STATE_REASONS: Final = (
    "unknown_account",
    "stale_nonce",
    "future_nonce",
    "insufficient_balance",
    "insufficient_stake",
    "too_many_accounts",
    "too_many_unbonding",
    "supply_overflow",
)
"""IGNORE reasons: the operation does not fit this state."""


def _signer(state: LedgerState, account_id: bytes, nonce: int) -> Account | Verdict:
    account = state.accounts.get(account_id)
    if account is None:
        return ignore("unknown_account")
    if nonce <= account.nonce:
        return ignore("stale_nonce")
    if nonce > account.nonce + 1:
        return ignore("future_nonce")
    return account


def _room_for(state: LedgerState, account_id: bytes) -> Verdict | None:
    if account_id not in state.accounts and len(state.accounts) >= state.params.max_accounts:
        return ignore("too_many_accounts")
    return None


def _process_transfer(state: LedgerState, op: Transfer) -> Verdict:
    sender = _signer(state, op.sender, op.nonce)
    if isinstance(sender, Verdict):
        return sender
    if sender.balance < op.amount:
        return ignore("insufficient_balance")
    full = _room_for(state, op.recipient)
    if full is not None:
        return full
    state.put(op.sender, replace(sender, balance=sender.balance - op.amount, nonce=op.nonce))
    recipient = state.accounts.get(op.recipient, Account())
    state.put(op.recipient, replace(recipient, balance=recipient.balance + op.amount))
    return ACCEPT


def _process_stake(state: LedgerState, op: StakeChange) -> Verdict:
    staker = _signer(state, op.staker, op.nonce)
    if isinstance(staker, Verdict):
        return staker
    if op.amount > 0:
        if staker.balance < op.amount:
            return ignore("insufficient_balance")
        state.put(
            op.staker,
            replace(
                staker, balance=staker.balance - op.amount, stake=staker.stake + op.amount, nonce=op.nonce
            ),
        )
        return ACCEPT
    amount = -op.amount
    if staker.stake < amount:
        return ignore("insufficient_stake")
    release = state.round + state.params.unbonding_rounds
    entries = list(staker.unbonding)
    if entries and entries[-1][0] == release:
        entries[-1] = (release, entries[-1][1] + amount)
    elif len(entries) >= state.params.max_unbonding:
        return ignore("too_many_unbonding")
    else:
        entries.append((release, amount))
    state.put(
        op.staker, replace(staker, stake=staker.stake - amount, unbonding=tuple(entries), nonce=op.nonce)
    )
    return ACCEPT


def _process_reward(state: LedgerState, op: Reward) -> Verdict:
    full = _room_for(state, op.account)
    if full is not None:
        return full
    if op.amount > MAX_SUPPLY - state.supply:
        return ignore("supply_overflow")
    account = state.accounts.get(op.account, Account())
    reputation = min(MAX_REPUTATION, account.reputation + op.reputation)
    state.put(op.account, replace(account, balance=account.balance + op.amount, reputation=reputation))
    return ACCEPT


def _process_slash(state: LedgerState, op: Slash) -> Verdict:
    account = state.accounts.get(op.account)
    if account is None:
        return ignore("unknown_account")
    left = op.amount
    stake = account.stake - min(left, account.stake)
    left -= account.stake - stake
    entries: list[tuple[int, int]] = []
    for release, amount in account.unbonding:
        cut = min(left, amount)
        left -= cut
        if amount > cut:
            entries.append((release, amount - cut))
    reputation = max(0, account.reputation - op.reputation)
    state.put(op.account, replace(account, stake=stake, unbonding=tuple(entries), reputation=reputation))
    return ACCEPT


def _process_fee(state: LedgerState, op: Fee) -> Verdict:
    payer = state.accounts.get(op.payer)
    if payer is None:
        return ignore("unknown_account")
    if payer.balance < op.amount:
        return ignore("insufficient_balance")
    full = _room_for(state, op.payee)
    if full is not None:
        return full
    state.put(op.payer, replace(payer, balance=payer.balance - op.amount))
    payee = state.accounts.get(op.payee, Account())
    state.put(op.payee, replace(payee, balance=payee.balance + op.amount))
    return ACCEPT


def _release(state: LedgerState, round_: int) -> None:
    """Unbonding entries released at the end of ``round_`` return to their balances."""
    for account_id in [k for k, a in state.accounts.items() if a.unbonding and a.unbonding[0][0] <= round_]:
        account = state.accounts[account_id]
        due = sum(a for r, a in account.unbonding if r <= round_)
        kept = tuple((r, a) for r, a in account.unbonding if r > round_)
        state.put(account_id, replace(account, balance=account.balance + due, unbonding=kept))


def apply_signed(state: LedgerState, op: SignedOp) -> Verdict:
    """Apply one decoded signed operation in place; on anything but ACCEPT, ``state`` is unchanged."""
    if isinstance(op, Transfer):
        return _process_transfer(state, op)
    return _process_stake(state, op)


def apply_transaction(state: LedgerState, topic: str, data: bytes) -> Verdict:
    """Decode (``topic``: ``transactions`` or ``stakes``) and apply one signed operation in place."""
    if topic == "transactions":
        op: SignedOp | Verdict = decode_transfer(data)
    elif topic == "stakes":
        op = decode_stake(data)
    else:
        return reject("unknown_operation")
    return op if isinstance(op, Verdict) else apply_signed(state, op)


def transition(state: LedgerState, op: SignedOp) -> LedgerState | Verdict:
    """The state after one signed operation (a new object), or why it does not apply."""
    out = state.copy()
    verdict = apply_signed(out, op)
    return out if verdict.accepted else verdict


def _apply(state: LedgerState, op: Op | Verdict) -> Verdict:
    if isinstance(op, Verdict):
        return op
    if isinstance(op, Transfer | StakeChange):
        return apply_signed(state, op)
    if isinstance(op, Reward):
        return _process_reward(state, op)
    if isinstance(op, Slash):
        return _process_slash(state, op)
    return _process_fee(state, op)


@dataclass(frozen=True, slots=True)
class Settled:
    """The state after a settled round, and each operation's verdict (in the round's order)."""

    state: LedgerState
    verdicts: tuple[Verdict, ...]


def settle(state: LedgerState, block: RoundBlock | bytes) -> Settled | Verdict:
    """Settle one round on a copy of ``state``: the round must be ``state.round``; each operation
    is applied or skipped with its verdict; then unbonding entries due by this round are released
    and the state moves to the next round. ``state`` itself is never changed."""
    if isinstance(block, bytes):
        decoded = decode_round(block)
        if isinstance(decoded, Verdict):
            return decoded
        block = decoded
    if block.round != state.round:
        return ignore("wrong_round")
    out = state.copy()
    verdicts = tuple(_apply(out, op) for op in block.ops)
    _release(out, block.round)
    out.round = block.round + 1
    return Settled(out, verdicts)
