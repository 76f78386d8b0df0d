"""A node keeps answering status whoever else is connected to it."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import trio
from libp2p.peer.peerinfo import PeerInfo

from p2pshard import NodeConfig, open_node
from p2pshard.identity import Identity
from p2pshard.net.host import build_host, parse_peer_addr
from p2pshard.protocols.status import fetch_status
from tests.util import eventually


async def test_status_lists_a_connected_peer_missing_from_the_peerstore() -> None:
    """A peer that connects without listening has no peerstore record; py-libp2p's
    ``peerstore.addrs`` raises for it, and status answered every client INTERNAL."""
    async with open_node(NodeConfig()) as server, open_node(NodeConfig(), client_only=True) as asker:
        silent = build_host(Identity.generate(), [])
        async with silent.run([]):
            with trio.fail_after(10):
                await silent.connect(PeerInfo(server.peer_id, server.host.get_addrs()))
            await eventually(lambda: server.connector.is_connected(silent.get_id()))
            await asker.connector.connect(parse_peer_addr(server.addrs[0]))
            status = await fetch_status(asker.client, server.peer_id)
        listed = {p.peer_id: list(p.addrs) for p in status.peers}
        assert silent.get_id().to_base58() in listed
        addrs = listed[silent.get_id().to_base58()]  # where its connection comes from
        assert addrs and all(a.startswith("/ip4/127.0.0.1/tcp/") for a in addrs)


async def test_status_reports_resource_use_and_refusals() -> None:
    config = NodeConfig(max_connections_per_ip=1)
    async with open_node(config) as server, open_node(NodeConfig(), client_only=True) as asker:
        await asker.connector.connect(parse_peer_addr(server.addrs[0]))
        second = build_host(Identity.generate(), [])  # a second connection from 127.0.0.1: refused
        async with second.run([]):
            with contextlib.suppress(Exception):  # refused after its handshake: closed under it
                with trio.fail_after(10):
                    await second.connect(PeerInfo(server.peer_id, server.host.get_addrs()))
            await eventually(lambda: server.counters.get("limits.refused.conns_inbound.ip") >= 1)
        status = await fetch_status(asker.client, server.peer_id)
    use = {r.resource: (r.used, r.limit) for r in status.resources}
    assert use["conns_inbound"][0] == 1 and use["fds"][0] >= 1
    assert use["memory"][1] == server.limits.resources.limits.system.memory  # type: ignore[union-attr]
    assert status.counters["limits.refused.conns_inbound.ip"] >= 1  # py-libp2p retries its dial


def test_the_limits_spec_states_the_configuration_defaults() -> None:
    from pathlib import Path

    from p2pshard.config import NodeConfig
    from p2pshard.conformance.spec_tables import all_tables, literal, name_of

    specs = Path(__file__).resolve().parents[2] / "specs"
    header = ("Parameter", "Type", "Description", "Default")
    rows = [row for t in all_tables(specs) if t.doc == "limits.md" and t.header == header for row in t.rows]
    defaults = NodeConfig()
    assert len(rows) >= 16
    for row in rows:
        name = name_of(row["Parameter"])
        assert literal(row["Default"]) == getattr(defaults, name), name


def test_p2pshard_status_prints_resources_and_refusals(capsys: pytest.CaptureFixture[str]) -> None:
    from p2pshard.cli import _print_limits

    _print_limits(
        {
            "resources": [
                {"resource": "conns_inbound", "used": "3", "limit": "502"},
                {"resource": "memory", "used": "0", "limit": str(1 << 62)},
            ],
            "counters": {"limits.refused.conns_inbound.ip": "2", "reqresp.answered.ok": "9"},
        }
    )
    out = capsys.readouterr().out
    assert "conns_inbound 3/502" in out and "memory 0/-" in out
    assert "refused: conns_inbound.ip=2" in out and "answered" not in out


async def test_limit_keys_of_the_configuration_reach_the_node(tmp_path: Path) -> None:
    file = tmp_path / "node.toml"
    file.write_text(
        "max_connections_per_ip = 3\nmax_fds = 77\nmax_streams_per_connection = 9\n"
        "request_timeout_s = 0.5\nrequest_peer_share = 0.5\nconn_low_water = 4\nconn_high_water = 6\n"
        "handshake_timeout_s = 2.0\n"
    )
    async with open_node(NodeConfig.load(file, env={})) as node:
        assert node.limits is not None and node.connmgr is not None
        limits = node.limits.resources.limits
        assert (limits.ip.conns_inbound, limits.system.fds, limits.conn.streams_inbound) == (3, 77, 9)
        assert node.limits.handshake_timeout_s == 2.0
        assert (node.server.request_timeout_s, node.server.peer_share) == (0.5, 0.5)
        assert (node.connmgr.config.low_water, node.connmgr.config.high_water) == (4, 6)
