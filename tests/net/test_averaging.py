"""Averaging over real nodes: every member ends with the same mean, dense parts land in place."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack

import numpy as np
import pytest
import trio
from libp2p.peer.id import ID

from p2pshard import Node, NodeConfig, open_node
from p2pshard.core.wire.tensor import SparseTensor, decode_sparse, sum_rows
from p2pshard.engine.compression import SPARSELOCO, Compressor
from p2pshard.net.blob import BlobError
from p2pshard.protocols.averaging import (
    decode_raw_f32,
    encode_raw_f32,
    gather_average,
    reduce_scatter_average,
)


class _Board:
    """The exchange step for members in one process: each phase's table once all have posted."""

    def __init__(self, members: int) -> None:
        self.members = members
        self.tables: dict[str, dict[ID, Sequence[bytes]]] = {}
        self.full: dict[str, trio.Event] = {}

    def exchange_for(self, me: ID):  # type: ignore[no-untyped-def]
        async def exchange(phase: str, digests: Sequence[bytes]) -> Mapping[ID, Sequence[bytes]]:
            table = self.tables.setdefault(phase, {})
            event = self.full.setdefault(phase, trio.Event())
            table[me] = list(digests)
            if len(table) == self.members:
                event.set()
            with trio.fail_after(30):
                await event.wait()
            return table

        return exchange


async def _open_nodes(stack: AsyncExitStack, n: int) -> list[Node]:
    """``n`` nodes on 127.0.0.1, the others bootstrapped from the first."""
    first = await stack.enter_async_context(open_node(NodeConfig()))
    joined = NodeConfig(bootstrap=[first.addrs[0]])
    return [first] + [await stack.enter_async_context(open_node(joined)) for _ in range(n - 1)]


async def _run_members(n: int, member: Callable[[int], Awaitable[None]]) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(member, i)


def _mean(rows: Sequence[np.ndarray]) -> np.ndarray:
    return np.mean(np.stack(rows), axis=0, dtype=np.float64).astype(np.float32)


@pytest.mark.parametrize("layout", [reduce_scatter_average, gather_average])
async def test_members_end_with_the_mean(layout) -> None:  # type: ignore[no-untyped-def]
    d, n = 100_003, 3
    vectors = [np.random.default_rng(i).standard_normal(d, dtype=np.float32) for i in range(n)]
    async with AsyncExitStack() as stack:
        nodes = await _open_nodes(stack, n)
        ids = [node.peer_id for node in nodes]
        board = _Board(n)
        results: dict[int, np.ndarray] = {}

        async def member(i: int) -> None:
            results[i] = await layout(
                nodes[i].blobs,
                ids[i],
                [p for p in ids if p != ids[i]],
                vectors[i],
                encode=encode_raw_f32,
                decode=decode_raw_f32,
                reduce=_mean,
                exchange=board.exchange_for(ids[i]),
                max_size=4 * d + 64,
            )

        await _run_members(n, member)
        expected = _mean(vectors)
        for i in range(n):
            np.testing.assert_allclose(results[i], expected, rtol=0, atol=1e-6)
            assert np.array_equal(results[i], results[0])  # one model: bit-identical everywhere
            assert len(nodes[i].blobs.store) == 0  # what was published for the round is gone


async def test_fetch_into_refuses_a_blob_of_another_size() -> None:
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(open_node(NodeConfig()))
        client = await stack.enter_async_context(open_node(NodeConfig(bootstrap=[server.addrs[0]])))
        digest = server.blobs.store.put(b"x" * 1000, pin=True)
        with pytest.raises(BlobError, match="more than the 999 allowed"):
            await client.blobs.fetch_into(digest, [server.peer_id], memoryview(bytearray(999)), timeout_s=10)
        with pytest.raises(BlobError, match="not the 1001 expected"):
            await client.blobs.fetch_into(digest, [server.peer_id], memoryview(bytearray(1001)), timeout_s=10)
        exact = bytearray(1000)
        await client.blobs.fetch_into(digest, [server.peer_id], memoryview(exact), timeout_s=10)
        assert exact == b"x" * 1000
        assert digest not in client.blobs.store


async def test_sparse_gather_sums_kept_values_and_takes_its_own_row_without_decoding() -> None:
    d, n = 5 * 4096 + 77, 3
    vectors = [np.random.default_rng(10 + i).standard_normal(d, dtype=np.float32) for i in range(n)]
    compressors = [Compressor(SPARSELOCO) for _ in range(n)]
    sent: dict[int, bytes] = {}
    own: dict[int, SparseTensor] = {}
    decoded: dict[int, list[bytes]] = {i: [] for i in range(n)}
    async with AsyncExitStack() as stack:
        nodes = await _open_nodes(stack, n)
        ids = [node.peer_id for node in nodes]
        board = _Board(n)
        results: dict[int, np.ndarray] = {}

        async def member(i: int) -> None:
            def encode(v: np.ndarray) -> bytes:
                encoded = compressors[i].encode({"update": v})
                assert encoded.sparse is not None
                sent[i], own[i] = encoded.payload, encoded.sparse["update"]
                return encoded.payload

            def decode(b: bytes) -> SparseTensor:
                decoded[i].append(bytes(b))
                row = decode_sparse(b)["update"]
                assert isinstance(row, SparseTensor)
                return row

            results[i] = await gather_average(
                nodes[i].blobs,
                ids[i],
                [p for p in ids if p != ids[i]],
                vectors[i],
                encode=encode,
                decode=decode,
                reduce=lambda rows: sum_rows(rows, d),
                exchange=board.exchange_for(ids[i]),
                max_size=8 * d,
                own_row=lambda: own[i],
            )

        await _run_members(n, member)
    order = sorted(range(n), key=lambda i: ids[i].to_bytes())  # rows are summed in member order
    expected = sum_rows([decode_sparse(sent[i])["update"] for i in order], d)
    for i in range(n):
        assert sorted(decoded[i]) == sorted(sent[j] for j in range(n) if j != i)  # not its own
        assert np.array_equal(results[i].view(np.uint32), expected.view(np.uint32))
