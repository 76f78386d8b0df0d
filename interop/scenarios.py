"""The interop scenarios, written once for any third-party peer (see remote.py).

Each scenario states what it proves in its docstring. Every wait is bounded; waiting for state
that only the other process knows (a connection registered, a subscription seen, a routing table
entry) polls that state until a deadline, because no event crosses the process boundary.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import multiaddr
import trio
from libp2p.peer.id import ID

from interop.pypeer import PyPeer, ReceivedMessage
from interop.remote import Remote, RemoteMessage, strip_p2p
from interop.wire import ECHO_PROTOCOL, raw_sha256_cid

WAIT_S = 10.0  # bound on any single thing the scenarios wait for
POLL_S = 0.02
PROBE_INTERVAL_S = 0.25  # p2pd's heartbeat in these tests is 500 ms
SECP256K1_PREFIX = "16Uiu2"  # base58 of an identity-multihashed secp256k1 public key


class PeerFactory(Protocol):
    def __call__(self, muxers: Sequence[str] = ...) -> AbstractAsyncContextManager[PyPeer]: ...


async def eventually(
    check: Callable[[], bool] | Callable[[], Awaitable[bool]], what: str, within: float = WAIT_S
) -> None:
    """Poll ``check`` until it holds; fail with ``what`` after ``within`` seconds."""
    try:
        with trio.fail_after(within):
            while True:
                result = check()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return
                await trio.sleep(POLL_S)
    except trio.TooSlowError:
        raise AssertionError(f"not within {within} s: {what}") from None


def unique(label: str) -> str:
    return f"/p2pshard/interop/{label}/{os.urandom(4).hex()}"


# ---------------------------------------------------------------- connections
YAMUX = "/yamux/1.0.0"
MPLEX = "/mplex/6.7.0"


async def python_dials(py: PyPeer, remote: Remote, muxer: str = YAMUX) -> None:
    """Python dials the remote: Noise + the muxer are negotiated; the remote sees our secp256k1 id."""
    assert py.peer_id.to_base58().startswith(SECP256K1_PREFIX)
    with trio.fail_after(WAIT_S):
        await py.connect(remote.peer_id, remote.addrs)
    info = py.connection_info(remote.peer_id)
    assert info is not None, "no connection on the Python side after connect()"
    assert info["security"] == "/noise", info
    assert info["muxer"] == muxer, info
    assert "OUTBOUND" in info["direction"].upper(), info
    await eventually(
        lambda: _has(remote.connected_peers(), py.peer_id), f"{remote.name} lists the Python peer"
    )
    assert await remote.connection_muxer(py.peer_id) in (None, muxer)


async def remote_dials(py: PyPeer, remote: Remote, muxer: str = YAMUX) -> None:
    """The remote dials Python: our listener accepts it over Noise + the muxer, inbound."""
    with trio.fail_after(WAIT_S):
        await remote.dial(py.peer_id, py.addrs)
    await eventually(
        lambda: py.connection_info(remote.peer_id) is not None,
        f"the Python side registers the inbound connection from {remote.name}",
    )
    info = py.connection_info(remote.peer_id)
    assert info is not None
    assert info["security"] == "/noise", info
    assert info["muxer"] == muxer, info
    assert "INBOUND" in info["direction"].upper(), info
    assert py.peer_id in await remote.connected_peers()
    assert await remote.connection_muxer(py.peer_id) in (None, muxer)


async def _has(peers: Awaitable[set[ID]], peer: ID) -> bool:
    return peer in await peers


# ---------------------------------------------------------------- gossip
async def _gossip_pair(py: PyPeer, remote: Remote, topic: str) -> None:
    """Both subscribe, Python dials, and each side learns the other's subscription."""
    await py.gossip.subscribe(topic)
    await remote.subscribe(topic)
    with trio.fail_after(WAIT_S):
        await py.connect(remote.peer_id, remote.addrs)
    await eventually(
        lambda: remote.peer_id in py.gossip.topic_peers(topic),
        f"Python sees {remote.name}'s subscription",
    )
    await eventually(
        lambda: _has(remote.topic_peers(topic), py.peer_id),
        f"{remote.name} sees the Python subscription",
    )


PROBE = b"\x00p2pshard-interop-probe:"


async def _next_not_from(py: PyPeer, topic: str, me: ID) -> ReceivedMessage:
    """The next message from someone else that is not a probe. py-libp2p hands our own publishes
    to our own subscription; those and late probes are skipped, nothing else."""
    with trio.fail_after(WAIT_S):
        while True:
            msg = await py.gossip.next_message(topic)
            if msg.from_peer != me and not msg.data.startswith(PROBE):
                return msg


