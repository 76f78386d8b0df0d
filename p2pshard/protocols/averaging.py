"""Averaging one flat vector among a group of peers over the blob protocol.

Two layouts (DESIGN.md, "Cost of a round"), both built on content-addressed blobs
(``/p2pshard/blob/1.0.0``) and an *exchange* step through which every member learns the digests the
others published (in a network round: the gradient announcements on gossip; in a benchmark: a
coordinator):

- :func:`gather_average`: every member publishes its whole encoded vector and fetches everyone
  else's, then reduces locally. Each member takes ``(N-1)*d`` bytes in. Any rule works, Krum too.
- :func:`reduce_scatter_average`: the vector is cut into N contiguous slices (:func:`slice_bounds`);
  member ``i`` (in the sorted member order) fetches slice ``i`` from everyone, reduces it, publishes
  the reduced slice, and every member then fetches the N-1 reduced slices it did not reduce. Each
  member takes ``2*(N-1)/N*d`` bytes in, what a ring or butterfly all-reduce moves. Only
  coordinate-wise rules (mean, trimmed mean, median) may reduce a slice on its own.

Trust: in the reduce-scatter layout a member adopts slices reduced by others. This module does not
check them; a network that uses it with untrusted peers must (DESIGN.md: reduce each slice on two
peers and compare, or spot-check against the contributions' hashes). Every fetched blob is still
verified against its digest and bounded by ``max_size``, and the codec's strict decoder judges it.

CPU-heavy steps (encode, decode, reduce) run in a worker thread, so this node keeps serving the
blobs other members are fetching from it meanwhile.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import trio
from libp2p.peer.id import ID

from p2pshard.net.blob import BlobService

__all__ = [
    "AveragingError",
    "AveragingStats",
    "Exchange",
    "decode_raw_f32",
    "encode_raw_f32",
    "gather_average",
    "reduce_scatter_average",
    "slice_bounds",
]

F32 = npt.NDArray[np.float32]
NO_DIGEST = bytes(32)
Encode = Callable[[F32], bytes]
Buffer = bytes | bytearray
Decode = Callable[[Buffer], F32]
Reduce = Callable[[Sequence[F32]], F32]
Row = TypeVar("Row")
Exchange = Callable[[str, Sequence[bytes]], Awaitable[Mapping[ID, Sequence[bytes]]]]
"""``exchange(phase, my_digests)`` -> every member's digests for ``phase`` (this member's included).

It is also the barrier: a member removes what it published only after the last phase (``done``)
has been exchanged, when every member has fetched what it needed."""


class AveragingError(Exception):
    """A member's digests are missing or malformed, or a decoded part has the wrong size."""


@dataclass
class AveragingStats:
    """Seconds spent per step and bytes fetched, for benchmarks and logs."""

    encode_s: float = 0.0
    fetch_s: float = 0.0
    decode_reduce_s: float = 0.0
    bytes_in: int = 0


def encode_raw_f32(vector: F32) -> bytes:
    """Dense parts as bare little-endian float32: no envelope to parse, no copy to decode."""
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def decode_raw_f32(data: Buffer) -> F32:
    """The inverse of :func:`encode_raw_f32`; the caller checks the count (:func:`_checked` does).

    The bytes were verified against their digest and bounded by ``max_size`` when fetched, and
    values are not judged here (a NaN is the reducer's or the screening's business).
    """
    if len(data) % 4:
        raise AveragingError(f"{len(data)} bytes is not a whole number of float32")
    out: F32 = np.frombuffer(data, dtype="<f4")
    return out


def slice_bounds(d: int, n: int) -> list[tuple[int, int]]:
    """``n`` contiguous ``[start, end)`` slices covering ``range(d)``, sizes differing by at most 1."""
    if n < 1 or d < 0:
        raise ValueError("need n >= 1 and d >= 0")
    base, extra = divmod(d, n)
    out: list[tuple[int, int]] = []
    start = 0
    for i in range(n):
        end = start + base + (1 if i < extra else 0)
        out.append((start, end))
        start = end
    return out


