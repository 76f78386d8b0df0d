"""What the round protocol's commands do on a real node: the I/O half of the training driver.

:class:`RoundIO` carries out one command at a time for :class:`~p2pshard.protocols.training.Trainer`
and returns what the protocol needs to hear: it trains (fetching the assigned shard first), signs
and publishes announcements, fetches payloads over the blob protocol, asks peers for their
checkpoint infos and loads a checkpoint, writes snapshots, and serves this node's checkpoint.
It decides nothing: every rule lives in :mod:`p2pshard.core.rounds`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio
from google.protobuf.message import Message as ProtoMessage
from libp2p.peer.id import ID

from p2pshard.core import topics as core_topics
from p2pshard.core.counters import Counters
from p2pshard.core.gossip import Verdict, reject
from p2pshard.core.rounds import (
    Announcement,
    Commit,
    LoadCheckpoint,
    PeerCheckpoint,
    ScheduleOffer,
    Skipped,
    Timing,
    Trained,
)
from p2pshard.core.rounds.schedule import RoundSchedule
from p2pshard.core.wire import checkpoint_pb2, topics_pb2
from p2pshard.identity import Identity
from p2pshard.net.blob import BlobError, BlobService
from p2pshard.net.clock import NetworkClock
from p2pshard.net.connector import Connector
from p2pshard.net.discovery import Discovery
from p2pshard.net.reqresp import Code, ProtocolSpec, ReqRespClient, RpcError
from p2pshard.protocols.checkpoint import fetch_checkpoint_info, schedule_to_pb
from p2pshard.protocols.engine_api import Engine, RoundOutcome
from p2pshard.protocols.topics import Topics

log = logging.getLogger(__name__)

GRADIENTS = "gradients"
MAX_CHECKPOINT_BYTES = 4 << 30
ASK_TIMEOUT_S = 10.0
CHECKPOINT_FETCH_TIMEOUT_S = 60.0
SHARD_FETCH_TIMEOUT_S = 60.0
REJECTED_PAYLOAD_PENALTY = 50.0
"""Application-score penalty (P5) per payload that failed screening."""
OWN_PAYLOADS_KEPT = 3
"""Our own payloads stay served for this many rounds (slow peers fetch them late)."""


class NodeServices(Protocol):
    """The parts of a node the training driver uses (a :class:`p2pshard.node.Node` has them)."""

    identity: Identity
    counters: Counters
    blobs: BlobService
    client: ReqRespClient
    connector: Connector
    discovery: Discovery
    topics: Topics | None
    status_extensions: list[Callable[[Any], None]]

    @property
    def peer_id(self) -> ID: ...

    @property
    def app_penalties(self) -> Penalties: ...

    def peers(self) -> list[ID]: ...

    def register(self, spec: ProtocolSpec) -> None: ...


class Penalties(Protocol):
    def add(self, peer: bytes, amount: float) -> None: ...


RunSync = Callable[..., Awaitable[Any]]
"""Runs a blocking engine call: ``trio.to_thread.run_sync`` (tests may run it inline)."""
SnapshotWriter = Callable[[int, bytes], Any]
"""Writes a snapshot: (next round to train, checkpoint bytes)."""


@dataclass(frozen=True)
class TrainingOptions:
    timing: Timing = field(default_factory=Timing)
    rounds: int = 0
    """Stop after this many rounds (0 = train until stopped)."""
    max_payload_bytes: int = 256 << 20


@dataclass(frozen=True)
class RoundReport:
    round: int
    model_hash: bytes
    loss: float | None
    tokens: int
    contributors: int
    contributed: bool  # our own update went into this round's aggregate
    rejected: dict[str, str]
    tokens_per_s: float
    bytes_sent: int
    bytes_received: int


@dataclass(frozen=True)
class Answers:
    checkpoints: list[PeerCheckpoint]
    undecided_elders: bool


class RoundIO:
    def __init__(
        self,
        node: NodeServices,
        engine: Engine,
        clock: NetworkClock,
        max_payload_bytes: int,
        write_snapshot: SnapshotWriter | None = None,
        run_sync: RunSync = trio.to_thread.run_sync,
    ) -> None:
        self.node = node
        self.run_sync = run_sync
        self.engine = engine
        self.clock = clock
        self.max_payload_bytes = max_payload_bytes
        self.write_snapshot = write_snapshot
        self.me = node.peer_id.to_base58()
        self._own: dict[int, bytes] = {}  # round -> content hash of our payload
        self._served: tuple[int, bytes, bytes] | None = None  # (round, model hash, digest)
        self.last_loss: float | None = None
        self.tokens = 0
        self.skipped: dict[int, str] = {}  # round -> why we did not contribute

    # -- training and announcing -------------------------------------------------------------

    async def train(self, r: int) -> Trained:
        shard = await self._shard(self.engine.assigned_shard(self.me, r))
        began = trio.current_time()
        update = await self.run_sync(self.engine.train_round, r, shard)
        seconds = trio.current_time() - began
        store = self.node.blobs.store
        store.put_verified(update.content_hash, update.payload, pin=True)
        self._own[r] = update.content_hash
        for old in [k for k in self._own if k <= r - OWN_PAYLOADS_KEPT]:
            store.remove(self._own.pop(old))
        log.info("round %d: trained %d tokens in %.1fs, loss %.4f", r, update.tokens, seconds, update.loss)
        self.last_loss = update.loss
        self.tokens += update.tokens
        return Trained(
            r, update.base_model_hash, update.content_hash, update.size, update.tokens, update.loss, seconds
        )

    def own_round(self, digest: bytes) -> int | None:
        """The round of our own payload named ``digest`` (None: not one of ours)."""
        return next((r for r, d in self._own.items() if d == digest), None)

    def announcement(self, r: int, trained: Trained) -> topics_pb2.GradientAnnouncement:
        ann = topics_pb2.GradientAnnouncement(
            round=r,
            model_hash=trained.base_model_hash,
            content_hash=trained.content_hash,
            size=trained.size,
            tokens=trained.tokens,
            loss=trained.loss,
            contributor=self.node.peer_id.to_bytes(),
            timestamp_ms=int(self.clock.now() * 1000),
        )
        ann.signature = self.node.identity.sign(core_topics.signing_bytes(GRADIENTS, ann))
        return ann

    def judge(
        self, decoded: ProtoMessage, now: float, rules: Callable[[Announcement, float], Verdict]
    ) -> Verdict:
        """A ``gradients`` message: its signature, then ``rules`` (the round protocol's table)."""
        assert isinstance(decoded, topics_pb2.GradientAnnouncement)
        if not core_topics.verify_author(
            decoded.contributor, core_topics.signing_bytes(GRADIENTS, decoded), decoded.signature
        ):
            verdict = reject("bad_signature")
        else:
            a = Announcement(
                decoded.round, ID(decoded.contributor).to_base58(), bytes(decoded.model_hash),
                bytes(decoded.content_hash), decoded.size, decoded.tokens, float(decoded.loss),
            )  # fmt: skip
            verdict = rules(a, now)
        self.node.counters.incr(f"training.announcement.{verdict.result.value}.{verdict.reason}")
        return verdict

    async def publish(self, ann: topics_pb2.GradientAnnouncement) -> None:
        self.node.counters.incr("training.bytes_sent", ann.size)
        try:
            assert self.node.topics is not None
            await self.node.topics.publish(GRADIENTS, ann)
        except Exception as exc:  # no peers yet, or queues full: the round goes on locally
            self.node.counters.incr("training.announce_failed")
            log.warning("round %d: announcing failed: %s", ann.round, exc)

    async def _shard(self, shard_id: str) -> bytes:
        """The shard's bytes: from the genesis folder, or fetched from peers and verified by hash."""
        digest = bytes.fromhex(shard_id)
        genesis = getattr(self.engine, "genesis", None)
        if genesis is not None:
            with contextlib.suppress(KeyError):
                return bytes(genesis.shard_bytes(shard_id))
        local = self.node.blobs.store.get(digest)
        if local is not None:
            return bytes(local)
        providers = [info.peer_id for info in await self.node.discovery.find_providers("shard", digest)]
        providers += [p for p in self.node.peers() if p not in providers]
        sizes = genesis.manifest.shard_sizes if genesis is not None else {}
        size = int(sizes.get(shard_id, 0)) or self.max_payload_bytes
        data = await self.node.blobs.fetch(digest, providers, max_size=size, timeout_s=SHARD_FETCH_TIMEOUT_S)
        self.node.counters.incr("training.shards_fetched")
        return bytes(data)

    async def serve_shards(self) -> None:
        """Serve the shards we hold over the blob protocol and announce them in the DHT."""
        held = getattr(getattr(self.engine, "genesis", None), "shards", {})
        for shard_id, data in held.items():
            self.node.blobs.store.put_verified(bytes.fromhex(shard_id), data, pin=True)
        for shard_id in held:
            await self.node.discovery.provide("shard", bytes.fromhex(shard_id))

    # -- payloads ------------------------------------------------------------------------------

    async def fetch(self, a: Announcement, timeout_s: float) -> bytes:
        """A contributor's payload, verified against its content hash (raises BlobError/RpcError)."""
        if a.contributor == self.me:
            data = self.node.blobs.store.get(a.content_hash)
            if data is None:
                raise BlobError("own payload no longer stored")
            return bytes(data)
        # The contributor first, unless it is gone (killed mid-round): then peers that already
        # fetched its payload serve it, and a dead peer costs nothing but the last place.
        author = ID.from_base58(a.contributor)
        others = [p for p in self.node.peers() if p != author]
        providers = [author, *others] if self.node.connector.is_connected(author) else [*others, author]
        data = await self.node.blobs.fetch(a.content_hash, providers, max_size=a.size, timeout_s=timeout_s)
        self.node.counters.incr("training.bytes_received", len(data))
        return bytes(data)

    async def fetch_by(self, a: Announcement, deadline: float, schedule: RoundSchedule) -> bytes | None:
        """:meth:`fetch`, given up at network time ``deadline``: None when it failed (counted)."""
        try:
            with trio.fail_at(self.clock.trio_time(deadline)):
                return await self.fetch(a, timeout_s=schedule.fetch_timeout + schedule.period)
        except (BlobError, RpcError, trio.TooSlowError) as exc:
            self.node.counters.incr("training.fetch_failed")
            log.info("round %d: fetching %s's update failed: %s", a.round, a.contributor[-8:], exc)
            return None

    async def apply(self, r: int, payloads: dict[str, bytes]) -> RoundOutcome:
        outcome: RoundOutcome = await self.run_sync(self.engine.apply_round, r, payloads)
        return outcome

    # -- checkpoints ---------------------------------------------------------------------------

    async def ask_checkpoints(self) -> Answers:
        """Every connected peer's checkpoint info, asked in parallel (each bounded)."""
        me = self.node.peer_id.to_bytes()
        answers: list[PeerCheckpoint] = []
        undecided = False

        async def ask(peer: ID) -> None:
            nonlocal undecided
            try:
                info = await fetch_checkpoint_info(self.node.client, peer, timeout_s=ASK_TIMEOUT_S)
            except RpcError as exc:
                undecided |= exc.code == Code.UNAVAILABLE and peer.to_bytes() < me
                return
            answers.append(self._peer_checkpoint(peer, info))

        async with trio.open_nursery() as nursery:
            for peer in self.node.peers():
                nursery.start_soon(ask, peer)
        return Answers(sorted(answers, key=lambda a: a.peer), undecided)

    def _peer_checkpoint(self, peer: ID, info: checkpoint_pb2.CheckpointInfo) -> PeerCheckpoint:
        same = info.network_id == self.engine.network_id
        if not same:
            log.warning(
                "peer %s trains network %s, not ours (%s)", peer, info.network_id, self.engine.network_id
            )
        s = info.schedule
        offer = (
            ScheduleOffer(s.genesis_time, s.period_s, s.announce_deadline_s, s.fetch_timeout_s, s.last_round)
            if info.HasField("schedule")
            else None
        )
        return PeerCheckpoint(
            peer.to_base58(), same, info.round, bytes(info.model_hash), bytes(info.digest), info.size, offer
        )

    async def load(self, cmd: LoadCheckpoint) -> None:
        """Fetch and load the checkpoint ``cmd`` names; raises if it fails or is not what the
        providers said it is (our own state is then put back)."""
        providers = [ID.from_base58(p) for p in cmd.providers]
        data = await self.node.blobs.fetch(
            cmd.digest,
            providers,
            max_size=min(cmd.size, MAX_CHECKPOINT_BYTES),
            timeout_s=CHECKPOINT_FETCH_TIMEOUT_S,
        )
        await self.run_sync(self._load_verified, bytes(data), cmd)

    def _load_verified(self, data: bytes, cmd: LoadCheckpoint) -> None:
        """Load, and keep it only if it is what the providers said; whatever goes wrong (a bad
        checkpoint may fail half-way through loading), our own state is put back."""
        ours = self.engine.checkpoint_bytes()
        try:
            self.engine.load_checkpoint_bytes(data)
            if self.engine.round != cmd.round or self.engine.model_hash() != cmd.model_hash:
                self.node.counters.incr("training.rejected.checkpoint_mismatch")
                raise ValueError("the checkpoint served is not the one its info describes")
        except Exception:
            self.engine.load_checkpoint_bytes(ours)
            raise

    async def snapshot(self, r: int) -> None:
        if self.write_snapshot is not None:
            data = await self.run_sync(self.engine.checkpoint_bytes)
            await self.run_sync(self.write_snapshot, r, data)
            self.node.counters.incr("training.snapshots")

    async def checkpoint_info(
        self, schedule: RoundSchedule, last_round: int
    ) -> checkpoint_pb2.CheckpointInfo:
        """This node's checkpoint, its bytes kept in the blob store while it is current (run it on
        the engine runner: it reads the engine)."""
        r, model_hash = self.engine.round, self.engine.model_hash()
        served = self._served
        if served is None or served[:2] != (r, model_hash):
            data = await self.run_sync(self.engine.checkpoint_bytes)
            digest = hashlib.sha256(data).digest()
            if served is not None:
                self.node.blobs.store.remove(served[2])
            self.node.blobs.store.put_verified(digest, data, pin=True)
            self._served = served = (r, model_hash, digest)
        stored = self.node.blobs.store.get(served[2])
        return checkpoint_pb2.CheckpointInfo(
            network_id=self.engine.network_id,
            round=r,
            model_hash=model_hash,
            digest=served[2],
            size=len(stored or b""),
            schedule=schedule_to_pb(schedule, last_round),
        )

    # -- reports -------------------------------------------------------------------------------

    def penalise(self, contributor: str, reason: str) -> None:
        self.node.counters.incr(f"training.rejected.{reason}")
        log.warning("rejected %s's update: %s", contributor[-8:], reason)
        with contextlib.suppress(ValueError):  # not a peer id: nobody to penalise
            self.node.app_penalties.add(ID.from_base58(contributor).to_bytes(), REJECTED_PAYLOAD_PENALTY)

    def skip(self, cmd: Skipped) -> None:
        self.skipped[cmd.round] = cmd.reason
        self.node.counters.incr(f"training.skipped.{cmd.reason}")
        log.warning("round %d: not contributing (%s): %s", cmd.round, cmd.reason, cmd.detail)

    def report(self, commit: Commit, genesis_time: float) -> RoundReport:
        return RoundReport(
            round=commit.round,
            model_hash=commit.model_hash,
            loss=self.last_loss,
            tokens=self.tokens,
            contributors=len(commit.contributors),
            contributed=commit.contributed,
            rejected=dict(commit.rejected),
            tokens_per_s=self.tokens / max(1e-9, self.clock.now() - genesis_time),
            bytes_sent=self.node.counters.get("training.bytes_sent"),
            bytes_received=self.node.counters.get("training.bytes_received"),
        )

    def extend_status(self, resp: Any) -> None:
        resp.training.round = self.engine.round
        resp.training.loss = self.last_loss or 0.0
        resp.training.model_hash = self.engine.model_hash()
        resp.training.tokens = self.tokens
