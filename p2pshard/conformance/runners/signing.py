"""Runner ``signing``: keys, peer ids, pubsub message signatures and signed DHT records.

Handlers: ``peer_id``, ``pubsub_sign``, ``pubsub_verify``, ``record_signing_bytes``,
``record_verify`` (specs/identity-and-addressing.md, specs/pubsub.md, specs/dht.md), and
``topic_signing_bytes``, ``topic_sign``, ``topic_verify`` for topic authors' signatures
(specs/topics.md; :mod:`p2pshard.conformance.runners.topic_signing`).

ECDSA signatures need not be byte-identical (RFC 6979 makes them deterministic, and p2pshard's
vectors are RFC 6979 low-S signatures, but the condition only asks that a produced signature
verifies); signing bytes, keys and peer ids must be identical.
"""

from __future__ import annotations

from collections.abc import Mapping

import coincurve
from google.protobuf.message import DecodeError
from libp2p.peer.id import ID

from p2pshard.conformance.model import JSON, AnswerError, Case, Runner, diff, exact, unhex
from p2pshard.conformance.runners import topic_signing
from p2pshard.core import records
from p2pshard.core.gossip.signing import (
    KeyType,
    LibP2PVerifier,
    Secp256k1Signer,
    marshal_public_key,
    peer_id_from_public_key,
    sign_message,
    signing_bytes,
)
from p2pshard.core.wire import records_pb2, rpc_pb2

NAME = "signing"
FILES = {
    "peer_id": frozenset({"input.json"}),
    "pubsub_sign": frozenset({"input.json"}),
    "pubsub_verify": frozenset({"message.bin"}),
    "record_signing_bytes": frozenset({"input.json"}),
    "record_verify": frozenset({"input.json", "value.bin"}),
    **topic_signing.FILES,
}

CURVE_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
TOPIC = "/p2pshard/minimal/votes/proto"


def secret(i: int) -> bytes:
    """A fixed test secret key (never use these outside tests)."""
    return i.to_bytes(32, "big")


def peer_of(key: bytes) -> bytes:
    return Secp256k1Signer(key).peer_id


def _marshalled(key: bytes) -> bytes:
    return marshal_public_key(KeyType.SECP256K1, coincurve.PrivateKey(key).public_key.format(compressed=True))


def signed_message(key: bytes, topic: str, data: bytes, seqno: bytes) -> rpc_pb2.Message:
    signer = Secp256k1Signer(key)
    msg = rpc_pb2.Message(data=data, topic=topic, seqno=seqno)
    setattr(msg, "from", signer.peer_id)
    sign_message(msg, signer)
    return msg


def _der(r: int, s: int) -> bytes:
    def part(x: int) -> bytes:
        b = x.to_bytes(33, "big").lstrip(b"\x00")
        if b[0] & 0x80:
            b = b"\x00" + b
        return b"\x02" + bytes([len(b)]) + b

    body = part(r) + part(s)
    return b"\x30" + bytes([len(body)]) + body


def _high_s(sig: bytes) -> bytes:
    """The same signature with s replaced by n - s (valid maths, but not low-S)."""
    rlen = sig[3]
    r = int.from_bytes(sig[4 : 4 + rlen], "big")
    s_off = 4 + rlen
    s = int.from_bytes(sig[s_off + 2 : s_off + 2 + sig[s_off + 1]], "big")
    return _der(r, CURVE_N - s)


