from __future__ import annotations

import hashlib
import os
from contextlib import AsyncExitStack

import pytest

from p2pshard import NodeConfig, open_node
from p2pshard.net.blob import BlobError
from p2pshard.node import Node


async def test_fetch_verifies_and_stores(two_nodes: tuple[Node, Node]) -> None:
    server, client = two_nodes
    data = os.urandom(3 << 20)
    digest = server.blobs.store.put(data, pin=True)
    got = await client.blobs.fetch(digest, [server.peer_id], max_size=8 << 20)
    assert got == data
    assert digest in client.blobs.store
    assert client.counters.get("blob.fetched_bytes") == len(data)


async def test_the_server_is_told_when_a_blobs_first_range_reached_a_peer(
    two_nodes: tuple[Node, Node],
) -> None:
    """A round's author learns which peers took its update (the round protocol counts them)."""
    server, client = two_nodes
    served: list[tuple[bytes, object]] = []
    server.blobs.on_served = lambda digest, peer: served.append((digest, peer))
    data = os.urandom(3 << 20)  # several ranges
    digest = server.blobs.store.put(data, pin=True)
    assert await client.blobs.fetch(digest, [server.peer_id], max_size=8 << 20) == data
    assert served == [(digest, client.peer_id)]  # once per fetch: its first range, sent in full
    with pytest.raises(BlobError):
        await client.blobs.fetch(b"\x01" * 32, [server.peer_id], max_size=1 << 20)
    assert len(served) == 1  # nothing was sent


async def test_256_mib_transfer(two_nodes: tuple[Node, Node]) -> None:
    """py-libp2p's request_response breaks above ~6.5 MiB; ours streams in chunks."""
    server, client = two_nodes
    data = os.urandom(1 << 20) * 256
    digest = server.blobs.store.put(data, pin=True)
    got = await client.blobs.fetch(digest, [server.peer_id], max_size=300 << 20, timeout_s=120)
    assert hashlib.sha256(got).digest() == digest


async def test_missing_blob_and_size_limit(two_nodes: tuple[Node, Node]) -> None:
    server, client = two_nodes
    with pytest.raises(BlobError, match="no provider has the blob"):
        await client.blobs.fetch(b"\x00" * 32, [server.peer_id], max_size=1 << 20)
    digest = server.blobs.store.put(b"x" * 5000)
    with pytest.raises(BlobError, match="more than the 1000 allowed"):
        await client.blobs.fetch(digest, [server.peer_id], max_size=1000)
    assert digest not in client.blobs.store


async def test_parallel_fetch_finds_lying_provider() -> None:
    """Two providers share the ranges; one serves corrupted bytes. The blob still arrives intact."""
    data = os.urandom(40 << 20)
    async with AsyncExitStack() as stack:
        honest = await stack.enter_async_context(open_node(NodeConfig()))
        liar = await stack.enter_async_context(open_node(NodeConfig(bootstrap=[honest.addrs[0]])))
        client = await stack.enter_async_context(open_node(NodeConfig(bootstrap=[honest.addrs[0]])))
        digest = honest.blobs.store.put(data, pin=True)
        corrupted = bytearray(data)
        for pos in range(0, len(data), 1 << 20):  # whichever ranges the liar serves carry a lie
            corrupted[pos] ^= 0xFF
        liar.blobs.store._blobs[digest] = bytes(corrupted)  # a provider lying about the content
        got = await client.blobs.fetch(digest, [liar.peer_id, honest.peer_id], max_size=64 << 20)
        assert got == data
        assert client.counters.get("blob.rejected.hash_mismatch") == 1
        assert client.counters.get("blob.rejected.lying_provider") == 1


def test_store_evicts_unpinned_first() -> None:
    from p2pshard.net.blob import BlobStore

    store = BlobStore(max_bytes=100)
    pinned = store.put(b"p" * 60, pin=True)
    loose = store.put(b"l" * 30)
    newer = store.put(b"n" * 30)
    assert pinned in store and newer in store and loose not in store
    assert store.size == 90


@pytest.mark.parametrize("muxer", ["yamux", "mplex"])
async def test_fetch_over_each_muxer(muxer: str) -> None:
    """The payload goes to the muxer as views of the stored blob; both muxers carry it intact."""
    data = os.urandom(5 << 20)
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(open_node(NodeConfig(muxers=[muxer])))
        client = await stack.enter_async_context(
            open_node(NodeConfig(muxers=[muxer], bootstrap=[server.addrs[0]]))
        )
        digest = server.blobs.store.put(data, pin=True)
        assert await client.blobs.fetch(digest, [server.peer_id], max_size=8 << 20) == data
