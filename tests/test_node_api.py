"""The embedding API as a program uses it: docs, connect, blobs, events, quiet logs."""

from __future__ import annotations

import ast
import inspect
import io
import logging
import pydoc

import pytest
from rich.console import Console

from p2pshard import Node, NodeConfig, NodeEvent, open_node
from p2pshard.config import NodeConfig as ConfigClass
from p2pshard.core.wire import status_pb2
from p2pshard.node import ConnectError, ListenError
from tests.util import eventually

UNREACHABLE = "/ip4/127.0.0.1/tcp/1/p2p/16Uiu2HAmLV3MyXNosmHTUWZMnVZHjnSKhV5YLDLZxSkLQ7QH6Mjw"


def test_help_node_shows_real_types_and_an_example() -> None:
    text = pydoc.render_doc(Node, renderer=pydoc.plaintext)
    assert "blobs: p2pshard.net.blob.BlobService" in text
    assert "'BlobService'" not in text
    assert "await b.connect(a.addrs[0])" in text and "fetch_blob(" in text
    for method in (Node.connect, Node.fetch_blob, Node.put_blob):
        assert method.__doc__ and len(method.__doc__) > 60


def test_every_node_config_field_is_documented() -> None:
    tree = ast.parse(inspect.getsource(ConfigClass))
    body = tree.body[0].body  # type: ignore[attr-defined]
    undocumented = []
    for i, stmt in enumerate(body):
        if isinstance(stmt, ast.AnnAssign):
            after = body[i + 1] if i + 1 < len(body) else None
            documented = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
            if not documented:
                undocumented.append(ast.unparse(stmt.target))
    assert not undocumented, f"NodeConfig fields without a docstring: {undocumented}"


async def test_connect_put_and_fetch_a_blob() -> None:
    async with (
        open_node(NodeConfig()) as a,
        open_node(NodeConfig(), client_only=True) as b,
    ):
        assert await b.connect(a.addrs[0]) == a.peer_id
        assert a.peer_id in b.peers()
        digest = a.put_blob(b"hello" * 1000)
        assert await b.fetch_blob(digest, max_size=1 << 20) == b"hello" * 1000


async def test_connect_error_names_the_peer_once_and_each_reason() -> None:
    async with open_node(NodeConfig(), client_only=True) as node:
        with pytest.raises(ConnectError) as caught:
            await node.connect(UNREACHABLE)
    message = str(caught.value)
    assert message.count("16Uiu2HAmLV3MyXNosmHTUWZMnVZHjnSKhV5YLDLZxSkLQ7QH6Mjw") == 1, message
    assert "127.0.0.1:1: connection refused" in message
    assert "(with exceptions)" not in message


async def test_listen_on_a_port_in_use_is_an_error() -> None:
    async with open_node(NodeConfig()) as first:
        taken = first.addrs[0].split("/p2p/")[0]
        with pytest.raises(ListenError, match="already in use"):
            async with open_node(NodeConfig(listen=[taken])):
                pass


async def test_events_report_listening_first_then_bootstrap(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[NodeEvent] = []
    with caplog.at_level(logging.WARNING):
        async with (
            open_node(NodeConfig()) as first,
            open_node(NodeConfig(bootstrap=[first.addrs[0]]), on_event=seen.append) as node,
        ):
            assert seen[0].kind == "listening" and seen[0]["addrs"] == node.addrs
            kinds = [e.kind for e in seen]
            assert kinds.index("bootstrap_dial") < kinds.index("bootstrap_connected")
            await eventually(lambda: any(e.kind == "peers" and e["count"] >= 1 for e in seen))
            assert seen[-1].to_json()["event"] == seen[-1].kind
    # closing nodes is normal: none of py-libp2p's "failed to read" or "failed to open" noise
    noise = [r.getMessage() for r in caplog.records if r.name.startswith("libp2p")]
    assert not [m for m in noise if "Failed to read DHT message" in m or "Failed to open stream" in m], noise


def test_status_json_numbers_are_numbers() -> None:
    from p2pshard.cli import status_to_dict

    resp = status_pb2.StatusResponse(peer_id="x", uptime_s=1.5)
    resp.counters["gossip.received"] = 8
    resp.training.round = 8
    resp.training.tokens = 1 << 40
    resp.training.model_hash = bytes.fromhex("ab" * 32)
    resp.resources.add(resource="streams", used=3, limit=256)
    data = status_to_dict(resp)
    assert data["training"]["round"] == 8 and data["training"]["tokens"] == 1 << 40
    assert data["counters"]["gossip.received"] == 8
    assert data["resources"][0]["limit"] == 256
    assert data["training"]["model_hash"] == "ab" * 32


def test_plain_status_keeps_each_address_on_one_line_at_80_columns() -> None:
    from p2pshard.ui import print_status

    addr = "/ip4/203.0.113.200/tcp/40123/p2p/16Uiu2HAmLV3MyXNosmHTUWZMnVZHjnSKhV5YLDLZxSkLQ7QH6Mjw"
    peer = "16Uiu2HAmKddpj8SJBhUhuy1NQ5jXp3vfSTPMvmDBLKwHnXrQsQpg"
    out = io.StringIO()
    status = {"peer_id": "me", "listen_addrs": [addr], "peers": [{"peer_id": peer, "addrs": [addr]}]}
    print_status(status, Console(file=out, width=80))
    lines = out.getvalue().splitlines()
    assert any(addr in line for line in lines if "listening" in line)
    assert any(peer in line and addr in line for line in lines)


@pytest.mark.parametrize(
    ("logger", "message", "normal"),
    [
        ("libp2p.kad_dht.kad_dht", "Failed to parse protobuf message: ", True),
        ("libp2p.kad_dht.kad_dht", "Failed to parse protobuf message: Error parsing message", False),
        ("libp2p.protocol_muxer.multiselect_client", "MultiselectClient handshake: read failed: x", True),
        (
            "libp2p.host.basic_host",
            "Failed to open stream to peer Q:\n  Error: handshake read failed: x",
            True,
        ),
        ("libp2p.host.basic_host", "Failed to open stream to peer Q:\n  Error: connection refused", False),
    ],
)
def test_libp2p_noise_of_a_normal_close_goes_to_debug(logger: str, message: str, normal: bool) -> None:
    """A peer that closes while a stream is negotiated (every node that stops) is not an error
    for embedders to see; a real failure still is."""
    from p2pshard.node import _NormalEventsToDebug

    log = logging.getLogger(logger)
    record = log.makeRecord(logger, logging.ERROR, __file__, 1, message, (), None)
    _NormalEventsToDebug(log).filter(record)
    assert (record.levelno == logging.DEBUG) is normal
