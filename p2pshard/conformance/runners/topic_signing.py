"""Handlers ``topic_signing_bytes``, ``topic_sign`` and ``topic_verify`` of runner ``signing``.

An author signs a topic message over ``"p2pshard-topic:" || <topic short name> || 0x00 || the
message with ``signature`` cleared, encoded canonically`` (specs/topics.md, "Author signatures");
the signature verifies under the secp256k1 key inlined in the author field. These vectors pin the
canonical encoding (field order, omitted defaults, unknown fields kept at the end) and the cases a
verifier must refuse: another key, a field changed after signing, a signature made for another
topic, a high-S or malformed signature, an author whose peer id holds no inlined key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

import coincurve
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage

from p2pshard.conformance.model import JSON, AnswerError, Case, diff, unhex
from p2pshard.core.gossip.signing import Secp256k1Signer
from p2pshard.core.topics import TOPICS, signing_bytes, verify_author
from p2pshard.core.wire import topics_pb2

NAME = "signing"
FILES = {
    "topic_signing_bytes": frozenset({"input.json", "message.bin"}),
    "topic_sign": frozenset({"input.json", "message.bin"}),
    "topic_verify": frozenset({"input.json", "message.bin"}),
}

AUTHOR_KEY = (60).to_bytes(32, "big")
OTHER_KEY = (61).to_bytes(32, "big")
AUTHOR = Secp256k1Signer(AUTHOR_KEY).peer_id
OTHER = Secp256k1Signer(OTHER_KEY).peer_id
STAMP = 1_700_000_000_000
H = bytes(range(32))
CURVE_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

BUILDERS: dict[str, Callable[[], ProtoMessage]] = {
    "gradients": lambda: topics_pb2.GradientAnnouncement(
        round=4,
        model_hash=H,
        content_hash=H[::-1],
        size=4096,
        tokens=512,
        loss=2.5,
        contributor=AUTHOR,
        timestamp_ms=STAMP,
    ),
    "proofs": lambda: topics_pb2.WorkProof(
        worker=AUTHOR, round=4, model_hash=H, tokens=512, timestamp_ms=STAMP, nonce=b"\x05" * 16
    ),
    "stakes": lambda: topics_pb2.Stake(staker=AUTHOR, amount=-100, nonce=1, timestamp_ms=STAMP),
    "transactions": lambda: topics_pb2.Transaction(
        sender=AUTHOR, recipient=OTHER, amount=5, nonce=1, timestamp_ms=STAMP
    ),
    "votes": lambda: topics_pb2.ValidationVote(validator=AUTHOR, proof_id=H, valid=True, timestamp_ms=STAMP),
    "capacity": lambda: topics_pb2.Capacity(
        peer=AUTHOR, first_layer=0, last_layer=4, device="cpu", tokens_per_s=100.0, timestamp_ms=STAMP
    ),
}
ALTERED: dict[str, tuple[str, object]] = {
    "gradients": ("loss", 0.5),
    "proofs": ("tokens", 513),
    "stakes": ("amount", 100),
    "transactions": ("amount", 500),
    "votes": ("valid", False),
    "capacity": ("last_layer", 8),
}
"""A field per topic that an attacker would like to change after signing."""


M = TypeVar("M", bound=ProtoMessage)


def sign(short: str, msg: M, key: bytes = AUTHOR_KEY) -> M:
    """A copy of ``msg`` with ``signature`` set by ``key`` (RFC 6979, low-S) for topic ``short``."""
    out = type(msg)()
    out.CopyFrom(msg)
    out.signature = bytes(coincurve.PrivateKey(key).sign(signing_bytes(short, msg)))  # type: ignore[attr-defined]
    return out


def _high_s(sig: bytes) -> bytes:
    rlen = sig[3]
    r = int.from_bytes(sig[4 : 4 + rlen], "big")
    s_off = 4 + rlen
    s = int.from_bytes(sig[s_off + 2 : s_off + 2 + sig[s_off + 1]], "big")

    def part(x: int) -> bytes:
        b = x.to_bytes(33, "big").lstrip(b"\x00")
        if b[0] & 0x80:
            b = b"\x00" + b
        return b"\x02" + bytes([len(b)]) + b

    body = part(r) + part(CURVE_N - s)
    return b"\x30" + bytes([len(body)]) + body


def generate() -> list[Case]:
    cases: list[Case] = []

    def sb(name: str, desc: str, valid: bool, topic: str, data: bytes, expected: dict[str, JSON]) -> None:
        cases.append(
            Case(
                NAME,
                "topic_signing_bytes",
                name,
                desc,
                valid,
                input_json={"topic": topic},
                input_bin={"message": data},
                expected=expected,
            )
        )

    def sb_ok(topic: str, data: bytes) -> dict[str, JSON]:
        decoded = TOPICS[topic].message_type.FromString(data)
        return {"signing_bytes": signing_bytes(topic, decoded).hex()}

    for topic in TOPICS:
        data = sign(topic, BUILDERS[topic]()).SerializeToString()
        sb(
            topic,
            f"a signed {TOPICS[topic].message_type.__name__}: signature cleared",
            True,
            topic,
            data,
            sb_ok(topic, data),
        )
    vote = BUILDERS["votes"]()
    canonical = vote.SerializeToString()
    # ValidationVote fields by hand: 1 validator, 2 proof_id, 3 valid, 4 timestamp_ms, 5 signature.
    validator = b"\x0a" + bytes([len(AUTHOR)]) + AUTHOR
    proof_id = b"\x12\x20" + H
    stamp = b"\x20" + _varint(STAMP)
    reordered = stamp + b"\x2a\x02\x30\x00" + proof_id + b"\x18\x01" + validator
    sb(
        "fields_out_of_order",
        "fields sent in reverse order: signed in field-number order",
        True,
        "votes",
        reordered,
        sb_ok("votes", reordered),
    )
    assert sb_ok("votes", reordered) == sb_ok("votes", canonical)
    explicit_default = validator + proof_id + b"\x18\x00" + stamp
    sb(
        "explicit_default",
        "valid = false sent explicitly: a proto3 default is omitted from the signed bytes",
        True,
        "votes",
        explicit_default,
        sb_ok("votes", explicit_default),
    )
    repeated = b"\x0a\x02zz" + canonical
    sb(
        "field_repeated",
        "a scalar field sent twice: the last value counts",
        True,
        "votes",
        repeated,
        sb_ok("votes", repeated),
    )
    unknown = b"\xf8\x07\x01" + canonical
    sb(
        "unknown_field",
        "an unknown field (number 127) first on the wire: kept, after the known fields",
        True,
        "votes",
        unknown,
        sb_ok("votes", unknown),
    )
    sb("unknown_topic", "not a p2pshard topic name", False, "weather", canonical, {"error": "unknown_topic"})
    sb("undecodable", "not a ValidationVote", False, "votes", b"\x0a\xff\x01", {"error": "undecodable"})

    for topic in TOPICS:
        msg = BUILDERS[topic]()
        cases.append(
            Case(
                NAME,
                "topic_sign",
                topic,
                f"sign a {msg.DESCRIPTOR.name} as its author",
                True,
                input_json={"private_key": AUTHOR_KEY.hex(), "topic": topic},
                input_bin={"message": msg.SerializeToString()},
                expected={
                    "signing_bytes": signing_bytes(topic, msg).hex(),
                    "message": sign(topic, msg).SerializeToString().hex(),
                },
            )
        )

    def verify(name: str, desc: str, valid: bool, topic: str, data: bytes) -> None:
        expect = _verify(topic, data)
        assert expect == valid, name  # generation refuses a case p2pshard itself gets wrong
        cases.append(
            Case(
                NAME,
                "topic_verify",
                name,
                desc,
                valid,
                input_json={"topic": topic},
                input_bin={"message": data},
                expected={"valid": expect},
            )
        )

    topics = list(TOPICS)
    for i, topic in enumerate(topics):
        good = sign(topic, BUILDERS[topic]())
        verify(f"{topic}_valid", "signed by the author", True, topic, good.SerializeToString())
        by_other = sign(topic, BUILDERS[topic](), OTHER_KEY)
        verify(
            f"{topic}_other_key",
            "signed by another key; the author field unchanged",
            False,
            topic,
            by_other.SerializeToString(),
        )
        field, value = ALTERED[topic]
        altered = type(good)()
        altered.CopyFrom(good)
        setattr(altered, field, value)
        verify(
            f"{topic}_altered", f"{field} changed after signing", False, topic, altered.SerializeToString()
        )
        elsewhere = topics[(i + 1) % len(topics)]
        moved = type(good)()
        moved.CopyFrom(good)
        moved.signature = sign(elsewhere, BUILDERS[topic]()).signature  # type: ignore[attr-defined]
        verify(
            f"{topic}_other_topic",
            f"the same message signed for topic {elsewhere}",
            False,
            topic,
            moved.SerializeToString(),
        )

    good = sign("votes", _vote_by(AUTHOR))
    data = good.SerializeToString()
    sig = bytes(good.signature)

    def with_(**changes: object) -> bytes:
        m = topics_pb2.ValidationVote()
        m.CopyFrom(good)
        for k, v in changes.items():
            setattr(m, k, v)
        return m.SerializeToString()

    verify(
        "reordered_fields",
        "a valid signature, fields sent out of order (signing bytes are canonical)",
        True,
        "votes",
        _reverse_fields(data),
    )
    verify(
        "unknown_field_added", "an unknown field added after signing", False, "votes", data + b"\xf8\x07\x01"
    )
    verify("no_signature", "the signature is missing", False, "votes", with_(signature=b""))
    verify(
        "truncated_signature",
        "the DER signature lost its last byte",
        False,
        "votes",
        with_(signature=sig[:-1]),
    )
    verify("garbage_signature", "not DER at all", False, "votes", with_(signature=b"\x01" * 70))
    verify(
        "high_s", "the same signature with s > n/2 (not low-S)", False, "votes", with_(signature=_high_s(sig))
    )
    verify(
        "hashed_author",
        "the author is a sha2-256 peer id: no inlined key to verify with",
        False,
        "votes",
        sign("votes", _vote_by(b"\x12\x20" + b"\x11" * 32)).SerializeToString(),
    )
    ed25519_author = b"\x00\x24\x08\x01\x12\x20" + b"\x22" * 32
    verify(
        "ed25519_author",
        "the author's inlined key is ed25519: topic signatures are secp256k1 only",
        False,
        "votes",
        sign("votes", _vote_by(ed25519_author)).SerializeToString(),
    )
    return cases


def _vote_by(author: bytes) -> topics_pb2.ValidationVote:
    return topics_pb2.ValidationVote(validator=author, proof_id=H, valid=True, timestamp_ms=STAMP)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _reverse_fields(data: bytes) -> bytes:
    """The same fields in reverse wire order (length-delimited and varint fields only)."""
    fields: list[bytes] = []
    i = 0
    while i < len(data):
        start = i
        tag = data[i]
        i += 1
        if tag & 7 == 2:
            i += 1 + data[i]
        else:
            while data[i] & 0x80:
                i += 1
            i += 1
        fields.append(data[start:i])
    return b"".join(reversed(fields))


def _decode(topic: str, data: bytes) -> ProtoMessage:
    spec = TOPICS.get(topic)
    if spec is None:
        raise LookupError(topic)
    return spec.message_type.FromString(data)


def _verify(topic: str, data: bytes) -> bool:
    try:
        msg = _decode(topic, data)
    except (LookupError, DecodeError):
        return False
    author = getattr(msg, TOPICS[topic].author_field)
    return verify_author(author, signing_bytes(topic, msg), msg.signature)  # type: ignore[attr-defined]


def answer(handler: str, inp: Mapping[str, JSON]) -> Mapping[str, JSON]:
    topic = str(inp.get("topic"))
    data = unhex(inp.get("message"), "message")
    if handler == "topic_verify":
        return {"valid": _verify(topic, data)}
    try:
        msg = _decode(topic, data)
    except LookupError:
        return {"error": "unknown_topic"}
    except DecodeError:
        return {"error": "undecodable"}
    if handler == "topic_signing_bytes":
        return {"signing_bytes": signing_bytes(topic, msg).hex()}
    if handler == "topic_sign":
        key = unhex(inp.get("private_key"), "private_key")
        signed = sign(topic, msg, key)
        return {"signing_bytes": signing_bytes(topic, msg).hex(), "message": signed.SerializeToString().hex()}
    raise AnswerError(f"unknown handler {handler!r}")


def check_sign(inp: Mapping[str, JSON], expected: Mapping[str, JSON], out: Mapping[str, JSON]) -> list[str]:
    """``topic_sign``: equal signing bytes; the signed message equals the input apart from a
    signature that verifies (signatures need not be byte-equal)."""
    topic = str(inp["topic"])
    fails = diff("signing_bytes", expected["signing_bytes"], out.get("signing_bytes"))
    try:
        got = _decode(topic, bytes.fromhex(str(out.get("message"))))
    except (DecodeError, ValueError):
        return [*fails, f"message: not an encoded {TOPICS[topic].message_type.__name__}"]
    want = _decode(topic, bytes.fromhex(str(expected["message"])))
    bare_got, bare_want = type(got)(), type(want)()
    bare_got.CopyFrom(got)
    bare_want.CopyFrom(want)
    bare_got.ClearField("signature")
    bare_want.ClearField("signature")
    if bare_got != bare_want:
        fails.append("message: fields other than signature differ from the input")
    if not _verify(topic, bytes.fromhex(str(out.get("message")))):
        fails.append("message.signature: does not verify")
    return fails
