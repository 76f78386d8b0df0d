"""Connections that never handshake cannot keep fresh clients out.

1,000 TCP connections to 127.0.0.1 that send nothing: py-libp2p 0.8.1 gives each an inbound slot
(200) for up to 10 s, so fresh clients were refused while they were held. These tests fail on it.
"""

from __future__ import annotations

import contextlib

import trio

from p2pshard import NodeConfig, open_node
from p2pshard.net.host import parse_peer_addr
from p2pshard.node import Node
from p2pshard.protocols.status import fetch_status


def _tcp_port(node: Node) -> int:
    addr = node.host.get_addrs()[0]
    return int(addr.value_for_protocol("tcp"))


async def test_half_open_connections_do_not_keep_fresh_clients_out() -> None:
    count = 1000
    async with open_node(NodeConfig()) as server:
        limits = server.host.get_network().p2pshard_handshake_gate  # type: ignore[attr-defined]
        port = _tcp_port(server)
        sockets: list[trio.SocketStream] = []
        try:
            with trio.fail_after(30):
                for _ in range(count):
                    sockets.append(await trio.open_tcp_stream("127.0.0.1", port))
            await trio.sleep(limits.handshakes.evict_after_s)  # the flood's survivors are now evictable
            assert limits.pending_handshakes <= limits.resources.limits.system.handshakes
            for _ in range(3):  # fresh clients, each with a new identity, while the sockets are held
                async with open_node(NodeConfig(), client_only=True) as fresh:
                    with trio.fail_after(10):
                        await fresh.connector.connect(parse_peer_addr(server.addrs[0]))
                        status = await fetch_status(fresh.client, server.peer_id, timeout_s=5)
                    assert status.peer_id == server.peer_id.to_base58()
        finally:
            for sock in sockets:
                with contextlib.suppress(Exception):  # already closed by the server: fine
                    await sock.aclose()
        refused = sum(
            server.counters.get(f"limits.refused.{r}")
            for r in ("handshakes.ip", "handshakes.subnet", "handshakes.system", "handshake_evicted")
        )
        assert refused >= count - limits.resources.limits.ip.handshakes
