"""The round protocol between in-process nodes on 127.0.0.1, with a tiny numpy engine.

These exercise what the torch engine does not change: announcements over gossip, the rules that
judge them, payload fetching and screening, aggregation order, and that every honest node ends
each round on the same model hash.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import trio

from p2pshard import NodeConfig, open_node
from p2pshard.core import topics as core_topics
from p2pshard.core.wire import topics_pb2
from p2pshard.node import Node
from p2pshard.protocols.training import RoundReport, Trainer, TrainingOptions
from tests.training.fake_engine import FakeEngine
from tests.util import eventually

# Short rounds, with room for a loaded CI machine: announcements are in by 1.6 s and payloads
# fetched 1 s later, 0.4 s before the next round (with 0.2 s of slack a payload fetch sometimes
# missed its window under load, and the round was aggregated without it).
OPTIONS = TrainingOptions(
    rounds=3, period_s=3.0, announce_deadline_s=1.6, fetch_timeout_s=1.0, start_delay_s=2.0
)


@asynccontextmanager
async def network(
    faults: list[str], options: TrainingOptions = OPTIONS
) -> AsyncIterator[list[tuple[Node, FakeEngine, Trainer, list[RoundReport]]]]:
    """Nodes with trainers; node i's engine misbehaves as ``faults[i]`` says ("" = honest)."""
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(
            open_node(NodeConfig(network_id="fake", gossip_heartbeat_s=0.2))
        )
        nodes = [first]
        for _ in faults[1:]:
            cfg = NodeConfig(network_id="fake", gossip_heartbeat_s=0.2, bootstrap=[first.addrs[0]])
            nodes.append(await stack.enter_async_context(open_node(cfg)))
        await eventually(lambda: all(len(n.peers()) == len(nodes) - 1 for n in nodes), within_s=15)
        out = []
        for node, fault in zip(nodes, faults, strict=True):
            engine = FakeEngine(node.peer_id.to_base58(), fault)
            reports: list[RoundReport] = []
            trainer = Trainer(node, engine, options, report=reports.append)
            await node.nursery.start(trainer.run)
            out.append((node, engine, trainer, reports))
        yield out


async def _all_done(
    members: list[tuple[Node, FakeEngine, Trainer, list[RoundReport]]], within_s: float
) -> None:
    with trio.fail_after(within_s):
        for _, _, trainer, _ in members:
            await trainer.done.wait()


async def test_nodes_train_rounds_and_agree_on_the_model() -> None:
    async with network(["", "", ""]) as members:
        await _all_done(members, 30)
        hashes = {engine.model_hash() for _, engine, _, _ in members}
        assert len(hashes) == 1
        for _, engine, _, reports in members:
            assert engine.round == 3
            # every round aggregated all three contributions, in contributor order
            assert [len(accepted) for _, accepted in engine.applied] == [3, 3, 3]
            assert [r.round for r in reports] == [0, 1, 2]


async def test_bad_payloads_are_rejected_scored_and_the_round_completes() -> None:
    async with network(["", "", "nan", "shape"]) as members:
        await _all_done(members, 30)
        honest = members[:2]
        nan_peer = members[2][0].peer_id
        assert len({engine.model_hash() for _, engine, _, _ in honest}) == 1
        for node, engine, _, _ in honest:
            assert [len(accepted) for _, accepted in engine.applied] == [2, 2, 2]
            assert node.counters.get("training.rejected.non-finite") >= 1
            assert node.counters.get("training.rejected.wrong-shape") >= 1
            assert node.app_penalties.score(nan_peer.to_bytes()) < 0
            assert node.pubsub is not None and node.pubsub.scores()[nan_peer.to_base58()] < 0


async def _publish_raw(node: Node, ann: topics_pb2.GradientAnnouncement) -> None:
    assert node.pubsub is not None
    await node.pubsub.publish(core_topics.topic_name("fake", "gradients"), ann.SerializeToString())


def _announcement(node: Node, round_: int, sign: Callable[[bytes], bytes]) -> topics_pb2.GradientAnnouncement:
    ann = topics_pb2.GradientAnnouncement(
        round=round_,
        model_hash=b"\x01" * 32,
        content_hash=b"\x02" * 32,
        size=256,
        tokens=100,
        loss=1.0,
        contributor=node.peer_id.to_bytes(),
        timestamp_ms=int(time.time() * 1000),
    )
    ann.signature = sign(core_topics.signing_bytes("gradients", ann))
    return ann


async def test_bad_signature_and_stale_round_are_rejected() -> None:
    options = dataclasses.replace(OPTIONS, start_delay_s=1.0)
    async with network(["", "", ""], options) as members:
        (a, _, trainer_a, _), (b, _, _, _), (c, _, _, _) = members
        assert trainer_a.schedule is not None
        await trio.sleep(max(0.0, trainer_a.schedule.opens_at(1) - time.time()) + 0.1)  # inside round 1
        forged = _announcement(c, 1, lambda data: b.identity.sign(data))  # signed by someone else
        await _publish_raw(c, forged)
        stale = _announcement(c, 0, c.identity.sign)
        await _publish_raw(c, stale)
        await eventually(lambda: a.counters.get("topics.reject.bad_signature") == 1)
        await eventually(lambda: a.counters.get("topics.reject.stale-round") == 1)
        await _all_done(members, 30)
        assert len({engine.model_hash() for _, engine, _, _ in members}) == 1


async def test_payload_whose_hash_does_not_match_is_dropped() -> None:
    """A contributor announces one content hash and serves other bytes: the fetch fails
    verification, the contribution is dropped, and the round completes with the others."""
    async with network(["", "", ""]) as members:
        (a, engine_a, _, _), _, (c, _, _, _) = members
        real_put = c.blobs.store.put_verified

        def corrupting_put(digest: bytes, data: bytes | bytearray, *, pin: bool = False) -> None:
            real_put(digest, bytes(data[:-1]) + bytes([data[-1] ^ 1]), pin=pin)

        c.blobs.store.put_verified = corrupting_put  # type: ignore[method-assign]
        await _all_done(members, 30)
        assert a.counters.get("blob.rejected.hash_mismatch") >= 1
        assert [len(accepted) for _, accepted in engine_a.applied] == [2, 2, 2]
