"""Fixtures for the interop tests: a Python peer and the third-party peers, each ended by its PID.

Run from the repository root after ``bash interop/setup.sh``:  ``pytest interop -q``.

``new_python_peer`` is the only place that decides what the Python side is:

* ``--py-peer=node`` (default): p2pshard's node — ``open_node`` with its host, connector, Discovery's
  KadDHT and p2pshard's own gossip router (interop/nodepeer.py);
* ``--py-peer=plain``: a plain py-libp2p 0.8.1 host with py-libp2p's stock GossipSub and KadDHT
  (interop/pypeer.py) — the baseline that tells a p2pshard bug from a third-party quirk.

Both yield a ``PyPeer`` (peer_id, addrs, connect, connection_info, open_stream, serve_stream,
serve_echo, echo, gossip, dht); the scenarios use nothing else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager

import pytest

from interop.go.daemon import start_p2pd
from interop.js.driver import start_js_peer
from interop.pypeer import PyPeer, make_py_peer
from interop.remote import GoRemote, JsRemote
from interop.scenarios import PeerFactory

PY_PEER_KIND = "node"  # set from --py-peer in pytest_configure


def new_python_peer(muxers: Sequence[str] = ("yamux", "mplex")) -> AbstractAsyncContextManager[PyPeer]:
    """The Python side under test: a plain py-libp2p host, or p2pshard's node (--py-peer=node)."""
    if PY_PEER_KIND == "node":
        from interop.nodepeer import make_node_peer

        return make_node_peer(muxers=muxers)
    return make_py_peer(muxers=muxers)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--py-peer",
        choices=("plain", "node"),
        default="node",
        help="Python side of the interop tests: a plain py-libp2p host, or p2pshard's node",
    )


def pytest_configure(config: pytest.Config) -> None:
    global PY_PEER_KIND
    PY_PEER_KIND = config.getoption("--py-peer")


def pytest_report_header(config: pytest.Config) -> str:
    return f"interop: Python side = {config.getoption('--py-peer')}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "interop" in item.nodeid.split("::")[0].split("/"):
            item.add_marker(pytest.mark.interop)
            item.add_marker(pytest.mark.slow)


@pytest.fixture
async def py_peer() -> AsyncIterator[PyPeer]:
    async with new_python_peer() as peer:
        yield peer


@pytest.fixture
def more_py_peers() -> PeerFactory:
    """Starts further Python peers inside a test (DHT scenarios need a third peer)."""
    return new_python_peer


@pytest.fixture
async def go_peer() -> AsyncIterator[GoRemote]:
    async with start_p2pd() as daemon:
        yield GoRemote(daemon)


@pytest.fixture
async def js_peer() -> AsyncIterator[JsRemote]:
    async with start_js_peer("Ed25519") as peer:
        yield JsRemote(peer)


@pytest.fixture
async def js_peer_secp256k1() -> AsyncIterator[JsRemote]:
    """A js peer whose identity is secp256k1 too (go and js default to Ed25519)."""
    async with start_js_peer("secp256k1") as peer:
        yield JsRemote(peer)
