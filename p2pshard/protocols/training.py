"""The DiLoCo round protocol over the network: train, announce, collect, fetch, aggregate, commit.

Rounds follow a schedule every node computes from its own clock (:class:`RoundSchedule`). In
round ``r`` a node

1. trains H inner steps on the shard the manifest assigns to (its peer id, r) — in a worker
   thread, the engine being blocking torch code;
2. serves the compressed pseudo-gradient over the blob protocol and announces it on the
   ``gradients`` topic (round, model hash, content hash, size, tokens, loss, signature);
3. collects announcements until the deadline (:class:`RoundMachine` judges each: too early, too
   late, stale, equivocating... → REJECT or IGNORE with a reason, which gossip scoring uses);
4. fetches the chosen payloads from several providers in parallel, verified by hash and screened
   by the engine (wrong shape, NaN, absurd norm → rejected, counted, and the contributor's
   application score lowered); the round goes on without them;
5. aggregates robustly in contributor order, applies the outer step and records the model hash.

A node whose model hash differs from the stated majority, or which is behind the network (a late
joiner, or one restarted from an older snapshot), loads the current checkpoint from peers:
``/p2pshard/checkpoint/1.0.0`` names it, the blob protocol moves it, the engine verifies it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from google.protobuf.message import Message as ProtoMessage
from libp2p.peer.id import ID

from p2pshard.core import topics as core_topics
from p2pshard.core.gossip import GossipMessage
from p2pshard.core.rounds import (
    Aggregate,
    Announcement,
    Command,
    Commit,
    Fetch,
    Resync,
    RoundConfig,
    RoundMachine,
    RoundSchedule,
    VerdictKind,
)
from p2pshard.core.wire import checkpoint_pb2, topics_pb2
from p2pshard.net.blob import BlobError
from p2pshard.net.reqresp import Code, RpcError
from p2pshard.protocols.checkpoint import (
    checkpoint_spec,
    fetch_checkpoint_info,
    make_schedule,
    schedule_from_pb,
    schedule_to_pb,
)
from p2pshard.protocols.engine_api import Engine

if TYPE_CHECKING:
    from trio_typing import TaskStatus

    from p2pshard.node import Node

log = logging.getLogger(__name__)

GRADIENTS = "gradients"
MAX_CHECKPOINT_BYTES = 4 << 30
REJECTED_PAYLOAD_PENALTY = 50.0
"""Application-score penalty (P5) per payload that failed screening."""


@dataclass(frozen=True)
class TrainingOptions:
    rounds: int = 0
    """Stop after this many rounds (0 = train until stopped)."""
    period_s: float = 12.0
    announce_deadline_s: float = 7.2
    fetch_timeout_s: float = 3.6
    start_delay_s: float = 8.0
    """How long after the first node starts round 0 opens (time for others to join)."""
    snapshot_dir: Path | None = None
    snapshot_interval_s: float = 120.0
    max_payload_bytes: int = 256 << 20


@dataclass
class RoundReport:
    round: int
    model_hash: bytes
    loss: float | None
    tokens: int
    contributors: int
    rejected: dict[str, str]
    seconds: float
    tokens_per_s: float
    bytes_sent: int
    bytes_received: int


Reporter = Callable[[RoundReport], None]


SCHEDULE_WAIT_S = 10.0
"""How long a starting node waits for a peer with a smaller id that has no schedule yet."""
MAX_ANNOUNCEMENTS_PER_ROUND = 1024
ROUNDS_AHEAD = 2
"""Announcements for rounds up to this far ahead of ours are kept (and forwarded), not dropped."""


class Trainer:
    """Runs rounds for one node. Start with ``await nursery.start(trainer.run)``."""

    def __init__(
        self, node: Node, engine: Engine, options: TrainingOptions, report: Reporter | None = None
    ) -> None:
        if node.topics is None:
            raise ValueError("training needs a node with pubsub")
        self.node = node
        self.engine = engine
        self.options = options
        self.report = report or (lambda r: None)
        self.lock = trio.Lock()
        self.schedule: RoundSchedule | None = None
        self.machine: RoundMachine | None = None
        self._seen: dict[int, list[tuple[Announcement, float]]] = {}
        """Every announcement received, by round, with when it arrived (replayed into a new machine)."""
        self._announced: set[int] = set()
        self._queue: list[Command] = []
        self._wake = trio.Event()
        self._own_blobs: dict[int, bytes] = {}
        self._checkpoint_cache: tuple[int, bytes, bytes] | None = None  # (round, model hash, digest)
        self._peer_id = node.peer_id.to_base58()
        self.last_loss: float | None = None
        self.train_seconds = 0.0
        self.tokens = 0
        self.done = trio.Event()

    # -- setup --------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        topics = self.node.topics
        assert topics is not None
        topics.set_hook(GRADIENTS, self._judge_announcement)
        topics.on_message(GRADIENTS, self._on_announcement)
        self.node.register(checkpoint_spec(self._checkpoint_info))
        self.node.status_extensions.append(self._extend_status)
        await self._join_schedule()
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._serve_shards)
            if self.options.snapshot_dir is not None:
                nursery.start_soon(self._snapshot_loop)
            await self._round_loop()
            self.done.set()
            nursery.cancel_scope.cancel()

    async def _join_schedule(self) -> None:
        """Learn the schedule (and catch up) from peers, or start a new one.

        Two nodes that start at the same moment may each find the other without a schedule yet:
        then the one with the larger peer id waits (bounded) for the smaller one to decide."""
        me = self.node.peer_id.to_bytes()
        with trio.move_on_after(SCHEDULE_WAIT_S):
            while self.schedule is None:
                undecided_elders = False
                for peer in self.node.peers():
                    try:
                        info = await fetch_checkpoint_info(self.node.client, peer, timeout_s=10)
                    except RpcError as exc:
                        undecided_elders |= exc.code == Code.UNAVAILABLE and peer.to_bytes() < me
                        continue
                    if self._adopt_schedule(peer, info):
                        break
                if self.schedule is not None or not undecided_elders:
                    break
                await trio.sleep(0.5)
        if self.schedule is None:
            o = self.options
            self.schedule = make_schedule(
                time.time() + o.start_delay_s, o.period_s, o.announce_deadline_s, o.fetch_timeout_s
            )
        behind = self.schedule.round_at(time.time()) - self.engine.round
        if behind > 0:
            await self._resync(None, reason=f"behind by {behind} rounds")

    def _adopt_schedule(self, peer: ID, info: checkpoint_pb2.CheckpointInfo) -> bool:
        if info.network_id != self.engine.network_id:
            log.warning(
                "peer %s trains network %s, not ours (%s)", peer, info.network_id, self.engine.network_id
            )
            return False
        try:
            self.schedule = schedule_from_pb(info.schedule)
        except ValueError as exc:
            self.node.counters.incr("training.rejected.bad_schedule")
            log.warning("peer %s sent a bad schedule: %s", peer, exc)
            return False
        if info.schedule.last_round:
            self.options = dataclasses.replace(self.options, rounds=int(info.schedule.last_round))
        return True

    # -- the round loop ---------------------------------------------------------------------

    async def _round_loop(self) -> None:
        assert self.schedule is not None
        while not self.options.rounds or self.engine.round < self.options.rounds:
            await self._next_round()
        await self._final_agreement()

    async def _final_agreement(self) -> None:
        """After the last round nobody announces again, so a node that ended on a minority model
        (it missed a payload near a deadline) would never hear of it: ask the peers instead."""
        assert self.schedule is not None
        await _sleep_until(self.schedule.fetch_deadline(self.engine.round - 1) + self.schedule.clock_skew)
        infos = await self._peer_checkpoints(want=None)
        same_round = [i for _, i in infos if i.round == self.engine.round]
        votes: dict[bytes, int] = {self.engine.model_hash(): 1}
        for info in same_round:
            votes[bytes(info.model_hash)] = votes.get(bytes(info.model_hash), 0) + 1
        winner, count = max(votes.items(), key=lambda kv: (kv[1], kv[0]))
        if winner != self.engine.model_hash() and count * 2 > sum(votes.values()):
            await self._resync(winner, reason="ended the last round off the majority model")

    async def _next_round(self) -> None:
        assert self.schedule is not None
        r = self.engine.round
        now_round = self.schedule.round_at(time.time())
        if now_round > r:  # we fell behind (slow round, suspended process): catch up
            if await self._resync(None, reason=f"round {r} is over (network is at {now_round})"):
                return
            if self.node.peers():  # peers are still committing round r: ask again shortly
                await trio.sleep(min(1.0, self.schedule.period / 4))
                return
            await self._apply(r, {}, started=time.time())  # alone: skip the missed round
            return
        await self._run_round(r)

    async def _run_round(self, r: int) -> None:
        assert self.schedule is not None
        started = time.time()
        self.machine = machine = RoundMachine(
            r,
            self.schedule,
            self.engine.model_hash(),
            RoundConfig(max_payload_bytes=self.options.max_payload_bytes),
        )
        self._queue.clear()
        for a, seen_at in self._seen.get(r, []):
            machine.announce(a, seen_at)
        payloads: dict[str, bytes] = {}
        resync_to: bytes | None = None
        async with trio.open_nursery() as nursery:
            # Train now (the model for round r is ready as soon as r-1 committed) and announce once
            # the round opens: nearly the whole period is training time. Training runs beside the
            # loop below, so collection and fetching keep their deadlines however long it takes.
            if self._can_train_in_time(r):
                nursery.start_soon(self._train_and_announce, r)
            else:
                self.node.counters.incr("training.rounds_skipped")
            while machine.committed_hash is None:
                commands, self._queue = self._queue, []
                for cmd in [*commands, *machine.tick(time.time())]:
                    match cmd:
                        case Resync(model_hash=want):
                            resync_to = want  # after this round's tasks have stopped
                            nursery.cancel_scope.cancel()
                        case Fetch(contributions=chosen):
                            self._warn_if_split(machine)
                            nursery.start_soon(self._fetch_all, r, chosen, payloads)
                        case Aggregate(contributors=ready):
                            outcome_hash = await self._apply(r, {c: payloads[c] for c in ready}, started)
                            self._queue.extend(machine.aggregated(outcome_hash))
                        case Commit():
                            pass
                if self._queue:
                    continue
                self._wake = trio.Event()
                with trio.move_on_after(_next_deadline(self.schedule, r, time.time())):
                    await self._wake.wait()
        if resync_to is not None:  # the loaded checkpoint decides what round comes next
            await self._resync(resync_to, reason="majority holds another model")

    def _warn_if_split(self, machine: RoundMachine) -> None:
        """Peers stated several models and none holds a majority: nobody resyncs, so the network
        stays split until stake weights (the ledger) break the tie. Make it visible."""
        tally = machine.votes.tally()
        if len(tally) > 1 and machine.votes.majority() is None:
            self.node.counters.incr("training.no_majority")
            log.warning("round %d: no model holds a majority (%d hashes stated)", machine.round, len(tally))

    def _can_train_in_time(self, r: int) -> bool:
        """Train this round unless we already did, or the last round's training time says we
        would miss the deadline (a late joiner, or a resync mid-round): then only aggregate."""
        assert self.schedule is not None
        if r in self._announced or self.engine.round != r:
            return False
        return time.time() + self.train_seconds < self.schedule.deadline(r)

    async def _train_and_announce(self, r: int) -> None:
        shard_id = self.engine.assigned_shard(self._peer_id, r)
        shard = await self._shard(shard_id)
        began = time.time()
        async with self.lock:
            update = await trio.to_thread.run_sync(self.engine.train_round, r, shard)
        self.train_seconds = time.time() - began
        log.info(
            "round %d: trained %d tokens in %.1fs, loss %.4f",
            r,
            update.tokens,
            self.train_seconds,
            update.loss,
        )
        self.last_loss = update.loss
        self.tokens += update.tokens
        self.node.blobs.store.put_verified(update.content_hash, update.payload, pin=True)
        self._own_blobs[r] = update.content_hash
        for old in [k for k in self._own_blobs if k < r - 2]:
            self.node.blobs.store.remove(self._own_blobs.pop(old))
        ann = topics_pb2.GradientAnnouncement(
            round=r,
            model_hash=update.base_model_hash,
            content_hash=update.content_hash,
            size=update.size,
            tokens=update.tokens,
            loss=update.loss,
            contributor=self.node.peer_id.to_bytes(),
            timestamp_ms=int(time.time() * 1000),
        )
        await _sleep_until(self.schedule.opens_at(r) if self.schedule else 0.0)
        ann.timestamp_ms = int(time.time() * 1000)
        ann.signature = self.node.identity.sign(core_topics.signing_bytes(GRADIENTS, ann))
        self._announced.add(r)
        assert self.machine is not None
        verdict = self.machine.announce(_announcement(ann, self._peer_id), time.time())
        if verdict.kind is not VerdictKind.ACCEPT:
            self.node.counters.incr(f"training.own_update.{verdict.reason}")
            log.warning("round %d: our own update was %s (%s)", r, verdict.kind.value, verdict.reason)
            return
        self._remember(_announcement(ann, self._peer_id), time.time())
        self.node.counters.incr("training.bytes_sent", update.size)
        try:
            assert self.node.topics is not None
            await self.node.topics.publish(GRADIENTS, ann)
        except Exception as exc:  # no peers yet, or queues full: the round goes on locally
            self.node.counters.incr("training.announce_failed")
            log.warning("round %d: announcing failed: %s", r, exc)

    async def _shard(self, shard_id: str) -> bytes:
        """The shard's bytes: from the genesis folder, or fetched from peers and verified by hash."""
        digest = bytes.fromhex(shard_id)
        genesis = self._genesis()
        if genesis is not None:
            with contextlib.suppress(KeyError):
                return bytes(genesis.shard_bytes(shard_id))
        local = self.node.blobs.store.get(digest)
        if local is not None:
            return bytes(local)
        providers = [info.peer_id for info in await self.node.discovery.find_providers("shard", digest)]
        providers += [p for p in self.node.peers() if p not in providers]
        sizes = genesis.manifest.shard_sizes if genesis is not None else {}
        size = int(sizes.get(shard_id, 0)) or self.options.max_payload_bytes
        data = await self.node.blobs.fetch(digest, providers, max_size=size, timeout_s=60)
        self.node.counters.incr("training.shards_fetched")
        return bytes(data)

    def _genesis(self) -> Any:
        """The engine's genesis (manifest + the shards held here), when it exposes one."""
        return getattr(self.engine, "genesis", None)

    async def _serve_shards(self) -> None:
        """Serve the shards we hold over the blob protocol and announce them in the DHT."""
        held = getattr(self._genesis(), "shards", {})
        for shard_id, data in held.items():
            self.node.blobs.store.put_verified(bytes.fromhex(shard_id), data, pin=True)
        for shard_id in held:
            await self.node.discovery.provide("shard", bytes.fromhex(shard_id))

    async def _fetch_all(self, r: int, chosen: tuple[Announcement, ...], payloads: dict[str, bytes]) -> None:
        async with trio.open_nursery() as nursery:
            for a in chosen:
                nursery.start_soon(self._fetch_one, r, a, payloads)

    async def _fetch_one(self, r: int, a: Announcement, payloads: dict[str, bytes]) -> None:
        machine = self.machine
        assert machine is not None and machine.round == r
        if a.contributor == self._peer_id:
            data = self.node.blobs.store.get(a.content_hash)
            if data is None:
                return self._feed(machine.fetch_failed(a.contributor, "own-payload-lost"))
            payloads[a.contributor] = bytes(data)
            return self._feed(machine.fetched(a.contributor, a.content_hash))
        # The contributor first, unless it is gone (killed mid-round): then peers that already
        # fetched its payload serve it, and a dead peer costs nothing but the last place.
        author = ID.from_base58(a.contributor)
        others = [p for p in self.node.peers() if p != author]
        providers = [author, *others] if self.node.connector.is_connected(author) else [*others, author]
        try:
            data = await self.node.blobs.fetch(
                a.content_hash,
                providers,
                max_size=a.size,
                timeout_s=self.options.fetch_timeout_s + self.options.period_s,
            )
            self.node.counters.incr("training.bytes_received", len(data))
        except (BlobError, RpcError, trio.TooSlowError) as exc:
            self.node.counters.incr("training.fetch_failed")
            log.info("round %d: fetching %s's update failed: %s", r, a.contributor[-8:], exc)
            return self._feed(machine.fetch_failed(a.contributor, "fetch-failed"))
        # The blob fetch verified the bytes against content_hash; screening happens once, when
        # the engine applies the round (rejections are penalised in _apply).
        payloads[a.contributor] = bytes(data)
        self._feed(machine.fetched(a.contributor, a.content_hash))

    def _feed(self, commands: list[Command]) -> None:
        """Hand commands from a fetch result to the round loop (fetched() may start aggregation)."""
        self._queue.extend(commands)
        self._wake.set()

    def _penalise(self, contributor: str, reason: str) -> None:
        self.node.counters.incr(f"training.rejected.{reason}")
        log.warning("rejected %s's update: %s", contributor[-8:], reason)
        with contextlib.suppress(ValueError):  # not a peer id: nobody to penalise
            self.node.app_penalties.add(ID.from_base58(contributor).to_bytes(), REJECTED_PAYLOAD_PENALTY)

    async def _apply(self, r: int, payloads: Mapping[str, bytes], started: float) -> bytes:
        async with self.lock:
            outcome = await trio.to_thread.run_sync(self.engine.apply_round, r, dict(payloads))
        for contributor, reason in outcome.rejected.items():
            self._penalise(contributor, reason)
        seconds = time.time() - started
        self.report(
            RoundReport(
                round=r,
                model_hash=outcome.model_hash,
                loss=self.last_loss,
                tokens=self.tokens,
                contributors=len(outcome.accepted),
                rejected=dict(outcome.rejected),
                seconds=seconds,
                tokens_per_s=self.tokens
                / max(1e-9, time.time() - (self.schedule.genesis_time if self.schedule else started)),
                bytes_sent=self.node.counters.get("training.bytes_sent"),
                bytes_received=self.node.counters.get("training.bytes_received"),
            )
        )
        return outcome.model_hash

    # -- announcements ------------------------------------------------------------------------

    def _judge_announcement(
        self, msg: GossipMessage, decoded: ProtoMessage, now_ms: int
    ) -> core_topics.Verdict:
        """The gossip validation hook for ``gradients``: signature, then the round rules."""
        assert isinstance(decoded, topics_pb2.GradientAnnouncement)
        if not core_topics.verify_author(
            decoded.contributor, core_topics.signing_bytes(GRADIENTS, decoded), decoded.signature
        ):
            return core_topics.reject("bad_signature")
        a = _announcement(decoded, ID(decoded.contributor).to_base58())
        now = now_ms / 1000
        machine = self.machine
        current = machine.round if machine is not None else self.engine.round
        if a.round > current:
            return self._judge_early(a, now, current)
        if machine is None:
            return core_topics.ignore("not-training")
        verdict = machine.announce(a, now)
        self._remember(a, now)
        self.node.counters.incr(f"training.announcement.{verdict.kind.value}.{verdict.reason or 'ok'}")
        self._wake.set()
        if verdict.kind is VerdictKind.REJECT:
            return core_topics.reject(verdict.reason)
        if verdict.kind is VerdictKind.IGNORE:
            return core_topics.ignore(verdict.reason)
        return core_topics.ACCEPT

    def _judge_early(self, a: Announcement, now: float, current: int) -> core_topics.Verdict:
        """An announcement for a round after ours (we are still finishing an earlier one): keep
        one per contributor and pass it on, under the rules the round will apply when it opens."""
        if a.round > current + ROUNDS_AHEAD:
            return core_topics.ignore("future-round")
        if self.schedule is not None and now < self.schedule.opens_at(a.round) - self.schedule.clock_skew:
            return core_topics.reject("too-early")
        earlier = [b for b, _ in self._seen.get(a.round, []) if b.contributor == a.contributor]
        if earlier:
            if earlier[0].content_hash == a.content_hash:
                return core_topics.ignore("duplicate")
            return core_topics.reject("equivocation")
        if not self._remember(a, now):
            return core_topics.ignore("future-round")
        return core_topics.ACCEPT

    async def _on_announcement(self, msg: GossipMessage, decoded: ProtoMessage) -> None:
        """Accepted announcements were recorded by the hook already."""

    def _remember(self, a: Announcement, at: float) -> bool:
        bucket = self._seen.setdefault(a.round, [])
        if len(bucket) >= MAX_ANNOUNCEMENTS_PER_ROUND:
            self.node.counters.incr("training.announcements_over_limit")
            return False
        bucket.append((a, at))
        for old in [k for k in self._seen if k < a.round - ROUNDS_AHEAD]:
            del self._seen[old]
        return True

    # -- checkpoints ------------------------------------------------------------------------

    async def _checkpoint_info(self) -> checkpoint_pb2.CheckpointInfo:
        if self.schedule is None:
            raise RpcError(Code.UNAVAILABLE, "this node has not learned the round schedule yet")
        async with self.lock:
            r, model_hash = self.engine.round, self.engine.model_hash()
            cached = self._checkpoint_cache
            if cached is None or cached[0] != r or cached[1] != model_hash:
                data = await trio.to_thread.run_sync(self.engine.checkpoint_bytes)
                digest = hashlib.sha256(data).digest()
                if cached is not None:
                    self.node.blobs.store.remove(cached[2])
                self.node.blobs.store.put_verified(digest, data, pin=True)
                self._checkpoint_cache = cached = (r, model_hash, digest)
        stored = self.node.blobs.store.get(cached[2])
        return checkpoint_pb2.CheckpointInfo(
            network_id=self.engine.network_id,
            round=r,
            model_hash=model_hash,
            digest=cached[2],
            size=len(stored or b""),
            schedule=schedule_to_pb(self.schedule, self.options.rounds),
        )

    async def _resync(self, want: bytes | None, *, reason: str) -> bool:
        """Load the newest checkpoint peers hold (with hash ``want`` when given)."""
        self.node.counters.incr("training.resyncs")
        log.info("resyncing: %s", reason)
        infos = await self._peer_checkpoints(want)
        if not infos:
            return False
        best = max(infos, key=lambda pi: (pi[1].round, _votes(infos, pi[1].model_hash)))[1]
        providers = [p for p, i in infos if i.digest == best.digest]
        if best.round < self.engine.round or (
            best.round == self.engine.round and best.model_hash == self.engine.model_hash()
        ):
            return False
        try:
            data = await self.node.blobs.fetch(
                best.digest, providers, max_size=min(best.size, MAX_CHECKPOINT_BYTES), timeout_s=60
            )
            async with self.lock:
                await trio.to_thread.run_sync(self._load_verified, bytes(data), best)
        except (BlobError, RpcError, ValueError) as exc:
            self.node.counters.incr("training.resync_failed")
            log.warning("resync failed: %s", exc)
            return False
        self.node.counters.incr("training.resynced")
        log.info("resynced to round %d, model %s", self.engine.round, self.engine.model_hash().hex()[:16])
        return True

    def _load_verified(self, data: bytes, info: checkpoint_pb2.CheckpointInfo) -> None:
        """Load a peer's checkpoint, and keep it only if it is what the peer said it is (round and
        model hash); otherwise put our own state back and raise."""
        ours = self.engine.checkpoint_bytes()
        self.engine.load_checkpoint_bytes(data)
        if self.engine.round != info.round or self.engine.model_hash() != info.model_hash:
            self.engine.load_checkpoint_bytes(ours)
            self.node.counters.incr("training.rejected.checkpoint_mismatch")
            raise ValueError("the checkpoint served is not the one its info describes")

    async def _peer_checkpoints(self, want: bytes | None) -> list[tuple[ID, checkpoint_pb2.CheckpointInfo]]:
        """Connected peers' checkpoint infos for our network (with model hash ``want`` if given)."""
        infos: list[tuple[ID, checkpoint_pb2.CheckpointInfo]] = []
        for peer in self.node.peers():
            try:
                info = await fetch_checkpoint_info(self.node.client, peer, timeout_s=15)
            except RpcError:
                continue
            if info.network_id == self.engine.network_id and (want is None or info.model_hash == want):
                infos.append((peer, info))
        return infos

    async def _snapshot_loop(self) -> None:
        from p2pshard.engine.checkpoint import HotSnapshots

        assert self.options.snapshot_dir is not None
        snaps = HotSnapshots(self.options.snapshot_dir, self.options.snapshot_interval_s)
        while True:
            await trio.sleep(1.0)
            now = time.time()
            if snaps.due(now):
                async with self.lock:
                    r = self.engine.round
                    data = await trio.to_thread.run_sync(self.engine.checkpoint_bytes)
                await trio.to_thread.run_sync(snaps.write, now, r, data)
                self.node.counters.incr("training.snapshots")

    def _extend_status(self, resp: Any) -> None:
        resp.training.round = self.engine.round
        resp.training.loss = self.last_loss or 0.0
        resp.training.model_hash = self.engine.model_hash()
        resp.training.tokens = self.tokens


def _announcement(ann: topics_pb2.GradientAnnouncement, contributor: str) -> Announcement:
    return Announcement(
        round=ann.round,
        contributor=contributor,
        model_hash=bytes(ann.model_hash),
        content_hash=bytes(ann.content_hash),
        size=ann.size,
        tokens=ann.tokens,
        loss=float(ann.loss),
    )


def _votes(infos: list[tuple[ID, checkpoint_pb2.CheckpointInfo]], model_hash: bytes) -> int:
    return sum(1 for _, i in infos if i.model_hash == model_hash)


def _next_deadline(s: RoundSchedule, r: int, now: float) -> float:
    for t in (s.opens_at(r), s.deadline(r) + s.clock_skew, s.fetch_deadline(r)):
        if t > now:
            return min(t - now + 0.01, 1.0)
    return 0.25


async def _sleep_until(t: float) -> None:
    delay = t - time.time()
    if delay > 0 and math.isfinite(delay):
        await trio.sleep(delay)
