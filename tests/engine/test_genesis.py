"""Genesis manifests: deterministic, canonical, verifiable; shard assignment any peer can check."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from p2pshard.engine.corpus import default_corpus_shards
from p2pshard.engine.genesis import (
    Genesis,
    GenesisError,
    Manifest,
    assign_shard,
    build_genesis,
    load_shard,
)

# The default corpus is the same on every machine; its manifest id is therefore a constant.
DEFAULT_MANIFEST_ID = "68f0e661d21452c8"


def test_default_genesis_is_a_fixed_point(genesis: Genesis) -> None:
    m = genesis.manifest
    assert m.short_id == DEFAULT_MANIFEST_ID
    assert len(m.train_shards) == 22 and len(m.eval_shards) == 2
    assert default_corpus_shards(1, 2, 4096) == default_corpus_shards(1, 2, 4096)
    text = genesis.shard_bytes(m.train_shards[0]).decode("ascii")
    assert " plus " in text and " counts: " in text


def test_manifest_round_trips_and_rejects_tampering(genesis: Genesis) -> None:
    data = genesis.manifest.to_bytes()
    assert Manifest.from_bytes(data).digest == genesis.manifest.digest
    obj = json.loads(data)
    obj["train_shards"] = obj["train_shards"][1:]  # dataset_digest no longer matches
    tampered = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(GenesisError, match="not_canonical"):
        Manifest.from_bytes(tampered)
    with pytest.raises(GenesisError, match="not_canonical"):
        Manifest.from_bytes(json.dumps(json.loads(data), indent=1).encode())
    obj = json.loads(data)
    obj["tokenizer"] = {"kind": "bpe", "vocab_size": 50257}
    with pytest.raises(GenesisError, match="unsupported_tokenizer"):
        Manifest.from_bytes(json.dumps(obj).encode())
    with pytest.raises(GenesisError, match="manifest_not_json"):
        Manifest.from_bytes(b"\xff{")


def test_shards_are_verified_by_hash(genesis: Genesis) -> None:
    h = genesis.manifest.train_shards[3]
    data = genesis.shard_bytes(h)
    assert load_shard(data, h).size == len(data)
    with pytest.raises(GenesisError, match="shard_hash_mismatch"):
        load_shard(data[:-1] + b"!", h)


def test_assignment_is_deterministic_and_spread(genesis: Genesis) -> None:
    m = genesis.manifest
    assert assign_shard(m, "peer-a", 5) == assign_shard(m, "peer-a", 5)
    assert assign_shard(m, "peer-a", 5) in m.train_shards
    spread = Counter(assign_shard(m, f"peer-{i}", r) for i in range(10) for r in range(50))
    assert len(spread) == len(m.train_shards)
    assert max(spread.values()) < 3 * 500 / len(m.train_shards)


def test_build_genesis_from_files_is_order_and_place_independent(tmp_path: Path) -> None:
    for root in (tmp_path / "one", tmp_path / "two"):
        (root / "sub").mkdir(parents=True)
        (root / "b.txt").write_text("hello world. " * 3000)
        lines = [json.dumps({"text": f"document {i} " * 40}) for i in range(200)]
        (root / "sub" / "a.jsonl").write_text("\n".join(lines) + "\n")
    g1 = build_genesis([tmp_path / "one"], shard_size=8192)
    g2 = build_genesis([tmp_path / "two"], shard_size=8192)
    assert g1.manifest.digest == g2.manifest.digest
    assert len(g1.manifest.train_shards) >= 8
    g1.save(tmp_path / "saved")
    assert Genesis.load(tmp_path / "saved").manifest == g1.manifest


def test_build_genesis_rejects_bad_jsonl(tmp_path: Path) -> None:
    (tmp_path / "x.jsonl").write_text('{"body": "no text field"}\n')
    with pytest.raises(GenesisError, match="'text'"):
        build_genesis([tmp_path / "x.jsonl"])
