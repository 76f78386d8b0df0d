"""What the transport and the swarm patches ask before they let a remote peer use our resources.

One :class:`NetLimits` per host. The Noise transport hands it to every session it secures, so the
yamux muxer of each connection (:class:`~p2pshard.net.transport.TunedYamux`) finds it there; the
swarm's inbound handler (:mod:`p2pshard.net.patches`) finds it as ``swarm.p2pshard_handshake_gate``.
Every refusal is counted under ``limits.refused.<reason>``; a protocol violation is also reported to
``on_violation`` (the node scores it against the peer, gossip P5).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from libp2p.peer.id import ID

from p2pshard.core.counters import Counters

ViolationHook = Callable[[ID, str], None]
"""Told ``(peer, reason)`` when a peer broke a protocol rule (the node lowers its score)."""


@dataclass(frozen=True)
class YamuxLimits:
    max_inbound_streams: int = 256
    """Streams the remote side may hold open on one connection at once; a SYN beyond is reset.
    go-yamux's accept backlog is 256 too."""


class NetLimits:
    def __init__(
        self,
        counters: Counters | None = None,
        yamux: YamuxLimits = YamuxLimits(),
        on_violation: ViolationHook | None = None,
    ) -> None:
        self.counters = counters if counters is not None else Counters()
        self.yamux = yamux
        self.on_violation = on_violation

    def refused(self, reason: str) -> None:
        self.counters.incr(f"limits.refused.{reason}")

    def violation(self, peer: ID, reason: str) -> None:
        """``peer`` broke a protocol rule: counted as a refusal and reported to ``on_violation``."""
        self.refused(reason)
        if self.on_violation is not None:
            self.on_violation(peer, reason)


DEFAULT_LIMITS = NetLimits()
"""Used by connections of sessions that were not secured by a transport that knows its host's limits."""
