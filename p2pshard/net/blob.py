"""Content-addressed blobs: ``/p2pshard/blob/1.0.0`` serves byte ranges of blobs named by SHA-256.

A fetch splits the blob into ranges and pulls them from several providers in parallel; the whole
blob is verified against its digest on arrival. If verification fails, each provider is asked for
the whole blob in turn, so a lying provider is found, counted and skipped (specs/protocols/blob.md).

The buffer a fetch assembles a blob in is sized by the provider's answer; it is reserved against
the node's memory (the resource manager's system scope) before it is allocated, and a fetch whose
buffer cannot be reserved fails (``limits.refused.buffer.blob``). Once verified and stored, a blob
counts against the store's own cap instead.
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence

import trio
from google.protobuf.message import DecodeError
from libp2p.peer.id import ID

from p2pshard.core.counters import Counters
from p2pshard.core.wire import blob_pb2
from p2pshard.net.limits import MemoryHold, NetLimits, limits_of
from p2pshard.net.reqresp import (
    Code,
    ProtocolSpec,
    Reply,
    ReqRespClient,
    RequestContext,
    RpcError,
    decode_or_reject,
)

BLOB_PROTOCOL = "/p2pshard/blob/1.0.0"
DIGEST_SIZE = 32
CHUNK_SIZE = 1 << 20
RANGE_SIZE = 16 << 20
"""Bytes fetched per request when a blob is split across providers."""


class BlobError(Exception):
    pass


Buffer = bytes | bytearray


class BlobStore:
    """Blobs in memory by digest. Pinned blobs stay; others are evicted oldest-first past the cap."""

    def __init__(self, max_bytes: int = 2 << 30) -> None:
        self.max_bytes = max_bytes
        self._blobs: OrderedDict[bytes, Buffer] = OrderedDict()
        self._pinned: set[bytes] = set()
        self._size = 0

    def __contains__(self, digest: object) -> bool:
        return digest in self._blobs

    def __len__(self) -> int:
        return len(self._blobs)

    @property
    def size(self) -> int:
        return self._size

    def put(self, data: bytes, *, pin: bool = False) -> bytes:
        """Store ``data`` under its SHA-256; returns the digest."""
        digest = hashlib.sha256(data).digest()
        self.put_verified(digest, data, pin=pin)
        return digest

    def put_verified(self, digest: bytes, data: Buffer, *, pin: bool = False) -> None:
        """Store ``data`` whose SHA-256 the caller has already checked to be ``digest``."""
        if digest not in self._blobs:
            if len(data) > self.max_bytes:
                raise BlobError(f"blob of {len(data)} bytes exceeds the store's {self.max_bytes}")
            self._blobs[digest] = data
            self._size += len(data)
        if pin:
            self._pinned.add(digest)
        self._blobs.move_to_end(digest)
        self._evict()

    def get(self, digest: bytes) -> Buffer | None:
        return self._blobs.get(digest)

    def remove(self, digest: bytes) -> None:
        data = self._blobs.pop(digest, None)
        if data is not None:
            self._size -= len(data)
        self._pinned.discard(digest)

    def _evict(self) -> None:
        for digest in list(self._blobs):
            if self._size <= self.max_bytes:
                return
            if digest not in self._pinned:
                self.remove(digest)


class BlobService:
    """Serves the local store and fetches from peers."""

    def __init__(self, store: BlobStore, client: ReqRespClient, counters: Counters) -> None:
        self.store = store
        self.client = client
        self.counters = counters
        self.on_served: Callable[[bytes, ID], None] | None = None
        """Told (digest, peer) when a blob's first range is sent to a peer in full."""

    @property
    def limits(self) -> NetLimits:
        """The resource limits of the host fetches go through (blob buffers are reserved there)."""
        return limits_of(getattr(self.client.connector, "host", None))

    def spec(self) -> ProtocolSpec:
        return ProtocolSpec(
            BLOB_PROTOCOL,
            self._handle,
            max_request_size=256,
            chunk_size=CHUNK_SIZE,
            default_deadline_s=60.0,
            max_deadline_s=600.0,
            max_concurrent=32,
        )

    async def _handle(self, ctx: RequestContext, body: bytes) -> Reply:
        req = decode_or_reject(blob_pb2.BlobRequest, body)
        if len(req.digest) != DIGEST_SIZE:
            raise RpcError(
                Code.INVALID_ARGUMENT, f"digest must be {DIGEST_SIZE} bytes, got {len(req.digest)}"
            )
        data = self.store.get(req.digest)
        if data is None:
            raise RpcError(Code.NOT_FOUND, f"no blob {req.digest.hex()[:16]}…")
        if req.offset > len(data):
            raise RpcError(Code.INVALID_ARGUMENT, f"offset {req.offset} past the end ({len(data)} bytes)")
        end = len(data) if req.length == 0 else min(len(data), req.offset + req.length)
        info = blob_pb2.BlobInfo(total_size=len(data), offset=req.offset)
        self.counters.incr("blob.served_bytes", end - req.offset)
        served = self.on_served
        sent = None if served is None or req.offset else functools.partial(served, req.digest, ctx.peer_id)
        return Reply(body=info.SerializeToString(), payload=memoryview(data)[req.offset : end], sent=sent)

    async def _fetch_range(
        self, peer: ID, digest: bytes, offset: int, length: int, into: _Assembly, timeout_s: float
    ) -> int:
        """Fetch [offset, offset+length) (length 0 = to the end) into ``into``; returns total size."""
        req = blob_pb2.BlobRequest(digest=digest, offset=offset, length=length)
        written = 0

        def sink(pos: int, data: bytes) -> None:
            nonlocal written
            into.write(offset + pos, data)
            written += len(data)

        body = await self.client.call(
            peer,
            BLOB_PROTOCOL,
            req.SerializeToString(),
            timeout_s=timeout_s,
            sink=sink,
            max_stream_length=into.size - offset,
            max_response_size=1024,
        )
        info = blob_pb2.BlobInfo()
        info.ParseFromString(body)
        expected = (info.total_size - offset) if length == 0 else min(length, info.total_size - offset)
        if written != expected:
            raise BlobError(f"{peer} sent {written} bytes for a range of {expected}")
        return int(info.total_size)

    async def _fetch_first(
        self,
        providers: Sequence[ID],
        digest: bytes,
        max_size: int,
        timeout_s: float,
        into: memoryview | None,
        hold: MemoryHold,
    ) -> tuple[ID, _Assembly]:
        """The first range from the first provider that has it; its response header gives the blob's
        size, so no separate size request is made.

        Even from one provider a blob comes in ``RANGE_SIZE`` requests, not one: py-libp2p's yamux
        grows a long stream's window towards 16 MiB and shifts its whole receive buffer on every
        read, which cost a third of the throughput of a 64 MiB blob in one stream."""
        errors = []
        for peer in providers:
            try:
                return peer, await self._first_from(peer, digest, max_size, timeout_s, into, hold)
            except (RpcError, BlobError, DecodeError) as exc:
                if isinstance(exc, RpcError) and exc.code == Code.RESOURCE_EXHAUSTED:
                    raise BlobError(str(exc)) from exc  # the blob is too big, whoever serves it
                errors.append(f"{peer}: {exc}")
        raise BlobError("no provider has the blob: " + "; ".join(errors))

    async def _first_from(
        self,
        peer: ID,
        digest: bytes,
        max_size: int,
        timeout_s: float,
        into: memoryview | None,
        hold: MemoryHold,
    ) -> _Assembly:
        made: list[_Assembly] = []

        def start(body: bytes, stream_length: int) -> None:
            info = blob_pb2.BlobInfo()
            info.ParseFromString(body)
            if info.total_size > max_size:
                too_big = f"blob is {info.total_size} bytes, more than the {max_size} allowed"
                raise RpcError(Code.RESOURCE_EXHAUSTED, too_big)
            if into is not None and info.total_size != len(into):
                wrong = f"blob is {info.total_size} bytes, not the {len(into)} expected"
                raise RpcError(Code.RESOURCE_EXHAUSTED, wrong)
            if into is None and not hold.resize(info.total_size):
                raise RpcError(Code.RESOURCE_EXHAUSTED, f"no memory for a blob of {info.total_size} bytes")
            made[:] = [_Assembly(info.total_size, buf=into)]  # a retried attempt starts afresh

        def sink(pos: int, data: bytes) -> None:
            made[0].write(pos, data)

        req = blob_pb2.BlobRequest(digest=digest, offset=0, length=RANGE_SIZE)
        await self.client.call(
            peer,
            BLOB_PROTOCOL,
            req.SerializeToString(),
            timeout_s=timeout_s,
            sink=sink,
            on_header=start,
            max_stream_length=min(max_size, RANGE_SIZE),
            max_response_size=1024,
        )
        if not made:
            raise BlobError("answer without blob info")
        assembly = made[0]
        expected = min(RANGE_SIZE, assembly.size)
        if assembly.received != expected:
            raise BlobError(f"sent {assembly.received} bytes for a range of {expected}")
        return assembly

    async def fetch(
        self, digest: bytes, providers: Sequence[ID], *, max_size: int, timeout_s: float = 120.0
    ) -> Buffer:
        """The blob named ``digest``, from the local store or ``providers``, verified and stored."""
        local = self.store.get(digest)
        if local is not None:
            return local
        assembly = await self._fetch_verified(digest, providers, max_size, timeout_s, None)
        assert isinstance(assembly.buf, bytearray)
        self.store.put_verified(digest, assembly.buf)
        return assembly.buf

    async def fetch_into(
        self, digest: bytes, providers: Sequence[ID], into: memoryview, *, timeout_s: float = 120.0
    ) -> None:
        """Fetch the blob named ``digest`` straight into ``into`` (a writable byte view of exactly the
        blob's size), verified; it is not stored. On failure ``into`` holds unverified bytes."""
        if into.readonly or into.format != "B" or not into.contiguous:
            raise ValueError("into must be a writable, contiguous byte view")
        await self._fetch_verified(digest, providers, len(into), timeout_s, into)

    async def _fetch_verified(
        self, digest: bytes, providers: Sequence[ID], max_size: int, timeout_s: float, into: memoryview | None
    ) -> _Assembly:
        if not providers:
            raise BlobError("no providers to fetch from")
        with trio.fail_after(timeout_s), MemoryHold(self.limits, None, "blob") as hold:
            first, assembly = await self._fetch_first(providers, digest, max_size, timeout_s, into, hold)
            size = assembly.size
            alive = [first, *[p for p in providers if p != first]]
            await self._fetch_parallel(digest, alive, assembly, timeout_s, skip_first=True)
            if assembly.digest() != digest:
                self.counters.incr("blob.rejected.hash_mismatch")
                assembly = await self._fetch_whole_from_honest(digest, alive, size, timeout_s, into)
        self.counters.incr("blob.fetched_bytes", size)
        return assembly

    async def _fetch_parallel(
        self, digest: bytes, providers: list[ID], into: _Assembly, timeout_s: float, skip_first: bool = False
    ) -> None:
        ranges = into.ranges()[1:] if skip_first else into.ranges()
        if not ranges:
            return
        failed: list[tuple[int, int]] = []

        async def worker(idx: int, peer: ID) -> None:
            for rng_idx in range(idx, len(ranges), len(providers)):
                off, length = ranges[rng_idx]
                try:
                    await self._fetch_range(peer, digest, off, length or 1, into, timeout_s)
                except (RpcError, BlobError, DecodeError):
                    self.counters.incr("blob.range_failures")
                    failed.append((off, length))

        async with trio.open_nursery() as nursery:
            for i, peer in enumerate(providers[: max(1, min(len(providers), len(ranges)))]):
                nursery.start_soon(worker, i, peer)
        for off, length in failed:  # retry each failed range against every provider in turn
            for peer in providers:
                try:
                    await self._fetch_range(peer, digest, off, length or 1, into, timeout_s)
                    break
                except (RpcError, BlobError, DecodeError):
                    continue
            else:
                raise BlobError(f"range at {off} could not be fetched from any provider")

    async def _fetch_whole_from_honest(
        self, digest: bytes, providers: list[ID], size: int, timeout_s: float, into: memoryview | None
    ) -> _Assembly:
        for peer in providers:
            assembly = _Assembly(size, buf=into)
            try:
                await self._fetch_range(peer, digest, 0, 0, assembly, timeout_s)
            except (RpcError, BlobError, DecodeError):
                continue
            if assembly.digest() == digest:
                return assembly
            self.counters.incr("blob.rejected.lying_provider")
        raise BlobError("no provider served bytes matching the digest")


