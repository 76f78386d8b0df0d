"""Python in the middle: go and js never meet; gossip between them crosses the Python router.

This is the path that matters in a mixed network: the Python node validates a message signed by
someone else and forwards it to a peer of a different implementation (go speaks /meshsub/1.1.0,
js /meshsub/1.2.0).
"""

from __future__ import annotations

from interop import scenarios as sc
from interop.pypeer import PyPeer
from interop.remote import GoRemote, JsRemote

PAYLOADS = [b"relayed", bytes(range(256)) * 64]


async def test_js_to_go_through_python(py_peer: PyPeer, go_peer: GoRemote, js_peer: JsRemote) -> None:
    await js_peer.peer.deny_peer(go_peer.peer_id)
    await sc.relay(py_peer, js_peer, go_peer, PAYLOADS)


async def test_go_to_js_through_python(py_peer: PyPeer, go_peer: GoRemote, js_peer: JsRemote) -> None:
    await js_peer.peer.deny_peer(go_peer.peer_id)
    received = await sc.relay(py_peer, go_peer, js_peer, PAYLOADS)
    # js names the neighbour that forwarded each message: it must be the Python peer.
    assert {m.received_from for m in received} == {py_peer.peer_id}
