"""StrictSign / StrictNoSign, real secp256k1 signatures, and agreement with py-libp2p."""

from __future__ import annotations

import hashlib
import random

import coincurve
import pytest

from p2pshard.core.gossip import (
    DropReason,
    GossipConfig,
    GossipMessage,
    GossipRouter,
    LibP2PVerifier,
    Secp256k1Signer,
    SignaturePolicy,
    peer_id_from_public_key,
)
from p2pshard.core.gossip.signing import (
    SIGN_PREFIX,
    KeyType,
    marshal_public_key,
    signing_bytes,
)
from p2pshard.core.wire import rpc_pb2

from .helpers import TOPIC, delivered, merged, msg_rpc, rejected

SECRET = bytes(range(1, 33))


def _pair(
    policy: SignaturePolicy = SignaturePolicy.STRICT_SIGN, **kw: object
) -> tuple[GossipRouter, GossipRouter]:
    cfg = GossipConfig.build(signature_policy=policy, **kw)
    sa, sb = Secp256k1Signer(SECRET), Secp256k1Signer.generate()
    signed = policy is SignaturePolicy.STRICT_SIGN
    a = GossipRouter(sa.peer_id, cfg, rng=random.Random(1), signer=sa if signed else None)
    b = GossipRouter(sb.peer_id, cfg, rng=random.Random(2), signer=sb if signed else None)
    a.add_peer(b.peer_id, "/meshsub/1.2.0", True, 0.0)
    b.add_peer(a.peer_id, "/meshsub/1.2.0", False, 0.0)
    a.subscribe(TOPIC, 0.0)
    for cmd in b.subscribe(TOPIC, 0.0):
        if hasattr(cmd, "data"):
            a.handle_rpc(b.peer_id, cmd.data, 0.0)
    return a, b


def test_secp256k1_peer_id_is_an_identity_multihash() -> None:
    signer = Secp256k1Signer(SECRET)
    pub = coincurve.PrivateKey(SECRET).public_key.format(compressed=True)
    marshalled = marshal_public_key(KeyType.SECP256K1, pub)
    assert marshalled[:4] == b"\x08\x02\x12\x21" and len(marshalled) == 37
    assert signer.peer_id == b"\x00\x25" + marshalled
    assert signer.key_field == b""
    big = marshal_public_key(KeyType.RSA, b"\x01" * 300)
    assert peer_id_from_public_key(big) == b"\x12\x20" + hashlib.sha256(big).digest()


def test_signed_message_round_trip_between_routers() -> None:
    a, b = _pair()
    mid, cmds = a.publish(TOPIC, b"hello", 1.0)
    wire = merged(cmds, b.peer_id)
    msg = wire.publish[0]
    assert getattr(msg, "from") == a.peer_id and len(msg.seqno) == 8 and msg.signature
    assert not msg.HasField("key")  # inlined in the peer id
    out = b.handle_rpc(a.peer_id, wire.SerializeToString(), 1.1)
    assert [d.msg_id for d in delivered(out)] == [mid]


def test_tampered_message_fails_verification() -> None:
    a, b = _pair()
    _, cmds = a.publish(TOPIC, b"hello", 1.0)
    wire = merged(cmds, b.peer_id)
    wire.publish[0].data = b"HELLO"
    out = b.handle_rpc(a.peer_id, wire.SerializeToString(), 1.1)
    assert not delivered(out)
    assert [c.reason for c in rejected(out)] == [DropReason.MESSAGE_INVALID_SIGNATURE]


def test_key_must_match_the_author() -> None:
    signer = Secp256k1Signer(SECRET)
    m = rpc_pb2.Message(data=b"d", topic=TOPIC, seqno=b"\x00" * 8)
    setattr(m, "from", signer.peer_id)
    sig = signer.sign(signing_bytes(m))
    v = LibP2PVerifier()
    assert v.verify(signer.peer_id, b"", signing_bytes(m), sig)
    other = Secp256k1Signer.generate()
    assert not v.verify(other.peer_id, b"", signing_bytes(m), sig)
    # a key field that does not hash to the author is refused
    other_key = other.peer_id[2:]
    assert not v.verify(signer.peer_id, other_key, signing_bytes(m), sig)
    assert not v.verify(b"\x12\x20" + b"\x00" * 32, b"", signing_bytes(m), sig)