def _members(me: ID, peers: Sequence[ID]) -> list[ID]:
    members = sorted({me, *peers}, key=lambda p: p.to_bytes())
    if len(members) != len(peers) + (0 if me in peers else 1):
        raise AveragingError("duplicate peers")
    return members


def _digests(table: Mapping[ID, Sequence[bytes]], peer: ID, count: int) -> Sequence[bytes]:
    got = table.get(peer)
    if got is None or len(got) != count or any(len(d) != 32 for d in got):
        raise AveragingError(f"{peer}: expected {count} digests")
    return got


async def _fetch_all(
    blobs: BlobService,
    wanted: Sequence[tuple[int, ID, bytes]],
    max_size: int,
    timeout_s: float,
    stats: AveragingStats,
    place: Callable[[int], memoryview] | None = None,
) -> dict[int, Buffer]:
    """Fetch every ``(key, provider, digest)`` concurrently; returns key -> payload (not copied).

    With ``place``, each payload is fetched straight into ``place(key)`` (exactly its size) and
    nothing is returned for it.
    """
    out: dict[int, Buffer] = {}

    async def one(key: int, peer: ID, digest: bytes) -> None:
        if place is not None:
            target = place(key)
            await blobs.fetch_into(digest, [peer], target, timeout_s=timeout_s)
            stats.bytes_in += len(target)
            return
        data = await blobs.fetch(digest, [peer], max_size=max_size, timeout_s=timeout_s)
        out[key] = data
        stats.bytes_in += len(data)
        blobs.store.remove(digest)  # fetch() keeps a copy; this one is consumed right away

    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        for key, peer, digest in wanted:
            nursery.start_soon(one, key, peer, digest)
    stats.fetch_s += trio.current_time() - t0
    return out


async def _in_thread(fn: Callable[[], object], stats: AveragingStats, field: str) -> object:
    t0 = trio.current_time()
    result = await trio.to_thread.run_sync(fn)
    setattr(stats, field, getattr(stats, field) + trio.current_time() - t0)
    return result


async def gather_average(
    blobs: BlobService,
    me: ID,
    peers: Sequence[ID],
    vector: F32,
    *,
    encode: Encode,
    decode: Callable[[Buffer], Row],
    reduce: Callable[[Sequence[Row]], F32],
    exchange: Exchange,
    max_size: int,
    timeout_s: float = 120.0,
    stats: AveragingStats | None = None,
    own_row: Callable[[], Row] | None = None,
) -> F32:
    """Everyone's whole vector to everyone; reduce the rows in sorted member order.

    A row is whatever ``decode`` makes of a payload: a dense vector (checked to have the vector's
    size here) or, for sparse encodings, the decoder's own form (e.g. a ``SparseTensor``, which the
    decoder bounds, summed by ``p2pshard.core.wire.tensor.sum_rows``), so that a reducer adds a few
    kept values instead of whole dense rows. ``own_row``, if given, returns this member's row as
    ``decode`` would make it of its own payload (called after ``encode``; a top-k encoder knows what
    it kept), so that it is not decoded.
    """
    st = stats if stats is not None else AveragingStats()
    members = _members(me, peers)
    payload = await _in_thread(lambda: encode(vector), st, "encode_s")
    assert isinstance(payload, bytes)
    mine = blobs.store.put(payload, pin=True)
    try:
        table = await exchange("gather", [mine])
        wanted = [(i, p, _digests(table, p, 1)[0]) for i, p in enumerate(members) if p != me]
        fetched = await _fetch_all(blobs, wanted, max_size, timeout_s, st)
        await exchange("done", [])  # everyone has fetched what it needs from me
    finally:
        blobs.store.remove(mine)
    fetched[members.index(me)] = payload

    def work() -> F32:
        rows = [
            own_row() if p == me and own_row is not None else decode(fetched[i])
            for i, p in enumerate(members)
        ]
        for row in rows:
            if isinstance(row, np.ndarray):
                _checked(row, vector.size)
        return _checked(reduce(rows), vector.size)

    result = await _in_thread(work, st, "decode_reduce_s")
    assert isinstance(result, np.ndarray)
    return result


