"""The training driver on trio's MockClock: real Trainers and RoundIO, in-memory nodes (fakenet).

Rounds are 30 virtual seconds; a test of ten rounds takes well under a second of real time, and
the same run gives the same result every time. What the network really does (gossip, blob
streams) is tested once more over 127.0.0.1 in test_round_network.py.
"""

from __future__ import annotations

import time

import pytest
import trio
import trio.testing

from p2pshard.core import topics as core_topics
from p2pshard.core.gossip import GossipMessage
from p2pshard.core.rounds import LoadCheckpoint, Stage, Timing
from p2pshard.core.wire import topics_pb2
from p2pshard.protocols.training import TrainingOptions
from tests.training.fakenet import NETWORK, FakeNet, FakeNode, fake_network

TIMING = Timing(period_s=30.0, announce_deadline_s=18.0, fetch_timeout_s=9.0, start_delay_s=10.0)


def options(rounds: int = 4) -> TrainingOptions:
    return TrainingOptions(timing=TIMING, rounds=rounds)


async def done(nodes: list[FakeNode], within_s: float = 1000.0) -> None:
    with trio.fail_after(within_s):
        for n in nodes:
            await n.trainer.done.wait()


def hashes(nodes: list[FakeNode]) -> set[bytes]:
    return {n.engine.model_hash() for n in nodes}


async def start(net: FakeNet, count: int, rounds: int = 4, **kw: object) -> list[FakeNode]:
    return [await net.add(options(rounds), **kw) for _ in range(count)]  # type: ignore[arg-type]


async def test_nodes_train_rounds_and_agree(autojump_clock: trio.testing.MockClock) -> None:
    async with fake_network() as net:
        nodes = await start(net, 3)
        await done(nodes)
        assert len(hashes(nodes)) == 1
        for n in nodes:
            assert n.engine.round == 4
            assert [len(accepted) for _, accepted in n.engine.applied] == [3, 3, 3, 3]
            assert [r.round for r in n.reports] == [0, 1, 2, 3]
            assert n.contributed() == [0, 1, 2, 3]


async def test_bad_payloads_are_rejected_scored_and_the_round_completes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_network() as net:
        honest = await start(net, 2, rounds=2)
        nan, shape = await net.add(options(2), fault="nan"), await net.add(options(2), fault="shape")
        await done([*honest, nan, shape])
        assert len(hashes(honest)) == 1
        for n in honest:
            assert [len(accepted) for _, accepted in n.engine.applied] == [2, 2]
            assert n.counters.get("training.rejected.non_finite") == 2
            assert n.counters.get("training.rejected.wrong_shape") == 2
            assert n.app_penalties.score(nan.peer_id.to_bytes()) < 0


async def test_a_slow_round_costs_that_round_only(autojump_clock: trio.testing.MockClock) -> None:
    """The stall users hit: one round whose training ran past the deadline (a loaded machine)
    must not stop the node contributing for the rest of the run."""
    async with fake_network() as net:
        steady = await start(net, 2, rounds=5)
        slow = await net.add(options(5), train_s=lambda r: 40.0 if r == 1 else 1.0)
        await done([*steady, slow])
        assert len(hashes([*steady, slow])) == 1
        assert slow.contributed() == [0, 2, 3, 4]
        assert slow.trainer.io.skipped == {1: "own_too_late"}
        assert slow.counters.get("training.skipped.own_too_late") == 1
        for n in steady:
            assert [len(a) for _, a in n.engine.applied] == [3, 2, 3, 3, 3]


async def test_a_late_announcement_costs_that_round_only(autojump_clock: trio.testing.MockClock) -> None:
    """Our announcement reached the others after their deadline, so none of them fetched our
    update: we leave it out as they did, stay on their model, and contribute to the next round."""
    async with fake_network() as net:
        steady = await start(net, 2, rounds=5)
        late = await net.add(options(5))
        assert late.topics is not None
        slow_round = {1}

        def delay(peer: object) -> float:
            return 25.0 if late.trainer.proto.model_round in slow_round else net.delay

        late.topics.delay = delay
        await done([*steady, late])
        assert len(hashes([*steady, late])) == 1
        for n in steady:  # it arrived after they committed round 1: stale by then, and not penalised
            assert n.counters.get("training.announcement.ignore.stale_round") == 1
        assert late.counters.get("training.skipped.own_too_late") == 0
        assert late.trainer.io.skipped == {1: "own_not_taken"}
        assert late.contributed() == [0, 2, 3, 4]


async def test_a_payload_that_cannot_be_fetched_in_time_costs_that_round_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_network() as net:
        steady = await start(net, 2, rounds=5)
        hidden = await net.add(options(5))
        hidden.blobs.serves = lambda digest: digest != hidden.trainer.io._own.get(1)  # to nobody
        await done([*steady, hidden])
        assert len(hashes([*steady, hidden])) == 1
        for n in steady:
            assert n.engine.applied[1][1] == tuple(sorted(p.trainer.proto.me for p in steady))
        assert hidden.trainer.io.skipped == {1: "own_not_taken"}
        assert hidden.contributed() == [0, 2, 3, 4]


