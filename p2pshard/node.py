"""A p2pshard node: the host, its protocols and its background tasks, in one nursery.

``open_node(config)`` is the embedding API. It starts listening, registers the stream protocols,
starts discovery, joins through the configured bootstrap peers and yields a :class:`Node`. Leaving
the block cancels every task and closes the host; nothing of py-libp2p's shutdown noise escapes.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
from libp2p.abc import IHost, INetConn, IPeerStore
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.peer.peerstore import PeerStoreError

import p2pshard
from p2pshard.config import NodeConfig
from p2pshard.core import topics as core_topics
from p2pshard.core.connmgr import ConnMgrConfig
from p2pshard.core.counters import Counters
from p2pshard.core.gossip import (
    GossipConfig,
    GossipRouter,
    PeerScoreParams,
    PeerScoreThresholds,
    Secp256k1Signer,
    TopicScoreParams,
)
from p2pshard.core.resources import ResourceLimits, ResourceManager
from p2pshard.core.rounds import Timing
from p2pshard.core.wire import status_pb2
from p2pshard.identity import Identity
from p2pshard.net import patches
from p2pshard.net.blob import BlobService, BlobStore
from p2pshard.net.connector import Connector
from p2pshard.net.connmgr import ConnManager
from p2pshard.net.discovery import Discovery
from p2pshard.net.host import build_host, full_addrs, parse_multiaddr, parse_peer_addr
from p2pshard.net.limits import HandshakeLimits, NetLimits, machine_limits
from p2pshard.net.pubsub import PubSub, PubSubConfig
from p2pshard.net.reqresp import ProtocolSpec, ReqRespClient, ReqRespServer
from p2pshard.protocols.engine_api import Engine
from p2pshard.protocols.status import status_spec
from p2pshard.protocols.topics import Topics
from p2pshard.protocols.training import RoundReport, Trainer, TrainingOptions

log = logging.getLogger(__name__)

AGENT = f"p2pshard/{p2pshard.__version__}"

StatusExtension = Callable[[status_pb2.StatusResponse], None]

VIOLATION_PENALTY = 100.0
"""Application score (gossip P5) taken from a peer that broke a transport rule (e.g. sent past its
yamux window): enough to reach the gossip threshold, halving every ``AppPenalties.half_life_s``."""


class AppPenalties:
    """Application-level penalties (gossip score P5), e.g. for a pseudo-gradient that failed
    screening. A penalty halves every ``half_life_s`` so a peer can recover."""

    def __init__(self, half_life_s: float = 300.0) -> None:
        self.half_life_s = half_life_s
        self._penalties: dict[bytes, tuple[float, float]] = {}

    def add(self, peer: bytes, amount: float) -> None:
        self._penalties[peer] = (self._current(peer) + amount, time.monotonic())

    def _current(self, peer: bytes) -> float:
        amount, since = self._penalties.get(peer, (0.0, 0.0))
        return amount * 0.5 ** ((time.monotonic() - since) / self.half_life_s) if amount else 0.0

    def score(self, peer: bytes) -> float:
        return -self._current(peer)


class JoinError(Exception):
    """None of the bootstrap peers could be reached."""


@dataclass
class Node:
    config: NodeConfig
    identity: Identity
    host: IHost
    nursery: trio.Nursery
    counters: Counters
    connector: Connector
    server: ReqRespServer
    client: ReqRespClient
    blobs: BlobService
    discovery: Discovery
    pubsub: PubSub | None
    topics: Topics | None
    started_at: float
    app_penalties: AppPenalties = field(default_factory=AppPenalties)
    trainer: Trainer | None = None
    round_listeners: list[Callable[[RoundReport], None]] = field(default_factory=list)
    status_extensions: list[StatusExtension] = field(default_factory=list)
    limits: NetLimits | None = None
    """The host's resource limits (what status reports as ``resources``)."""
    connmgr: ConnManager | None = None
    """Closes connections above the high watermark and Sybils of one IP (not in client-only nodes)."""

    @property
    def peer_id(self) -> ID:
        return self.host.get_id()

    @property
    def addrs(self) -> list[str]:
        """Full multiaddrs (ending in /p2p/<peer id>) other nodes can join through."""
        return full_addrs(self.host)

    def peers(self) -> list[ID]:
        return sorted(self.connector.connected_peers(), key=lambda p: p.to_bytes())

    def report_round(self, report: RoundReport) -> None:
        for listener in self.round_listeners:
            listener(report)

    def register(self, spec: ProtocolSpec) -> None:
        self.server.register(spec)

    def protocols(self) -> list[str]:
        return sorted(str(p) for p in self.host.get_mux().get_protocols() if p)

    def _peer_addrs(self, store: IPeerStore, peer: ID) -> list[str]:
        """A connected peer's addresses: the peerstore's, else those of our connections to it (a
        peer that connected to us without listening, or whose record expired, has none stored)."""
        try:
            return [str(a) for a in store.addrs(peer)]
        except PeerStoreError:
            conns = self.host.get_network().connections.get(peer) or []
            return [str(a) for conn in conns for a in _transport_addrs(conn)]

    def status(self, requester: ID | None = None) -> status_pb2.StatusResponse:
        """This node's status; ``requester`` (the asking peer) is left out of the peer list."""
        store = self.host.get_peerstore()
        resp = status_pb2.StatusResponse(
            peer_id=self.peer_id.to_base58(),
            version=p2pshard.__version__,
            agent=AGENT,
            protocols=self.protocols(),
            listen_addrs=self.addrs,
            uptime_s=trio.current_time() - self.started_at,
            network_id=self.config.network_id,
        )
        for peer in self.peers():
            if peer == requester:
                continue
            resp.peers.add(peer_id=peer.to_base58(), addrs=self._peer_addrs(store, peer))
        for name, count in self.counters.snapshot().items():
            resp.counters[name] = count
        if self.limits is not None:
            for resource, (used, limit) in self.limits.resources.usage().items():
                resp.resources.add(resource=resource, used=max(used, 0), limit=limit)
        if self.pubsub is not None:
            for topic, size in self.pubsub.mesh_sizes().items():
                resp.mesh.add(topic=topic, mesh_peers=size)
            for peer_id, score in self.pubsub.scores().items():
                resp.scores.add(peer_id=peer_id, score=score)
        for extend in self.status_extensions:
            extend(resp)
        return resp


