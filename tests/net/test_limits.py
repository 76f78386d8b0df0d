"""A node keeps answering status whoever else is connected to it."""

from __future__ import annotations

import trio
from libp2p.peer.peerinfo import PeerInfo

from p2pshard import NodeConfig, open_node
from p2pshard.identity import Identity
from p2pshard.net.host import build_host, parse_peer_addr
from p2pshard.protocols.status import fetch_status
from tests.util import eventually


async def test_status_lists_a_connected_peer_missing_from_the_peerstore() -> None:
    """A peer that connects without listening has no peerstore record; py-libp2p's
    ``peerstore.addrs`` raises for it, and status answered every client INTERNAL."""
    async with open_node(NodeConfig()) as server, open_node(NodeConfig(), client_only=True) as asker:
        silent = build_host(Identity.generate(), [])
        async with silent.run([]):
            with trio.fail_after(10):
                await silent.connect(PeerInfo(server.peer_id, server.host.get_addrs()))
            await eventually(lambda: server.connector.is_connected(silent.get_id()))
            await asker.connector.connect(parse_peer_addr(server.addrs[0]))
            status = await fetch_status(asker.client, server.peer_id)
        listed = {p.peer_id: list(p.addrs) for p in status.peers}
        assert silent.get_id().to_base58() in listed
        addrs = listed[silent.get_id().to_base58()]  # where its connection comes from
        assert addrs and all(a.startswith("/ip4/127.0.0.1/tcp/") for a in addrs)
