"""Resource accounting for a node among strangers: a tree of scopes, reservations, typed refusals.

Anchor: go-libp2p's resource manager. Sans-IO: no trio, no clock, no sockets; the net layer asks
before it lets a peer use something and releases it when done.

Scopes (each with its own limits; a reservation is charged to a chain of them, all or nothing)::

    system ─┬─ transient            connections whose peer is not known yet (in handshake)
            ├─ ip:<address>          connections and handshakes from one address
            ├─ subnet:<a.b.c.0/24>   ... from one /24 (IPv4) or /48 (IPv6)
            ├─ protocol:<id>         streams of one protocol
            └─ peer:<id> ── conn ── stream

Resources: ``handshakes``, ``conns_inbound``, ``conns_outbound``, ``streams_inbound``,
``streams_outbound``, ``memory`` (bytes), ``fds``. A reservation that would take any scope of its
chain past its limit is refused with a :class:`Refusal` naming the scope and resource, and counted
by reason (``<resource>.<scope kind>``, e.g. ``conns_inbound.ip``) in :attr:`ResourceManager.refusals`.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Final, Literal

Direction = Literal["inbound", "outbound"]

RESOURCES: Final = (
    "handshakes",
    "conns_inbound",
    "conns_outbound",
    "streams_inbound",
    "streams_outbound",
    "memory",
    "fds",
)

UNLIMITED: Final = 1 << 62

MiB: Final = 1 << 20
GiB: Final = 1 << 30


@dataclass(frozen=True)
class ScopeLimits:
    """The most of each resource one scope may hold at once (UNLIMITED: no limit at this scope)."""

    handshakes: int = UNLIMITED
    conns_inbound: int = UNLIMITED
    conns_outbound: int = UNLIMITED
    streams_inbound: int = UNLIMITED
    streams_outbound: int = UNLIMITED
    memory: int = UNLIMITED
    fds: int = UNLIMITED

    def get(self, resource: str) -> int:
        value: int = getattr(self, resource)
        return value


@dataclass(frozen=True)
class ResourceLimits:
    """Limits for every kind of scope. :meth:`for_machine` sizes them to a machine."""

    system: ScopeLimits
    transient: ScopeLimits
    peer: ScopeLimits
    conn: ScopeLimits
    stream: ScopeLimits
    protocol: ScopeLimits
    ip: ScopeLimits
    subnet: ScopeLimits

    @classmethod
    def for_machine(cls, memory_bytes: int, fd_limit: int) -> ResourceLimits:
        """Defaults from the machine's memory and its per-process file-descriptor limit.

        A node may use an eighth of the memory (at least 128 MiB, at most 8 GiB) for buffers that
        peers fill, and half the descriptors for sockets. Connections: one per 4 MiB of that budget
        (64 to 4,096), no more than the sockets allow; a third of them outbound.
        """
        memory = min(max(memory_bytes // 8, 128 * MiB), 8 * GiB)
        fds = max(fd_limit // 2, 64)
        conns = min(max(memory // (4 * MiB), 64), 4096, fds)
        inbound, outbound = conns - conns // 3, max(conns // 3, 16)
        streams = conns * 64
        return cls(
            system=ScopeLimits(
                handshakes=max(conns // 8, 32),
                conns_inbound=inbound,
                conns_outbound=outbound,
                streams_inbound=streams,
                streams_outbound=streams,
                memory=memory,
                fds=fds,
            ),
            transient=ScopeLimits(memory=memory // 8),
            peer=ScopeLimits(
                conns_inbound=4,
                conns_outbound=4,
                streams_inbound=512,
                streams_outbound=512,
                memory=max(memory // 16, 64 * MiB),
            ),
            conn=ScopeLimits(streams_inbound=256, streams_outbound=256, memory=max(memory // 32, 32 * MiB)),
            stream=ScopeLimits(memory=16 * MiB),
            protocol=ScopeLimits(),
            # One machine rarely runs more than a few nodes of a network; a Sybil swarm from one IP
            # gets 16 connections, and every one beyond is refused before its handshake. (A devnet
            # of more nodes on one host raises it: p2pshard devnet does.)
            ip=ScopeLimits(handshakes=32, conns_inbound=16),
            subnet=ScopeLimits(handshakes=64, conns_inbound=max(inbound // 4, 32)),
        )

    def overridden(
        self,
        *,
        conns_inbound: int = 0,
        conns_outbound: int = 0,
        conns_per_ip: int = 0,
        conns_per_subnet: int = 0,
        streams_per_conn: int = 0,
        memory: int = 0,
        fds: int = 0,
        handshakes: int = 0,
        handshakes_per_ip: int = 0,
    ) -> ResourceLimits:
        """These limits with the given ones replaced (0 keeps a limit as it is)."""

        def set_(scope: ScopeLimits, **values: int) -> ScopeLimits:
            return replace(scope, **{k: v for k, v in values.items() if v})

        return replace(
            self,
            system=set_(
                self.system,
                conns_inbound=conns_inbound,
                conns_outbound=conns_outbound,
                memory=memory,
                fds=fds,
                handshakes=handshakes,
            ),
            conn=set_(self.conn, streams_inbound=streams_per_conn, streams_outbound=streams_per_conn),
            ip=set_(self.ip, conns_inbound=conns_per_ip, handshakes=handshakes_per_ip),
            subnet=set_(self.subnet, conns_inbound=conns_per_subnet),
        )


@dataclass(frozen=True)
class Refusal:
    """A reservation refused: ``resource`` would go past ``limit`` in ``scope``."""

    scope: str
    """The scope's name, e.g. ``system``, ``ip:10.0.0.7``, ``peer:16Uiu2…``."""
    kind: str
    """The scope's kind: system, transient, ip, subnet, protocol, peer, conn, stream."""
    resource: str
    used: int
    wanted: int
    limit: int

    @property
    def reason(self) -> str:
        """How refusals are counted: ``<resource>.<scope kind>``."""
        return f"{self.resource}.{self.kind}"

    def __str__(self) -> str:
        return f"{self.resource} in {self.scope}: {self.used} + {self.wanted} > {self.limit}"


