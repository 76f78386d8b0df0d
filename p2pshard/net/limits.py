"""What the transport and the swarm ask before they let a remote peer use our resources.

One :class:`NetLimits` per host, holding the host's :class:`~p2pshard.core.resources.ResourceManager`
(the sans-IO scope tree) and the timing rules that need a clock:

* the swarm's inbound handler (:mod:`p2pshard.net.patches`) finds it as
  ``swarm.p2pshard_handshake_gate`` and asks it to admit each inbound connection to its handshake;
* :meth:`NetLimits.notifee` reserves every connection (inbound and outbound, per peer, per IP, per
  subnet, a file descriptor each) when the swarm reports it, and closes one that is refused;
* the Noise transport hands it to every session it secures, so each connection's yamux
  (:class:`~p2pshard.net.transport.TunedYamux`) reserves each stream the remote side opens, with
  its receive window's memory, against the connection, the peer and the system.

Every refusal is counted under ``limits.refused.<reason>``; a protocol violation is also reported
to ``on_violation`` (the node scores it against the peer, gossip P5).
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.peer.id import ID

from p2pshard.core.counters import Counters
from p2pshard.core.resources import Direction, Refusal, ResourceLimits, ResourceManager, Span

ViolationHook = Callable[[ID, str], None]
"""Told ``(peer, reason)`` when a peer broke a protocol rule (the node lowers its score)."""


def machine_limits() -> ResourceLimits:
    """:meth:`ResourceLimits.for_machine` for this machine's memory and descriptor limit."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not every platform reports it
        memory = 4 << 30
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    fds = soft if soft != resource.RLIM_INFINITY else 1 << 16
    return ResourceLimits.for_machine(memory, fds)


@dataclass(frozen=True)
class HandshakeLimits:
    """The timing of inbound handshakes (how many may be pending is a resource limit)."""

    timeout_s: float = 5.0
    """A handshake not done by then is abandoned (``limits.refused.handshake_timeout``)."""
    evict_after_s: float = 0.5
    """When a pending-handshake limit is reached, the oldest pending handshake of the full scope
    is abandoned for the new one if it has been pending this long (``handshake_evicted``);
    otherwise the new one is refused. So connections that never handshake cannot keep fresh clients
    out, and a burst cannot evict honest handshakes, which take tens of milliseconds."""


@dataclass(frozen=True)
class YamuxLimits:
    max_inbound_streams: int = 256
    """Streams the remote side may hold open on one connection before the connection is known to
    the resource manager (after that, its ``conn`` scope limits them)."""


@dataclass
class _Pending:
    ip: str | None
    started: float
    cancel: Callable[[], None]
    span: Span


class NetLimits:
    def __init__(
        self,
        counters: Counters | None = None,
        resources: ResourceManager | None = None,
        yamux: YamuxLimits = YamuxLimits(),
        handshakes: HandshakeLimits = HandshakeLimits(),
        on_violation: ViolationHook | None = None,
    ) -> None:
        self.counters = counters if counters is not None else Counters()
        self.resources = resources if resources is not None else ResourceManager(machine_limits())
        self.yamux = yamux
        self.handshakes = handshakes
        self.on_violation = on_violation
        self._pending: dict[int, _Pending] = {}  # in order of arrival
        self._next_token = 0

    def refused(self, reason: str) -> None:
        self.counters.incr(f"limits.refused.{reason}")

    def violation(self, peer: ID, reason: str) -> None:
        """``peer`` broke a protocol rule: counted as a refusal and reported to ``on_violation``."""
        self.refused(reason)
        if self.on_violation is not None:
            self.on_violation(peer, reason)

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
        full = self.resources.check_connection("inbound", remote_ip)
        if full is not None:  # its connection would be refused after the handshake: spare the work
            self.refused(full.reason)
            return None
        span = self.resources.open_handshake(remote_ip)
        if isinstance(span, Refusal):
            if not self._evict(now, span):
                self.refused(span.reason)
                return None
            span = self.resources.open_handshake(remote_ip)
            if isinstance(span, Refusal):  # another scope is full too
                self.refused(span.reason)
                return None
        token = self._next_token
        self._next_token += 1
        self._pending[token] = _Pending(remote_ip, now, cancel, span)
        return lambda: self._forget(token)

    def _evict(self, now: float, refusal: Refusal) -> bool:
        """Abandon the oldest pending handshake in the refusing scope, if it is old enough."""
        for token, pending in self._pending.items():
            if refusal.kind == "ip" and refusal.scope != f"ip:{pending.ip}":
                continue
            if refusal.kind == "subnet" and not _in_scope(pending.ip, refusal.scope):
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
        if pending is not None:
            pending.span.close()

    # -- connections -----------------------------------------------------------------------------

    def notifee(self) -> Any:
        """An ``INotifee`` for the swarm that reserves each connection as it opens."""
        return _ConnectionAccounting(self)

    def open_connection(self, conn: Any) -> Span | Refusal:
        muxed = conn.muxed_conn
        inbound = getattr(getattr(conn, "direction", None), "name", "") == "INBOUND"
        direction: Direction = "inbound" if inbound else "outbound"
        span = self.resources.open_connection(direction, _conn_ip(muxed))
        if isinstance(span, Refusal):
            return span
        refusal = span.attach(self.resources.peer_scope(str(muxed.peer_id)))
        if refusal is not None:
            span.close()
            return refusal
        return span


