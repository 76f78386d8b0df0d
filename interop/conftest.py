"""Fixtures for the interop tests: a Python peer and the third-party peers, each ended by its PID.

Run from the repository root after ``bash interop/setup.sh``:  ``pytest interop -q``.

``py_peer`` is the only place that decides what the Python side is. Today: a py-libp2p 0.8.1 host
with stock GossipSub (interop/pypeer.py). To test p2pshard's node instead, make
``new_python_peer`` return a context manager that yields an object with the same methods
(peer_id, addrs, connect, connection_info, open_stream, serve_stream, serve_echo, echo, gossip, dht).
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


def new_python_peer(muxers: Sequence[str] = ("yamux", "mplex")) -> AbstractAsyncContextManager[PyPeer]:
    """The Python side under test (swap this for p2pshard's node when it lands)."""
    return make_py_peer(muxers=muxers)


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