def generate() -> list[Case]:
    cases: list[Case] = []
    for i, key in [
        (1, secret(1)),
        (2, secret(2)),
        (3, secret(0xC0FFEE)),
        (4, secret(CURVE_N - 1)),
        (5, bytes.fromhex("e8f32e723decf4051aefac8e2c93c9c5b214313817cdb01a1494b917c8436b35")),
    ]:
        mk = _marshalled(key)
        pid = peer_id_from_public_key(mk)
        cases.append(
            Case(
                NAME,
                "peer_id",
                f"key_{i}",
                "a valid secp256k1 secret key",
                True,
                input_json={"private_key": key.hex()},
                expected={
                    "public_key": mk[4:].hex(),
                    "marshalled_public_key": mk.hex(),
                    "peer_id": pid.hex(),
                    "peer_id_base58": ID(pid).to_base58(),
                },
            )
        )
    for name, key, desc in [
        ("zero", bytes(32), "0 is not a secret key"),
        ("order", CURVE_N.to_bytes(32, "big"), "n, the group order, is not a secret key"),
        ("above_order", (CURVE_N + 1).to_bytes(32, "big"), "above the group order"),
        ("short", b"\x01" * 31, "31 bytes"),
        ("long", b"\x01" * 33, "33 bytes"),
    ]:
        cases.append(
            Case(
                NAME,
                "peer_id",
                name,
                desc,
                False,
                input_json={"private_key": key.hex()},
                expected={"error": "invalid_private_key"},
            )
        )

    for i, (data, seqno) in enumerate(
        [
            (b"hello", b"\x00" * 7 + b"\x01"),
            (b"", b"\x00" * 8),
            (bytes(range(256)), b"\x7f" * 8),
            (b"\x00" * 1000, b"\x01" * 8),
        ]
    ):
        key = secret(10 + i)
        msg = signed_message(key, TOPIC, data, seqno)
        cases.append(
            Case(
                NAME,
                "pubsub_sign",
                f"message_{i}",
                "sign a message as its author",
                True,
                input_json={
                    "private_key": key.hex(),
                    "topic": TOPIC,
                    "data": data.hex(),
                    "seqno": seqno.hex(),
                },
                expected={
                    "signing_bytes": signing_bytes(msg).hex(),
                    "message": msg.SerializeToString().hex(),
                },
            )
        )

    good = signed_message(secret(20), TOPIC, b"vote", b"\x00" * 7 + b"\x05")

    def verify(name: str, desc: str, valid: bool, msg: rpc_pb2.Message, expect: bool) -> None:
        cases.append(
            Case(
                NAME,
                "pubsub_verify",
                name,
                desc,
                valid,
                input_bin={"message": msg.SerializeToString()},
                expected={"valid": expect},
            )
        )

    def variant(**changes: bytes | str) -> rpc_pb2.Message:
        m = rpc_pb2.Message()
        m.CopyFrom(good)
        for k, v in changes.items():
            setattr(m, "from" if k == "from_" else k, v)
        return m

    verify("valid", "a correctly signed message", True, good, True)
    verify(
        "valid_empty_data",
        "empty data, correctly signed",
        True,
        signed_message(secret(21), TOPIC, b"", b"\x00" * 8),
        True,
    )
    other = signed_message(secret(22), TOPIC, b"vote", b"\x00" * 7 + b"\x05")
    with_key = variant(key=_marshalled(secret(20)))
    verify("valid_with_key_field", "the key field repeats the author's inlined key", True, with_key, True)
    verify("tampered_data", "data changed after signing", False, variant(data=b"vote!"), False)
    verify("tampered_topic", "topic changed after signing", False, variant(topic=TOPIC + "x"), False)
    verify(
        "tampered_seqno", "seqno changed after signing", False, variant(seqno=b"\x00" * 7 + b"\x06"), False
    )
    verify("other_author", "from names a different peer", False, variant(from_=peer_of(secret(22))), False)
    verify(
        "other_signature",
        "another key's signature over the same fields",
        False,
        variant(signature=other.signature),
        False,
    )
    verify("no_signature", "the signature is missing", False, variant(signature=b""), False)
    verify(
        "truncated_signature",
        "the DER signature lost its last byte",
        False,
        variant(signature=good.signature[:-1]),
        False,
    )
    verify("garbage_signature", "not DER at all", False, variant(signature=b"\x01" * 70), False)
    verify(
        "high_s",
        "the same signature with s > n/2 (not low-S)",
        False,
        variant(signature=_high_s(good.signature)),
        False,
    )
    verify(
        "key_mismatch",
        "the key field holds another peer's key",
        False,
        variant(key=_marshalled(secret(22))),
        False,
    )
    verify(
        "hashed_peer_id",
        "from is a sha2-256 peer id with no key field",
        False,
        variant(from_=b"\x12\x20" + b"\x11" * 32),
        False,
    )
    verify("no_from", "from is missing", False, variant(from_=b""), False)

    rec_cases = [
        ("peer", "/p2pshard/peer/x", 1, b""),
        ("layers", "/p2pshard/layers/abc", 2**40, b'{"first":0}'),
        ("unicode_key", "/p2pshard/blob/\u00e9t\u00e9", 7, b"\x00\xff"),
    ]
    for name, key_s, seq, payload in rec_cases:
        cases.append(
            Case(
                NAME,
                "record_signing_bytes",
                name,
                "signing bytes of a DHT record",
                True,
                input_json={"key": key_s, "seq": seq, "payload": payload.hex()},
                expected={"signing_bytes": records.signing_bytes(key_s, seq, payload).hex()},
            )
        )

    owner = secret(30)
    owner_pid = ID(peer_of(owner)).to_base58()

    def make(key_s: str, seq: int, payload: bytes, signer_key: bytes = owner, *, check: bool = True) -> bytes:
        if check:
            return records.make_record(
                key_s,
                seq,
                payload,
                _marshalled(signer_key),
                lambda d: bytes(coincurve.PrivateKey(signer_key).sign(d)),
            )
        sig = bytes(coincurve.PrivateKey(signer_key).sign(records.signing_bytes(key_s, seq, payload)))
        return records_pb2.SignedRecord(
            public_key=_marshalled(signer_key), payload=payload, seq=seq, signature=sig
        ).SerializeToString()

    def rec(name: str, desc: str, valid: bool, key_s: str, value: bytes, expected: dict[str, JSON]) -> None:
        cases.append(
            Case(
                NAME,
                "record_verify",
                name,
                desc,
                valid,
                input_json={"key": key_s},
                input_bin={"value": value},
                expected=expected,
            )
        )

    def ok(seq: int, payload: bytes) -> dict[str, JSON]:
        return {"valid": True, "seq": seq, "payload": payload.hex(), "signer": owner_pid}

    rec(
        "peer_owned",
        "the owner writes its own peer record",
        True,
        f"/p2pshard/peer/{owner_pid}",
        make(f"/p2pshard/peer/{owner_pid}", 3, b"addrs"),
        ok(3, b"addrs"),
    )
    rec(
        "open_kind",
        "anyone may write a kind that is not peer-owned",
        True,
        "/p2pshard/checkpoint/r12",
        make("/p2pshard/checkpoint/r12", 1, b"\x01\x02"),
        ok(1, b"\x01\x02"),
    )
    rec(
        "not_owner",
        "a peer-owned key written by another peer",
        False,
        "/p2pshard/layers/16Uiu2HAmSomeoneElse",
        make("/p2pshard/layers/16Uiu2HAmSomeoneElse", 1, b"x"),
        {"valid": False, "reason": "not_owner"},
    )
    rec(
        "bad_signature",
        "the payload changed after signing",
        False,
        "/p2pshard/checkpoint/r12",
        records_pb2.SignedRecord(
            public_key=_marshalled(owner),
            payload=b"changed",
            seq=1,
            signature=records_pb2.SignedRecord.FromString(
                make("/p2pshard/checkpoint/r12", 1, b"x")
            ).signature,
        ).SerializeToString(),
        {"valid": False, "reason": "bad_signature"},
    )
    rec(
        "seq_changed",
        "the seq changed after signing",
        False,
        "/p2pshard/checkpoint/r12",
        _with_seq(make("/p2pshard/checkpoint/r12", 1, b"x"), 2),
        {"valid": False, "reason": "bad_signature"},
    )
    rec(
        "other_key_name",
        "signed for another key",
        False,
        "/p2pshard/checkpoint/r13",
        make("/p2pshard/checkpoint/r12", 1, b"x"),
        {"valid": False, "reason": "bad_signature"},
    )
    rec(
        "bad_key_shape",
        "a key outside /p2pshard/<kind>/<name>",
        False,
        "/other/kind/name",
        make("/other/kind/name", 1, b"x", check=False),
        {"valid": False, "reason": "bad_key_form"},
    )
    rec(
        "nested_key",
        "a key with an extra path segment",
        False,
        "/p2pshard/a/b/c",
        make("/p2pshard/a/b/c", 1, b"x", check=False),
        {"valid": False, "reason": "bad_key_form"},
    )
    rec(
        "undecodable",
        "the value is not a SignedRecord",
        False,
        "/p2pshard/checkpoint/r12",
        b"\x0a\x09ab",
        {"valid": False, "reason": "not_signed_record"},
    )
    rec(
        "oversized",
        "a value over MAX_RECORD_SIZE",
        False,
        "/p2pshard/checkpoint/big",
        make("/p2pshard/checkpoint/big", 1, b"\x00" * records.MAX_RECORD_SIZE),
        {"valid": False, "reason": "too_large"},
    )
    rec(
        "bad_public_key",
        "the public key does not parse",
        False,
        "/p2pshard/checkpoint/r12",
        records_pb2.SignedRecord(
            public_key=b"\x08\x02\x12\x01\x00", payload=b"x", seq=1, signature=b"\x30\x00"
        ).SerializeToString(),
        {"valid": False, "reason": "bad_signature"},
    )
    rec(
        "empty_kind",
        "a key with an empty <kind> segment",
        False,
        "/p2pshard//name",
        make("/p2pshard//name", 1, b"x", check=False),
        {"valid": False, "reason": "bad_key_form"},
    )
    rec(
        "oversized_bad_key",
        "an oversized value under a malformed key: the size rule comes first",
        False,
        "/other/kind/name",
        b"\x00" * (records.MAX_RECORD_SIZE + 1),
        {"valid": False, "reason": "too_large"},
    )
    rec(
        "undecodable_not_owner",
        "garbage under a peer-owned key: decoding comes before the owner rule",
        False,
        f"/p2pshard/peer/{owner_pid}",
        b"\xff\xff",
        {"valid": False, "reason": "not_signed_record"},
    )
    return cases + topic_signing.generate()