@asynccontextmanager
async def open_node(
    config: NodeConfig, *, identity: Identity | None = None, client_only: bool = False
) -> AsyncIterator[Node]:
    """Start a node, join the network through ``config.bootstrap``, and stop it on exit.

    ``client_only`` starts no discovery and joins no DHT: for tools that only ask questions
    (``p2pshard status``, ``p2pshard conformance live``).
    """
    if identity is None:
        identity = Identity.load_or_create(config.key)[0] if config.key else Identity.generate()
    engine: Engine | None = None
    if config.train and not client_only:
        engine = await trio.to_thread.run_sync(make_engine, config, identity.peer_id.to_base58())
        config = dataclasses.replace(config, network_id=engine.network_id)
    listen = [parse_multiaddr(a) for a in config.listen]
    bootstrap = [parse_peer_addr(a) for a in config.bootstrap]
    counters = Counters()
    resources = ResourceManager(_resource_limits(config))
    limits = NetLimits(
        counters, resources=resources, handshakes=HandshakeLimits(timeout_s=config.handshake_timeout_s)
    )
    host = build_host(
        identity,
        listen,
        muxers=config.muxers,  # type: ignore[arg-type]
        dial_timeout=config.dial_timeout_s,
        max_peers=config.max_peers,
        limits=limits,
    )
    connector = Connector(host, counters, dial_timeout_s=config.dial_timeout_s)
    client = ReqRespClient(connector, counters)
    server = ReqRespServer(
        host, counters, request_timeout_s=config.request_timeout_s, peer_share=config.request_peer_share
    )
    discovery = Discovery(
        host, identity, connector, counters, max_peers=config.max_peers, rng=random.Random()
    )
    if not client_only:
        connector.resolver = discovery.find_peer
    _count_failed_negotiations(host, counters)
    try:
        async with host.run(listen), trio.open_nursery() as nursery:
            penalties = AppPenalties()
            limits.on_violation = lambda peer, _reason: penalties.add(peer.to_bytes(), VIOLATION_PENALTY)
            pubsub = (
                None if client_only else _make_pubsub(config, identity, host, connector, counters, penalties)
            )
            node = Node(
                config=config,
                identity=identity,
                host=host,
                nursery=nursery,
                counters=counters,
                connector=connector,
                server=server,
                client=client,
                blobs=BlobService(BlobStore(config.blob_store_bytes), client, counters),
                discovery=discovery,
                pubsub=pubsub,
                topics=None if pubsub is None else Topics(pubsub, config.network_id, counters),
                started_at=trio.current_time(),
                app_penalties=penalties,
                limits=limits,
            )
            server.register(status_spec(node.status))
            server.register(node.blobs.spec())
            if pubsub is not None and node.topics is not None:
                await nursery.start(pubsub.run)
                await nursery.start(node.topics.run)
            if not client_only:
                await nursery.start(discovery.run)
                node.connmgr = _make_connmgr(config, host, counters, pubsub, bootstrap)
                client.activity = server.activity = node.connmgr  # transfers protect, answers count
                await nursery.start(node.connmgr.run)
            if bootstrap and not client_only:
                errors = await discovery.bootstrap(bootstrap)
                if len(errors) == len(bootstrap):
                    raise JoinError("could not reach any bootstrap peer: " + "; ".join(errors))
            if engine is not None:
                node.trainer = Trainer(
                    node,
                    engine,
                    training_options(config),
                    report=node.report_round,
                    write_snapshot=snapshot_writer(config),
                )
                await nursery.start(node.trainer.run)
            try:
                yield node
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        rest = group.subgroup(lambda e: not _is_shutdown_noise(e))
        if rest is None:
            return
        leaves = _leaves(rest)
        if len(leaves) == 1:
            raise leaves[0] from None
        raise rest from None