def test_strict_no_sign_rejects_signed_and_accepts_bare() -> None:
    def content_id(m: GossipMessage) -> bytes:
        return hashlib.sha256(b"p2pshard-msg:" + m.data).digest()[:20]

    a, b = _pair(SignaturePolicy.STRICT_NO_SIGN, message_id_fn=content_id)
    mid, cmds = a.publish(TOPIC, b"bare", 1.0)
    wire = merged(cmds, b.peer_id)
    m = wire.publish[0]
    assert not (m.HasField("from") or m.HasField("seqno") or m.HasField("signature"))
    assert [d.msg_id for d in delivered(b.handle_rpc(a.peer_id, wire.SerializeToString(), 1.1))] == [mid]
    signed = rpc_pb2.Message(data=b"signed", topic=TOPIC, signature=b"sig")
    out = b.handle_rpc(a.peer_id, msg_rpc(signed), 1.2)
    assert [c.reason for c in rejected(out)] == [DropReason.MESSAGE_UNEXPECTED_SIGNATURE]
    authored = rpc_pb2.Message(data=b"authored", topic=TOPIC, seqno=b"1")
    out = b.handle_rpc(a.peer_id, msg_rpc(authored), 1.3)
    assert [c.reason for c in rejected(out)] == [DropReason.MESSAGE_UNEXPECTED_AUTHOR]


def test_signatures_agree_with_py_libp2p() -> None:
    """Our signatures verify under py-libp2p's validator, and its signatures under ours."""
    from libp2p.crypto.secp256k1 import Secp256k1PrivateKey
    from libp2p.peer.id import ID
    from libp2p.pubsub.pb import rpc_pb2 as lp_rpc
    from libp2p.pubsub.validators import signature_validator

    signer = Secp256k1Signer(SECRET)
    lp_key = Secp256k1PrivateKey.new(SECRET)
    assert ID.from_pubkey(lp_key.get_public_key()).to_bytes() == signer.peer_id
    assert ID(signer.peer_id).to_base58().startswith("16Uiu2")

    ours = rpc_pb2.Message(data=b"payload", topic=TOPIC, seqno=(7).to_bytes(8, "big"))
    setattr(ours, "from", signer.peer_id)
    ours.signature = signer.sign(signing_bytes(ours))
    theirs = lp_rpc.Message()
    theirs.ParseFromString(ours.SerializeToString())  # same wire format
    assert signature_validator(theirs)

    unsigned = rpc_pb2.Message(data=b"from-libp2p", topic=TOPIC, seqno=(8).to_bytes(8, "big"))
    setattr(unsigned, "from", signer.peer_id)
    sig = lp_key.sign(SIGN_PREFIX + unsigned.SerializeToString())
    assert LibP2PVerifier().verify(signer.peer_id, b"", signing_bytes(unsigned), sig)


@pytest.mark.parametrize("key_type", ["ed25519"])
def test_ed25519_authors_verify(key_type: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    sk = ed25519.Ed25519PrivateKey.generate()
    raw = sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    pid = peer_id_from_public_key(marshal_public_key(KeyType.ED25519, raw))
    m = rpc_pb2.Message(data=b"go peer", topic=TOPIC, seqno=b"\x00" * 8)
    setattr(m, "from", pid)
    sig = sk.sign(signing_bytes(m))
    assert LibP2PVerifier().verify(pid, b"", signing_bytes(m), sig)
    assert not LibP2PVerifier().verify(pid, b"", signing_bytes(m) + b"x", sig)


def test_signing_bytes_are_protobufs_field_order_encoding_even_with_unknown_fields() -> None:
    def via_protobuf(m: rpc_pb2.Message) -> bytes:
        bare = rpc_pb2.Message()
        bare.CopyFrom(m)
        bare.ClearField("signature")
        bare.ClearField("key")
        return SIGN_PREFIX + bare.SerializeToString()

    full = rpc_pb2.Message(data=b"d" * 300, topic="t\u00e9", seqno=b"\x00" * 8, signature=b"s", key=b"k")
    setattr(full, "from", b"\x00\x02ab")
    cases = [
        full,
        rpc_pb2.Message(data=b"", topic="t"),  # empty but present: written
        rpc_pb2.Message(topic="t"),  # absent: not written
        rpc_pb2.Message.FromString(full.SerializeToString() + b"\x3a\x02zz"),  # a field we do not know
    ]
    for m in cases:
        assert signing_bytes(m) == via_protobuf(m)
        assert signing_bytes(m, m.data) == via_protobuf(m)
