"""The connection manager closes connections above its high watermark, down to its low one."""

from __future__ import annotations

from contextlib import AsyncExitStack

import trio
from libp2p.peer.peerinfo import PeerInfo

from p2pshard import NodeConfig, open_node
from p2pshard.core.connmgr import PeerView
from p2pshard.identity import Identity
from p2pshard.net.host import build_host
from tests.util import eventually


async def test_a_node_trims_to_its_low_watermark_and_keeps_protected_peers() -> None:
    config = NodeConfig(conn_low_water=2, conn_high_water=3, conn_grace_s=0)
    async with open_node(config) as node, AsyncExitStack() as stack:
        assert node.connmgr is not None
        hosts = []
        for _ in range(5):
            host = build_host(Identity.generate(), [])
            await stack.enter_async_context(host.run([]))
            with trio.fail_after(10):
                await host.connect(PeerInfo(node.peer_id, node.host.get_addrs()))
            hosts.append(host)
        await eventually(lambda: len(node.connector.connected_peers()) == 5)
        keep = hosts[0].get_id()
        node.connmgr.protect(keep, "test")
        assert await node.connmgr.trim_once() == 3
        await eventually(lambda: len(node.connector.connected_peers()) == 2)
        assert node.connector.is_connected(keep)
        assert node.counters.get("connmgr.closed.trim") == 3
        assert await node.connmgr.trim_once() == 0  # at the low watermark: nothing more


async def test_a_peer_streaming_a_payload_to_us_is_in_transfer_and_answers_count_as_useful() -> None:
    from p2pshard.net.reqresp import ProtocolSpec, Reply, RequestContext

    async with (
        open_node(NodeConfig()) as server,
        open_node(NodeConfig(bootstrap=[server.addrs[0]])) as client,
    ):
        assert client.connmgr is not None
        release = trio.Event()

        async def slow_payload(ctx: RequestContext, body: bytes) -> Reply:
            await release.wait()
            return Reply(payload=b"x" * 1000)

        server.register(ProtocolSpec("/test/payload/1.0.0", slow_payload))
        got = bytearray()

        async def fetch() -> None:
            await client.client.call(
                server.peer_id,
                "/test/payload/1.0.0",
                b"",
                sink=lambda offset, data: got.extend(data),
                max_stream_length=1000,
            )

        def view() -> PeerView:
            assert client.connmgr is not None
            views = {v.peer: v for v in client.connmgr.views(trio.current_time())}
            return views[server.peer_id.to_base58()]

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetch)
            await eventually(lambda: view().in_transfer)  # while the server holds the answer back
            release.set()
        assert len(got) == 1000
        assert not view().in_transfer and view().usefulness >= 1
