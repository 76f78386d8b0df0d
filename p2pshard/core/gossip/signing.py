"""libp2p pubsub message signing, behind small injectable interfaces.

Signed bytes are ``b"libp2p-pubsub:" + marshal(Message without signature and key)``. The public
key travels inside the ``from`` peer id when its libp2p ``PublicKey`` protobuf is at most 42
bytes (identity multihash: secp256k1, ed25519); otherwise in ``Message.key``.

The router only sees :class:`Signer` and :class:`Verifier`; the default implementations here
use coincurve for secp256k1 (p2pshard's identity) and, lazily, ``cryptography`` for ed25519,
RSA and ECDSA peers (go-libp2p's default identity is ed25519).
"""

from __future__ import annotations

import hashlib
from enum import IntEnum
from typing import Literal, Protocol

import coincurve
from google.protobuf.unknown_fields import UnknownFieldSet

from p2pshard.core.wire import rpc_pb2
from p2pshard.core.wire.framing import encode_uvarint

from .errors import SigningError

SIGN_PREFIX = b"libp2p-pubsub:"
_MAX_INLINE_KEY = 42


class KeyType(IntEnum):
    """libp2p ``KeyType`` enum of the crypto ``PublicKey`` protobuf."""

    RSA = 0
    ED25519 = 1
    SECP256K1 = 2
    ECDSA = 3


class Signer(Protocol):
    """Signs our own messages. ``key_field`` is empty when the key is inlined in ``peer_id``."""

    @property
    def peer_id(self) -> bytes: ...

    @property
    def key_field(self) -> bytes: ...

    def sign(self, data: bytes) -> bytes: ...


class Verifier(Protocol):
    """Checks a received message's signature; must return ``False`` (not raise) on any failure."""

    def verify(self, source: bytes, key: bytes, signed_data: bytes, signature: bytes) -> bool: ...


def marshal_public_key(key_type: KeyType, data: bytes) -> bytes:
    """The libp2p ``PublicKey`` protobuf (``Type = 1`` varint, ``Data = 2`` bytes)."""
    return b"\x08" + encode_uvarint(int(key_type)) + b"\x12" + encode_uvarint(len(data)) + data


def unmarshal_public_key(blob: bytes) -> tuple[KeyType, bytes]:
    """Parse a ``PublicKey`` protobuf written in canonical field order; raises SigningError."""
    try:
        if len(blob) < 4 or blob[0] != 0x08:
            raise SigningError("public key: missing type")
        key_type = KeyType(blob[1])
        if blob[2] != 0x12:
            raise SigningError("public key: missing data")
        length, pos, shift = 0, 3, 0
        while True:
            b = blob[pos]
            length |= (b & 0x7F) << shift
            pos += 1
            shift += 7
            if not b & 0x80:
                break
            if shift > 21:
                raise SigningError("public key: length too long")
        data = blob[pos : pos + length]
        if len(data) != length or pos + length != len(blob):
            raise SigningError("public key: bad length")
        return key_type, data
    except (IndexError, ValueError) as exc:
        raise SigningError(f"public key: {exc}") from None


def peer_id_from_public_key(marshalled: bytes) -> bytes:
    """Raw peer-id bytes: identity multihash if the key is <= 42 bytes, else sha2-256 multihash."""
    if len(marshalled) <= _MAX_INLINE_KEY:
        return b"\x00" + encode_uvarint(len(marshalled)) + marshalled
    return b"\x12\x20" + hashlib.sha256(marshalled).digest()


def inlined_public_key(peer_id: bytes) -> bytes | None:
    """The marshalled key inside an identity-multihash peer id, else ``None``."""
    if len(peer_id) >= 2 and peer_id[0] == 0x00 and peer_id[1] == len(peer_id) - 2:
        return peer_id[2:]
    return None


_SIGNED_FIELDS: tuple[tuple[bytes, Literal["from", "data", "seqno", "topic"]], ...] = (
    (b"\x0a", "from"),
    (b"\x12", "data"),
    (b"\x1a", "seqno"),
    (b"\x22", "topic"),
)


