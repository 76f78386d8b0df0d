"""A ``WorkProof`` and its structural rules (specs/work.md, "Work proofs", rules 1 to 10).

A proof is the ``topics.WorkProof`` its worker signs with its node key: the topic author
signature of specs/topics.md for the topic ``proofs``, checked over the decoded message's
canonical encoding, the same scheme as the ledger's signed operations. Its **proof id** is the
SHA-256 of those signing bytes, so it names the signed content whatever signature encoding
carried it (what the replay cache and the votes refer to).

:func:`decode_proof` never raises on peer bytes: it returns the proof or a REJECT
:class:`Verdict` with a stable reason. The rules that need a clock, the genesis assignment,
announced capacities or the proofs already seen are in :mod:`p2pshard.core.work.rules`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

from google.protobuf.message import DecodeError

from p2pshard.core.gossip import Verdict, reject
from p2pshard.core.ledger.ops import AccountKey
from p2pshard.core.ledger.state import is_account_id
from p2pshard.core.topics import HASH_SIZE, signing_bytes, verify_author
from p2pshard.core.wire import topics_pb2

WORK_TOPIC: Final = "proofs"
"""Topic name a work proof is signed for."""
MAX_PROOF_SIZE: Final = 2048
"""Largest encoded WorkProof, in bytes."""
PROOF_NONCE_SIZE: Final = 16
MAX_PROOF_SHARDS: Final = 16
"""Most data shards one proof may claim."""
MAX_PROOF_TOKENS: Final = 10**12
"""Largest token count any proof may claim (a bound of the encoding, not of plausibility)."""
MAX_LAYER: Final = 4096
"""Largest ``last_layer`` of a proof (layers are indices of the flat layer list)."""


@dataclass(frozen=True, slots=True)
class WorkProof:
    worker: bytes
    round: int
    model_hash: bytes
    tokens: int
    batches: int
    layers: tuple[int, int]
    """``[first_layer, last_layer)`` held while working."""
    data_shards: tuple[bytes, ...]
    update_hash: bytes
    timestamp_ms: int
    proof_id: bytes
    """SHA-256 of the signing bytes."""
    raw: bytes


def proof_id_of(msg: topics_pb2.WorkProof) -> bytes:
    return hashlib.sha256(signing_bytes(WORK_TOPIC, msg)).digest()


def decode_proof(data: bytes) -> WorkProof | Verdict:
    """Structure and signature of a ``topics.WorkProof`` (rules 1 to 10 of specs/work.md)."""
    if len(data) > MAX_PROOF_SIZE:
        return reject("oversized")
    msg = topics_pb2.WorkProof()
    try:
        msg.ParseFromString(data)
    except (DecodeError, RecursionError, ValueError):
        return reject("undecodable")
    if not is_account_id(msg.worker):
        return reject("bad_worker")
    if len(msg.model_hash) != HASH_SIZE:
        return reject("bad_model_hash")
    if len(msg.update_hash) != HASH_SIZE:
        return reject("bad_update_hash")
    if len(msg.nonce) != PROOF_NONCE_SIZE:
        return reject("bad_nonce")
    if not 1 <= msg.tokens <= MAX_PROOF_TOKENS:
        return reject("bad_tokens")
    if not 1 <= msg.batches <= msg.tokens:
        return reject("bad_batches")
    if not msg.first_layer < msg.last_layer <= MAX_LAYER:
        return reject("bad_layers")
    shards = tuple(bytes(s) for s in msg.data_shards)
    if (
        not 1 <= len(shards) <= MAX_PROOF_SHARDS
        or any(len(s) != HASH_SIZE for s in shards)
        or len(set(shards)) != len(shards)
    ):
        return reject("bad_data_shards")
    sb = signing_bytes(WORK_TOPIC, msg)
    if not verify_author(msg.worker, sb, msg.signature):
        return reject("bad_signature")
    return WorkProof(
        worker=bytes(msg.worker),
        round=msg.round,
        model_hash=bytes(msg.model_hash),
        tokens=msg.tokens,
        batches=msg.batches,
        layers=(msg.first_layer, msg.last_layer),
        data_shards=shards,
        update_hash=bytes(msg.update_hash),
        timestamp_ms=msg.timestamp_ms,
        proof_id=hashlib.sha256(sb).digest(),
        raw=bytes(data),
    )


def make_proof(
    key: AccountKey,
    *,
    round_: int,
    model_hash: bytes,
    tokens: int,
    batches: int,
    layers: tuple[int, int],
    data_shards: tuple[bytes, ...] | list[bytes],
    update_hash: bytes,
    timestamp_ms: int,
    nonce: bytes,
) -> bytes:
    """A signed ``topics.WorkProof`` (its bytes)."""
    msg = topics_pb2.WorkProof(
        worker=key.peer_id,
        round=round_,
        model_hash=model_hash,
        tokens=tokens,
        timestamp_ms=timestamp_ms,
        nonce=nonce,
        batches=batches,
        first_layer=layers[0],
        last_layer=layers[1],
        data_shards=list(data_shards),
        update_hash=update_hash,
    )
    msg.signature = key.sign(signing_bytes(WORK_TOPIC, msg))
    return msg.SerializeToString(deterministic=True)