async def reduce_scatter_average(
    blobs: BlobService,
    me: ID,
    peers: Sequence[ID],
    vector: F32,
    *,
    encode: Encode,
    decode: Decode,
    reduce: Reduce,
    exchange: Exchange,
    max_size: int,
    timeout_s: float = 120.0,
    stats: AveragingStats | None = None,
) -> F32:
    """Reduce slice ``i`` on member ``i``, then gather the reduced slices (see module docstring).

    ``reduce`` must be coordinate-wise: it sees one slice of every member's vector at a time.
    """
    st = stats if stats is not None else AveragingStats()
    members = _members(me, peers)
    n = len(members)
    idx = members.index(me)
    bounds = slice_bounds(vector.size, n)
    # Bare float32 parts land straight in the result: no assembly buffer, no copy out of one.
    raw = encode is encode_raw_f32 and decode is decode_raw_f32
    out: F32 = np.empty(vector.size, dtype="<f4")
    out_bytes = out.data.cast("B")

    def place(j: int) -> memoryview:
        lo, hi = bounds[j]
        return out_bytes[4 * lo : 4 * hi]

    def encode_slices() -> list[bytes]:
        return [encode(vector[a:b]) for a, b in bounds]

    parts = await _in_thread(encode_slices, st, "encode_s")
    assert isinstance(parts, list)
    # Nobody fetches the slice this member reduces itself: it is not stored (nor hashed), and its
    # place in the digest list holds NO_DIGEST.
    digests = [NO_DIGEST if j == idx else blobs.store.put(p, pin=True) for j, p in enumerate(parts)]
    own_reduced: bytes | None = None
    try:
        table = await exchange("scatter", digests)
        wanted = [(j, p, _digests(table, p, n)[idx]) for j, p in enumerate(members) if p != me]
        fetched = await _fetch_all(blobs, wanted, max_size, timeout_s, st)
        fetched[idx] = parts[idx]
        a, b = bounds[idx]

        def reduce_mine() -> bytes:
            rows = [_checked(decode(fetched[j]), b - a) for j in range(n)]
            return encode(reduce(rows))

        reduced = await _in_thread(reduce_mine, st, "decode_reduce_s")
        assert isinstance(reduced, bytes)
        own_reduced = reduced
        reduced_digest = blobs.store.put(reduced, pin=True)
        try:
            table = await exchange("gather", [reduced_digest])
            wanted = [(j, p, _digests(table, p, 1)[0]) for j, p in enumerate(members) if p != me]
            slices = await _fetch_all(blobs, wanted, max_size, timeout_s, st, place if raw else None)
            await exchange("done", [])  # everyone has fetched what it needs from me
        finally:
            blobs.store.remove(reduced_digest)
    finally:
        for d in digests:
            if d != NO_DIGEST:
                blobs.store.remove(d)
    slices[idx] = own_reduced

    def assemble() -> F32:
        for j, (lo, hi) in enumerate(bounds):
            if j in slices:
                out[lo:hi] = _checked(decode(slices[j]), hi - lo)
        return out.astype(np.float32, copy=False)

    result = await _in_thread(assemble, st, "decode_reduce_s")
    assert isinstance(result, np.ndarray)
    return result


def _checked(arr: F32, size: int) -> F32:
    flat = np.asarray(arr, dtype=np.float32).reshape(-1)
    if flat.size != size:
        raise AveragingError(f"decoded {flat.size} values, expected {size}")
    return flat
