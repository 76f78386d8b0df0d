"""The Python side of the interop tests, behind the small interface the tests use.

``PyPeer`` offers connect / open_stream / serve_stream / gossip / dht. Today it is a plain py-libp2p
0.8.1 host (secp256k1 identity from coincurve, Noise only, yamux then mplex) with py-libp2p's stock
GossipSub and KadDHT. When p2pshard's node lands, a peer built on it implements the same methods
and the ``py_peer`` fixture in conftest.py builds that instead; the gossip part alone can be swapped
through the ``GossipDriver`` protocol (``make_py_peer(gossip_factory=…)``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import coincurve
import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, IMuxedConn, INetStream
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.secp256k1 import Secp256k1PrivateKey
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.mplex.mplex import MPLEX_PROTOCOL_ID, Mplex
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service

from interop.wire import ECHO_PROTOCOL, BufferedReader, cid_to_text, frame

log = logging.getLogger("interop.pypeer")

LISTEN = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
MAX_QUEUED_MESSAGES = 1000
HANDLER_TIMEOUT_S = 10.0  # an inbound echo stream gets this long to send its frame
StreamHandler = Callable[[INetStream], Awaitable[None]]


class DialFailed(Exception):
    """Connecting failed (py-libp2p's SwarmException or p2pshard's DialError underneath)."""


@dataclass(frozen=True)
class ReceivedMessage:
    """A pubsub message as the Python side received it."""

    topic: str
    data: bytes
    from_peer: ID
    seqno: bytes
    signed: bool


class GossipDriver(Protocol):
    """What the tests need from a gossip router; p2pshard's router will implement this too."""

    async def subscribe(self, topic: str) -> None: ...
    async def publish(self, topic: str, data: bytes) -> None: ...
    async def next_message(self, topic: str) -> ReceivedMessage: ...
    def topic_peers(self, topic: str) -> set[ID]: ...
    def mesh_peers(self, topic: str) -> set[ID]: ...
    def protocol_of(self, peer: ID) -> str | None: ...


GossipFactory = Callable[[IHost, AsyncExitStack], Awaitable[GossipDriver]]


class StockGossip:
    """py-libp2p's own GossipSub, a placeholder until p2pshard's router replaces it.

    Heartbeat 1 s (its default is 120 s), spam protection off (it counts our own publishes),
    StrictSign (the default ``strict_signing=True``).
    """

    def __init__(self, pubsub: Pubsub, router: GossipSub, nursery: trio.Nursery) -> None:
        self.pubsub = pubsub
        self.router = router
        self._nursery = nursery
        self._queues: dict[str, trio.MemoryReceiveChannel[ReceivedMessage]] = {}
        self.overflowed: set[str] = set()

    @classmethod
    async def create(cls, host: IHost, stack: AsyncExitStack) -> StockGossip:
        router = GossipSub(
            protocols=_gossip_protocols(),
            degree=6,
            degree_low=4,
            degree_high=12,
            heartbeat_interval=1,
            heartbeat_initial_delay=0.1,
            spam_protection_enabled=False,
        )
        pubsub = Pubsub(host, router, strict_signing=True)
        await stack.enter_async_context(background_trio_service(pubsub))
        await pubsub.wait_until_ready()
        nursery = await stack.enter_async_context(trio.open_nursery())
        stack.callback(nursery.cancel_scope.cancel)
        return cls(pubsub, router, nursery)

    async def subscribe(self, topic: str) -> None:
        sub = await self.pubsub.subscribe(topic)
        send, recv = trio.open_memory_channel[ReceivedMessage](MAX_QUEUED_MESSAGES)
        self._queues[topic] = recv

        async def pump() -> None:
            async with send:
                async for msg in sub:
                    try:
                        send.send_nowait(
                            ReceivedMessage(
                                topic=topic,
                                data=bytes(msg.data),
                                from_peer=ID(msg.from_id),
                                seqno=bytes(msg.seqno),
                                signed=bool(msg.signature),
                            )
                        )
                    except trio.WouldBlock:
                        # The test stopped reading; next_message fails instead of hiding a drop.
                        self.overflowed.add(topic)

        self._nursery.start_soon(pump)

    async def publish(self, topic: str, data: bytes) -> None:
        await self.pubsub.publish(topic, data)

    async def next_message(self, topic: str) -> ReceivedMessage:
        """The next message on ``topic`` (our own publishes included: py-libp2p delivers them
        to local subscribers); the caller bounds the wait."""
        if topic in self.overflowed:
            raise RuntimeError(f"more than {MAX_QUEUED_MESSAGES} unread messages on {topic}")
        return await self._queues[topic].receive()

    def topic_peers(self, topic: str) -> set[ID]:
        return set(self.pubsub.peer_topics.get(topic, set()))

    def mesh_peers(self, topic: str) -> set[ID]:
        return set(self.router.mesh.get(topic, set()))

    def protocol_of(self, peer: ID) -> str | None:
        proto = self.router.peer_protocol.get(peer)
        return str(proto) if proto is not None else None