def signing_bytes(msg: rpc_pb2.Message, data: bytes | None = None) -> bytes:
    """What the signature covers: the prefix and the message without ``signature`` and ``key``,
    fields in field-number order. ``data``: ``msg.data`` if the caller already holds it.

    Written out directly, one copy of the payload (protobuf's copy-clear-serialise-prepend made
    three of a MiB: a third of a received message's cost); a message with fields we do not know
    goes through protobuf, which writes those where every implementation's marshaller does.
    """
    if len(UnknownFieldSet(msg)):
        return _signing_bytes_via_protobuf(msg)
    parts = [SIGN_PREFIX]
    for tag, name in _SIGNED_FIELDS:
        if msg.HasField(name):
            value = data if data is not None and name == "data" else getattr(msg, name)
            raw = value.encode() if isinstance(value, str) else value
            parts += (tag + encode_uvarint(len(raw)), raw)
    return b"".join(parts)


def _signing_bytes_via_protobuf(msg: rpc_pb2.Message) -> bytes:
    if msg.HasField("signature") or msg.HasField("key"):
        bare = rpc_pb2.Message()
        bare.CopyFrom(msg)
        bare.ClearField("signature")
        bare.ClearField("key")
        return SIGN_PREFIX + bare.SerializeToString()
    return SIGN_PREFIX + msg.SerializeToString()


class Secp256k1Signer:
    """Default signer: a coincurve secp256k1 key (p2pshard's libp2p identity, ``16Uiu2...``)."""

    __slots__ = ("_key", "_peer_id")

    def __init__(self, private_key: bytes | coincurve.PrivateKey) -> None:
        self._key = (
            private_key
            if isinstance(private_key, coincurve.PrivateKey)
            else coincurve.PrivateKey(private_key)
        )
        pub = self._key.public_key.format(compressed=True)
        self._peer_id = peer_id_from_public_key(marshal_public_key(KeyType.SECP256K1, pub))

    @classmethod
    def generate(cls) -> Secp256k1Signer:
        """A fresh random key (tests, ephemeral nodes)."""
        return cls(coincurve.PrivateKey())

    @property
    def peer_id(self) -> bytes:
        return self._peer_id

    @property
    def key_field(self) -> bytes:
        return b""  # 37-byte marshalled key is inlined in the identity peer id

    def sign(self, data: bytes) -> bytes:
        """DER ECDSA over SHA-256, as go-libp2p's secp256k1 keys sign."""
        return bytes(self._key.sign(data))


def _verify_with_cryptography(key_type: KeyType, key: bytes, data: bytes, sig: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

    try:
        if key_type is KeyType.ED25519:
            ed25519.Ed25519PublicKey.from_public_bytes(key).verify(sig, data)
            return True
        pub = serialization.load_der_public_key(key)
        if key_type is KeyType.RSA and isinstance(pub, rsa.RSAPublicKey):
            pub.verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
            return True
        if key_type is KeyType.ECDSA and isinstance(pub, ec.EllipticCurvePublicKey):
            pub.verify(sig, data, ec.ECDSA(hashes.SHA256()))
            return True
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):  # e.g. an unsupported curve
        return False
    return False


class LibP2PVerifier:
    """Default verifier for every libp2p key type; checks the key belongs to ``source``."""

    __slots__ = ()

    def verify(self, source: bytes, key: bytes, signed_data: bytes, signature: bytes) -> bool:
        try:
            if key:
                if peer_id_from_public_key(key) != source:
                    return False
                marshalled = key
            else:
                inline = inlined_public_key(source)
                if inline is None:
                    return False
                marshalled = inline
            key_type, data = unmarshal_public_key(marshalled)
            if key_type is KeyType.SECP256K1:
                return bool(coincurve.PublicKey(data).verify(signature, signed_data))
            return _verify_with_cryptography(key_type, data, signed_data, signature)
        except (SigningError, ValueError, TypeError):
            return False


def sign_message(msg: rpc_pb2.Message, signer: Signer) -> None:
    """Fill ``msg.signature`` (and ``msg.key`` when the key is not inlined) in place."""
    msg.signature = signer.sign(signing_bytes(msg))
    if signer.key_field:
        msg.key = signer.key_field
