"""Interop with go-libp2p (p2pd from hivemind 1.1.12): connect, gossip, streams, DHT — both ways."""

from __future__ import annotations

import pytest
import trio

from interop import scenarios as sc
from interop.pypeer import DialFailed, PyPeer
from interop.remote import GoRemote
from interop.scenarios import PeerFactory

SMALL = [b"hello go", b""]  # the empty message checks that an absent data field round-trips
LARGE = [bytes(range(256)) * 256]  # 64 KiB, p2pshard's gossip size limit
BULK = bytes(range(251)) * 12_000  # ~2.9 MiB: spans many yamux frames and Noise messages


async def test_python_dials_go(py_peer: PyPeer, go_peer: GoRemote) -> None:
    await sc.python_dials(py_peer, go_peer)


async def test_go_dials_python(py_peer: PyPeer, go_peer: GoRemote) -> None:
    await sc.remote_dials(py_peer, go_peer)


async def test_gossip_python_to_go(py_peer: PyPeer, go_peer: GoRemote) -> None:
    proto = await sc.gossip_python_to_remote(py_peer, go_peer, SMALL + LARGE)
    assert proto == "/meshsub/1.1.0"  # the newest p2pd's go-libp2p-pubsub speaks


async def test_gossip_go_to_python(py_peer: PyPeer, go_peer: GoRemote) -> None:
    await sc.gossip_remote_to_python(py_peer, go_peer, SMALL + LARGE)


async def test_stream_python_to_go(py_peer: PyPeer, go_peer: GoRemote) -> None:
    await sc.stream_python_to_remote(py_peer, go_peer, b"ping" * 1000)


async def test_stream_go_to_python(py_peer: PyPeer, go_peer: GoRemote) -> None:
    await sc.stream_remote_to_python(py_peer, go_peer, b"pong" * 1000)


async def test_large_stream_python_to_go(py_peer: PyPeer, go_peer: GoRemote) -> None:
    # Several yamux frames of our 256 KiB size, each four Noise messages sent in one write.
    await sc.stream_python_to_remote(py_peer, go_peer, BULK)


async def test_large_stream_go_to_python(py_peer: PyPeer, go_peer: GoRemote) -> None:
    await sc.stream_remote_to_python(py_peer, go_peer, BULK)


async def test_dht_python_finds_peer_via_go(
    py_peer: PyPeer, go_peer: GoRemote, more_py_peers: PeerFactory
) -> None:
    await sc.find_peer_via_remote(py_peer, go_peer, more_py_peers)


async def test_dht_go_finds_peer_via_python(
    py_peer: PyPeer, go_peer: GoRemote, more_py_peers: PeerFactory
) -> None:
    await sc.find_peer_via_python(py_peer, go_peer, more_py_peers)


async def test_dht_go_finds_python_provider(py_peer: PyPeer, go_peer: GoRemote) -> None:
    await sc.providers_python_to_remote(py_peer, go_peer)


async def test_dht_python_finds_go_provider(
    py_peer: PyPeer, go_peer: GoRemote, more_py_peers: PeerFactory
) -> None:
    await sc.providers_remote_to_python(py_peer, go_peer, more_py_peers)


async def test_go_refuses_mplex(go_peer: GoRemote, more_py_peers: PeerFactory) -> None:
    """p2pd speaks yamux only: a Python peer that offers only mplex gets an error, not a hang."""
    async with more_py_peers(muxers=["mplex"]) as py:
        with trio.fail_after(sc.WAIT_S), pytest.raises(DialFailed):
            await py.connect(go_peer.peer_id, go_peer.addrs)
        assert py.connection_info(go_peer.peer_id) is None