async def _probe_until_delivered(py: PyPeer, remote: Remote, topic: str) -> int:
    """Publish probes from the remote until one reaches Python; returns how many it took.

    p2pd publishes to its mesh only (no flood publish): a message published before its heartbeat
    has grafted the Python peer never reaches it (measured). No API shows p2pd's mesh, so a
    delivered probe is the proof that the remote's publishes now reach us.
    """
    sent = 0
    try:
        with trio.fail_after(WAIT_S):
            while True:
                sent += 1
                await remote.publish(topic, PROBE + str(sent).encode())
                with trio.move_on_after(PROBE_INTERVAL_S):
                    while True:
                        msg = await py.gossip.next_message(topic)
                        if msg.from_peer == remote.peer_id and msg.data.startswith(PROBE):
                            return sent
    except trio.TooSlowError:
        raise AssertionError(f"none of {sent} probes from {remote.name} reached Python") from None


async def gossip_python_to_remote(py: PyPeer, remote: Remote, payloads: list[bytes]) -> str | None:
    """A message Python publishes reaches the remote intact, signed, attributed to our peer id.

    Returns the pubsub protocol the Python router negotiated with the remote.
    """
    topic = unique("gossip-py-to-remote")
    await _gossip_pair(py, remote, topic)
    # The Python router publishes to its mesh only; wait until the remote has been grafted.
    await eventually(
        lambda: remote.peer_id in py.gossip.mesh_peers(topic),
        f"{remote.name} is in the Python mesh for the topic",
    )
    for payload in payloads:
        await py.gossip.publish(topic, payload)
    received = []
    for _ in payloads:
        with trio.fail_after(WAIT_S):
            got = await remote.next_message(topic)
        assert got.signed, "StrictSign: the message must carry a signature"
        assert got.from_peer == py.peer_id
        received.append(got.data)
    # Pubsub promises no order between messages (py-libp2p's router reorders them, measured).
    assert sorted(received) == sorted(payloads)
    return py.gossip.protocol_of(remote.peer_id)


async def gossip_remote_to_python(py: PyPeer, remote: Remote, payloads: list[bytes]) -> str | None:
    """A message the remote publishes reaches Python intact, signed, attributed to the remote."""
    topic = unique("gossip-remote-to-py")
    await _gossip_pair(py, remote, topic)
    await _probe_until_delivered(py, remote, topic)
    for payload in payloads:
        await remote.publish(topic, payload)
    received = []
    for _ in payloads:
        got = await _next_not_from(py, topic, py.peer_id)
        assert got.signed, "StrictSign: the message must carry a signature"
        assert got.from_peer == remote.peer_id
        received.append(got.data)
    assert sorted(received) == sorted(payloads)
    return py.gossip.protocol_of(remote.peer_id)


