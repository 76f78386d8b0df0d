"""Keys, a genesis and operation builders shared by the ledger tests."""

from __future__ import annotations

from p2pshard.core.gossip.signing import Secp256k1Signer
from p2pshard.core.ledger import CREDIT, LedgerParams, LedgerState, genesis

KEYS = [Secp256k1Signer((i + 1).to_bytes(32, "big")) for i in range(6)]
A, B, C, D, E, F = (k.peer_id for k in KEYS)
PARAMS = LedgerParams(min_validator_stake=10 * CREDIT, unbonding_rounds=2, max_accounts=8, max_unbonding=3)


def fresh() -> LedgerState:
    """A at 100 credits and 20 staked (a validator), B at 50, C at 1 staked."""
    return genesis(PARAMS, [(A, 100 * CREDIT, 20 * CREDIT), (B, 50 * CREDIT, 0), (C, 0, 1 * CREDIT)])
