"""The trio driver of the round protocol: it carries out commands and feeds results back.

Every decision of a round (when to train, which announcements count, whom to fetch, when to
aggregate, when to resync or snapshot, when to stop) is made by
:class:`~p2pshard.core.rounds.RoundProtocol`, a sans-IO state machine. This driver reads the time
from a :class:`~p2pshard.net.clock.NetworkClock` (trio's clock, so MockClock drives it), sleeps
until the protocol's next wakeup or the next event, and carries each command out with
:class:`~p2pshard.protocols.round_io.RoundIO`. Engine work goes through one
:class:`~p2pshard.protocols.engine_runner.EngineRunner`, in the order the protocol asked for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio
from google.protobuf.message import Message as ProtoMessage
from libp2p.peer.id import ID

from p2pshard.core.gossip import GossipMessage, Verdict
from p2pshard.core.rounds import RoundConfig, RoundProtocol
from p2pshard.core.rounds import commands as c
from p2pshard.core.rounds.machine import Announcement
from p2pshard.core.wire import checkpoint_pb2
from p2pshard.net.blob import BlobError
from p2pshard.net.clock import NetworkClock
from p2pshard.net.reqresp import Code, RpcError
from p2pshard.protocols.checkpoint import checkpoint_spec
from p2pshard.protocols.engine_api import Engine, RoundOutcome
from p2pshard.protocols.engine_runner import EngineRunner, Job
from p2pshard.protocols.round_io import (
    GRADIENTS,
    NodeServices,
    RoundIO,
    RoundReport,
    RunSync,
    SnapshotWriter,
    TrainingOptions,
)

if TYPE_CHECKING:
    from trio_typing import TaskStatus

__all__ = ["RoundReport", "Trainer", "TrainingOptions"]

_EVENT_QUEUE = 256
Event = Callable[[float], list[c.Command]]
"""A result for the protocol: called with the time it is handled, returns the protocol's commands."""
FAILURES = (BlobError, RpcError, ValueError, trio.TooSlowError)


