"""Signed DHT records (specs/dht.md): validation rules for the ``/p2pshard/`` namespace.

A record value is a ``records.SignedRecord``. It is valid when the public key parses as a
secp256k1 key, the signature verifies over :func:`signing_bytes`, and — for peer-owned kinds —
the key's last path segment is the signer's peer id. Among valid records, the highest ``seq``
wins; ties go to the lexicographically larger value, so every node selects the same one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from google.protobuf.message import DecodeError

from p2pshard.core.wire import records_pb2
from p2pshard.core.wire.framing import encode_uvarint

NAMESPACE = "p2pshard"
RECORD_DOMAIN = b"p2pshard-record:"
MAX_RECORD_SIZE = 16 * 1024
PEER_OWNED_KINDS = frozenset({"peer", "layers", "capacity"})
"""Record kinds whose key ends in the owner's peer id; only the owner may write them."""


REASONS: Final = ("too_large", "bad_key_form", "not_signed_record", "bad_signature", "not_owner")
"""The stable reason codes of :class:`RecordError`, in the order the rules are applied."""


class RecordError(ValueError):
    """A record broke a validation rule: ``reason`` is one of :data:`REASONS` (stable, for
    metrics and conformance runners); ``str(exc)`` says what exactly was wrong."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown record error reason {reason!r}")
        super().__init__(message)
        self.reason = reason


def signing_bytes(key: str, seq: int, payload: bytes) -> bytes:
    k = key.encode()
    return RECORD_DOMAIN + encode_uvarint(len(k)) + k + encode_uvarint(seq) + payload


@dataclass(frozen=True)
class VerifiedRecord:
    key: str
    seq: int
    payload: bytes
    signer_peer_id: str


Verifier = Callable[[bytes, bytes, bytes], str]
"""(marshalled public key, message, signature) -> signer's base58 peer id; raises on a bad signature."""


def parse_key(key: str) -> tuple[str, str]:
    """``/p2pshard/<kind>/<name>`` → (kind, name)."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != "" or parts[1] != NAMESPACE or not parts[2] or not parts[3]:
        raise RecordError("bad_key_form", f"key {key!r} is not of the form /{NAMESPACE}/<kind>/<name>")
    return parts[2], parts[3]


def verify_record(key: str, value: bytes, verifier: Verifier) -> VerifiedRecord:
    if len(value) > MAX_RECORD_SIZE:
        raise RecordError("too_large", f"record of {len(value)} bytes exceeds {MAX_RECORD_SIZE}")
    kind, name = parse_key(key)
    rec = records_pb2.SignedRecord()
    try:
        rec.ParseFromString(value)
    except DecodeError as exc:
        raise RecordError("not_signed_record", "value is not a SignedRecord") from exc
    try:
        signer = verifier(rec.public_key, signing_bytes(key, rec.seq, rec.payload), rec.signature)
    except Exception as exc:
        raise RecordError("bad_signature", f"bad signature: {exc}") from exc
    if kind in PEER_OWNED_KINDS and name != signer:
        raise RecordError(
            "not_owner", f"{kind} records under {name} may only be written by that peer, not {signer}"
        )
    return VerifiedRecord(key, rec.seq, bytes(rec.payload), signer)


def select_record(key: str, values: Sequence[bytes], verifier: Verifier) -> int:
    """Index of the best valid value (highest seq, then largest bytes); invalid values never win."""
    best: tuple[int, bytes] | None = None
    best_idx = 0
    for i, value in enumerate(values):
        try:
            seq = verify_record(key, value, verifier).seq
        except RecordError:
            continue
        if best is None or (seq, value) > best:
            best, best_idx = (seq, value), i
    return best_idx


def make_record(
    key: str, seq: int, payload: bytes, public_key: bytes, sign: Callable[[bytes], bytes]
) -> bytes:
    parse_key(key)
    sig = sign(signing_bytes(key, seq, payload))
    return records_pb2.SignedRecord(
        public_key=public_key, payload=payload, seq=seq, signature=sig
    ).SerializeToString()
