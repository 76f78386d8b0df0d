"""Our gossipsub router over real py-libp2p streams between in-process nodes on 127.0.0.1."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest
import trio

from p2pshard import NodeConfig, open_node
from p2pshard.core.gossip import MESHSUB_V11, GossipMessage, ValidationResult
from p2pshard.core.gossip.protocol import PeerKind
from p2pshard.core.topics import TOPICS, topic_name
from p2pshard.core.wire import topics_pb2
from p2pshard.core.wire.framing import encode_frame, encode_uvarint
from p2pshard.net.pubsub_io import PeerQueue
from p2pshard.node import Node
from tests.util import eventually

TOPIC = "/test/plain"
"""A topic outside the p2pshard namespace: no structural validation, any bytes go."""
VOTES = "/p2pshard/test/votes/proto"


@pytest.fixture
async def four_nodes() -> AsyncIterator[list[Node]]:
    """Four nodes of network "test"; the first one misbehaves (forwards whatever it gets)."""
    async with AsyncExitStack() as stack:
        config = NodeConfig(network_id="test", gossip_heartbeat_s=0.2)
        first = await stack.enter_async_context(open_node(config))
        assert first.pubsub is not None

        async def accept_everything(msg: GossipMessage) -> ValidationResult:
            return ValidationResult.ACCEPT

        for name in TOPICS:  # in place of the validators its Topics installed
            first.pubsub.set_validator(topic_name("test", name), accept_everything)
        rest = [
            await stack.enter_async_context(
                open_node(NodeConfig(network_id="test", gossip_heartbeat_s=0.2, bootstrap=[first.addrs[0]]))
            )
            for _ in range(3)
        ]
        yield [first, *rest]


Sub = trio.MemoryReceiveChannel[GossipMessage]


async def _subscribed(stack: AsyncExitStack, nodes: list[Node], topic: str = TOPIC) -> list[Sub]:
    subs = [await stack.enter_async_context(n.pubsub.subscribe(topic)) for n in nodes]
    await eventually(lambda: all(n.pubsub.mesh_sizes().get(topic, 0) >= 2 for n in nodes), within_s=15)
    return subs


def _vote(node: Node) -> bytes:
    vote = topics_pb2.ValidationVote(
        validator=node.peer_id.to_bytes(),
        proof_id=b"\x01" * 32,
        valid=True,
        timestamp_ms=int(time.time() * 1000),
    )
    return vote.SerializeToString()


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


async def test_peers_met_while_joining_speak_meshsub_v12(four_nodes: list[Node]) -> None:
    """Each later node meets the others during its join, before its router runs; their pubsub
    streams must still get /meshsub/1.2.0 (IDONTWANT, scores), not a downgrade through "na"s."""
    async with AsyncExitStack() as stack:
        await _subscribed(stack, four_nodes)
        for node in four_nodes:
            router = node.pubsub.router
            kinds = [router.peer_protocol(peer) for peer in router.peers]
            assert len(kinds) >= 2 and set(kinds) == {PeerKind.GOSSIPSUB_V12}, (node.peer_id, kinds)


async def test_status_shows_mesh_and_scores(four_nodes: list[Node]) -> None:
    async with AsyncExitStack() as stack:
        await _subscribed(stack, four_nodes)
        status = four_nodes[0].status()
        assert {m.topic: m.mesh_peers for m in status.mesh}[TOPIC] >= 2
        assert len(status.scores) == 3


async def test_rejected_messages_are_not_forwarded_and_lower_the_score(four_nodes: list[Node]) -> None:
    """The faulty node publishes votes that fail validation; honest nodes reject them, never
    deliver or forward them, score the sender down to the graylist, and keep gossiping."""
    sender, *honest = four_nodes
    async with AsyncExitStack() as stack:
        subs = await _subscribed(stack, four_nodes, VOTES)
        for i in range(10):
            await sender.pubsub.publish(VOTES, b"\xff\xffnot a vote %d" % i)
        valid = _vote(honest[0])
        await honest[0].pubsub.publish(VOTES, valid)
        for sub in subs[1:]:
            with trio.fail_after(10):
                assert (await sub.receive()).data == valid  # the bad ones never arrived
        sender_key = sender.peer_id.to_base58()
        await eventually(lambda: all(n.pubsub.scores()[sender_key] < 0 for n in honest))
        # each honest node rejected the bad messages it validated (later ones may already have
        # been ignored wholesale once the sender fell below the graylist threshold)
        assert all(n.counters.get("topics.reject.undecodable") >= 1 for n in honest)
        assert all(n.counters.get("gossip.dropped.validation_reject") >= 1 for n in honest)
        graylist = honest[1].pubsub.router.config.score_thresholds.graylist_threshold
        await eventually(lambda: honest[1].pubsub.scores()[sender_key] < graylist)
        await sender.pubsub.publish(VOTES, b"after")
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
    queue = PeerQueue(limit=100)
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


async def test_a_large_message_is_declined_from_its_head_and_delivered_once(four_nodes: list[Node]) -> None:
    """A frame longer than one read is shown to the router before its end: each receiver says
    IDONTWANT once, from the head of the first copy, and delivers the message once."""
    async with AsyncExitStack() as stack:
        subs = await _subscribed(stack, four_nodes)
        payload = bytes(range(256)) * (6 * 1024)  # 1.5 MiB: more than READ_SIZE, so never one read
        await four_nodes[1].pubsub.publish(TOPIC, payload)
        for node, sub in zip(four_nodes, subs, strict=True):
            with trio.fail_after(10):
                assert (await sub.receive()).data == payload
            with trio.move_on_after(0.3):
                await sub.receive()
                raise AssertionError("delivered twice")
            early = node.pubsub.router.stats.events["idontwant_early"]
            assert early == (0 if node is four_nodes[1] else 1)
