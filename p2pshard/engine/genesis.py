"""Genesis data: a content-addressed manifest whose digest is the network id.

A manifest lists the training and evaluation shards by SHA-256 and names the tokenizer. It is
serialised as canonical JSON (sorted keys, no whitespace, ASCII) and its SHA-256 is the manifest
digest; the first 16 hex digits are the *network id* used in topic names. Shards are plain bytes
(byte-level tokens), so the blob protocol can serve them by hash and any receiver can verify them.

Which shard a contribution trains on is a pure function of (manifest, peer id, round)
(:func:`assign_shard`), so every peer can check the claim of every other.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from p2pshard.engine.corpus import default_corpus_shards

__all__ = [
    "FORMAT",
    "Genesis",
    "GenesisError",
    "Manifest",
    "assign_shard",
    "build_genesis",
    "canonical_json",
    "default_genesis",
    "load_shard",
]

FORMAT = "p2pshard-genesis/1"
TOKENIZER_BYTES: dict[str, Any] = {"kind": "bytes", "vocab_size": 256}
DEFAULT_SHARD_SIZE = 1 << 16
_ASSIGN_TAG = b"p2pshard/shard-assignment/v1\x00"
_DATASET_TAG = b"p2pshard/dataset/v1\x00"


class GenesisError(ValueError):
    """A manifest or shard that does not verify; ``reason`` names the failed check."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def canonical_json(obj: Any) -> bytes:
    """The one byte string a JSON value hashes as."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Manifest:
    """What a network trains on. Immutable; its digest is its identity."""

    name: str
    train_shards: tuple[str, ...]
    eval_shards: tuple[str, ...]
    shard_sizes: Mapping[str, int] = field(hash=False)
    tokenizer: Mapping[str, Any] = field(default_factory=lambda: dict(TOKENIZER_BYTES), hash=False)

    @property
    def dataset_digest(self) -> str:
        h = hashlib.sha256(_DATASET_TAG)
        for group in (self.train_shards, self.eval_shards):
            h.update(len(group).to_bytes(4, "big"))
            for shard in group:
                h.update(bytes.fromhex(shard))
        return h.hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "tokenizer": dict(self.tokenizer),
            "dataset_digest": self.dataset_digest,
            "train_shards": [{"sha256": s, "bytes": self.shard_sizes[s]} for s in self.train_shards],
            "eval_shards": [{"sha256": s, "bytes": self.shard_sizes[s]} for s in self.eval_shards],
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of the canonical manifest."""
        return sha256_hex(self.to_bytes())

    @property
    def short_id(self) -> str:
        """The digest's first 16 hex digits. The network id also covers the training rules
        (:func:`p2pshard.engine.engine.network_id`)."""
        return self.digest[:16]

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer["vocab_size"])

    @staticmethod
    def from_bytes(data: bytes, max_bytes: int = 1 << 20) -> Manifest:
        """Parse and verify a manifest received from a peer (it must be canonical)."""
        if len(data) > max_bytes:
            raise GenesisError("manifest_too_large")
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError) as exc:  # also an int too long to convert; deep nesting
            raise GenesisError(f"manifest_not_json: {type(exc).__name__}: {str(exc)[:200]}") from exc
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise GenesisError("manifest_format")
        if obj.get("tokenizer") != TOKENIZER_BYTES:
            raise GenesisError("unsupported_tokenizer")
        try:
            train = tuple(_shard_entries(obj["train_shards"]))
            evals = tuple(_shard_entries(obj["eval_shards"]))
            m = Manifest(
                name=str(obj["name"]),
                train_shards=tuple(h for h, _ in train),
                eval_shards=tuple(h for h, _ in evals),
                shard_sizes=dict(train + evals),
            )
        except (KeyError, TypeError) as exc:
            raise GenesisError(f"manifest_fields: {exc}") from exc
        if not m.train_shards:
            raise GenesisError("no_train_shards")
        if m.to_bytes() != data:
            raise GenesisError("manifest_not_canonical")  # also catches a wrong dataset_digest
        return m


def _shard_entries(entries: Any) -> Iterable[tuple[str, int]]:
    for e in entries:
        h, n = e["sha256"], e["bytes"]
        if not (isinstance(h, str) and len(h) == 64 and all(c in "0123456789abcdef" for c in h)):
            raise GenesisError("bad_shard_hash")
        if type(n) is not int or n <= 0:  # not a bool
            raise GenesisError("bad_shard_size")
        yield h, n


