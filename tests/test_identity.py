from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from p2pshard.identity import Identity, KeyFileError


def test_key_file_is_private_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    first, created = Identity.load_or_create(path)
    assert created
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, created = Identity.load_or_create(path)
    assert not created
    assert again.peer_id == first.peer_id
    assert first.peer_id.to_base58().startswith("16Uiu2")


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    Identity.generate().save(path)
    with pytest.raises(FileExistsError):
        Identity.generate().save(path)


def test_refuses_readable_key(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    Identity.generate().save(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        Identity.load(path)


def test_rejects_garbage_key(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    path.write_bytes(b"not a key")
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError, match="not a libp2p private key"):
        Identity.load(path)


def test_signature_verifies_with_public_key() -> None:
    ident = Identity.from_secret(b"\x01" * 32)
    sig = ident.sign(b"message")
    assert ident.private_key.get_public_key().verify(b"message", sig)
    assert not ident.private_key.get_public_key().verify(b"other", sig)
