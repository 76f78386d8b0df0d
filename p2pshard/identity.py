"""Node identity: one secp256k1 key (coincurve) is both the libp2p identity and the signing key.

Peer ids are libp2p identity multihashes of the marshalled public key (``16Uiu2…`` in base58).
Key files hold the libp2p ``PrivateKey`` protobuf (key type + 32 secret bytes), the same format
go-libp2p and js-libp2p write, and are created with mode 0600.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import coincurve
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.secp256k1 import Secp256k1PrivateKey
from libp2p.crypto.serialization import deserialize_private_key
from libp2p.peer.id import ID


class KeyFileError(Exception):
    """A key file is missing, unreadable, of the wrong type or too widely readable."""


@dataclass(frozen=True)
class Identity:
    """A secp256k1 key pair with its libp2p peer id."""

    private_key: Secp256k1PrivateKey

    @classmethod
    def generate(cls) -> Identity:
        return cls(Secp256k1PrivateKey.new())

    @classmethod
    def from_secret(cls, secret: bytes) -> Identity:
        """Deterministic identity from 32 secret bytes (tests and devnets use this)."""
        return cls(Secp256k1PrivateKey(coincurve.PrivateKey(secret)))

    @property
    def key_pair(self) -> KeyPair:
        return KeyPair(self.private_key, self.private_key.get_public_key())

    @property
    def peer_id(self) -> ID:
        return ID.from_pubkey(self.private_key.get_public_key())

    @property
    def public_key_bytes(self) -> bytes:
        """The 33-byte compressed secp256k1 public key."""
        return bytes(self.private_key.get_public_key().to_bytes())

    def sign(self, data: bytes) -> bytes:
        """ECDSA over SHA-256 (DER), as libp2p signs with secp256k1 keys."""
        return bytes(self.private_key.sign(data))

    def marshal(self) -> bytes:
        return bytes(self.private_key.serialize())

    @classmethod
    def unmarshal(cls, data: bytes) -> Identity:
        try:
            key = deserialize_private_key(data)
        except Exception as exc:  # the protobuf or key bytes are broken
            raise KeyFileError(f"not a libp2p private key: {exc}") from exc
        if not isinstance(key, Secp256k1PrivateKey):
            raise KeyFileError(f"expected a secp256k1 key, got {key.get_type().name}")
        return cls(key)

    def save(self, path: Path) -> None:
        """Write the key with mode 0600; refuses to overwrite an existing file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(self.marshal())
            fh.flush()
            os.fsync(fh.fileno())

    @classmethod
    def load(cls, path: Path) -> Identity:
        try:
            mode = path.stat().st_mode
            data = path.read_bytes()
        except OSError as exc:
            raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(
                f"key file {path} is readable by others (mode {stat.S_IMODE(mode):o}); run: chmod 600 {path}"
            )
        return cls.unmarshal(data)

    @classmethod
    def load_or_create(cls, path: Path) -> tuple[Identity, bool]:
        """The key at ``path``, made and kept there when absent. Returns (identity, created)."""
        if path.exists():
            return cls.load(path), False
        ident = cls.generate()
        ident.save(path)
        return ident, True