class MemoryHold:
    """The memory of one buffer a remote peer can make us fill, reserved before it is filled.

    Charged to ``span`` (a stream's, a connection's; the system's when None) and through it to every
    scope above, up to the system. :meth:`grow` reserves before the buffer grows; when a scope
    would go past its memory limit it reserves nothing and returns False, and the refusal is counted
    twice: by the scope that refused (``limits.refused.memory.<scope kind>``) and by the kind of
    buffer (``limits.refused.buffer.<buffer>``); the caller refuses or resets whatever asked for the
    room, it never waits for it. :meth:`shrink` and :meth:`release` give memory back (a hold whose
    span has been closed gives back nothing: closing the span released it all). Use as a context
    manager to release on exit.

    The buffers (specs/limits.md): ``yamux_window`` (a stream's receive window beyond 256 KiB),
    ``request`` (a request/response request frame), ``response`` (a response frame), ``blob``
    (a blob being assembled), ``gossip_out`` / ``gossip_in`` (a peer's outbound queue, the frame
    being read from it).
    """

    def __init__(self, limits: NetLimits, span: Span | None, buffer: str) -> None:
        self.limits = limits
        self.span = span if span is not None else limits.resources.open_system()
        self.buffer = buffer
        self.held = 0

    def grow(self, n: int) -> bool:
        """Reserve ``n`` more bytes, or count the refusal and return False."""
        if n <= 0:
            return True
        refusal = self.span.reserve("memory", n)
        if refusal is not None:
            self.limits.refused(refusal.reason)
            self.limits.refused(f"buffer.{self.buffer}")
            return False
        self.held += n
        return True

    def resize(self, n: int) -> bool:
        """Hold exactly ``n`` bytes (growing or shrinking); False if growing was refused."""
        if n < self.held:
            self.shrink(self.held - n)
            return True
        return self.grow(n - self.held)

    def shrink(self, n: int) -> None:
        n = min(n, self.held)
        if n > 0:
            self.span.release("memory", n)
            self.held -= n

    def release(self) -> None:
        self.shrink(self.held)

    def __enter__(self) -> MemoryHold:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def limits_of(host: Any) -> NetLimits:
    """The :class:`NetLimits` a host was built with (:func:`p2pshard.net.host.build_host`); the
    default ones for another host, or none."""
    found = getattr(host.get_network(), "p2pshard_limits", None) if host is not None else None
    return found if isinstance(found, NetLimits) else DEFAULT_LIMITS


def _in_scope(ip: str | None, subnet_scope: str) -> bool:
    from p2pshard.core.resources import subnet_of

    return ip is not None and f"subnet:{subnet_of(ip)}" == subnet_scope


def _conn_ip(muxed: Any) -> str | None:
    try:
        remote = muxed.get_remote_address()
    except Exception:  # not every connection knows its remote address
        return None
    return str(remote[0]) if remote else None


class _ConnectionAccounting:
    """Reserves each connection the swarm reports; closes one the resource manager refuses."""

    def __init__(self, limits: NetLimits) -> None:
        self.limits = limits

    async def connected(self, network: Any, conn: Any) -> None:
        span = self.limits.open_connection(conn)
        if isinstance(span, Refusal):
            self.limits.refused(span.reason)
            with trio.move_on_after(2), contextlib.suppress(Exception):  # closing a refused connection
                await conn.close()
            return
        conn.muxed_conn.p2pshard_span = span
        if getattr(conn.muxed_conn, "is_closed", False):  # closed while we were reserving
            span.close()

    async def disconnected(self, network: Any, conn: Any) -> None:
        span = getattr(conn.muxed_conn, "p2pshard_span", None)
        if span is not None:
            span.close()

    async def opened_stream(self, network: Any, stream: Any) -> None:
        pass

    async def closed_stream(self, network: Any, stream: Any) -> None:
        pass

    async def listen(self, network: Any, multiaddr: Any) -> None:
        pass

    async def listen_close(self, network: Any, multiaddr: Any) -> None:
        pass


DEFAULT_LIMITS = NetLimits()
"""Used by connections of sessions that were not secured by a transport that knows its host's limits."""