def _transport_addrs(conn: INetConn) -> list[Any]:
    try:
        return list(conn.get_transport_addresses())
    except Exception:  # a connection closing under us has no addresses left
        return []


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


def make_engine(config: NodeConfig, peer_id: str) -> Engine:
    """The torch engine ``config`` asks for (blocking: imports torch and builds the model)."""
    from p2pshard.engine import Genesis, TorchEngine, default_genesis
    from p2pshard.engine.aggregation import AggregationConfig
    from p2pshard.engine.compression import DEFAULT, named
    from p2pshard.engine.engine import diloco_for

    genesis = Genesis.load(config.genesis) if config.genesis else default_genesis()
    compression = named(config.compression) if config.compression else DEFAULT
    overrides: dict[str, Any] = {
        "compression": compression,
        "diloco": diloco_for(config.preset, compression, inner_steps=config.inner_steps),
        "node_salt": peer_id.encode(),
    }
    if config.aggregation:
        overrides["aggregation"] = AggregationConfig(rule=config.aggregation)
        if compression.sparse and config.aggregation in ("krum", "median", "trimmed_mean"):
            log.warning(
                "%s with sparse %s updates trains slowly: unsent coordinates count as zeros "
                "(krum applies one node's few per round); mean, multi_krum or centered_clip suit it",
                config.aggregation,
                compression.kind,
            )
    engine = TorchEngine.create(config.preset, genesis=genesis, **overrides)
    if config.snapshot_dir is not None:
        from p2pshard.engine.checkpoint import HotSnapshots

        latest = HotSnapshots(config.snapshot_dir).latest()
        if latest is not None:
            engine.load_checkpoint(latest)
            log.info("restored round %d from snapshot %s", engine.round, latest)
    return engine


def training_options(config: NodeConfig) -> TrainingOptions:
    period = config.round_s
    timing = Timing(
        period_s=period,
        announce_deadline_s=period * 0.6,
        fetch_timeout_s=period * 0.3,
        start_delay_s=max(8.0, period * 1.5),  # time for the other nodes to start and join
        snapshot_interval_s=config.snapshot_interval_s if config.snapshot_dir is not None else None,
    )
    return TrainingOptions(timing=timing, rounds=config.rounds)


