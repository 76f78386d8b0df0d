"""From a round's vote settlement to ledger operations (specs/work.md, "Rewards and slashing").

:func:`settlement_ops` turns a :class:`~p2pshard.core.work.votes.Settlement` into the system
operations of the round's ``SettledRound`` (specs/ledger.md): rewards for accepted work in
proportion to its tokens with a stake bonus, validation fees from each rewarded worker to the
validators that voted with the outcome, and slashes for rejected work, for votes against a
settled outcome and for equivocation. Integers only; the operations' order is a function of the
settlement and the state alone, so every node derives the same round and the same root.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from p2pshard.core.ledger import CREDIT, Fee, LedgerState, Op, Reward, Slash
from p2pshard.core.ledger.state import MAX_AMOUNT, MAX_REPUTATION
from p2pshard.core.work.votes import Outcome, Settlement

BASIS_POINTS: Final = 10_000


@dataclass(frozen=True, slots=True)
class WorkRewards:
    """The network's reward and slashing rates (specs/work.md's parameter table)."""

    reward_per_token: int = CREDIT // 1000
    """Base units earned per verified token (one credit per 1,000 tokens)."""
    max_stake_bonus_bp: int = 5_000
    """Largest bonus on a reward for the worker's stake, in basis points (+50%)."""
    full_bonus_stake: int = 1_000 * CREDIT
    """Stake at which the bonus is the largest; below it the bonus grows linearly."""
    validator_fee_bp: int = 1_000
    """Share of each reward paid to the validators that voted with the outcome, by stake."""
    accepted_reputation: int = 10
    rejected_slash_bp: int = 1_000
    """Share of a worker's stake burned when its proof settles rejected."""
    rejected_reputation: int = 500
    dissent_reputation: int = 100
    """Reputation a validator loses for a vote against a settled outcome."""
    false_accept_slash_bp: int = 500
    """Share of a validator's stake burned for voting valid on a proof that settled rejected."""
    equivocation_slash_bp: int = 2_000
    equivocation_reputation: int = 1_000

    def problem(self) -> str | None:
        bps = (
            self.max_stake_bonus_bp,
            self.validator_fee_bp,
            self.rejected_slash_bp,
            self.false_accept_slash_bp,
            self.equivocation_slash_bp,
        )
        if any(not 0 <= b <= BASIS_POINTS for b in bps):
            return "basis points must be in [0, 10000]"
        reps = (
            self.accepted_reputation,
            self.rejected_reputation,
            self.dissent_reputation,
            self.equivocation_reputation,
        )
        if any(not 0 <= r <= MAX_REPUTATION for r in reps):
            return "reputation changes must be in [0, MAX_REPUTATION]"
        if not 0 <= self.reward_per_token <= CREDIT or not 1 <= self.full_bonus_stake <= MAX_AMOUNT:
            return "reward_per_token must be in [0, CREDIT], full_bonus_stake in [1, MAX_AMOUNT]"
        return None


def reward_for(tokens: int, stake: int, rates: WorkRewards) -> int:
    """``tokens * reward_per_token * (1 + bonus)``, the bonus growing linearly with the stake up
    to ``max_stake_bonus_bp`` at ``full_bonus_stake``; at most MAX_AMOUNT."""
    bonus = min(stake, rates.full_bonus_stake) * rates.max_stake_bonus_bp // rates.full_bonus_stake
    return min(MAX_AMOUNT, tokens * rates.reward_per_token * (BASIS_POINTS + bonus) // BASIS_POINTS)


def _share(stake: int, bp: int) -> int:
    return min(MAX_AMOUNT, stake * bp // BASIS_POINTS)


def settlement_ops(
    settlement: Settlement,
    tokens: Mapping[bytes, int],
    votes: Mapping[tuple[bytes, bytes], bool],
    state: LedgerState,
    rates: WorkRewards | None = None,
) -> list[Op]:
    """The system operations of a settled round, in order:

    1. per proof in ascending proof id order: accepted — ``Reward(worker, reward_for(tokens,
       stake), accepted_reputation)``, then one ``Fee(worker, validator, fee * stake / agreeing
       stake)`` per validator that voted ``valid``, in ascending id order (``fee =
       reward * validator_fee_bp``; shares of 0 are left out); rejected — ``Slash(worker, stake *
       rejected_slash_bp, rejected_reputation)``;
    2. per dissenter ``(validator, proof)`` in sorted order: ``Slash(validator, stake *
       false_accept_slash_bp if it voted valid on a rejected proof else 0,
       dissent_reputation)``;
    3. per equivocation ``(validator, proof)`` in sorted order: ``Slash(validator, stake *
       equivocation_slash_bp, equivocation_reputation)``.

    ``tokens``: proof id -> the proof's tokens; ``votes``: (validator, proof id) -> the counted
    vote; ``state``: the ledger state the round settles on (stakes as the round began). An
    operation that would change nothing (amount and reputation both 0) is left out."""
    rates = rates or WorkRewards()
    problem = rates.problem()
    if problem:
        raise ValueError(problem)

    def stake_of(account: bytes) -> int:
        acc = state.accounts.get(account)
        return acc.stake if acc is not None else 0

    ops: list[Op] = []

    def slash(account: bytes, amount: int, reputation: int) -> None:
        if amount > 0 or reputation > 0:
            ops.append(Slash(account, amount, reputation))

    validators = dict(state.validators())
    for o in settlement.outcomes:
        if o.outcome is Outcome.ACCEPTED:
            reward = reward_for(tokens.get(o.proof_id, 0), stake_of(o.worker), rates)
            if reward > 0 or rates.accepted_reputation > 0:
                ops.append(Reward(o.worker, reward, rates.accepted_reputation))
            fee = reward * rates.validator_fee_bp // BASIS_POINTS
            agreeing = sorted(
                v for (v, p), valid in votes.items() if p == o.proof_id and valid and v in validators
            )
            total = sum(validators[v] for v in agreeing)
            for v in agreeing:
                share = fee * validators[v] // total if total else 0
                if share > 0 and v != o.worker:
                    ops.append(Fee(o.worker, v, share))
        elif o.outcome is Outcome.REJECTED:
            slash(o.worker, _share(stake_of(o.worker), rates.rejected_slash_bp), rates.rejected_reputation)
    rejected = {o.proof_id for o in settlement.outcomes if o.outcome is Outcome.REJECTED}
    for validator, proof_id in settlement.dissenters:
        false_accept = proof_id in rejected and votes.get((validator, proof_id)) is True
        amount = _share(stake_of(validator), rates.false_accept_slash_bp) if false_accept else 0
        slash(validator, amount, rates.dissent_reputation)
    for validator, _ in settlement.equivocators:
        slash(
            validator, _share(stake_of(validator), rates.equivocation_slash_bp), rates.equivocation_reputation
        )
    return ops
