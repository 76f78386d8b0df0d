"""Keys, a context and proof builders shared by the work tests."""

from __future__ import annotations

import hashlib
from typing import Any

from p2pshard.core.gossip.signing import Secp256k1Signer
from p2pshard.core.work import WorkContext, make_proof

KEYS = [Secp256k1Signer((90 + i).to_bytes(32, "big")) for i in range(5)]
IDS = [k.peer_id for k in KEYS]
NOW = 1_700_000_000_000
ROUND_MS = 60_000
TOKENS_PER_S = 100.0  # 60 s rounds: 6,000 tokens, 7,500 with the slack


def shard(worker: bytes, round_: int) -> bytes:
    return hashlib.sha256(b"shard" + worker + round_.to_bytes(8, "big")).digest()


CTX = WorkContext(
    round_ms=ROUND_MS,
    assignment=lambda worker, round_: (shard(worker, round_),) if round_ < 1000 else None,
    capacity=lambda worker: TOKENS_PER_S if worker != IDS[4] else None,
)


def proof(key: int = 0, round_: int = 1, nonce: int = 0, **overrides: Any) -> bytes:
    worker = KEYS[key].peer_id
    fields: dict[str, Any] = {
        "round_": round_,
        "model_hash": b"\x11" * 32,
        "tokens": 6_000,
        "batches": 12,
        "layers": (0, 6),
        "data_shards": (shard(worker, round_),),
        "update_hash": b"\x22" * 32,
        "timestamp_ms": NOW,
        "nonce": nonce.to_bytes(16, "big"),
    }
    fields.update(overrides)
    return make_proof(KEYS[key], **fields)