@dataclass(frozen=True)
class Genesis:
    """A manifest together with the shard bytes this process holds (all of them at genesis)."""

    manifest: Manifest
    shards: Mapping[str, bytes] = field(hash=False)

    def shard_bytes(self, sha256: str) -> bytes:
        """The bytes of a shard, for the blob protocol to serve. KeyError if not held."""
        return self.shards[sha256]

    def tokens(self, sha256: str) -> npt.NDArray[np.uint8]:
        return load_shard(self.shards[sha256], sha256)

    def save(self, directory: Path) -> None:
        """Write ``manifest.json`` and ``shards/<sha256>`` into ``directory``."""
        (directory / "shards").mkdir(parents=True, exist_ok=True)
        (directory / "manifest.json").write_bytes(self.manifest.to_bytes())
        for h, data in self.shards.items():
            (directory / "shards" / h).write_bytes(data)

    @staticmethod
    def load(directory: Path) -> Genesis:
        manifest = Manifest.from_bytes((directory / "manifest.json").read_bytes())
        shards: dict[str, bytes] = {}
        for h in (*manifest.train_shards, *manifest.eval_shards):
            path = directory / "shards" / h
            if path.exists():
                data = path.read_bytes()
                load_shard(data, h)  # verify
                shards[h] = data
        return Genesis(manifest, shards)


def load_shard(data: bytes, expected_sha256: str) -> npt.NDArray[np.uint8]:
    """Verify a shard's hash and return its tokens (byte-level: one token per byte)."""
    if sha256_hex(data) != expected_sha256:
        raise GenesisError("shard_hash_mismatch")
    return np.frombuffer(data, dtype=np.uint8)


def assign_shard(manifest: Manifest, peer_id: str, round_index: int) -> str:
    """The training shard ``peer_id`` must use in ``round_index``: SHA-256 of both, mod shards."""
    h = hashlib.sha256(
        _ASSIGN_TAG
        + bytes.fromhex(manifest.digest)
        + peer_id.encode()
        + b"\x00"
        + round_index.to_bytes(8, "big")
    ).digest()
    return manifest.train_shards[int.from_bytes(h[:8], "big") % len(manifest.train_shards)]


def _genesis_from_chunks(name: str, chunks: list[bytes], n_eval: int) -> Genesis:
    if len(chunks) < n_eval + 1:
        raise GenesisError("not_enough_data")
    hashes = [sha256_hex(c) for c in chunks]
    split = len(chunks) - n_eval
    manifest = Manifest(
        name=name,
        train_shards=tuple(hashes[:split]),
        eval_shards=tuple(hashes[split:]),
        shard_sizes={h: len(c) for h, c in zip(hashes, chunks, strict=True)},
    )
    return Genesis(manifest, dict(zip(hashes, chunks, strict=True)))


@lru_cache(maxsize=2)
def default_genesis(n_shards: int = 24, shard_size: int = DEFAULT_SHARD_SIZE) -> Genesis:
    """The embedded corpus (1.5 MiB by default): identical on every machine, no download."""
    return _genesis_from_chunks("default", default_corpus_shards(1, n_shards, shard_size), 2)


def build_genesis(
    paths: Iterable[Path | str],
    *,
    name: str = "custom",
    shard_size: int = DEFAULT_SHARD_SIZE,
    eval_shards: int = 1,
) -> Genesis:
    """Build a genesis from .txt files and .jsonl files (field ``"text"``), or folders of them.

    Files are read in sorted path order and documents joined with a blank line, then cut into
    ``shard_size``-byte shards (the last, shorter one is dropped if under half a shard). The last
    ``eval_shards`` shards are held out for evaluation.
    """
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(f for f in p.rglob("*") if f.suffix in (".txt", ".jsonl") and f.is_file())
        else:
            files.append(p)
    docs: list[bytes] = []
    for f in sorted(files):
        if f.suffix == ".jsonl":
            for lineno, line in enumerate(f.read_text("utf-8").splitlines(), 1):
                if line.strip():
                    obj = json.loads(line)
                    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                        raise GenesisError(f"{f}:{lineno}: expected an object with a 'text' string")
                    docs.append(obj["text"].encode())
        elif f.suffix == ".txt":
            docs.append(f.read_bytes())
        else:
            raise GenesisError(f"unsupported file type: {f}")
    data = b"\n\n".join(docs)
    chunks = [data[i : i + shard_size] for i in range(0, len(data), shard_size)]
    if len(chunks) > 1 and len(chunks[-1]) < shard_size // 2:
        chunks.pop()
    return _genesis_from_chunks(name, chunks, eval_shards)
