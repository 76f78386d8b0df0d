"""A hostile peer's yamux frames: data past a stream's window, and floods of stream SYNs.

The hostile client is a py-libp2p host whose connection we drive with raw yamux frames written
straight into its Noise session (127.0.0.1 only). py-libp2p 0.8.1 buffered data sent past the
window without limit and accepted every SYN; these tests fail on it.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from libp2p.abc import IHost
from libp2p.peer.peerinfo import PeerInfo
from libp2p.stream_muxer.yamux import yamux as _yamux

from p2pshard import NodeConfig, open_node
from p2pshard.identity import Identity
from p2pshard.net.host import build_host, parse_peer_addr
from p2pshard.net.transport import TunedYamux
from p2pshard.node import Node
from p2pshard.protocols.status import fetch_status
from tests.util import eventually

WINDOW = _yamux.DEFAULT_WINDOW_SIZE


def _frame(typ: int, flags: int, stream_id: int, length: int) -> bytes:
    return struct.pack(_yamux.YAMUX_HEADER_FORMAT, 0, typ, flags, stream_id, length)


@asynccontextmanager
async def _hostile(server: Node) -> AsyncIterator[tuple[IHost, TunedYamux, TunedYamux]]:
    """A connected non-listening host: (host, its muxer, the server's muxer of the connection)."""
    host = build_host(Identity.generate(), [])
    async with host.run([]):
        with trio.fail_after(10):
            await host.connect(PeerInfo(server.peer_id, server.host.get_addrs()))
        ours = host.get_network().connections[server.peer_id][0].muxed_conn
        await eventually(lambda: bool(server.host.get_network().connections.get(host.get_id())))
        theirs = server.host.get_network().connections[host.get_id()][0].muxed_conn
        assert isinstance(ours, TunedYamux) and isinstance(theirs, TunedYamux)
        yield host, ours, theirs


async def _serves_honest_clients(server: Node) -> None:
    async with open_node(NodeConfig(), client_only=True) as honest:
        await honest.connector.connect(parse_peer_addr(server.addrs[0]))
        status = await fetch_status(honest.client, server.peer_id)
        assert status.peer_id == server.peer_id.to_base58()


async def test_data_past_the_window_closes_the_connection_and_is_scored() -> None:
    async with open_node(NodeConfig()) as server, _hostile(server) as (host, ours, theirs):
        stream = await ours.open_stream()  # a SYN; the server waits for a protocol name on it
        sid = stream.stream_id
        await ours._write_frame(_frame(_yamux.TYPE_DATA, 0, sid, 1000) + b"x" * 1000)
        # 16 MiB against a window of 256 KiB, in frames yamux itself would accept (<= 16 MiB each)
        for _ in range(16):
            try:
                await ours._write_frame(_frame(_yamux.TYPE_DATA, 0, sid, 1 << 20) + b"y" * (1 << 20))
            except Exception:
                break  # the server closed the connection under us
        await eventually(lambda: server.counters.get("limits.refused.yamux_window") == 1)
        await eventually(lambda: theirs.is_closed)
        assert theirs.peak_stream_buffer <= WINDOW
        assert sum(len(b) for b in theirs.stream_buffers.values()) == 0
        assert server.app_penalties.score(host.get_id().to_bytes()) < 0
        await eventually(lambda: not server.connector.is_connected(host.get_id()))
        await _serves_honest_clients(server)


async def test_a_window_filled_exactly_is_accepted() -> None:
    async with open_node(NodeConfig()) as server, _hostile(server) as (_, ours, theirs):
        stream = await ours.open_stream()
        await ours._write_frame(_frame(_yamux.TYPE_DATA, 0, stream.stream_id, WINDOW) + b"z" * WINDOW)
        await eventually(lambda: theirs.peak_stream_buffer == WINDOW)
        assert not theirs.is_closed
        assert server.counters.get("limits.refused.yamux_window") == 0


async def _syns(ours: TunedYamux, count: int) -> None:
    first = ours.next_stream_id
    headers = [_frame(_yamux.TYPE_WINDOW_UPDATE, _yamux.FLAG_SYN, first + 2 * i, 0) for i in range(count)]
    for start in range(0, count, 4000):  # several thousand SYNs per Noise write
        try:
            await ours.secured_conn.write(b"".join(headers[start : start + 4000]))
        except Exception:
            break  # the server closed the connection under us


async def test_syns_beyond_the_stream_limit_are_reset_and_the_connection_kept() -> None:
    async with open_node(NodeConfig()) as server, _hostile(server) as (_, ours, theirs):
        limit = theirs.limits.yamux.max_inbound_streams
        await _syns(ours, limit + 40)
        await eventually(lambda: server.counters.get("limits.refused.yamux_streams") >= 40 - 4)
        assert theirs.peak_inbound_streams == limit
        assert not theirs.is_closed
        await _serves_honest_clients(server)


async def test_a_syn_flood_closes_the_connection_and_is_scored() -> None:
    """10,000 SYNs: the first 256 streams are held, the next 256 reset one by one, and then the
    connection is closed instead of answering each further SYN with a reset."""
    async with open_node(NodeConfig()) as server, _hostile(server) as (host, ours, theirs):
        limit = theirs.limits.yamux.max_inbound_streams
        await _syns(ours, 10_000)
        await eventually(lambda: server.counters.get("limits.refused.yamux_syn_flood") == 1)
        await eventually(lambda: theirs.is_closed)
        assert theirs.peak_inbound_streams == limit
        assert server.counters.get("limits.refused.yamux_streams") <= limit
        assert server.app_penalties.score(host.get_id().to_bytes()) < 0
        await _serves_honest_clients(server)


async def test_a_new_stream_flood_over_mplex_is_reset_beyond_the_stream_limit() -> None:
    from libp2p.utils import encode_uvarint, encode_varint_prefixed

    from p2pshard.net.transport import TunedMplex

    floods = 2000
    async with open_node(NodeConfig()) as server:
        host = build_host(Identity.generate(), [], muxers=("mplex",))
        async with host.run([]):
            with trio.fail_after(10):
                await host.connect(PeerInfo(server.peer_id, server.host.get_addrs()))
            ours = host.get_network().connections[server.peer_id][0].muxed_conn
            await eventually(lambda: bool(server.host.get_network().connections.get(host.get_id())))
            theirs = server.host.get_network().connections[host.get_id()][0].muxed_conn
            assert isinstance(theirs, TunedMplex)
            limit = theirs.limits.yamux.max_inbound_streams
            first = ours.next_channel_id
            new_streams = [
                encode_uvarint((first + i) << 3) + encode_varint_prefixed(b"x") for i in range(floods)
            ]
            await ours.write_to_stream(b"".join(new_streams))
            await eventually(lambda: server.counters.get("limits.refused.mplex_streams") >= floods // 2, 60)
            assert theirs.peak_inbound_streams == limit
            await _serves_honest_clients(server)


async def test_streams_refused_unread_and_reset_do_not_hold_stream_slots() -> None:
    """py-libp2p keeps a reset stream whose request nobody read for 60 s; counted against the
    connection's stream limit, refused requests used to lock a client out within a few calls."""
    from p2pshard.net.reqresp import Code, ProtocolSpec, Reply, RequestContext, RetryPolicy, RpcError

    config = NodeConfig(max_streams_per_connection=16)
    async with open_node(config) as server, open_node(NodeConfig(), client_only=True) as client:
        await client.connector.connect(parse_peer_addr(server.addrs[0]))
        release = trio.Event()

        async def held(ctx: RequestContext, body: bytes) -> Reply:
            await release.wait()
            return Reply()

        server.register(ProtocolSpec("/test/held/1.0.0", held, max_concurrent=4))  # one per peer
        codes: list[Code] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.client.call, server.peer_id, "/test/held/1.0.0", b"")
            await eventually(lambda: server.server._limits["/test/held/1.0.0"].value == 3)
            for _ in range(40):  # each refused unread (the peer's share is taken), then reset
                try:
                    await client.client.call(
                        server.peer_id, "/test/held/1.0.0", b"x", timeout_s=5, retry=RetryPolicy(attempts=1)
                    )
                except RpcError as exc:
                    codes.append(exc.code)
            release.set()
        assert codes == [Code.RESOURCE_EXHAUSTED] * 40
        assert server.counters.get("limits.refused.yamux_streams") == 0