def _gossip_protocols() -> list[TProtocol]:
    from libp2p.pubsub import gossipsub

    return [gossipsub.PROTOCOL_ID_V12, gossipsub.PROTOCOL_ID_V11, gossipsub.PROTOCOL_ID]


async def stock_gossip(host: IHost, stack: AsyncExitStack) -> GossipDriver:
    return await StockGossip.create(host, stack)


class DhtDriver(Protocol):
    """What the tests need from the DHT; CIDs are binary CIDv1 here."""

    async def add_peer(self, peer: ID) -> bool: ...
    async def find_peer(self, peer: ID) -> PeerInfo | None: ...
    async def provide(self, cid: bytes) -> bool: ...
    async def find_providers(self, cid: bytes, count: int = 20) -> list[PeerInfo]: ...


class Dht:
    """py-libp2p's KadDHT in server mode. Provider keys are the CID's multihash, as go and js use
    (py-libp2p turns a CID string into its multihash)."""

    def __init__(self, kad: KadDHT) -> None:
        self.kad = kad

    async def add_peer(self, peer: ID) -> bool:
        """py-libp2p adds a peer to its table only when that peer sends it a DHT request."""
        return await self.kad.add_peer(peer, skip_server_mode_check=True)

    async def find_peer(self, peer: ID) -> PeerInfo | None:
        return await self.kad.find_peer(peer)

    async def provide(self, cid: bytes) -> bool:
        return await self.kad.provide(cid_to_text(cid))

    async def find_providers(self, cid: bytes, count: int = 20) -> list[PeerInfo]:
        return await self.kad.find_providers(cid_to_text(cid), count)