class Trainer:
    """Runs rounds for one node. Start with ``await nursery.start(trainer.run)``."""

    def __init__(
        self,
        node: NodeServices,
        engine: Engine,
        options: TrainingOptions,
        report: Callable[[RoundReport], None] | None = None,
        write_snapshot: SnapshotWriter | None = None,
        run_sync: RunSync = trio.to_thread.run_sync,
    ) -> None:
        if node.topics is None:
            raise ValueError("training needs a node with pubsub")
        self.node, self.engine, self.options = node, engine, options
        self.report = report or (lambda r: None)
        self.write_snapshot, self.run_sync = write_snapshot, run_sync
        self.proto = RoundProtocol(
            node.peer_id.to_base58(), options.timing, options.rounds,
            RoundConfig(max_payload_bytes=options.max_payload_bytes),
        )  # fmt: skip
        self.runner = EngineRunner()
        self.done = trio.Event()
        self._payloads: dict[tuple[int, str], bytes] = {}
        self._updates: dict[int, c.Trained] = {}

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.clock = NetworkClock()
        opts = self.options
        self.io = RoundIO(
            self.node, self.engine, self.clock, opts.max_payload_bytes, self.write_snapshot, self.run_sync
        )
        self._events, events = trio.open_memory_channel[Event](_EVENT_QUEUE)
        assert self.node.topics is not None
        self.node.topics.set_hook(GRADIENTS, self._judge)
        self.node.register(checkpoint_spec(self._checkpoint_info))
        self.node.status_extensions.append(self.io.extend_status)
        self.node.blobs.on_served = self._served
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            await nursery.start(self.runner.run)
            nursery.start_soon(self.io.serve_shards)
            commands = self.proto.start(self.clock.now(), self.engine.round, self.engine.model_hash())
            task_status.started()
            while not self.done.is_set():
                for cmd in commands:
                    self._carry_out(cmd)
                commands = []
                wakeup = self.proto.wakeup()  # + 1 ms: trio's clock and ours round differently
                with trio.move_on_at(math.inf if wakeup is None else self.clock.trio_time(wakeup) + 1e-3):
                    commands = (await events.receive())(self.clock.now())
                commands += self.proto.tick(self.clock.now())
            nursery.cancel_scope.cancel()

    def _carry_out(self, cmd: c.Command) -> None:
        """Start carrying out one command. Engine work is queued here, synchronously, so that
        the engine sees it in the protocol's order; the waiting happens in a task."""
        proto, spawn, submit = self.proto, self.nursery.start_soon, self.runner.submit
        match cmd:
            case c.AskCheckpoints(ask=ask):
                spawn(self._ask, ask)
            case c.Train(round=r):
                job = submit(lambda: self.io.train(r))
                spawn(
                    self._await, job, self._trained, lambda why: lambda now: proto.train_failed(now, r, why)
                )
            case c.Announce(round=r):
                spawn(self.io.publish, self.io.announcement(r, self._updates.pop(r)))
            case c.Fetch(round=r, contributions=chosen):
                for a in chosen:
                    spawn(self._fetch, r, a)
            case c.Aggregate(round=r, contributors=ready):
                payloads = {who: self._payloads.pop((r, who)) for who in ready}
                self._payloads = {k: v for k, v in self._payloads.items() if k[0] > r}
                spawn(self._await, submit(lambda: self.io.apply(r, payloads)), self._aggregated, None)
            case c.Commit():
                self.report(self.io.report(cmd, proto.schedule.genesis_time if proto.schedule else 0.0))
            case c.LoadCheckpoint():
                loaded = self._loaded(cmd)
                failed = lambda why: lambda now: proto.load_failed(now, why)  # noqa: E731
                spawn(self._await, submit(lambda: self.io.load(cmd)), loaded, failed)
            case c.Snapshot(round=r):
                spawn(self._await, submit(lambda: self.io.snapshot(r)), None, None)
            case c.Penalise(peer=peer, reason=reason):
                self.io.penalise(peer, reason)
            case c.Skipped():
                self.io.skip(cmd)
            case c.Finished():
                self.done.set()

    async def _await(
        self, job: Job[Any], then: Callable[[Any], Event] | None, failed: Callable[[str], Event] | None
    ) -> None:
        """Await an engine job and feed ``then(result)`` back, or ``failed(why)``. A job given no
        failure event must not fail (that is a local bug): its error propagates."""
        try:
            result = await job.result()
        except FAILURES as exc:
            if failed is None:
                raise
            await self._events.send(failed(str(exc)))
            return
        if then is not None:
            await self._events.send(then(result))

    def _trained(self, update: c.Trained) -> Event:
        self._updates[update.round] = update
        return lambda now: self.proto.trained(now, update)

    def _loaded(self, cmd: c.LoadCheckpoint) -> Callable[[None], Event]:
        return lambda _: lambda now: self.proto.loaded(now, cmd.round, cmd.model_hash)

    def _aggregated(self, outcome: RoundOutcome) -> Event:
        return lambda now: self.proto.aggregated(now, outcome.round, outcome.model_hash, outcome.rejected)

    async def _ask(self, ask: int) -> None:
        got = await self.io.ask_checkpoints()
        await self._events.send(
            lambda now: self.proto.checkpoints(now, ask, got.checkpoints, got.undecided_elders)
        )

    async def _fetch(self, r: int, a: Announcement) -> None:
        schedule = self.proto.schedule
        assert schedule is not None
        data = await self.io.fetch_by(a, schedule.fetch_deadline(r) + schedule.clock_skew, schedule)
        if data is None:
            await self._events.send(
                lambda now: self.proto.fetch_failed(now, r, a.contributor, "fetch_failed")
            )
            return
        self._payloads[(r, a.contributor)] = data
        await self._events.send(lambda now: self.proto.fetched(now, r, a.contributor, a.content_hash))

    def _served(self, digest: bytes, peer: ID) -> None:
        """A peer fetched our own update: it counts it (the protocol weighs whether most did)."""
        if (r := self.io.own_round(digest)) is not None:
            self.nursery.start_soon(self._events.send, lambda now: self.proto.taken(now, r, peer.to_base58()))

    def _judge(self, msg: GossipMessage, decoded: ProtoMessage, now_ms: int) -> Verdict:
        """The gossip validation hook for ``gradients`` (judged on our clock, not ``now_ms``)."""
        return self.io.judge(decoded, self.clock.now(), self.proto.announcement)

    async def _checkpoint_info(self) -> checkpoint_pb2.CheckpointInfo:
        schedule = self.proto.schedule
        if schedule is None:
            raise RpcError(Code.UNAVAILABLE, "this node has not learned the round schedule yet")
        return await self.runner.call(lambda: self.io.checkpoint_info(schedule, self.proto.rounds))
