"""Signed DHT records: each broken rule raises RecordError with its stable reason (specs/dht.md)."""

from __future__ import annotations

import coincurve
import pytest
from libp2p.peer.id import ID

from p2pshard.core import records
from p2pshard.core.gossip.signing import (
    KeyType,
    marshal_public_key,
    peer_id_from_public_key,
    unmarshal_public_key,
)
from p2pshard.core.wire import records_pb2

OWNER = coincurve.PrivateKey((30).to_bytes(32, "big"))
OTHER = coincurve.PrivateKey((31).to_bytes(32, "big"))


def _marshalled(key: coincurve.PrivateKey) -> bytes:
    return marshal_public_key(KeyType.SECP256K1, key.public_key.format(compressed=True))


def _pid(key: coincurve.PrivateKey) -> str:
    return str(ID(peer_id_from_public_key(_marshalled(key))).to_base58())


def verifier(public_key: bytes, message: bytes, signature: bytes) -> str:
    """A secp256k1-only stand-in for discovery.verify_libp2p_signature."""
    kind, data = unmarshal_public_key(public_key)
    if kind != KeyType.SECP256K1 or not coincurve.PublicKey(data).verify(signature, message):
        raise ValueError("signature does not verify")
    return str(ID(peer_id_from_public_key(public_key)).to_base58())


def make(key: str, seq: int = 1, payload: bytes = b"x", signer: coincurve.PrivateKey = OWNER) -> bytes:
    return records.make_record(key, seq, payload, _marshalled(signer), lambda d: bytes(signer.sign(d)))


def reason(key: str, value: bytes) -> str:
    with pytest.raises(records.RecordError) as info:
        records.verify_record(key, value, verifier)
    assert str(info.value)  # the human message is kept beside the code
    return info.value.reason


def test_a_valid_record_verifies_and_names_its_signer() -> None:
    key = f"/p2pshard/peer/{_pid(OWNER)}"
    rec = records.verify_record(key, make(key, 3, b"addrs"), verifier)
    assert (rec.seq, rec.payload, rec.signer_peer_id) == (3, b"addrs", _pid(OWNER))


def test_each_rule_has_its_reason_in_table_order() -> None:
    big = b"\x00" * (records.MAX_RECORD_SIZE + 1)
    tampered = records_pb2.SignedRecord.FromString(make("/p2pshard/blob/a"))
    tampered.payload = b"changed"
    assert reason("/elsewhere/x", big) == "too_large"  # size is judged before the key
    assert reason("/p2pshard/a/b/c", b"") == "bad_key_form"
    assert reason("/p2pshard//name", b"") == "bad_key_form"
    assert reason("/p2pshard/blob/a", b"\xff\xff") == "not_signed_record"
    assert reason("/p2pshard/blob/a", tampered.SerializeToString()) == "bad_signature"
    assert reason("/p2pshard/blob/b", make("/p2pshard/blob/a")) == "bad_signature"
    assert reason(
        f"/p2pshard/layers/{_pid(OWNER)}", make(f"/p2pshard/layers/{_pid(OWNER)}", signer=OTHER)
    ) == ("not_owner")


def test_reasons_are_a_closed_set_and_errors_stay_value_errors() -> None:
    with pytest.raises(ValueError, match="unknown record error reason"):
        records.RecordError("nope", "x")
    err = records.RecordError("too_large", "record of 9 bytes exceeds 8")
    assert isinstance(err, ValueError)  # py-libp2p's validator contract and older callers
    assert (err.reason, str(err)) == ("too_large", "record of 9 bytes exceeds 8")
    with pytest.raises(records.RecordError) as info:
        make("/not/a/key/shape")
    assert info.value.reason == "bad_key_form"


def test_select_skips_invalid_values_whatever_their_seq() -> None:
    key = "/p2pshard/blob/a"
    forged = records_pb2.SignedRecord.FromString(make(key, 1))
    forged.seq = 99
    values = [make(key, 2, b"old"), forged.SerializeToString(), make(key, 5, b"new"), b"\xff"]
    assert records.select_record(key, values, verifier) == 2
