"""Rounds over real streams on 127.0.0.1: gossip announcements, blob payloads, checkpoint infos.

The rules are tested on MockClock in test_round_protocol.py; this checks that the real transport
carries them. The assertions hold however the wall-clock timing falls (a payload that misses its
window makes a round aggregate without it, and the final agreement still puts every node on one
model), so a loaded machine cannot make them flake.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import trio

from p2pshard import NodeConfig, open_node
from p2pshard.core.rounds import Timing
from p2pshard.node import Node
from p2pshard.protocols.training import RoundReport, Trainer, TrainingOptions
from tests.training.fake_engine import FakeEngine
from tests.util import eventually

OPTIONS = TrainingOptions(
    timing=Timing(period_s=4.0, announce_deadline_s=2.4, fetch_timeout_s=1.2, start_delay_s=2.0), rounds=2
)


@asynccontextmanager
async def network(count: int) -> AsyncIterator[list[tuple[Node, FakeEngine, Trainer, list[RoundReport]]]]:
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(
            open_node(NodeConfig(network_id="fake", gossip_heartbeat_s=0.2))
        )
        nodes = [first]
        for _ in range(count - 1):
            cfg = NodeConfig(network_id="fake", gossip_heartbeat_s=0.2, bootstrap=[first.addrs[0]])
            nodes.append(await stack.enter_async_context(open_node(cfg)))
        await eventually(lambda: all(len(n.peers()) == count - 1 for n in nodes), within_s=15)
        members = []
        for node in nodes:
            engine = FakeEngine(node.peer_id.to_base58())
            reports: list[RoundReport] = []
            trainer = Trainer(node, engine, OPTIONS, report=reports.append)
            members.append((node, engine, trainer, reports))
        yield members


async def test_rounds_over_real_streams_agree_and_drop_a_payload_that_fails_its_hash() -> None:
    async with network(3) as members:
        (a, _, _, _), _, (c, _, _, _) = members
        real_put = c.blobs.store.put_verified

        def corrupting_put(digest: bytes, data: bytes | bytearray, *, pin: bool = False) -> None:
            real_put(digest, bytes(data[:-1]) + bytes([data[-1] ^ 1]), pin=pin)

        c.blobs.store.put_verified = corrupting_put  # type: ignore[method-assign]
        for node, _, trainer, _ in members:
            await node.nursery.start(trainer.run)
        with trio.fail_after(60):
            for _, _, trainer, _ in members:
                await trainer.done.wait()
        honest = members[:2]
        assert len({engine.model_hash() for _, engine, _, _ in honest}) == 1
        for _, engine, _, _ in honest:
            assert engine.round == 2
            assert all(c.peer_id.to_base58() not in accepted for _, accepted in engine.applied)
        assert sum(node.counters.get("blob.rejected.hash_mismatch") for node, *_ in honest) >= 1
        assert a.counters.get("training.announcement.accept.ok") >= 1  # gossip carried announcements
