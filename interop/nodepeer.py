"""The Python side as p2pshard's own node (``p2pshard.open_node``) instead of a plain py-libp2p host.

Selected with ``pytest interop --py-peer=node``. Everything on the Python side is p2pshard's here:
identity, host builder (Noise only, yamux then mplex, one connection per peer), connector (dial
path), the DHT that ``Discovery`` runs (strict validation, its own discovery loop) and the gossip
router with its Trio driver (``node.pubsub``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from interop.pypeer import MAX_QUEUED_MESSAGES, GossipDriver, PyPeer, ReceivedMessage
from interop.wire import cid_to_text
from p2pshard.config import NodeConfig
from p2pshard.core.gossip import PeerKind
from p2pshard.net.discovery import Discovery
from p2pshard.net.pubsub import PubSub
from p2pshard.node import Node, open_node


class NodeDht:
    """The node's KadDHT. Provider records go through the KadDHT directly with CID keys, because
    ``Discovery.provide(kind, digest)`` names content with p2pshard's own keys, which are not CIDs."""

    def __init__(self, discovery: Discovery) -> None:
        self.discovery = discovery

    async def add_peer(self, peer: ID) -> bool:
        return bool(await self.discovery.dht.add_peer(peer, skip_server_mode_check=True))

    async def find_peer(self, peer: ID) -> PeerInfo | None:
        return await self.discovery.find_peer(peer)

    async def provide(self, cid: bytes) -> bool:
        return bool(await self.discovery.dht.provide(cid_to_text(cid)))

    async def find_providers(self, cid: bytes, count: int = 20) -> list[PeerInfo]:
        return list(await self.discovery.dht.find_providers(cid_to_text(cid), count))


_PROTOCOLS = {
    PeerKind.FLOODSUB: "/floodsub/1.0.0",
    PeerKind.GOSSIPSUB_V10: "/meshsub/1.0.0",
    PeerKind.GOSSIPSUB_V11: "/meshsub/1.1.0",
    PeerKind.GOSSIPSUB_V12: "/meshsub/1.2.0",
}


class NodeGossip:
    """p2pshard's gossip router (``node.pubsub``) behind the tests' GossipDriver interface."""

    def __init__(self, pubsub: PubSub, stack: AsyncExitStack, nursery: trio.Nursery) -> None:
        self.pubsub = pubsub
        self._stack = stack
        self._nursery = nursery
        self._queues: dict[str, trio.MemoryReceiveChannel[ReceivedMessage]] = {}
        self.overflowed: set[str] = set()

    async def subscribe(self, topic: str) -> None:
        channel = await self._stack.enter_async_context(self.pubsub.subscribe(topic))
        send, recv = trio.open_memory_channel[ReceivedMessage](MAX_QUEUED_MESSAGES)
        self._queues[topic] = recv

        async def pump() -> None:
            async with send:
                async for msg in channel:
                    try:
                        send.send_nowait(
                            ReceivedMessage(
                                topic=msg.topic,
                                data=bytes(msg.data),
                                from_peer=ID(msg.source),
                                seqno=bytes(msg.seqno),
                                signed=bool(msg.signature),
                            )
                        )
                    except trio.WouldBlock:
                        self.overflowed.add(topic)

        self._nursery.start_soon(pump)

    async def publish(self, topic: str, data: bytes) -> None:
        await self.pubsub.publish(topic, data)

    async def next_message(self, topic: str) -> ReceivedMessage:
        if topic in self.overflowed:
            raise RuntimeError(f"more than {MAX_QUEUED_MESSAGES} unread messages on {topic}")
        return await self._queues[topic].receive()

    def topic_peers(self, topic: str) -> set[ID]:
        return {ID(p) for p in self.pubsub.router.topic_peers(topic)}

    def mesh_peers(self, topic: str) -> set[ID]:
        return {ID(p) for p in self.pubsub.router.mesh_peers(topic)}

    def protocol_of(self, peer: ID) -> str | None:
        kind = self.pubsub.router.peer_protocol(peer.to_bytes())
        return None if kind is None else _PROTOCOLS[kind]


async def node_gossip(node: Node, stack: AsyncExitStack) -> GossipDriver:
    """The node's own gossip router."""
    if node.pubsub is None:
        raise RuntimeError("the node runs without pubsub (client_only?)")
    nursery = await stack.enter_async_context(trio.open_nursery())
    stack.callback(nursery.cancel_scope.cancel)
    return NodeGossip(node.pubsub, stack, nursery)


@asynccontextmanager
async def make_node_peer(muxers: Sequence[str] = ("yamux", "mplex")) -> AsyncIterator[PyPeer]:
    config = NodeConfig(listen=["/ip4/127.0.0.1/tcp/0"], muxers=list(muxers))
    async with open_node(config) as node, AsyncExitStack() as stack:
        gossip = await node_gossip(node, stack)
        yield PyPeer(
            node.identity.private_key,
            node.host,
            gossip,
            NodeDht(node.discovery),
            dial=node.connector.connect,
        )