class _Assembly:
    """A blob arriving in ranges: one buffer, written in place, whose contiguous filled prefix is
    hashed as it grows, so verification costs no extra pass and no copy."""

    def __init__(self, size: int, range_size: int = RANGE_SIZE, buf: memoryview | None = None) -> None:
        self.size = size
        self.range_size = range_size
        self.buf: bytearray | memoryview = bytearray(size) if buf is None else buf
        self._view = memoryview(self.buf)
        self._filled = [0] * max(1, -(-size // range_size))
        self._hasher = hashlib.sha256()
        self._hashed = 0
        self.received = 0

    def ranges(self) -> list[tuple[int, int]]:
        if self.size == 0:
            return [(0, 0)]
        return [(off, min(self.range_size, self.size - off)) for off in range(0, self.size, self.range_size)]

    def write(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        self._view[offset:end] = data
        self.received += len(data)
        r = offset // self.range_size
        self._filled[r] = max(self._filled[r], end - r * self.range_size)
        while self._hashed < self.size:
            r = self._hashed // self.range_size
            filled_to = r * self.range_size + self._filled[r]
            if filled_to <= self._hashed:
                break
            self._hasher.update(self._view[self._hashed : filled_to])
            self._hashed = filled_to

    def digest(self) -> bytes | None:
        """SHA-256 of the whole blob, or None while some of it has not arrived."""
        return self._hasher.digest() if self._hashed == self.size else None