async def gossip_burst(py: PyPeer, remote: Remote, count: int, size: int) -> None:
    """``count`` messages of ``size`` bytes published back to back, each way: every one arrives.

    Backpressure, not loss: a router that queues (and makes the publisher wait) delivers all of
    them; one that drops when a queue is full does not.
    """
    topic = unique("burst")
    await _gossip_pair(py, remote, topic)
    await eventually(
        lambda: remote.peer_id in py.gossip.mesh_peers(topic),
        f"{remote.name} is in the Python mesh for the topic",
    )
    await _probe_until_delivered(py, remote, topic)

    def payload(i: int) -> bytes:
        return i.to_bytes(4, "big") * (size // 4)

    with trio.fail_after(WAIT_S):
        for i in range(count):
            await py.gossip.publish(topic, payload(i))
    got: set[bytes] = set()
    with trio.move_on_after(WAIT_S):
        while len(got) < count:
            msg = await remote.next_message(topic)
            if not msg.data.startswith(PROBE):
                got.add(msg.data)
    assert len(got) == count, f"{remote.name} received {len(got)} of {count}"

    with trio.fail_after(WAIT_S):
        for i in range(count, 2 * count):
            await remote.publish(topic, payload(i))
    got.clear()
    with trio.move_on_after(WAIT_S):
        while len(got) < count:
            got.add((await _next_not_from(py, topic, py.peer_id)).data)
    assert len(got) == count, f"Python received {len(got)} of {count} from {remote.name}"


async def relay(py: PyPeer, src: Remote, dst: Remote, payloads: list[bytes]) -> list[RemoteMessage]:
    """``src`` and ``dst`` are not connected to each other; Python is connected to both. What ``src``
    publishes reaches ``dst`` through the Python router, with the author's signature intact.

    The caller must keep ``src`` and ``dst`` apart (the js peer can refuse a peer id).
    """
    topic = unique("relay")
    await py.gossip.subscribe(topic)
    for remote in (src, dst):
        await remote.subscribe(topic)
    for remote in (src, dst):
        with trio.fail_after(WAIT_S):
            await py.connect(remote.peer_id, remote.addrs)
    for remote in (src, dst):
        await eventually(
            lambda r=remote: r.peer_id in py.gossip.mesh_peers(topic),
            f"{remote.name} is in the Python mesh",
        )
        await eventually(
            lambda r=remote: _has(r.topic_peers(topic), py.peer_id),
            f"{remote.name} sees the Python subscription",
        )
    await _probe_until_delivered(py, src, topic)
    for payload in payloads:
        await src.publish(topic, payload)
    received: list[RemoteMessage] = []
    with trio.fail_after(WAIT_S):
        while len(received) < len(payloads):
            got = await dst.next_message(topic)
            if got.data.startswith(PROBE):
                continue
            assert got.from_peer == src.peer_id
            assert got.signed
            received.append(got)
    assert sorted(m.data for m in received) == sorted(payloads)
    assert src.peer_id not in await dst.connected_peers(), "src and dst met directly"
    return received


# ---------------------------------------------------------------- streams
async def stream_python_to_remote(py: PyPeer, remote: Remote, payload: bytes) -> None:
    """Python opens the echo protocol on the remote; one frame goes there and back."""
    await remote.serve_echo()
    with trio.fail_after(WAIT_S):
        await py.connect(remote.peer_id, remote.addrs)
        protocol, reply = await py.echo(remote.peer_id, payload)
    assert protocol == ECHO_PROTOCOL
    assert reply == payload


async def stream_remote_to_python(py: PyPeer, remote: Remote, payload: bytes) -> None:
    """The remote opens the echo protocol on Python (dialling us first); the frame comes back."""
    py.serve_echo()
    with trio.fail_after(WAIT_S):
        await remote.dial(py.peer_id, py.addrs)
        protocol, reply = await remote.echo(py.peer_id, py.addrs, payload)
    assert protocol == ECHO_PROTOCOL
    assert reply == payload


# ---------------------------------------------------------------- DHT
async def _join(py: PyPeer, remote: Remote) -> None:
    with trio.fail_after(WAIT_S):
        await py.connect(remote.peer_id, remote.addrs)
        # py-libp2p adds a peer to its routing table only when that peer queries it.
        assert await py.dht.add_peer(remote.peer_id)


async def find_peer_via_remote(py: PyPeer, remote: Remote, new_peer: PeerFactory) -> None:
    """Python finds a peer it has never met through the remote's DHT server (FIND_NODE answered
    by the remote with the other peer's address)."""
    async with new_peer() as other:
        await _join(py, remote)
        await _join(other, remote)
        assert py.connection_info(other.peer_id) is None
        found: list[multiaddr.Multiaddr] = []

        async def lookup() -> bool:
            info = await py.dht.find_peer(other.peer_id)
            if info is not None:
                found[:] = [strip_p2p(a) for a in info.addrs]
            return bool(found)

        await eventually(lookup, f"Python finds the other Python peer via {remote.name}")
        assert set(other.addrs) & set(found), (other.addrs, found)


async def find_peer_via_python(py: PyPeer, remote: Remote, new_peer: PeerFactory) -> None:
    """The remote finds a peer it has never met through the Python DHT server."""
    async with new_peer() as other:
        await _join(py, remote)
        with trio.fail_after(WAIT_S):
            await py.connect(other.peer_id, other.addrs)
            assert await py.dht.add_peer(other.peer_id)
        assert other.peer_id not in await remote.connected_peers()
        found: list[multiaddr.Multiaddr] = []
        errors: list[str] = []

        async def lookup() -> bool:
            try:
                found[:] = await remote.find_peer(other.peer_id)
            except Exception as exc:  # not yet: the remote may not have Python in its table
                errors.append(repr(exc))
                return False
            return bool(found)

        try:
            await eventually(lookup, f"{remote.name} finds the other Python peer via Python")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last errors: {errors[-3:]}") from None
        assert set(other.addrs) & set(found), (other.addrs, found)


async def providers_python_to_remote(py: PyPeer, remote: Remote) -> None:
    """Python's ADD_PROVIDER reaches the remote: the remote then names Python as the provider."""
    cid = raw_sha256_cid(os.urandom(16))
    await _join(py, remote)
    with trio.fail_after(WAIT_S):
        assert await py.dht.provide(cid)
    seen: list[ID] = []

    async def lookup() -> bool:
        seen[:] = await remote.find_providers(cid)
        return py.peer_id in seen

    await eventually(lookup, f"{remote.name} lists Python as provider")


async def providers_remote_to_python(py: PyPeer, remote: Remote, new_peer: PeerFactory) -> None:
    """The remote provides; a Python peer that did not take part finds it with GET_PROVIDERS."""
    cid = raw_sha256_cid(os.urandom(16))
    await _join(py, remote)
    errors: list[str] = []

    async def provide() -> bool:
        # go refuses ("failed to find any peer in table") until identify has put Python in its
        # routing table, a moment after the connection is up.
        try:
            await remote.provide(cid)
        except Exception as exc:
            errors.append(repr(exc))
            return False
        return True

    try:
        await eventually(provide, f"{remote.name} provides")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last errors: {errors[-3:]}") from None
    async with new_peer() as other:
        await _join(other, remote)

        async def lookup() -> bool:
            return remote.peer_id in {p.peer_id for p in await other.dht.find_providers(cid)}

        await eventually(lookup, f"Python finds {remote.name} as provider")
