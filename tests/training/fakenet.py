"""Nodes without sockets, for driving the real training driver on trio's MockClock.

A :class:`FakeNode` offers what :class:`~p2pshard.protocols.round_io.NodeServices` asks for, backed
by in-memory stand-ins that take virtual time: gossip delivers a signed announcement to every
other live node's validation hook after ``delay``, the blob fetch copies (and verifies) a payload
from the first live provider that holds it, and a request/response call runs the target node's
registered handler. Killing a node cancels its trainer and makes it unreachable; engine work runs
inline, its training taking ``train_s(round)`` virtual seconds, so that every run is deterministic
under ``MockClock(autojump_threshold=0)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio
from google.protobuf.message import Message as ProtoMessage
from libp2p.peer.id import ID

from p2pshard.core import topics as core_topics
from p2pshard.core.counters import Counters
from p2pshard.core.gossip import GossipMessage
from p2pshard.identity import Identity
from p2pshard.net.blob import BlobError, BlobStore
from p2pshard.net.reqresp import Code, ProtocolSpec, RequestContext, RpcError
from p2pshard.node import AppPenalties
from p2pshard.protocols.training import RoundReport, Trainer, TrainingOptions
from tests.training.fake_engine import FakeEngine

NETWORK = "fake"


class FakeNet:
    def __init__(self, nursery: trio.Nursery, delay: float = 0.05) -> None:
        self.nursery = nursery
        self.delay = delay
        self.nodes: dict[ID, FakeNode] = {}
        self.blocked: set[frozenset[ID]] = set()  # pairs of nodes that cannot reach each other

    def reachable(self, a: ID, b: ID) -> bool:
        node = self.nodes.get(b)
        return node is not None and node.alive and frozenset((a, b)) not in self.blocked

    async def add(
        self,
        options: TrainingOptions,
        fault: str = "",
        train_s: Callable[[int], float] = lambda r: 1.0,
        engine: FakeEngine | None = None,
    ) -> FakeNode:
        node = FakeNode(self, Identity.generate())
        self.nodes[node.peer_id] = node
        node.engine = engine or FakeEngine(node.peer_id.to_base58(), fault)
        node.start(options, train_s)
        await node.started.wait()
        return node


class FakeNode:
    def __init__(self, net: FakeNet, identity: Identity) -> None:
        self.net = net
        self.identity = identity
        self.counters = Counters()
        self.app_penalties = AppPenalties()
        self.status_extensions: list[Callable[[Any], None]] = []
        self.specs: dict[str, ProtocolSpec] = {}
        self.blobs = _Blobs(self)
        self.client = _Client(self)
        self.connector = _Connector(self)
        self.discovery = _Discovery()
        self.topics: _Topics | None = _Topics(self)
        self.reports: list[RoundReport] = []
        self.alive = True
        self.started = trio.Event()
        self.engine: FakeEngine
        self.trainer: Trainer
        self._scope = trio.CancelScope()

    @property
    def peer_id(self) -> ID:
        return self.identity.peer_id

    def peers(self) -> list[ID]:
        others = [p for p in self.net.nodes if p != self.peer_id and self.net.reachable(self.peer_id, p)]
        return sorted(others, key=lambda p: p.to_bytes())

    def register(self, spec: ProtocolSpec) -> None:
        self.specs[spec.protocol_id] = spec

    def start(self, options: TrainingOptions, train_s: Callable[[int], float]) -> None:
        async def run_sync(fn: Callable[..., Any], *args: Any) -> Any:
            if getattr(fn, "__name__", "") == "train_round":
                await trio.sleep(train_s(args[0]))
            return fn(*args)

        self.trainer = Trainer(self, self.engine, options, report=self.reports.append, run_sync=run_sync)

        async def run() -> None:
            with self._scope:
                await self.net.nursery.start(self.trainer.run)
                self.started.set()
                await trio.sleep_forever()

        self.net.nursery.start_soon(run)

    def kill(self) -> None:
        self.alive = False
        self._scope.cancel()  # the trainer, its engine runner and its tasks end here

    def contributed(self) -> list[int]:
        return [r.round for r in self.reports if r.contributed]


class _Blobs:
    def __init__(self, node: FakeNode) -> None:
        self.node = node
        self.store = BlobStore()
        self.on_served: Callable[[bytes, ID], None] | None = None
        self.serves: Callable[[bytes], bool] = lambda digest: True  # a test may hide a blob from peers

    async def fetch(
        self, digest: bytes, providers: Sequence[ID], *, max_size: int, timeout_s: float
    ) -> bytes:
        local = self.store.get(digest)
        if local is not None:
            return bytes(local)
        with trio.fail_after(timeout_s):
            for p in providers:
                if not self.node.net.reachable(self.node.peer_id, p):
                    continue
                await trio.sleep(self.node.net.delay)
                provider = self.node.net.nodes[p].blobs
                data = provider.store.get(digest) if provider.serves(digest) else None
                if data is None or len(data) > max_size or hashlib.sha256(data).digest() != digest:
                    continue
                if provider.on_served is not None:
                    provider.on_served(digest, self.node.peer_id)
                self.store.put_verified(digest, bytes(data))
                return bytes(data)
        raise BlobError(f"no provider holds {digest.hex()[:12]}")


class _Client:
    def __init__(self, node: FakeNode) -> None:
        self.node = node

    async def call(
        self, peer: ID, protocol_id: str, body: bytes, *, timeout_s: float, max_response_size: int
    ) -> bytes:
        if not self.node.net.reachable(self.node.peer_id, peer):
            raise RpcError(Code.UNAVAILABLE, "peer unreachable")
        with trio.fail_after(timeout_s):
            await trio.sleep(self.node.net.delay)
            spec = self.node.net.nodes[peer].specs[protocol_id]
            reply = await spec.handler(RequestContext(self.node.peer_id, protocol_id, timeout_s), body)
            return reply.body


class _Connector:
    def __init__(self, node: FakeNode) -> None:
        self.node = node

    def is_connected(self, peer: ID) -> bool:
        return self.node.net.reachable(self.node.peer_id, peer)


class _Discovery:
    async def find_providers(self, kind: str, digest: bytes) -> list[Any]:
        return []

    async def provide(self, kind: str, digest: bytes) -> bool:
        return True


class _Topics:
    def __init__(self, node: FakeNode) -> None:
        self.node = node
        self.hooks: dict[str, core_topics.Hook] = {}
        self.delay: Callable[[ID], float] = lambda peer: node.net.delay

    def set_hook(self, short: str, hook: core_topics.Hook) -> None:
        self.hooks[short] = hook

    async def publish(self, short: str, message: ProtoMessage) -> bytes:
        topic = core_topics.topic_name(NETWORK, short)
        msg = GossipMessage(topic, message.SerializeToString(), source=self.node.peer_id.to_bytes())
        for peer in self.node.peers():
            self.node.net.nursery.start_soon(self._deliver, peer, short, msg)
        return core_topics.message_id(msg)

    async def _deliver(self, peer: ID, short: str, msg: GossipMessage) -> None:
        await trio.sleep(self.delay(peer))
        target = self.node.net.nodes[peer]
        if not self.node.net.reachable(self.node.peer_id, peer) or target.topics is None:
            return
        hook = target.topics.hooks.get(short)
        now_ms = int(target.trainer.clock.now() * 1000)
        verdict = core_topics.validate(msg, NETWORK, now_ms, hook)
        target.counters.incr(f"topics.{verdict.result.name.lower()}.{verdict.reason}")


@asynccontextmanager
async def fake_network(delay: float = 0.05) -> AsyncIterator[FakeNet]:
    async with trio.open_nursery() as nursery:
        yield FakeNet(nursery, delay)
        nursery.cancel_scope.cancel()
