"""Every buffer a peer can make us fill is reserved against a memory scope before it is filled.

One test per kind of buffer (specs/limits.md, "Reserves memory"): a yamux stream's receive window
as it grows past 256 KiB, the windows of the streams we open, a request frame (request/response and
blob requests alike), a response frame, a blob being assembled, a gossip peer's outbound queue and
the frame being read from it. Each shows that a peer cannot grow the buffer past the memory its
scope allows, that the refusal is counted by scope and by buffer, and that the memory comes back.
Hosts listen on 127.0.0.1 only, and every wait is bounded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest
import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import PeerInfo
from libp2p.stream_muxer.yamux import yamux as _yamux
from multiaddr import Multiaddr

from p2pshard.core.counters import Counters
from p2pshard.core.resources import MiB, ResourceManager, ScopeLimits, Span
from p2pshard.core.wire.framing import encode_uvarint
from p2pshard.identity import Identity
from p2pshard.net.blob import BlobError, BlobService, BlobStore
from p2pshard.net.connector import Connector
from p2pshard.net.framed import BufferRefused
from p2pshard.net.host import build_host
from p2pshard.net.limits import MemoryHold, NetLimits, machine_limits
from p2pshard.net.pubsub_io import FrameReader, PeerQueue
from p2pshard.net.reqresp import (
    Code,
    ProtocolSpec,
    Reply,
    ReqRespClient,
    ReqRespServer,
    RequestContext,
    RetryPolicy,
    RpcError,
)
from p2pshard.net.transport import StreamRefused, TunedYamux
from tests.util import eventually

WINDOW = _yamux.DEFAULT_WINDOW_SIZE
SINK = TProtocol("/test/sink/1.0.0")


def _limits(*, conn_memory: int = 0, system_memory: int = 0) -> NetLimits:
    """This machine's limits with a connection's (or the node's) memory set small."""
    base = machine_limits()
    if conn_memory:
        base = replace(base, conn=replace(base.conn, memory=conn_memory))
    if system_memory:
        base = replace(base, system=replace(base.system, memory=system_memory))
    return NetLimits(Counters(), resources=ResourceManager(base))


def _muxer(host: IHost, peer: IHost) -> TunedYamux:
    muxed = host.get_network().connections[peer.get_id()][0].muxed_conn
    assert isinstance(muxed, TunedYamux)
    return muxed


@asynccontextmanager
async def _pair(server: NetLimits, client: NetLimits) -> AsyncIterator[tuple[IHost, IHost]]:
    """Two hosts on 127.0.0.1, the client connected to the server, both connections reserved."""
    listen = Multiaddr("/ip4/127.0.0.1/tcp/0")
    server_host = build_host(Identity.generate(), [listen], limits=server)
    client_host = build_host(Identity.generate(), [], limits=client)
    async with server_host.run([listen]), client_host.run([]):
        with trio.fail_after(10):
            await client_host.connect(PeerInfo(server_host.get_id(), server_host.get_addrs()))
        await eventually(lambda: bool(server_host.get_network().connections.get(client_host.get_id())))
        for host, peer in ((server_host, client_host), (client_host, server_host)):
            muxer = _muxer(host, peer)
            await eventually(lambda muxer=muxer: getattr(muxer, "p2pshard_span", None) is not None)
        yield server_host, client_host


def _memory_used(limits: NetLimits) -> int:
    return limits.resources.usage()["memory"][0]


async def test_a_receive_window_grows_only_as_far_as_its_memory_is_reserved() -> None:
    """py-libp2p doubles a fast reader's window up to 16 MiB; here the connection may hold 1 MiB."""
    server, client = _limits(conn_memory=1 * MiB), _limits()
    targets: list[int] = []
    received = 0

    async def sink(stream: INetStream) -> None:
        nonlocal received
        while True:
            try:
                data = await stream.read(1 << 20)
            except Exception:
                break
            if not data:
                break
            received += len(data)
            targets.append(stream.muxed_stream.target_recv_window)  # type: ignore[attr-defined]
        await stream.close()

    async with _pair(server, client) as (server_host, client_host):
        server_host.set_stream_handler(SINK, sink)
        stream = await client_host.new_stream(server_host.get_id(), [SINK])
        with trio.fail_after(30):
            for _ in range(32):
                await stream.write(b"x" * (256 * 1024))
            await stream.close()
            await eventually(lambda: received == 8 * MiB)
        assert max(targets) <= 1 * MiB - WINDOW  # the rest of the connection's MiB: its first window
        assert max(targets) > WINDOW  # it did grow, as far as it was allowed
        assert server.counters.get("limits.refused.buffer.yamux_window") >= 1
        assert server.counters.get("limits.refused.memory.conn") >= 1
        await eventually(lambda: _memory_used(server) == 0, within_s=3)  # the stream's window given back


async def test_small_reads_do_not_grow_a_window() -> None:
    """py-libp2p doubled a window on every update that came soon after the last, however little was
    read: a stream that read a few small messages held a multi-MiB window (and now its reservation).
    Only a reader that consumes half its window between updates grows it."""
    server, client = _limits(), _limits()
    targets: list[int] = []

    async def small_reads(stream: INetStream) -> None:
        for _ in range(40):
            await stream.read(100)
            targets.append(stream.muxed_stream.target_recv_window)  # type: ignore[attr-defined]
        await stream.close()

    async with _pair(server, client) as (server_host, client_host):
        server_host.set_stream_handler(SINK, small_reads)
        stream = await client_host.new_stream(server_host.get_id(), [SINK])
        with trio.fail_after(10):
            for _ in range(40):
                await stream.write(b"m" * 100)
                await trio.sleep(0.001)
            await eventually(lambda: len(targets) == 40)
        assert max(targets) == WINDOW


async def test_streams_we_open_reserve_their_windows() -> None:
    """Our own streams' windows are memory the peer fills: a fifth stream on a connection allowed
    1 MiB (four windows) is refused, and a stream closed gives its window back."""
    server, client = _limits(), _limits(conn_memory=4 * WINDOW)
    async with _pair(server, client) as (server_host, client_host):

        async def hold_open(stream: INetStream) -> None:
            await trio.sleep(30)

        server_host.set_stream_handler(SINK, hold_open)
        muxer = _muxer(client_host, server_host)
        await eventually(lambda: _memory_used(client) == 0)  # identify's streams done
        opened = []
        with pytest.raises(StreamRefused):
            for _ in range(8):
                opened.append(await muxer.open_stream())
        assert len(opened) == 4
        assert _memory_used(client) == 4 * WINDOW
        assert client.counters.get("limits.refused.buffer.yamux_window") >= 1
        assert client.counters.get("limits.refused.memory.conn") >= 1
        await opened[0].reset()
        opened[0] = await muxer.open_stream()
        for stream in opened:
            await stream.reset()
        assert _memory_used(client) == 0


async def _echo(ctx: RequestContext, body: bytes) -> Reply:
    return Reply(body=body[:16])


async def test_a_request_frame_is_reserved_before_it_is_read() -> None:
    """A request announcing 700 KiB on a connection allowed 768 KiB (its stream's window takes
    256 KiB) is reset without being assembled (the client is still writing it: an answer would not
    be read); a small one is answered."""
    server, client = _limits(conn_memory=768 * 1024), _limits()
    async with _pair(server, client) as (server_host, client_host):
        counters = Counters()
        rpc = ReqRespServer(server_host, counters)
        rpc.register(ProtocolSpec("/test/echo/1.0.0", _echo, max_request_size=1 * MiB))
        caller = ReqRespClient(Connector(client_host, Counters()), Counters())
        await eventually(lambda: _memory_used(server) == 0)  # identify's streams done
        with trio.fail_after(20):
            assert await caller.call(server_host.get_id(), "/test/echo/1.0.0", b"small") == b"small"
            with pytest.raises(RpcError) as refused:
                big = b"y" * (700 * 1024)
                await caller.call(
                    server_host.get_id(), "/test/echo/1.0.0", big, retry=RetryPolicy(attempts=1)
                )
        assert refused.value.code == Code.UNAVAILABLE
        assert counters.get("reqresp.rejected.memory") == 1
        assert server.counters.get("limits.refused.buffer.request") == 1
        assert server.counters.get("limits.refused.memory.conn") >= 1
        await eventually(lambda: _memory_used(server) == 0)


async def test_a_response_frame_is_reserved_before_it_is_read() -> None:
    """The client side: a response frame announcing more than its connection may hold fails the
    call with RESOURCE_EXHAUSTED, counted, instead of being assembled."""

    async def big(ctx: RequestContext, body: bytes) -> Reply:
        return Reply(body=b"z" * (700 * 1024))

    server, client = _limits(), _limits(conn_memory=768 * 1024)
    async with _pair(server, client) as (server_host, client_host):
        await eventually(lambda: _memory_used(client) == 0)  # identify's streams done
        ReqRespServer(server_host, Counters()).register(ProtocolSpec("/test/big/1.0.0", big))
        caller = ReqRespClient(Connector(client_host, Counters()), Counters())
        with trio.fail_after(20), pytest.raises(RpcError) as refused:
            await caller.call(server_host.get_id(), "/test/big/1.0.0", b"", max_response_size=1 * MiB)
        assert refused.value.code == Code.RESOURCE_EXHAUSTED
        assert client.counters.get("limits.refused.buffer.response") == 1
        await eventually(lambda: _memory_used(client) == 0)


async def test_a_blob_buffer_is_reserved_before_it_is_allocated() -> None:
    """A provider's answer sizes the buffer a blob is assembled in: on a node allowed 3 MiB in
    all, a 4 MiB blob is refused before the buffer is made, a 512 KiB one is fetched."""
    server, client = _limits(), _limits(system_memory=3 * MiB)
    async with _pair(server, client) as (server_host, client_host):
        store = BlobStore()
        big, small = store.put(b"b" * (4 * MiB)), store.put(b"s" * (512 * 1024))
        provider = BlobService(
            store, ReqRespClient(Connector(server_host, Counters()), Counters()), Counters()
        )
        ReqRespServer(server_host, Counters()).register(provider.spec())
        fetcher = BlobService(
            BlobStore(), ReqRespClient(Connector(client_host, Counters()), Counters()), Counters()
        )
        with trio.fail_after(20):
            assert len(await fetcher.fetch(small, [server_host.get_id()], max_size=8 * MiB)) == 512 * 1024
            with pytest.raises(BlobError, match="no memory"):
                await fetcher.fetch(big, [server_host.get_id()], max_size=8 * MiB)
        assert client.counters.get("limits.refused.buffer.blob") == 1
        assert client.counters.get("limits.refused.memory.system") >= 1
        await eventually(lambda: _memory_used(client) == 0)


def _conn_span(memory: int) -> tuple[NetLimits, Span]:
    """Limits whose connections may hold ``memory`` bytes, and one inbound connection's span."""
    base = machine_limits()
    limits = NetLimits(Counters(), resources=ResourceManager(replace(base, conn=ScopeLimits(memory=memory))))
    span = limits.resources.open_connection("inbound", "127.0.0.1", "peer")
    assert isinstance(span, Span)
    return limits, span


def test_a_gossip_peers_outbound_queue_is_reserved_frame_by_frame() -> None:
    """Frames queued for a peer are reserved against its connection: past the connection's memory
    they are refused and counted, and taken ones give their memory back."""
    limits, conn = _conn_span(1 * MiB)
    queue = PeerQueue(16 * MiB, MemoryHold(limits, conn, "gossip_out"))
    frame = b"f" * (256 * 1024)
    assert all(queue.try_put(frame) for _ in range(4))
    assert not queue.try_put(frame)
    assert queue.refused == 1
    assert limits.counters.get("limits.refused.buffer.gossip_out") == 1
    assert limits.counters.get("limits.refused.memory.conn") == 1
    queue.take(256 * 1024)
    assert queue.try_put(frame)
    queue.close()
    assert _memory_used(limits) == 0


async def test_a_publish_does_not_wait_for_memory() -> None:
    limits, conn = _conn_span(1000)
    queue = PeerQueue(1 << 20, MemoryHold(limits, conn, "gossip_out"))
    assert await queue.put_wait(b"a" * 600)
    with trio.fail_after(1):
        assert not await queue.put_wait(b"b" * 600)


class _Feed:
    """A stream that hands out ``data`` in 64 KiB reads (then EOF), counting what was read."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.read_bytes = 0

    async def read(self, n: int) -> bytes:
        piece = self.data[self.read_bytes : self.read_bytes + min(n, 64 * 1024)]
        self.read_bytes += len(piece)
        return piece


async def test_a_gossip_frame_is_reserved_before_it_is_assembled() -> None:
    """A peer announcing a 3 MiB RPC (under the 4 MiB frame limit) on a connection allowed 1 MiB
    is cut off after its first read; a 512 KiB frame is read and its memory given back after."""
    limits, conn = _conn_span(1 * MiB)

    async def on_head(head: bytes) -> None:
        pass

    small = _Feed(encode_uvarint(512 * 1024) + b"s" * (512 * 1024))
    reader = FrameReader(small, 4 * MiB, MemoryHold(limits, conn, "gossip_in"))
    assert len(await reader.read_frame(on_head) or b"") == 512 * 1024
    assert await reader.read_frame(on_head) is None
    assert _memory_used(limits) == 0

    big = _Feed(encode_uvarint(3 * MiB) + b"b" * (3 * MiB))
    reader = FrameReader(big, 4 * MiB, MemoryHold(limits, conn, "gossip_in"))
    with pytest.raises(BufferRefused):
        await reader.read_frame(on_head)
    assert big.read_bytes <= 64 * 1024
    assert limits.counters.get("limits.refused.buffer.gossip_in") == 1
    assert _memory_used(limits) == 0
