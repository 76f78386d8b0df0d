"""Each py-libp2p patch of p2pshard.net.patches does what it claims, and the version guard is loud."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from libp2p.abc import IHost
from libp2p.custom_types import TProtocol
from libp2p.host.ping import ID as PING_PROTOCOL
from libp2p.host.ping import perform_ping_roundtrip
from libp2p.peer.peerinfo import PeerInfo

from p2pshard import NodeConfig, open_node
from p2pshard.core.counters import Counters
from p2pshard.identity import Identity
from p2pshard.net import patches
from p2pshard.net.connector import Connector
from p2pshard.net.host import build_host
from p2pshard.net.reqresp import ReqRespClient
from p2pshard.net.transport import YAMUX_FRAME_SIZE, TunedYamux
from p2pshard.node import Node
from tests.util import eventually


def test_guard_accepts_the_pinned_release() -> None:
    patches.check_version(patches.EXPECTED_VERSION)
    assert patches.installed_version() == patches.EXPECTED_VERSION


def test_guard_names_the_expected_and_found_release() -> None:
    with pytest.raises(patches.Libp2pVersionError) as caught:
        patches.check_version("0.9.0")
    assert "0.8.1" in str(caught.value) and "0.9.0" in str(caught.value)


def test_apply_refuses_another_release(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(patches, "_applied", False)
    monkeypatch.setattr(patches, "installed_version", lambda: "0.8.2")
    with pytest.raises(patches.Libp2pVersionError, match=r"0\.8\.2"):
        patches.apply()
    assert patches._applied is False


def test_yamux_frames_fill_four_noise_messages() -> None:
    from libp2p.stream_muxer.yamux import yamux as _yamux

    patches.apply()
    assert _yamux.MAX_MESSAGE_SIZE == YAMUX_FRAME_SIZE
    assert "PY_YAMUX_RELEASE_ON_READ" in os.environ


def test_yamux_connections_are_built_as_tuned_yamux() -> None:
    from libp2p.stream_muxer import muxer_multistream

    patches.apply()
    assert muxer_multistream.Yamux is TunedYamux  # type: ignore[attr-defined]


@pytest.mark.skipif(shutil.which("ss") is None, reason="reads the backlog with ss (iproute2)")
async def test_listening_sockets_queue_more_than_128_connections() -> None:
    """py-libp2p listened with a backlog of 128: a burst of connections made the kernel drop
    honest clients' SYNs (resent after 1 s). ss shows a listening socket's backlog as Send-Q."""
    somaxconn = int(await trio.Path("/proc/sys/net/core/somaxconn").read_text())
    async with open_node(NodeConfig()) as node:
        port = node.host.get_addrs()[0].value_for_protocol("tcp")
        done = await trio.run_process(["ss", "-ltnH", f"sport = :{port}"], capture_stdout=True)
        out = done.stdout.decode()
        backlogs = [int(line.split()[2]) for line in out.splitlines() if line.strip()]
        assert backlogs and min(backlogs) == min(patches.LISTEN_BACKLOG, somaxconn) > 128


async def test_failed_negotiations_are_counted(two_nodes: tuple[Node, Node]) -> None:
    server, client = two_nodes
    with pytest.raises(Exception):  # noqa: B017 - py-libp2p's error type for "na" varies by path
        with trio.fail_after(10):
            await client.host.new_stream(server.peer_id, [TProtocol("/no/such/protocol/1.0.0")])
    await eventually(lambda: server.counters.get("reqresp.rejected.negotiation_failed") >= 1)


@asynccontextmanager
async def _client_host() -> AsyncIterator[tuple[IHost, ReqRespClient]]:
    """A host that does not listen (so the server cannot dial it back) and a reqresp client on it."""
    host = build_host(Identity.generate(), [])
    async with host.run([]):
        counters = Counters()
        yield host, ReqRespClient(Connector(host, counters), counters)


async def test_inbound_slots_come_back_when_connections_close() -> None:
    """py-libp2p 0.8.1 keeps each inbound connection's slot until the swarm stops: with 200 slots
    (max_peers=50) the 201st connection of a node's life was refused. 216 cycles of connect, ping,
    disconnect (4 clients at a time) must all work, and the slots must all come back."""
    failures: list[str] = []

    async def cycles(server: Node, count: int) -> None:
        async with _client_host() as (host, _):
            info = PeerInfo(server.peer_id, server.host.get_addrs())
            for i in range(count):
                try:
                    with trio.fail_after(10):
                        await host.connect(info)
                        stream = await host.new_stream(server.peer_id, [PING_PROTOCOL])
                        await perform_ping_roundtrip(stream)
                        await stream.close()
                        await host.disconnect(server.peer_id)
                except Exception as exc:
                    failures.append(f"cycle {i + 1}: {exc!r}")
                    return

    async with open_node(NodeConfig()) as server:
        limiter = server.host.get_network()._inbound_limiter  # type: ignore[attr-defined]
        assert limiter.total_tokens == 200
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(cycles, server, 54)
        assert not failures, failures
        await eventually(lambda: limiter.borrowed_tokens == 0)


def test_the_peerstore_never_evicts_our_own_keys_or_connected_peers() -> None:
    """Past max_peers py-libp2p evicted entries without addresses first, our own (our keys) among
    them: identify then failed on host.get_public_key() and ended the node after ~1,000 peers."""
    import multiaddr
    from libp2p.peer.peerstore import PeerStore

    patches.apply()
    store = PeerStore(max_peers=5)
    me = Identity.generate()
    store.add_key_pair(me.peer_id, me.key_pair)
    other = Identity.generate()
    connected = other.peer_id
    store.p2pshard_protected = lambda: {connected}  # type: ignore[attr-defined]
    store.add_pubkey(connected, other.key_pair.public_key)  # no addresses either
    for port in range(4001, 4011):
        store.add_addrs(
            Identity.generate().peer_id, [multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{port}")], 3600
        )
    assert len(store.peer_data_map) == 5
    assert store.pubkey(me.peer_id) == me.key_pair.public_key
    assert connected in store.peer_data_map


async def test_a_stream_handler_that_raises_resets_its_stream_and_the_node_keeps_serving(
    two_nodes: tuple[Node, Node],
) -> None:
    """An exception from a stream handler used to go up through the connection's task into the
    swarm and end the node (py-libp2p's identify did so once the peerstore lost our keys)."""
    from p2pshard.protocols.status import fetch_status

    server, client = two_nodes

    async def boom(stream: object) -> None:
        raise RuntimeError("a handler bug")

    server.host.set_stream_handler(TProtocol("/test/boom/1.0.0"), boom)  # type: ignore[arg-type]
    with trio.fail_after(10), pytest.raises(Exception):  # noqa: B017 - reset, EOF or failed open
        stream = await client.host.new_stream(server.peer_id, [TProtocol("/test/boom/1.0.0")])
        await stream.write(b"x")
        await stream.read(1)
    await eventually(lambda: getattr(server.host.get_network(), patches.STREAM_HANDLER_ERRORS, 0) == 1)
    status = await fetch_status(client.client, server.peer_id)  # the same connection still works
    assert status.peer_id == server.peer_id.to_base58()
