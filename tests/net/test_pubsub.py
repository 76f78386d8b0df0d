"""Our gossipsub router over real py-libp2p streams between in-process nodes on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest
import trio

from p2pshard import NodeConfig, open_node
from p2pshard.core.gossip import MESHSUB_V11, GossipMessage, ValidationResult
from p2pshard.core.wire.framing import encode_frame, encode_uvarint
from p2pshard.net.pubsub import _PeerQueue
from p2pshard.node import Node
from tests.util import eventually

TOPIC = "/p2pshard/test/votes/proto"


@pytest.fixture
async def four_nodes() -> AsyncIterator[list[Node]]:
    async with AsyncExitStack() as stack:
        config = NodeConfig(network_id="test", gossip_heartbeat_s=0.2)
        first = await stack.enter_async_context(open_node(config))
        rest = [
            await stack.enter_async_context(
                open_node(NodeConfig(network_id="test", gossip_heartbeat_s=0.2, bootstrap=[first.addrs[0]]))
            )
            for _ in range(3)
        ]
        yield [first, *rest]


async def _subscribed(
    stack: AsyncExitStack, nodes: list[Node]
) -> list[trio.MemoryReceiveChannel[GossipMessage]]:
    subs = [await stack.enter_async_context(n.pubsub.subscribe(TOPIC)) for n in nodes]
    await eventually(lambda: all(n.pubsub.mesh_sizes().get(TOPIC, 0) >= 2 for n in nodes), within_s=15)
    return subs


async def test_publish_reaches_every_subscriber_once(four_nodes: list[Node]) -> None:
    async with AsyncExitStack() as stack:
        subs = await _subscribed(stack, four_nodes)
        for i in range(20):
            await four_nodes[i % 4].pubsub.publish(TOPIC, f"m{i}".encode())
        for sub in subs:
            got = []
            with trio.fail_after(10):
                for _ in range(20):
                    got.append((await sub.receive()).data)
            assert sorted(got) == sorted(f"m{i}".encode() for i in range(20))
            with trio.move_on_after(0.3):
                extra = await sub.receive()
                raise AssertionError(f"duplicate delivery: {extra}")


async def test_status_shows_mesh_and_scores(four_nodes: list[Node]) -> None:
    async with AsyncExitStack() as stack:
        await _subscribed(stack, four_nodes)
        status = four_nodes[0].status()
        assert {m.topic: m.mesh_peers for m in status.mesh}[TOPIC] >= 2
        assert len(status.scores) == 3


async def test_rejected_messages_are_not_forwarded_and_lower_the_score(four_nodes: list[Node]) -> None:
    sender, *honest = four_nodes

    async def no_bad(msg: GossipMessage) -> ValidationResult:
        return ValidationResult.REJECT if msg.data.startswith(b"bad") else ValidationResult.ACCEPT

    for node in honest:
        node.pubsub.set_validator(TOPIC, no_bad)
    async with AsyncExitStack() as stack:
        subs = await _subscribed(stack, four_nodes)
        for i in range(5):
            await sender.pubsub.publish(TOPIC, b"bad%d" % i)
        await honest[0].pubsub.publish(TOPIC, b"good")
        for sub in subs[1:]:
            with trio.fail_after(10):
                assert (await sub.receive()).data == b"good"  # the bad ones never arrived
        sender_key = sender.peer_id.to_base58()
        await eventually(lambda: all(n.pubsub.scores()[sender_key] < 0 for n in honest))
        # each honest node rejected the bad messages it validated (later ones may already have
        # been ignored wholesale once the sender fell below the graylist threshold)
        assert all(n.counters.get("gossip.dropped.validation_reject") >= 1 for n in honest)
        # below the graylist threshold, the sender's RPCs are ignored altogether (and counted)
        graylist = honest[1].pubsub.router.config.score_thresholds.graylist_threshold
        await eventually(lambda: honest[1].pubsub.scores()[sender_key] < graylist)
        await sender.pubsub.publish(TOPIC, b"after")
        await eventually(lambda: honest[1].counters.get("gossip.dropped.rpc_graylisted") >= 1)


async def test_malformed_and_oversized_rpcs_are_counted_and_node_keeps_serving(
    four_nodes: list[Node],
) -> None:
    target, attacker, *others = four_nodes
    async with AsyncExitStack() as stack:
        subs = await _subscribed(stack, four_nodes)
        stream = await attacker.connector.open_stream(target.peer_id, MESHSUB_V11)
        await stream.write(encode_frame(b"\x0a\xff\xff\xff\xff garbage"))
        await eventually(lambda: target.counters.get("gossip.dropped.rpc_malformed") >= 1)
        await stream.write(encode_uvarint(1 << 40))  # an RPC far above max_rpc_size
        await eventually(lambda: target.counters.get("pubsub.rejected.frame_too_large") == 1)
        await others[0].pubsub.publish(TOPIC, b"still working")
        with trio.fail_after(10):
            assert (await subs[0].receive()).data == b"still working"


async def test_peer_queue_bounds_bytes() -> None:
    queue = _PeerQueue(limit=100)
    assert queue.try_put(b"x" * 60)
    assert queue.try_put(b"y" * 40)
    assert not queue.try_put(b"z")  # full: a forward is refused (and counted by the caller)
    woke = trio.Event()

    async def publisher() -> None:
        assert await queue.put_wait(b"p" * 10)  # a publish waits for room
        woke.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(publisher)
        await trio.sleep(0.05)
        assert not woke.is_set()
        assert await queue.get_batch(1000) == [b"x" * 60, b"y" * 40]
        with trio.fail_after(1):
            await woke.wait()
    assert queue.size == 10
