"""Which connected peers the node asks for a pubsub stream.

A peer whose identify lists no pubsub protocol (a `p2pshard status` client, a Sybil) is never
asked: py-libp2p's negotiation of four protocol ids, each answered "na", cost the node several
writes per such connection, and was repeated every second for as long as it stayed connected.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from p2pshard import NodeConfig, open_node
from p2pshard.core.gossip import SUPPORTED_PROTOCOLS
from p2pshard.identity import Identity
from p2pshard.net.host import build_host
from p2pshard.node import Node
from tests.util import eventually


async def test_a_peer_without_pubsub_is_not_asked_for_a_stream() -> None:
    async with open_node(NodeConfig()) as node:
        assert node.pubsub is not None
        asked: list[str] = []
        new_stream = node.host.new_stream

        async def recorded(peer_id: ID, protocols: Sequence[TProtocol]) -> INetStream:
            asked.extend(p for p in protocols if p in SUPPORTED_PROTOCOLS)
            return await new_stream(peer_id, protocols)

        node.host.new_stream = recorded  # type: ignore[method-assign]
        bare = build_host(Identity.generate(), [])
        async with bare.run([]):
            with trio.fail_after(10):
                await bare.connect(PeerInfo(node.peer_id, node.host.get_addrs()))
            await eventually(lambda: node.counters.get("pubsub.peers_without_pubsub") == 1)
            await trio.sleep(2.5)  # the node's peer watch runs every second
            assert asked == []
            assert node.counters.get("pubsub.peers_without_pubsub") == 1
            assert bare.get_id() not in node.pubsub.connected_pubsub_peers()


async def test_a_node_with_pubsub_still_gets_its_stream(two_nodes: tuple[Node, Node]) -> None:
    for node in two_nodes:
        assert node.pubsub is not None
        pubsub = node.pubsub
        await eventually(lambda pubsub=pubsub: len(pubsub.connected_pubsub_peers()) == 1)
