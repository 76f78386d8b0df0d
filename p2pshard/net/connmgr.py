"""The trio driver of the connection manager: every ``interval_s`` it describes the connected peers
to :func:`p2pshard.core.connmgr.decide` and closes the connections it names.

Protocols mark what the decisions cannot see: :meth:`ConnManager.protect` (a tag per reason),
:meth:`ConnManager.transfer` (a peer in an active transfer), :meth:`ConnManager.note_useful`.
Loopback addresses are not capped per IP (a devnet runs every node on 127.0.0.1) unless
``cap_loopback`` is set. Closures are counted as ``connmgr.closed.<reason>``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID

from p2pshard.core.connmgr import ConnMgrConfig, PeerView, decide
from p2pshard.core.counters import Counters

if TYPE_CHECKING:  # libp2p pulls in trio-typing, whose stubs shadow trio's own types
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

Scores = Callable[[], dict[str, float]]
"""Gossip scores by base58 peer id."""
MeshPeers = Callable[[], set[bytes]]
"""Peers (as bytes) in any of our gossip meshes."""


class ConnManager:
    def __init__(
        self,
        host: IHost,
        counters: Counters,
        config: ConnMgrConfig,
        *,
        scores: Scores | None = None,
        mesh_peers: MeshPeers | None = None,
        bootstrap: frozenset[ID] = frozenset(),
        interval_s: float = 5.0,
        cap_loopback: bool = False,
    ) -> None:
        self.host = host
        self.counters = counters
        self.config = config
        self.scores = scores
        self.mesh_peers = mesh_peers
        self.bootstrap = bootstrap
        self.interval_s = interval_s
        self.cap_loopback = cap_loopback
        self.started_at = trio.current_time()
        self._first_seen: dict[ID, float] = {}
        self._protected: dict[ID, set[str]] = {}
        self._transfers: dict[ID, int] = {}
        self._useful: dict[ID, float] = {}

    # -- what protocols tell us ------------------------------------------------------------------

    def protect(self, peer: ID, tag: str) -> None:
        self._protected.setdefault(peer, set()).add(tag)

    def unprotect(self, peer: ID, tag: str) -> None:
        tags = self._protected.get(peer)
        if tags is not None:
            tags.discard(tag)
            if not tags:
                del self._protected[peer]

    @contextlib.contextmanager
    def transfer(self, peer: ID) -> Iterator[None]:
        """Hold ``peer``'s connection open while the block runs."""
        self._transfers[peer] = self._transfers.get(peer, 0) + 1
        try:
            yield
        finally:
            left = self._transfers.pop(peer) - 1
            if left:
                self._transfers[peer] = left

    def note_useful(self, peer: ID, amount: float = 1.0) -> None:
        self._useful[peer] = self._useful.get(peer, 0.0) + amount

    # -- decisions ---------------------------------------------------------------------------------

    def views(self, now: float) -> list[PeerView]:
        connections = self.host.get_network().connections
        live = {peer for peer, conns in connections.items() if conns}
        for gone in [p for p in self._first_seen if p not in live]:
            del self._first_seen[gone]
            self._useful.pop(gone, None)
        scores = self.scores() if self.scores is not None else {}
        mesh = self.mesh_peers() if self.mesh_peers is not None else set()
        views = []
        for peer in sorted(live, key=lambda p: p.to_bytes()):
            first = self._first_seen.setdefault(peer, now)
            name = peer.to_base58()
            views.append(
                PeerView(
                    peer=name,
                    ip=self._ip(connections[peer][0]),
                    connected_at=first,
                    score=scores.get(name, 0.0),
                    usefulness=self._useful.get(peer, 0.0),
                    in_mesh=peer.to_bytes() in mesh,
                    in_transfer=peer in self._transfers,
                    bootstrap=peer in self.bootstrap,
                    protected=peer in self._protected,
                )
            )
        return views

    def _ip(self, conn: object) -> str | None:
        try:
            remote = conn.muxed_conn.get_remote_address()  # type: ignore[attr-defined]
        except Exception:  # not every connection knows its remote address
            return None
        if not remote:
            return None
        ip = str(remote[0])
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(ip).is_loopback and not self.cap_loopback:
                return None
        return ip

    async def trim_once(self) -> int:
        """Close what :func:`decide` names now; the number closed."""
        now = trio.current_time()
        closing = decide(self.views(now), now, self.started_at, self.config)
        for close in closing:
            self.counters.incr(f"connmgr.closed.{close.reason}")
            peer = ID.from_base58(close.peer)
            with trio.move_on_after(5), contextlib.suppress(Exception):  # a connection closing anyway
                await self.host.disconnect(peer)
            log.debug("connmgr: closed %s (%s)", close.peer, close.reason)
        return len(closing)

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.interval_s)
            try:
                await self.trim_once()
            except Exception:  # a bug here must not take the node down; it is logged and counted
                self.counters.incr("connmgr.errors")
                log.exception("connection manager pass failed")
