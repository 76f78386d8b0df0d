"""What the transport and the swarm patches ask before they let a remote peer use our resources.

One :class:`NetLimits` per host. The Noise transport hands it to every session it secures, so the
yamux muxer of each connection (:class:`~p2pshard.net.transport.TunedYamux`) finds it there; the
swarm's inbound handler (:mod:`p2pshard.net.patches`) finds it as ``swarm.p2pshard_handshake_gate``
and asks it to admit each inbound connection to its handshake.
Every refusal is counted under ``limits.refused.<reason>``; a protocol violation is also reported to
``on_violation`` (the node scores it against the peer, gossip P5).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import trio
from libp2p.peer.id import ID

from p2pshard.core.counters import Counters

ViolationHook = Callable[[ID, str], None]
"""Told ``(peer, reason)`` when a peer broke a protocol rule (the node lowers its score)."""


@dataclass(frozen=True)
class HandshakeLimits:
    """Inbound connections between TCP accept and the end of their Noise + yamux handshake."""

    max_pending: int = 128
    max_pending_per_ip: int = 32
    timeout_s: float = 5.0
    """A handshake not done by then is abandoned (``limits.refused.handshake_timeout``)."""
    evict_after_s: float = 0.5
    """At a limit, the oldest pending handshake of the scope is abandoned for the new one if it has
    been pending this long (``handshake_evicted``); otherwise the new one is refused. So connections
    that never handshake cannot keep fresh clients out, and a burst cannot evict honest handshakes,
    which take tens of milliseconds."""


@dataclass
class _Pending:
    ip: str | None
    started: float
    cancel: Callable[[], None]


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
        handshakes: HandshakeLimits = HandshakeLimits(),
        on_violation: ViolationHook | None = None,
    ) -> None:
        self.counters = counters if counters is not None else Counters()
        self.yamux = yamux
        self.handshakes = handshakes
        self.on_violation = on_violation
        self._pending: dict[int, _Pending] = {}  # in order of arrival
        self._pending_per_ip: dict[str | None, int] = {}
        self._next_token = 0

    # -- pending handshakes (the swarm's HandshakeGate) ------------------------------------------

    @property
    def handshake_timeout_s(self) -> float:
        return self.handshakes.timeout_s

    @property
    def pending_handshakes(self) -> int:
        return len(self._pending)

    def admit(self, remote_ip: str | None, cancel: Callable[[], None]) -> Callable[[], None] | None:
        """Admit an inbound connection to its handshake: a release callback, or None if refused.
        ``cancel`` abandons the handshake (called when it is evicted)."""
        now = trio.current_time()
        limits = self.handshakes
        if self._pending_per_ip.get(remote_ip, 0) >= limits.max_pending_per_ip and not self._evict(
            now, remote_ip
        ):
            self.refused("handshakes_per_ip")
            return None
        if len(self._pending) >= limits.max_pending and not self._evict(now, None):
            self.refused("pending_handshakes")
            return None
        token = self._next_token
        self._next_token += 1
        self._pending[token] = _Pending(remote_ip, now, cancel)
        self._pending_per_ip[remote_ip] = self._pending_per_ip.get(remote_ip, 0) + 1
        return lambda: self._forget(token)

    def _evict(self, now: float, ip: str | None) -> bool:
        """Abandon the oldest pending handshake (from ``ip``, or any when None) if old enough."""
        for token, pending in self._pending.items():
            if ip is not None and pending.ip != ip:
                continue
            if now - pending.started < self.handshakes.evict_after_s:
                return False
            self._forget(token)
            pending.cancel()
            self.refused("handshake_evicted")
            return True
        return False

    def _forget(self, token: int) -> None:
        pending = self._pending.pop(token, None)
        if pending is None:
            return
        left = self._pending_per_ip[pending.ip] - 1
        if left:
            self._pending_per_ip[pending.ip] = left
        else:
            del self._pending_per_ip[pending.ip]

    def refused(self, reason: str) -> None:
        self.counters.incr(f"limits.refused.{reason}")

    def violation(self, peer: ID, reason: str) -> None:
        """``peer`` broke a protocol rule: counted as a refusal and reported to ``on_violation``."""
        self.refused(reason)
        if self.on_violation is not None:
            self.on_violation(peer, reason)


DEFAULT_LIMITS = NetLimits()
"""Used by connections of sessions that were not secured by a transport that knows its host's limits."""
