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


def block_for(state: LedgerState) -> bytes:
    """A deterministic round of operations for ``state`` (a function of the state alone, so a
    replay makes the same rounds): transfers, stakes, unstakes, rewards, slashes and fees, some
    of which the state refuses."""
    import random

    from p2pshard.core.ledger import Fee, Reward, Slash, decode_stake, decode_transfer, encode_round
    from p2pshard.core.ledger.ops import make_stake, make_transfer

    rng = random.Random(state.root() + state.round.to_bytes(8, "big"))
    ids = [k.peer_id for k in KEYS]
    nonces = {k: state.accounts[k].nonce if k in state.accounts else 0 for k in ids}
    ops: list = []  # type: ignore[type-arg]
    for _ in range(rng.randint(5, 40)):
        i, j = rng.randrange(len(KEYS)), rng.randrange(len(KEYS))
        kind = rng.choice(["transfer", "transfer", "stake", "unstake", "reward", "slash", "fee"])
        amount = rng.randint(1, 5 * CREDIT)
        if kind == "transfer" and i != j:
            nonces[ids[i]] += 1
            ops.append(decode_transfer(make_transfer(KEYS[i], ids[j], amount, nonces[ids[i]])))
        elif kind in ("stake", "unstake"):
            nonces[ids[i]] += 1
            signed = amount if kind == "stake" else -amount
            ops.append(decode_stake(make_stake(KEYS[i], signed, nonces[ids[i]])))
        elif kind == "reward":
            ops.append(Reward(ids[i], amount, rng.randint(0, 50)))
        elif kind == "slash":
            ops.append(Slash(ids[i], amount, rng.randint(0, 50)))
        elif kind == "fee" and i != j:
            ops.append(Fee(ids[i], ids[j], amount))
    return encode_round(state.round, [op for op in ops if not hasattr(op, "result")])