async def test_a_peer_killed_mid_round_costs_the_others_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_network() as net:
        nodes = await start(net, 4, rounds=4)
        victim = nodes[3]
        schedule = nodes[0].trainer.proto.schedule
        assert schedule is not None
        await trio.sleep_until(victim.trainer.clock.trio_time(schedule.deadline(1) + 1.0))  # fetching
        victim.kill()
        await done(nodes[:3])
        assert len(hashes(nodes[:3])) == 1
        for n in nodes[:3]:
            assert [r.round for r in n.reports] == [0, 1, 2, 3]
            assert n.contributed() == [0, 1, 2, 3]


async def test_a_late_joiner_catches_up_and_contributes_within_two_rounds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_network() as net:
        early = await start(net, 2, rounds=8)
        schedule = early[0].trainer.proto.schedule
        assert schedule is not None
        await trio.sleep_until(early[0].trainer.clock.trio_time(schedule.opens_at(3) + 5.0))
        late = await net.add(options())
        await done([*early, late])
        assert late.trainer.proto.rounds == 8  # it took the network's round count
        assert len(hashes([*early, late])) == 1
        assert late.counters.get("training.skipped.behind") == 1
        first = min(late.contributed())
        assert first <= 5, late.contributed()
        assert late.contributed() == list(range(first, 8))


async def test_an_elder_without_a_schedule_is_waited_for(autojump_clock: trio.testing.MockClock) -> None:
    """Two nodes starting at once: the one with the larger id adopts the smaller one's schedule."""
    async with fake_network() as net:
        nodes = await start(net, 2, rounds=1)
        await done(nodes)
        s0, s1 = (n.trainer.proto.schedule for n in nodes)
        assert s0 is not None and s0 == s1


async def test_forged_stale_and_early_announcements_are_rejected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_network() as net:
        a, b = await start(net, 2, rounds=3)
        schedule = a.trainer.proto.schedule
        assert schedule is not None and a.topics is not None
        await trio.sleep_until(a.trainer.clock.trio_time(schedule.opens_at(1) + 1.0))

        def announcement(r: int, signer: FakeNode) -> GossipMessage:
            ann = topics_pb2.GradientAnnouncement(
                round=r, model_hash=b"\x01" * 32, content_hash=b"\x02" * 32, size=256, tokens=100, loss=1.0,
                contributor=b.peer_id.to_bytes(), timestamp_ms=int(time.time() * 1000),
            )  # fmt: skip
            ann.signature = signer.identity.sign(core_topics.signing_bytes("gradients", ann))
            return GossipMessage(
                core_topics.topic_name(NETWORK, "gradients"), ann.SerializeToString(), b.peer_id.to_bytes()
            )

        hook = a.topics.hooks["gradients"]
        now_ms = int(a.trainer.clock.now() * 1000)
        assert core_topics.validate(announcement(1, a), NETWORK, now_ms, hook).reason == "bad_signature"
        assert core_topics.validate(announcement(0, b), NETWORK, now_ms, hook).reason == "stale_round"
        assert core_topics.validate(announcement(3, b), NETWORK, now_ms, hook).reason == "too_early"
        assert core_topics.validate(announcement(9, b), NETWORK, now_ms, hook).reason == "future_round"
        await done([a, b])
        assert len(hashes([a, b])) == 1
        assert a.trainer.proto.stage is Stage.DONE


@pytest.mark.parametrize("rounds", [1, 3])
async def test_every_node_ends_on_the_same_model(autojump_clock: trio.testing.MockClock, rounds: int) -> None:
    async with fake_network() as net:
        nodes = await start(net, 3, rounds=rounds)
        await done(nodes)
        assert len(hashes(nodes)) == 1
        assert all(n.trainer.proto.stage is Stage.DONE for n in nodes)


async def test_a_checkpoint_that_fails_half_way_through_loading_leaves_our_model_as_it_was(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_network() as net:
        (node,) = await start(net, 1, rounds=1)
        await done([node])
        before = node.engine.model_hash(), node.engine.round
        real_load = node.engine.load_checkpoint_bytes

        def half_load(data: bytes) -> None:
            if data != ours:
                node.engine.master[:] = 7.0  # state changed, then the checkpoint turns out bad
                raise ValueError("bad tensor")
            real_load(data)

        ours = node.engine.checkpoint_bytes()
        node.engine.load_checkpoint_bytes = half_load  # type: ignore[method-assign]
        bad = LoadCheckpoint(5, b"\x01" * 32, b"\x02" * 32, 10, (), "test")
        with pytest.raises(ValueError, match="bad tensor"):
            node.trainer.io._load_verified(b"not ours", bad)
        assert (node.engine.model_hash(), node.engine.round) == before
