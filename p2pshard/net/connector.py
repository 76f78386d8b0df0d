"""Connections to peers: one multiplexed connection per peer, dialled once, reused by every stream.

Concurrent callers wanting the same peer share one dial. A peer whose dial failed is not dialled
again until its backoff has passed (doubling per failure, capped), so a dead peer costs one
fast error instead of one timeout per request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from multiaddr import Multiaddr

from p2pshard.core.counters import Counters


class DialError(Exception):
    """No connection to the peer could be made."""


@dataclass
class _Backoff:
    failures: int
    until: float


Resolver = Callable[[ID], Awaitable[PeerInfo | None]]
"""Finds the addresses of a peer we know only by id (the DHT's find-peer)."""


class Connector:
    def __init__(
        self,
        host: IHost,
        counters: Counters,
        dial_timeout_s: float = 5.0,
        stream_timeout_s: float = 5.0,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.host = host
        self.counters = counters
        self.dial_timeout_s = dial_timeout_s
        self.stream_timeout_s = stream_timeout_s
        self.max_backoff_s = max_backoff_s
        self._dialing: dict[ID, trio.Event] = {}
        self._backoff: dict[ID, _Backoff] = {}
        self.resolver: Resolver | None = None

    def is_connected(self, peer: ID) -> bool:
        return bool(self.host.get_network().connections.get(peer))

    def connected_peers(self) -> list[ID]:
        return [p for p, conns in self.host.get_network().connections.items() if conns]

    async def connect(self, info: PeerInfo) -> None:
        """Connect to ``info`` (its addresses are remembered); raises DialError."""
        if info.addrs:
            self.host.get_peerstore().add_addrs(info.peer_id, info.addrs, 3600)
        await self.ensure(info.peer_id)

    async def ensure(self, peer: ID) -> None:
        if peer == self.host.get_id():
            raise DialError("refusing to dial ourselves")
        while not self.is_connected(peer):
            pending = self._dialing.get(peer)
            if pending is not None:  # someone else is dialling: wait for their result
                with trio.move_on_after(self.dial_timeout_s):
                    await pending.wait()
                if not self.is_connected(peer):
                    raise DialError(f"dial to {peer} failed")
                return
            await self._dial(peer)

    async def _dial(self, peer: ID) -> None:
        backoff = self._backoff.get(peer)
        now = trio.current_time()
        if backoff is not None and now < backoff.until:
            self.counters.incr("connector.dial_skipped_backoff")
            raise DialError(f"{peer} is in dial backoff for {backoff.until - now:.1f}s more")
        done = self._dialing[peer] = trio.Event()
        try:
            addrs = await self._addrs(peer)
            with trio.move_on_after(self.dial_timeout_s) as scope:
                try:
                    await self.host.connect(PeerInfo(peer, addrs))
                except Exception as exc:
                    self._failed(peer)
                    raise DialError(f"cannot connect to {peer}: {exc}") from exc
            if scope.cancelled_caught:
                self._failed(peer)
                raise DialError(f"dial to {peer} timed out after {self.dial_timeout_s}s")
            self._backoff.pop(peer, None)
            self.counters.incr("connector.dials_ok")
        finally:
            del self._dialing[peer]
            done.set()

    async def _addrs(self, peer: ID) -> list[Multiaddr]:
        store = self.host.get_peerstore()
        try:
            addrs = list(store.addrs(peer))
        except Exception:  # py-libp2p raises when the peer is unknown to the peerstore
            addrs = []
        if not addrs and self.resolver is not None:
            info = await self.resolver(peer)
            if info is not None and info.addrs:
                store.add_addrs(peer, info.addrs, 3600)
                addrs = list(info.addrs)
        if not addrs:
            self._failed(peer)
            raise DialError(f"no known address for {peer}")
        return addrs

    def _failed(self, peer: ID) -> None:
        self.counters.incr("connector.dials_failed")
        prev = self._backoff.get(peer)
        failures = prev.failures + 1 if prev else 1
        delay = min(self.max_backoff_s, 0.5 * 2 ** (failures - 1))
        self._backoff[peer] = _Backoff(failures, trio.current_time() + delay)

    async def open_stream(self, peer: ID, protocol: str | Sequence[str]) -> INetStream:
        """A new stream to ``peer`` for ``protocol`` (connecting first if needed)."""
        await self.ensure(peer)
        protocols = [protocol] if isinstance(protocol, str) else list(protocol)
        with trio.fail_after(self.stream_timeout_s):
            return await self.host.new_stream(peer, [TProtocol(p) for p in protocols])
