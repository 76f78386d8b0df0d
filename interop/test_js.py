"""Interop with js-libp2p (libp2p 3.3.11, @libp2p/gossipsub 17.1.1): connect, gossip, streams, DHT."""

from __future__ import annotations

from interop import scenarios as sc
from interop.pypeer import PyPeer
from interop.remote import JsRemote
from interop.scenarios import PeerFactory

SMALL = [b"hello js", b""]  # the empty message checks that an absent data field round-trips
LARGE = [bytes(range(256)) * 256]  # 64 KiB, p2pshard's gossip size limit


async def test_python_dials_js(py_peer: PyPeer, js_peer: JsRemote) -> None:
    await sc.python_dials(py_peer, js_peer)


async def test_js_dials_python(py_peer: PyPeer, js_peer: JsRemote) -> None:
    await sc.remote_dials(py_peer, js_peer)


async def test_gossip_python_to_js(py_peer: PyPeer, js_peer: JsRemote) -> None:
    proto = await sc.gossip_python_to_remote(py_peer, js_peer, SMALL + LARGE)
    assert proto == "/meshsub/1.2.0"


async def test_gossip_js_to_python(py_peer: PyPeer, js_peer: JsRemote) -> None:
    await sc.gossip_remote_to_python(py_peer, js_peer, SMALL + LARGE)


async def test_stream_python_to_js(py_peer: PyPeer, js_peer: JsRemote) -> None:
    await sc.stream_python_to_remote(py_peer, js_peer, b"ping" * 1000)


async def test_stream_js_to_python(py_peer: PyPeer, js_peer: JsRemote) -> None:
    await sc.stream_remote_to_python(py_peer, js_peer, b"pong" * 1000)


async def test_dht_python_finds_peer_via_js(
    py_peer: PyPeer, js_peer: JsRemote, more_py_peers: PeerFactory
) -> None:
    await sc.find_peer_via_remote(py_peer, js_peer, more_py_peers)


async def test_dht_js_finds_peer_via_python(
    py_peer: PyPeer, js_peer: JsRemote, more_py_peers: PeerFactory
) -> None:
    await sc.find_peer_via_python(py_peer, js_peer, more_py_peers)


async def test_dht_js_finds_python_provider(py_peer: PyPeer, js_peer: JsRemote) -> None:
    await sc.providers_python_to_remote(py_peer, js_peer)


async def test_dht_python_finds_js_provider(
    py_peer: PyPeer, js_peer: JsRemote, more_py_peers: PeerFactory
) -> None:
    await sc.providers_remote_to_python(py_peer, js_peer, more_py_peers)
