"""Settlement into the ledger: accepted work is paid in proportion to its tokens with a stake
bonus and pays its validators a fee; rejected work, votes against the outcome and equivocation
are slashed; the round settles through the ledger's own transitions."""

from __future__ import annotations

import pytest

from p2pshard.core.gossip import Verdict
from p2pshard.core.ledger import CREDIT, LedgerParams, Reward, Slash, encode_round, genesis, settle
from p2pshard.core.work import Tally, WorkRewards, make_vote, reward_for, settlement_ops
from p2pshard.core.work.settle import BASIS_POINTS

from .helpers import IDS, KEYS, NOW

A, B, C, D, E = IDS
P1, P2 = b"\x01" * 32, b"\x02" * 32  # E's accepted proof, D's rejected proof
STATE = genesis(
    LedgerParams(min_validator_stake=10 * CREDIT),
    [(A, 0, 600 * CREDIT), (B, 0, 300 * CREDIT), (C, 0, 100 * CREDIT), (D, 0, 50 * CREDIT), (E, 0, 0)],
)
RATES = WorkRewards()


def test_reward_grows_with_stake_up_to_the_full_bonus() -> None:
    base = 6_000 * RATES.reward_per_token
    assert reward_for(6_000, 0, RATES) == base == 6 * CREDIT
    assert reward_for(6_000, RATES.full_bonus_stake // 2, RATES) == base * 125 // 100
    assert reward_for(6_000, 10 * RATES.full_bonus_stake, RATES) == base * 150 // 100


def test_a_round_settles_rewards_fees_and_slashes_through_the_ledger() -> None:
    tally = Tally(3, dict(STATE.validators()), {P1: E, P2: D})
    votes = [
        (0, P1, True),
        (1, P1, True),
        (2, P1, False),  # C dissents on accepted work: reputation only
        (0, P2, False),
        (1, P2, False),
        (2, P2, True),  # C voted valid on rejected work: slashed
        (3, P1, True),
        (3, P1, False),  # D equivocates
    ]
    for k, p, valid in votes:
        tally.add(make_vote(KEYS[k], p, valid, score=0, round_=3, timestamp_ms=NOW), NOW)
    settlement = tally.close()
    ops = settlement_ops(settlement, {P1: 6_000, P2: 9_000}, tally.counted(), STATE, RATES)
    reward = 6 * CREDIT  # E has no stake: no bonus
    fee = reward * RATES.validator_fee_bp // BASIS_POINTS
    assert ops[0] == Reward(E, reward, RATES.accepted_reputation)
    fees = {op.payee: op.amount for op in ops if not isinstance(op, Reward | Slash)}
    assert fees == {A: fee * 600 // 900, B: fee * 300 // 900}
    slashes = [op for op in ops if isinstance(op, Slash)]
    assert slashes == [
        Slash(D, 50 * CREDIT * RATES.rejected_slash_bp // BASIS_POINTS, RATES.rejected_reputation),
        Slash(C, 0, RATES.dissent_reputation),
        Slash(C, 100 * CREDIT * RATES.false_accept_slash_bp // BASIS_POINTS, RATES.dissent_reputation),
        Slash(D, 50 * CREDIT * RATES.equivocation_slash_bp // BASIS_POINTS, RATES.equivocation_reputation),
    ]
    out = settle(STATE, encode_round(0, ops))
    assert not isinstance(out, Verdict) and all(v.accepted for v in out.verdicts)
    after = out.state.accounts
    assert after[E].balance == reward - sum(fees.values())
    assert after[A].balance == fees[A] and after[B].balance == fees[B]
    assert after[C].stake == 95 * CREDIT and after[C].reputation == 5_000 - 2 * RATES.dissent_reputation
    assert after[D].stake == 50 * CREDIT - 5 * CREDIT - 10 * CREDIT
    assert out.state.supply == STATE.supply + reward - 20 * CREDIT


def test_unsettled_work_earns_and_costs_nothing() -> None:
    tally = Tally(3, dict(STATE.validators()), {P1: E})
    tally.add(make_vote(KEYS[2], P1, True, score=0, round_=3, timestamp_ms=NOW), NOW)
    assert settlement_ops(tally.close(), {P1: 6_000}, tally.counted(), STATE) == []


def test_bad_rates_are_refused() -> None:
    with pytest.raises(ValueError):
        settlement_ops(Tally(0, {}, {}).close(), {}, {}, STATE, WorkRewards(validator_fee_bp=10_001))
