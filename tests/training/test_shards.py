"""A node given only a genesis manifest fetches the shards it trains on from peers, by hash."""

from __future__ import annotations

import hashlib
import shutil
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from p2pshard import NodeConfig, open_node
from p2pshard.engine.genesis import build_genesis
from tests.util import eventually

pytestmark = pytest.mark.slow


async def test_manifest_only_node_fetches_its_shard(tmp_path: Path) -> None:
    text = tmp_path / "text"
    text.mkdir()
    (text / "a.txt").write_text(" ".join(f"word{i % 97}" for i in range(40_000)))
    full, manifest_only = tmp_path / "full", tmp_path / "manifest-only"
    built = build_genesis([text], shard_size=16 * 1024)
    built.save(full)
    manifest_only.mkdir()
    shutil.copy(full / "manifest.json", manifest_only / "manifest.json")
    common = {"train": True, "preset": "micro", "gossip_heartbeat_s": 0.2}
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(open_node(NodeConfig(genesis=full, **common)))
        b = await stack.enter_async_context(
            open_node(NodeConfig(genesis=manifest_only, bootstrap=[a.addrs[0]], **common))
        )
        assert a.config.network_id == b.config.network_id  # the same manifest and rules
        assert b.trainer is not None and a.trainer is not None
        shard_id = built.manifest.train_shards[0]
        await eventually(lambda: bytes.fromhex(shard_id) in a.blobs.store, within_s=10)
        data = await b.trainer.io._shard(shard_id)
        assert hashlib.sha256(data).hexdigest() == shard_id
        assert b.counters.get("training.shards_fetched") >= 1  # (its round loop may fetch too)