class PyPeer:
    """A Python libp2p peer: host + gossip + DHT, driven directly by the tests."""

    def __init__(
        self,
        identity: Secp256k1PrivateKey,
        host: IHost,
        gossip: GossipDriver,
        dht: DhtDriver,
        dial: Callable[[PeerInfo], Awaitable[None]] | None = None,
    ) -> None:
        self.private_key = identity
        self.host = host
        self.gossip = gossip
        self.dht = dht
        self._dial = dial if dial is not None else host.connect

    @property
    def peer_id(self) -> ID:
        return self.host.get_id()

    @property
    def addrs(self) -> list[multiaddr.Multiaddr]:
        """Listen addresses without the /p2p part."""
        return [multiaddr.Multiaddr(str(a).split("/p2p/")[0]) for a in self.host.get_addrs()]

    def p2p_addr(self) -> str:
        return f"{self.addrs[0]}/p2p/{self.peer_id.to_base58()}"

    async def connect(self, peer: ID, addrs: Sequence[multiaddr.Multiaddr]) -> None:
        """Dial ``peer``; any failure of the dial path comes out as DialFailed."""
        try:
            await self._dial(PeerInfo(peer, list(addrs)))
        except Exception as exc:
            raise DialFailed(f"cannot connect to {peer}: {exc}") from exc

    def connection_info(self, peer: ID) -> dict[str, Any] | None:
        conns = self.host.get_network().get_connections(peer)
        if not conns:
            return None
        conn = conns[0]
        return {
            "direction": str(getattr(conn, "_direction", "?")),
            "security": getattr(conn, "_negotiated_security_protocol", None),
            "muxer": getattr(conn, "_negotiated_muxer_protocol", None),
            "muxer_class": type(conn.muxed_conn).__name__,
        }

    async def open_stream(self, peer: ID, protocol: str) -> INetStream:
        return await self.host.new_stream(peer, [TProtocol(protocol)])

    def serve_stream(self, protocol: str, handler: StreamHandler) -> None:
        """Register a handler that never raises into py-libp2p (FACTS: a raising handler breaks
        the connection's ability to accept new streams)."""

        async def guarded(stream: INetStream) -> None:
            try:
                await handler(stream)
            except Exception as exc:
                log.warning("stream handler for %s failed: %r", protocol, exc)
                await stream.reset()

        self.host.set_stream_handler(TProtocol(protocol), guarded)

    # ---- the echo protocol, both roles ----
    def serve_echo(self, protocol: str = ECHO_PROTOCOL) -> None:
        async def echo(stream: INetStream) -> None:
            with trio.fail_after(HANDLER_TIMEOUT_S):
                payload = await BufferedReader(stream).read_frame()
                await stream.write(frame(payload))
                await stream.close()

        self.serve_stream(protocol, echo)

    async def echo(self, peer: ID, data: bytes, protocol: str = ECHO_PROTOCOL) -> tuple[str, bytes]:
        """Open ``protocol`` to ``peer``, send one frame, return (negotiated protocol, reply).
        The caller bounds the wait."""
        stream = await self.open_stream(peer, protocol)
        try:
            await stream.write(frame(data))
            reply = await BufferedReader(stream).read_frame()
            return str(stream.get_protocol()), reply
        finally:
            await stream.close()


def new_identity(secret: bytes | None = None) -> Secp256k1PrivateKey:
    """A secp256k1 libp2p key from coincurve; peer ids come out as ``16Uiu2…``."""
    key = coincurve.PrivateKey(secret) if secret is not None else coincurve.PrivateKey()
    return Secp256k1PrivateKey(key)


MUXERS: dict[str, tuple[TProtocol, type[IMuxedConn]]] = {
    "yamux": (TProtocol(YAMUX_PROTOCOL_ID), Yamux),
    "mplex": (TProtocol(MPLEX_PROTOCOL_ID), Mplex),
}


def build_host(identity: Secp256k1PrivateKey, muxers: Sequence[str] = ("yamux", "mplex")) -> IHost:
    """TCP, Noise only (py-libp2p would also offer TLS, secio and plaintext), muxers in order.

    One connection per peer: py-libp2p's dial otherwise always waits a fixed 250 ms.
    """
    key_pair = KeyPair(identity, identity.get_public_key())
    noise = NoiseTransport(key_pair, new_x25519_key_pair().private_key)
    return new_host(
        key_pair=key_pair,
        sec_opt={TProtocol(NOISE_PROTOCOL_ID): noise},
        muxer_opt=dict(MUXERS[m] for m in muxers),
        listen_addrs=[LISTEN],
        connection_config=ConnectionConfig(max_connections_per_peer=1, dial_timeout=10.0),
    )


@asynccontextmanager
async def make_py_peer(
    gossip_factory: GossipFactory = stock_gossip, muxers: Sequence[str] = ("yamux", "mplex")
) -> AsyncIterator[PyPeer]:
    """A running Python peer on 127.0.0.1 with gossip and a DHT server; stopped on exit."""
    identity = new_identity()
    host = build_host(identity, muxers)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(host.run(listen_addrs=[LISTEN]))
        kad = KadDHT(host, DHTMode.SERVER)
        await stack.enter_async_context(background_trio_service(kad))
        gossip = await gossip_factory(host, stack)
        yield PyPeer(identity, host, gossip, Dht(kad))