def snapshot_writer(config: NodeConfig) -> Callable[[int, bytes], object] | None:
    """Hot snapshots into ``config.snapshot_dir`` (None: the node keeps none)."""
    if config.snapshot_dir is None:
        return None
    from p2pshard.engine.checkpoint import HotSnapshots

    return HotSnapshots(config.snapshot_dir).write


def _make_pubsub(
    config: NodeConfig,
    identity: Identity,
    host: IHost,
    connector: Connector,
    counters: Counters,
    penalties: AppPenalties,
) -> PubSub:
    """Our router with peer scoring on for the network's topics (py-libp2p ships it off)."""
    topic_params = TopicScoreParams(
        invalid_message_deliveries_weight=core_topics.INVALID_MESSAGE_WEIGHT,
        invalid_message_deliveries_decay=core_topics.INVALID_MESSAGE_DECAY,
    )
    topics = {core_topics.topic_name(config.network_id, name): topic_params for name in core_topics.TOPICS}
    gossip_config = GossipConfig.build(
        message_id_fn=core_topics.message_id,
        score_params=PeerScoreParams(topics=topics, app_specific_score=penalties.score),
        score_thresholds=PeerScoreThresholds(
            gossip_threshold=core_topics.GOSSIP_THRESHOLD,
            publish_threshold=core_topics.PUBLISH_THRESHOLD,
            graylist_threshold=core_topics.GRAYLIST_THRESHOLD,
        ),
        heartbeat_interval=config.gossip_heartbeat_s,
    )
    signer = Secp256k1Signer(bytes(identity.private_key.to_bytes()))
    router = GossipRouter(host.get_id().to_bytes(), gossip_config, rng=random.Random(), signer=signer)
    return PubSub(host, connector, router, counters, PubSubConfig(router=gossip_config))


def _is_shutdown_noise(exc: BaseException) -> bool:
    """py-libp2p raises "Nursery is closed to new arrivals" from tasks it spawns while closing."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_shutdown_noise(e) for e in exc.exceptions)
    return isinstance(exc, RuntimeError) and "Nursery is closed" in str(exc)


def _make_connmgr(
    config: NodeConfig, host: IHost, counters: Counters, pubsub: PubSub | None, bootstrap: list[PeerInfo]
) -> ConnManager:
    """The connection manager, protecting our gossip mesh peers and, for a while, the bootstrap peers."""
    low = config.conn_low_water or config.max_peers
    high = config.conn_high_water or max(2 * config.max_peers, low)
    mesh_peers = None
    if pubsub is not None:
        router = pubsub.router

        def mesh_peers() -> set[bytes]:
            return {p for topic in router.subscriptions for p in router.mesh_peers(topic)}

    return ConnManager(
        host,
        counters,
        ConnMgrConfig(
            low_water=low,
            high_water=high,
            grace_s=config.conn_grace_s,
            bootstrap_grace_s=config.bootstrap_grace_s,
        ),
        scores=pubsub.scores if pubsub is not None else None,
        mesh_peers=mesh_peers,
        bootstrap=frozenset(info.peer_id for info in bootstrap),
    )


def _resource_limits(config: NodeConfig) -> ResourceLimits:
    """Limits sized to this machine, with those the configuration sets (non-zero) in their place."""
    return machine_limits().overridden(
        conns_inbound=config.max_inbound_connections,
        conns_outbound=config.max_outbound_connections,
        conns_per_ip=config.max_connections_per_ip,
        conns_per_subnet=config.max_connections_per_subnet,
        streams_per_conn=config.max_streams_per_connection,
        memory=config.max_memory_bytes,
        fds=config.max_fds,
        handshakes=config.max_pending_handshakes,
        handshakes_per_ip=config.max_pending_handshakes_per_ip,
    )


def _count_failed_negotiations(host: IHost, counters: Counters) -> None:
    """Count inbound streams whose protocol negotiation failed (unknown protocol ids included)."""
    patches.count_failed_negotiations(host, lambda: counters.incr("reqresp.rejected.negotiation_failed"))