def _with_seq(value: bytes, seq: int) -> bytes:
    rec = records_pb2.SignedRecord.FromString(value)
    rec.seq = seq
    return rec.SerializeToString()


def _verify_record(public_key: bytes, message: bytes, signature: bytes) -> str:
    from p2pshard.net.discovery import verify_libp2p_signature

    return verify_libp2p_signature(public_key, message, signature)


def answer(handler: str, inp: Mapping[str, JSON]) -> Mapping[str, JSON]:
    if handler in topic_signing.FILES:
        return topic_signing.answer(handler, inp)
    if handler == "peer_id":
        key = unhex(inp.get("private_key"), "private_key")
        try:
            if len(key) != 32:
                raise ValueError("length")
            mk = _marshalled(key)
        except ValueError:
            return {"error": "invalid_private_key"}
        pid = peer_id_from_public_key(mk)
        return {
            "public_key": mk[4:].hex(),
            "marshalled_public_key": mk.hex(),
            "peer_id": pid.hex(),
            "peer_id_base58": ID(pid).to_base58(),
        }
    if handler == "pubsub_sign":
        msg = signed_message(
            unhex(inp.get("private_key"), "private_key"),
            str(inp.get("topic")),
            unhex(inp.get("data"), "data"),
            unhex(inp.get("seqno"), "seqno"),
        )
        return {"signing_bytes": signing_bytes(msg).hex(), "message": msg.SerializeToString().hex()}
    if handler == "pubsub_verify":
        msg = rpc_pb2.Message()
        try:
            msg.ParseFromString(unhex(inp.get("message"), "message"))
        except DecodeError:
            return {"valid": False}
        source = getattr(msg, "from")
        ok = bool(msg.signature) and LibP2PVerifier().verify(
            source, msg.key, signing_bytes(msg), msg.signature
        )
        return {"valid": ok}
    if handler == "record_signing_bytes":
        seq = inp.get("seq")
        if not isinstance(seq, int):
            raise AnswerError("seq must be an integer")
        return {
            "signing_bytes": records.signing_bytes(
                str(inp.get("key")), seq, unhex(inp.get("payload"), "payload")
            ).hex()
        }
    if handler == "record_verify":
        try:
            v = records.verify_record(str(inp.get("key")), unhex(inp.get("value"), "value"), _verify_record)
        except records.RecordError as exc:
            return {"valid": False, "reason": exc.reason}
        return {"valid": True, "seq": v.seq, "payload": v.payload.hex(), "signer": v.signer_peer_id}
    raise AnswerError(f"unknown handler {handler!r}")


def check(
    handler: str, inp: Mapping[str, JSON], expected: Mapping[str, JSON], out: Mapping[str, JSON]
) -> list[str]:
    if handler == "topic_sign":
        return topic_signing.check_sign(inp, expected, out)
    if handler != "pubsub_sign":
        return exact(handler, inp, expected, out)
    fails = diff("signing_bytes", expected["signing_bytes"], out.get("signing_bytes"))
    want = rpc_pb2.Message.FromString(bytes.fromhex(str(expected["message"])))
    got = rpc_pb2.Message()
    try:
        got.ParseFromString(bytes.fromhex(str(out.get("message"))))
    except (DecodeError, ValueError):
        return [*fails, "message: not an encoded pubsub Message"]
    for field in ("from", "data", "seqno", "topic"):
        if getattr(got, field) != getattr(want, field):
            fails.append(f"message.{field}: expected {getattr(want, field)!r}, got {getattr(got, field)!r}")
    if not LibP2PVerifier().verify(getattr(got, "from"), got.key, signing_bytes(got), got.signature):
        fails.append("message.signature: does not verify")
    return fails


RUNNER = Runner(NAME, FILES, generate, answer, check)