@dataclass(eq=False)
class Scope:
    name: str
    kind: str
    limits: ScopeLimits
    used: Counter[str] = field(default_factory=Counter)

    def room(self, resource: str, n: int) -> Refusal | None:
        limit = self.limits.get(resource)
        if self.used[resource] + n > limit:
            return Refusal(self.name, self.kind, resource, self.used[resource], n, limit)
        return None

    @property
    def empty(self) -> bool:
        return not any(self.used.values())


class Span:
    """What one connection or stream holds: its own scope, and its charges to its ancestors.

    :meth:`close` releases everything it holds (idempotent)."""

    def __init__(self, manager: ResourceManager, scope: Scope, chain: list[Scope]) -> None:
        self._manager = manager
        self.scope = scope
        self._scopes = [scope, *chain]  # charged by every reservation made through this span
        self._held: dict[Scope, Counter[str]] = {s: Counter() for s in self._scopes}
        self.closed = False

    def reserve(self, resource: str, n: int = 1) -> Refusal | None:
        """Take ``n`` of ``resource`` in this span's scope and all its ancestors, or refuse."""
        if self.closed:
            return Refusal(self.scope.name, self.scope.kind, resource, 0, n, 0)
        refusal = self._manager._charge(self._scopes, resource, n)
        if refusal is None:
            for scope in self._scopes:
                self._held[scope][resource] += n
        return refusal

    def release(self, resource: str, n: int = 1) -> None:
        """Give back ``n`` of ``resource`` (at most what this span holds)."""
        for scope in self._scopes:
            take = min(n, self._held[scope][resource])
            self._held[scope][resource] -= take
            scope.used[resource] -= take
        self._manager._tidy(self._scopes)

    def attach(self, scope: Scope) -> Refusal | None:
        """Charge what this span holds to one more ancestor (its peer, once known; its protocol,
        once negotiated), or refuse and change nothing. Attaching a peer takes the span out of the
        transient scope."""
        held = +self._held[self.scope]
        for resource, amount in held.items():
            refusal = scope.room(resource, amount)
            if refusal is not None:
                self._manager._refused(refusal)
                self._manager._tidy([scope])
                return refusal
        self._scopes.append(scope)
        self._held[scope] = Counter()
        for resource, amount in held.items():
            scope.used[resource] += amount
            self._held[scope][resource] += amount
        transient = self._manager.transient
        if scope.kind == "peer" and transient in self._held:
            for resource, amount in self._held.pop(transient).items():
                transient.used[resource] -= amount
            self._scopes.remove(transient)
        return None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for scope, held in self._held.items():
            for resource, amount in held.items():
                scope.used[resource] -= amount
        self._held = {s: Counter() for s in self._scopes}
        self._manager._tidy(self._scopes)


