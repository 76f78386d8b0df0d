"""The gossip driver's write path: control ahead of payload, unwanted copies skipped, bulk turns."""

from __future__ import annotations

import random

import trio

from p2pshard.core.gossip.protocol import control_piece, is_single_publish, publish_piece
from p2pshard.core.wire import rpc_pb2
from p2pshard.net.pubsub_io import BulkTurns, PeerQueue


def test_control_frames_go_ahead_of_queued_messages() -> None:
    queue = PeerQueue(limit=1 << 20)
    assert queue.try_put(b"m" * 1000, tag=b"id1")
    assert queue.try_put(b"c" * 10, urgent=True)
    assert queue.take(1 << 20) == [b"c" * 10, b"m" * 1000]
    assert queue.size == 0


def test_a_copy_the_peer_no_longer_wants_is_skipped_and_its_room_freed() -> None:
    queue = PeerQueue(limit=3000)
    assert queue.try_put(b"a" * 1000, tag=b"wanted")
    assert queue.try_put(b"b" * 1000, tag=b"idontwant")
    assert queue.try_put(b"c" * 1000)  # untagged (several messages, or gossip): always sent
    assert not queue.has_room.is_set()
    batch = queue.take(1 << 20, lambda mid: mid == b"idontwant")
    assert batch == [b"a" * 1000, b"c" * 1000]
    assert queue.skipped == 1
    assert queue.size == 0
    assert queue.has_room.is_set()


def test_small_batches_stop_before_a_bulk_frame() -> None:
    queue = PeerQueue(limit=1 << 20)
    assert queue.try_put(b"s" * 100)
    assert queue.try_put(b"B" * 5000)
    assert queue.take(1 << 20, below=1000) == [b"s" * 100]
    assert queue.next_is_bulk(1000)
    assert queue.take(1 << 20) == [b"B" * 5000]


async def test_bulk_turns_one_at_a_time_and_handed_on() -> None:
    turns = BulkTurns(random.Random(1))
    order: list[str] = []

    async def writer(name: str) -> None:
        await turns.acquire(name)
        order.append(f"start {name}")
        await trio.sleep(0.01)
        order.append(f"end {name}")
        turns.release()

    async with trio.open_nursery() as nursery:
        for name in ("a", "b", "c"):
            nursery.start_soon(writer, name)
    # never two at once: every start is followed by its own end
    assert [o.split()[0] for o in order] == ["start", "end"] * 3
    assert not turns.busy


async def test_a_waiter_cancelled_while_waiting_leaves_no_turn_behind() -> None:
    turns = BulkTurns(random.Random(1))
    await turns.acquire("holder")
    got = trio.Event()

    async def second() -> None:
        await turns.acquire("second")
        got.set()
        turns.release()

    async with trio.open_nursery() as nursery:
        doomed = trio.CancelScope()

        async def cancelled_waiter() -> None:
            with doomed:
                await turns.acquire("doomed")
                turns.release()

        nursery.start_soon(cancelled_waiter)
        nursery.start_soon(second)
        await trio.sleep(0.01)
        assert set(turns.waiting) == {"doomed", "second"}
        doomed.cancel()
        await trio.sleep(0.01)
        assert set(turns.waiting) == {"second"}
        turns.release()
        with trio.fail_after(1):
            await got.wait()
    assert not turns.busy
    assert not turns.waiting


def test_only_a_frame_holding_just_one_message_may_be_skipped() -> None:
    message = rpc_pb2.Message(data=b"x" * 70_000, topic="/t").SerializeToString()
    prune = rpc_pb2.ControlMessage(prune=[rpc_pb2.ControlPrune(topicID="/t")])
    assert is_single_publish(publish_piece(message))
    assert not is_single_publish(publish_piece(message) + publish_piece(message))
    assert not is_single_publish(control_piece(prune) + publish_piece(message))  # a PRUNE rides along
    assert not is_single_publish(publish_piece(message) + control_piece(prune))
    assert not is_single_publish(b"")


def test_own_publishes_never_wait_for_a_bulk_turn() -> None:
    queue = PeerQueue(limit=1 << 20)
    assert queue.try_put(b"P" * 5000, tag=b"mine", own=True)
    assert not queue.next_is_bulk(1000)  # written at once, interleaved with the other peers
    assert queue.try_put(b"F" * 5000, tag=b"forward")
    assert queue.take(1 << 20, below=1000) == [b"P" * 5000]
    assert queue.next_is_bulk(1000)  # a forward waits for its turn
