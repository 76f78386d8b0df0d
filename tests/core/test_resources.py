"""The resource manager's scope tree: reservations charge every scope of their chain or none."""

from __future__ import annotations

from dataclasses import replace

import pytest

from p2pshard.core.resources import (
    GiB,
    MiB,
    Refusal,
    ResourceLimits,
    ResourceManager,
    ScopeLimits,
    Span,
    subnet_of,
)

LIMITS = ResourceLimits.for_machine(memory_bytes=8 * GiB, fd_limit=4096)


def _span(result: Span | Refusal) -> Span:
    assert isinstance(result, Span), f"refused: {result}"
    return result


def _manager(**kinds: ScopeLimits) -> ResourceManager:
    return ResourceManager(replace(LIMITS, **kinds))


def test_limits_scale_with_the_machine() -> None:
    small = ResourceLimits.for_machine(memory_bytes=1 * GiB, fd_limit=1024)
    large = ResourceLimits.for_machine(memory_bytes=64 * GiB, fd_limit=65536)
    assert small.system.memory == 128 * MiB and large.system.memory == 8 * GiB
    assert small.system.conns_inbound < large.system.conns_inbound
    assert small.system.fds == 512
    assert small.system.conns_inbound + small.system.conns_outbound <= small.system.fds + 16


def test_connections_per_ip_are_limited_and_refusals_name_the_scope() -> None:
    rm = _manager(ip=ScopeLimits(conns_inbound=2))
    spans = [_span(rm.open_connection("inbound", "10.0.0.7")) for _ in range(2)]
    refused = rm.open_connection("inbound", "10.0.0.7")
    assert isinstance(refused, Refusal)
    assert (refused.scope, refused.kind, refused.resource) == ("ip:10.0.0.7", "ip", "conns_inbound")
    assert refused.reason == "conns_inbound.ip" and rm.refusals["conns_inbound.ip"] == 1
    _span(rm.open_connection("inbound", "10.0.0.8"))  # another address is not affected
    spans[0].close()
    _span(rm.open_connection("inbound", "10.0.0.7"))


def test_a_subnet_is_limited_across_its_addresses() -> None:
    rm = _manager(subnet=ScopeLimits(conns_inbound=3), ip=ScopeLimits())
    for host in range(3):
        _span(rm.open_connection("inbound", f"192.168.5.{host}"))
    refused = rm.open_connection("inbound", "192.168.5.200")
    assert isinstance(refused, Refusal) and refused.scope == "subnet:192.168.5.0/24"
    assert subnet_of("2001:db8:1:2::7") == "2001:db8:1::/48"


def test_a_refused_reservation_changes_nothing() -> None:
    rm = _manager(system=replace(LIMITS.system, fds=1))
    _span(rm.open_connection("inbound", "10.0.0.1"))
    before = rm.usage()
    assert isinstance(rm.open_connection("inbound", "10.0.0.2"), Refusal)
    assert rm.usage() == before
    assert rm.refusals["fds.system"] == 1


def test_closing_releases_everything_once() -> None:
    rm = ResourceManager(LIMITS)
    conn = _span(rm.open_connection("outbound", None, peer="A"))
    stream = _span(rm.open_stream(conn, "outbound", "A"))
    assert stream.reserve("memory", 1000) is None
    assert rm.usage()["memory"][0] == 1000 and rm.usage()["streams_outbound"][0] == 1
    stream.close()
    stream.close()
    conn.close()
    assert all(used == 0 for used, _ in rm.usage().values())
    assert rm.scopes_in_use() == 0  # per-peer and per-address scopes go when empty


