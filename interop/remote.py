"""One face for the third-party peers, so each interop scenario is written once.

``GoRemote`` drives p2pd over its control socket, ``JsRemote`` drives peer.mjs over JSON lines.
Both answer the same questions the scenarios ask (who am I, dial, pubsub, echo, DHT) and report
what they know about their connections, so a scenario can assert what each side saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import multiaddr
from libp2p.peer.id import ID

from interop.go.daemon import DaemonStream, P2pd
from interop.js.driver import JsPeer
from interop.wire import ECHO_PROTOCOL, cid_to_text, frame


def strip_p2p(addr: multiaddr.Multiaddr | str) -> multiaddr.Multiaddr:
    return multiaddr.Multiaddr(str(addr).split("/p2p/")[0])


@dataclass(frozen=True)
class RemoteMessage:
    """A pubsub message as the third-party peer received it."""

    data: bytes
    from_peer: ID | None
    signed: bool
    received_from: ID | None = None  # the forwarding neighbour, where the remote tells it


class Remote(Protocol):
    name: str

    @property
    def peer_id(self) -> ID: ...
    @property
    def addrs(self) -> list[multiaddr.Multiaddr]: ...
    async def dial(self, peer: ID, addrs: list[multiaddr.Multiaddr]) -> None: ...
    async def connected_peers(self) -> set[ID]: ...
    async def connection_muxer(self, peer: ID) -> str | None:
        """The muxer the remote reports for its connection to ``peer`` (None: not exposed)."""

    async def subscribe(self, topic: str) -> None: ...
    async def topic_peers(self, topic: str) -> set[ID]: ...
    async def publish(self, topic: str, data: bytes) -> None: ...
    async def next_message(self, topic: str) -> RemoteMessage: ...
    async def serve_echo(self) -> None: ...
    async def echo(self, peer: ID, addrs: list[multiaddr.Multiaddr], data: bytes) -> tuple[str, bytes]: ...
    async def find_peer(self, peer: ID) -> list[multiaddr.Multiaddr]: ...
    async def provide(self, cid: bytes) -> None: ...
    async def find_providers(self, cid: bytes) -> list[ID]: ...


class GoRemote:
    """go-libp2p via p2pd."""

    name = "go"

    def __init__(self, daemon: P2pd) -> None:
        self.daemon = daemon

    @property
    def peer_id(self) -> ID:
        return self.daemon.peer_id

    @property
    def addrs(self) -> list[multiaddr.Multiaddr]:
        return [strip_p2p(a) for a in self.daemon.addrs]

    async def dial(self, peer: ID, addrs: list[multiaddr.Multiaddr]) -> None:
        await self.daemon.connect(peer, addrs)

    async def connected_peers(self) -> set[ID]:
        return set(await self.daemon.list_peers())

    async def connection_muxer(self, peer: ID) -> str | None:
        return None  # the p2pd control protocol does not say

    async def subscribe(self, topic: str) -> None:
        await self.daemon.pubsub_subscribe(topic)

    async def topic_peers(self, topic: str) -> set[ID]:
        return set(await self.daemon.pubsub_peers(topic))

    async def publish(self, topic: str, data: bytes) -> None:
        await self.daemon.pubsub_publish(topic, data)

    async def next_message(self, topic: str) -> RemoteMessage:
        msg = await self.daemon.next_message(topic)
        return RemoteMessage(msg.data, msg.from_peer, bool(msg.signature))

    async def serve_echo(self) -> None:
        async def echo(stream: DaemonStream) -> None:
            payload = await stream.read_frame()
            await stream.write(frame(payload))

        await self.daemon.add_stream_handler([ECHO_PROTOCOL], echo)

    async def echo(self, peer: ID, addrs: list[multiaddr.Multiaddr], data: bytes) -> tuple[str, bytes]:
        stream = await self.daemon.open_stream(peer, [ECHO_PROTOCOL])
        try:
            await stream.write(frame(data))
            return stream.info.protocol, await stream.read_frame()
        finally:
            await stream.aclose()

    async def find_peer(self, peer: ID) -> list[multiaddr.Multiaddr]:
        return [strip_p2p(a) for a in await self.daemon.dht_find_peer(peer)]

    async def provide(self, cid: bytes) -> None:
        await self.daemon.dht_provide(cid)

    async def find_providers(self, cid: bytes) -> list[ID]:
        return await self.daemon.dht_find_providers(cid)


class JsRemote:
    """js-libp2p via peer.mjs."""

    name = "js"

    def __init__(self, peer: JsPeer) -> None:
        self.peer = peer

    @property
    def peer_id(self) -> ID:
        return self.peer.peer_id

    @property
    def addrs(self) -> list[multiaddr.Multiaddr]:
        return [strip_p2p(a) for a in self.peer.addrs]

    async def dial(self, peer: ID, addrs: list[multiaddr.Multiaddr]) -> None:
        await self.peer.dial(f"{addrs[0]}/p2p/{peer.to_base58()}")

    async def connected_peers(self) -> set[ID]:
        info = await self.peer.info()
        return {ID.from_base58(c["peer"]) for c in info["connections"]}

    async def connection_muxer(self, peer: ID) -> str | None:
        for conn in (await self.peer.info())["connections"]:
            if conn["peer"] == peer.to_base58():
                return str(conn["muxer"])
        return None

    async def subscribe(self, topic: str) -> None:
        await self.peer.subscribe(topic)

    async def topic_peers(self, topic: str) -> set[ID]:
        subscribers, _mesh = await self.peer.topic_peers(topic)
        return {ID.from_base58(p) for p in subscribers}

    async def publish(self, topic: str, data: bytes) -> None:
        await self.peer.publish(topic, data)

    async def next_message(self, topic: str) -> RemoteMessage:
        msg = await self.peer.next_message(topic)
        return RemoteMessage(msg.data, msg.from_peer, msg.signed, msg.received_from)

    async def serve_echo(self) -> None:
        await self.peer.serve_echo(ECHO_PROTOCOL)

    async def echo(self, peer: ID, addrs: list[multiaddr.Multiaddr], data: bytes) -> tuple[str, bytes]:
        return await self.peer.open_stream_echo(f"{addrs[0]}/p2p/{peer.to_base58()}", ECHO_PROTOCOL, data)

    async def find_peer(self, peer: ID) -> list[multiaddr.Multiaddr]:
        return [strip_p2p(a) for a in await self.peer.dht_find_peer(peer)]

    async def provide(self, cid: bytes) -> None:
        await self.peer.dht_provide(cid_to_text(cid))

    async def find_providers(self, cid: bytes) -> list[ID]:
        return await self.peer.dht_find_providers(cid_to_text(cid))