class ResourceManager:
    def __init__(self, limits: ResourceLimits) -> None:
        self.limits = limits
        self.system = Scope("system", "system", limits.system)
        self.transient = Scope("transient", "transient", limits.transient)
        self._named: dict[str, Scope] = {}  # ip:, subnet:, peer:, protocol: scopes while in use
        self.refusals: Counter[str] = Counter()
        """Refusals by reason (``<resource>.<scope kind>``)."""

    # -- scopes ----------------------------------------------------------------------------------

    def _scope(self, kind: str, key: str) -> Scope:
        name = f"{kind}:{key}"
        scope = self._named.get(name)
        if scope is None:
            scope = self._named[name] = Scope(name, kind, getattr(self.limits, kind))
        return scope

    def peer_scope(self, peer: str) -> Scope:
        return self._scope("peer", peer)

    def protocol_scope(self, protocol: str) -> Scope:
        return self._scope("protocol", protocol)

    def _address_scopes(self, ip: str | None) -> list[Scope]:
        if not ip:
            return []
        return [self._scope("ip", ip), self._scope("subnet", subnet_of(ip))]

    def _tidy(self, scopes: list[Scope]) -> None:
        for scope in scopes:
            if scope.kind in ("ip", "subnet", "peer", "protocol") and scope.empty:
                self._named.pop(scope.name, None)

    def _refused(self, refusal: Refusal) -> None:
        self.refusals[refusal.reason] += 1

    def _charge(self, scopes: list[Scope], resource: str, n: int) -> Refusal | None:
        for scope in scopes:
            refusal = scope.room(resource, n)
            if refusal is not None:
                self._refused(refusal)
                self._tidy(scopes)
                return refusal
        for scope in scopes:
            scope.used[resource] += n
        return None

    # -- reservations ----------------------------------------------------------------------------

    def open_handshake(self, ip: str | None) -> Span | Refusal:
        """An inbound connection between accept and the end of its handshake (one ``handshakes``
        and one ``fds`` in the system, its IP and subnet)."""
        span = Span(
            self, Scope("handshake", "transient", ScopeLimits()), [self.system, *self._address_scopes(ip)]
        )
        return self._opened(span, [("handshakes", 1), ("fds", 1)])

    def check_connection(self, direction: Direction, ip: str | None) -> Refusal | None:
        """Whether a connection from ``ip`` would fit now (the system's, its IP's and its subnet's
        limits), reserving nothing: so that a connection that will be refused anyway is refused
        before its handshake costs anything. A refusal is counted."""
        chain = [self.system, *(self._address_scopes(ip) if direction == "inbound" else [])]
        for scope in chain:
            refusal = scope.room(f"conns_{direction}", 1)
            if refusal is not None:
                self._refused(refusal)
                self._tidy(chain)
                return refusal
        self._tidy(chain)
        return None

    def open_connection(
        self, direction: Direction, ip: str | None, peer: str | None = None
    ) -> Span | Refusal:
        """A connection: one ``conns_<direction>`` and one ``fds`` in the system, its IP and subnet
        (inbound only) and its peer (or the transient scope until :meth:`Span.attach` names it)."""
        chain = [self.system]
        if direction == "inbound":
            chain += self._address_scopes(ip)
        chain.append(self.peer_scope(peer) if peer is not None else self.transient)
        span = Span(self, Scope("conn", "conn", self.limits.conn), chain)
        return self._opened(span, [(f"conns_{direction}", 1), ("fds", 1)])

    def open_stream(self, conn: Span, direction: Direction, peer: str) -> Span | Refusal:
        """A stream of ``conn``: one ``streams_<direction>`` in the connection, its peer and the
        system; its protocol is charged by :meth:`Span.attach` once negotiated."""
        chain = [conn.scope, self.peer_scope(peer), self.system]
        span = Span(self, Scope("stream", "stream", self.limits.stream), chain)
        return self._opened(span, [(f"streams_{direction}", 1)])

    def open_system(self) -> Span:
        """A span charged to the system scope alone: for a buffer that belongs to no connection
        (a blob being assembled from several providers), or whose connection is not known."""
        return Span(self, self.system, [])

    def _opened(self, span: Span, wants: list[tuple[str, int]]) -> Span | Refusal:
        for resource, n in wants:
            refusal = span.reserve(resource, n)
            if refusal is not None:
                span.close()
                return refusal
        return span

    # -- what status shows -----------------------------------------------------------------------

    def usage(self) -> dict[str, tuple[int, int]]:
        """System-wide use and limit of each resource: ``{resource: (used, limit)}``."""
        return {r: (self.system.used[r], self.limits.system.get(r)) for r in RESOURCES}

    def scopes_in_use(self) -> int:
        return len(self._named)


def subnet_of(ip: str) -> str:
    """The /24 (IPv4) or /48 (IPv6) network an address belongs to; the address itself if unparsable."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))