def test_streams_per_connection_and_memory_per_peer() -> None:
    rm = _manager(conn=ScopeLimits(streams_inbound=2), peer=ScopeLimits(memory=100))
    conn = _span(rm.open_connection("inbound", "10.0.0.1", peer="A"))
    first = _span(rm.open_stream(conn, "inbound", "A"))
    _span(rm.open_stream(conn, "inbound", "A"))
    refused = rm.open_stream(conn, "inbound", "A")
    assert isinstance(refused, Refusal) and refused.reason == "streams_inbound.conn"
    assert first.reserve("memory", 80) is None
    over = first.reserve("memory", 30)
    assert isinstance(over, Refusal) and over.scope == "peer:A"
    first.release("memory", 80)
    assert first.reserve("memory", 100) is None


def test_a_connection_moves_from_transient_to_its_peer() -> None:
    rm = _manager(peer=ScopeLimits(conns_inbound=1))
    conn = _span(rm.open_connection("inbound", "10.0.0.1"))
    assert rm.transient.used["conns_inbound"] == 1
    assert conn.attach(rm.peer_scope("A")) is None
    assert rm.transient.used["conns_inbound"] == 0
    assert rm.peer_scope("A").used["conns_inbound"] == 1
    second = _span(rm.open_connection("inbound", "10.0.0.2"))
    refused = second.attach(rm.peer_scope("A"))
    assert isinstance(refused, Refusal) and refused.reason == "conns_inbound.peer"
    second.close()
    conn.close()
    assert all(used == 0 for used, _ in rm.usage().values()) and rm.transient.empty


def test_protocol_scope_limits_streams_of_one_protocol() -> None:
    rm = _manager(protocol=ScopeLimits(streams_inbound=1))
    conn = _span(rm.open_connection("inbound", "10.0.0.1", peer="A"))
    one = _span(rm.open_stream(conn, "inbound", "A"))
    two = _span(rm.open_stream(conn, "inbound", "A"))
    assert one.attach(rm.protocol_scope("/p/1")) is None
    assert isinstance(two.attach(rm.protocol_scope("/p/1")), Refusal)
    assert two.attach(rm.protocol_scope("/q/1")) is None


def test_handshakes_per_ip() -> None:
    rm = _manager(ip=ScopeLimits(handshakes=2))
    held = [_span(rm.open_handshake("10.0.0.9")) for _ in range(2)]
    refused = rm.open_handshake("10.0.0.9")
    assert isinstance(refused, Refusal) and refused.reason == "handshakes.ip"
    held[0].close()
    _span(rm.open_handshake("10.0.0.9"))


@pytest.mark.parametrize("direction", ["inbound", "outbound"])
def test_system_connection_limits_by_direction(direction: str) -> None:
    rm = _manager(system=replace(LIMITS.system, conns_inbound=1, conns_outbound=1))
    _span(rm.open_connection(direction, "10.0.0.1"))  # type: ignore[arg-type]
    refused = rm.open_connection(direction, "10.0.0.2")  # type: ignore[arg-type]
    assert isinstance(refused, Refusal) and refused.reason == f"conns_{direction}.system"


def test_overrides_replace_only_what_they_name() -> None:
    limits = LIMITS.overridden(conns_per_ip=3, streams_per_conn=10, memory=0)
    assert limits.ip.conns_inbound == 3
    assert limits.conn.streams_inbound == limits.conn.streams_outbound == 10
    assert limits.system == LIMITS.system and limits.subnet == LIMITS.subnet


def test_a_connection_that_cannot_fit_is_known_before_it_is_opened() -> None:
    rm = _manager(ip=ScopeLimits(conns_inbound=1))
    assert rm.check_connection("inbound", "10.0.0.7") is None
    held = _span(rm.open_connection("inbound", "10.0.0.7"))
    refused = rm.check_connection("inbound", "10.0.0.7")
    assert isinstance(refused, Refusal) and refused.reason == "conns_inbound.ip"
    assert rm.check_connection("outbound", "10.0.0.7") is None  # outbound is not limited per IP
    held.close()
    assert rm.check_connection("inbound", "10.0.0.7") is None and rm.scopes_in_use() == 0
