"""A p2pshard node: the host, its protocols and its background tasks, in one nursery.

``open_node(config)`` is the embedding API. It starts listening (and says so at once through
``on_event``), joins through the configured bootstrap peers while the training engine is built,
registers the stream protocols, starts discovery and yields a :class:`Node`. Leaving the block
cancels every task and closes the host; nothing of py-libp2p's shutdown noise escapes.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
import time
import typing
from collections.abc import AsyncIterator, Callable, Sequence
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
from p2pshard.events import EventCallback, NodeEvent
from p2pshard.identity import Identity
from p2pshard.net import patches
from p2pshard.net.blob import BlobService, BlobStore, Buffer
from p2pshard.net.connector import Connector, DialError
from p2pshard.net.connmgr import ConnManager
from p2pshard.net.discovery import Discovery
from p2pshard.net.host import build_host, full_addrs, parse_multiaddr, parse_peer_addr
from p2pshard.net.limits import HandshakeLimits, NetLimits, machine_limits
from p2pshard.net.pubsub import EarlyStreams, PubSub, PubSubConfig
from p2pshard.net.reqresp import ProtocolSpec, ReqRespClient, ReqRespServer
from p2pshard.protocols.engine_api import Engine
from p2pshard.protocols.pipeline import (
    PROVIDER_KIND,
    Chain,
    ChainError,
    PipelineServer,
    SessionLimits,
    StageBackend,
    announce,
    providers_digest,
)
from p2pshard.protocols.status import fetch_status, status_spec
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
    """None of the bootstrap peers could be reached (the message names each one's reason)."""


class ListenError(OSError):
    """A listen address could not be bound (the port is taken, or the address is not this machine's)."""


class ConnectError(Exception):
    """A peer could not be reached; the message names the peer once and each address's reason."""


BOOTSTRAP_NOTICE_S = 10.0
"""While no bootstrap peer has answered, say so every this many seconds (and keep trying)."""


@dataclass
class Node:
    """A running p2pshard node: its host, protocols, gossip, DHT and (when training) its trainer.

    Get one from :func:`open_node`; it stops when the ``async with`` block ends::

        import trio
        from p2pshard import NodeConfig, open_node

        async def main() -> None:
            async with open_node(NodeConfig(listen=["/ip4/127.0.0.1/tcp/0"])) as a:
                async with open_node(NodeConfig()) as b:
                    await b.connect(a.addrs[0])          # a full /ip4/…/tcp/…/p2p/… address
                    digest = a.put_blob(b"hello" * 1000)  # content-addressed, served to peers
                    data = await b.fetch_blob(digest, [a.peer_id], max_size=1 << 20)
                    assert data == b"hello" * 1000
                    print(b.status().peers)

        trio.run(main)

    Useful members: :attr:`addrs` (addresses to give other nodes), :meth:`peers`,
    :meth:`connect`, :meth:`put_blob` / :meth:`fetch_blob`, :meth:`status` (what ``p2pshard
    status`` shows), :attr:`counters` (every event counted by name), :attr:`trainer` (None unless
    ``config.train``), :attr:`round_listeners` (called with each committed round's report) and
    :meth:`write_snapshot`. The other fields are the node's parts, for protocol work: ``host``
    (py-libp2p), ``server``/``client`` (request/response), ``blobs``, ``discovery`` (DHT),
    ``pubsub`` and ``topics`` (gossip; None in a client-only node).
    """

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
    on_event: EventCallback | None = None
    """Called with each :class:`~p2pshard.events.NodeEvent` (``open_node``'s ``on_event``)."""
    dashboard_url: str | None = None
    """Where ``config.metrics`` serves the dashboard (``…/metrics`` for Prometheus); None if unset."""
    pipeline: PipelineServer | None = None
    """The layer range this node serves for pipeline inference (:meth:`serve_stage`); None if none."""

    @property
    def peer_id(self) -> ID:
        """This node's peer id (``16Uiu2…``: its secp256k1 key)."""
        return self.host.get_id()

    @property
    def addrs(self) -> list[str]:
        """Full multiaddrs (ending in /p2p/<peer id>) other nodes can join through."""
        return full_addrs(self.host)

    def peers(self) -> list[ID]:
        """Peers connected now, in a stable order."""
        return sorted(self.connector.connected_peers(), key=lambda p: p.to_bytes())

    async def connect(self, addr: str | PeerInfo) -> ID:
        """Connect to a peer given by its full multiaddr (``/ip4/…/tcp/…/p2p/<peer id>``) and
        return its peer id. Raises :class:`ConnectError` naming each address's reason (or
        :class:`~p2pshard.net.host.AddressError` for an address without its /p2p/ part)."""
        info = parse_peer_addr(addr) if isinstance(addr, str) else addr
        await connect_or_explain(self.connector, info)
        return info.peer_id

    def put_blob(self, data: bytes, *, pin: bool = False) -> bytes:
        """Store ``data`` as a content-addressed blob, served to peers that ask for it; returns
        its SHA-256 digest (give it to a peer to :meth:`fetch_blob`). ``pin`` keeps it from
        being evicted when the store (``config.blob_store_bytes``) is full."""
        return self.blobs.store.put(data, pin=pin)

    async def fetch_blob(
        self,
        digest: bytes,
        providers: Sequence[ID] | None = None,
        *,
        max_size: int,
        timeout_s: float = 120.0,
    ) -> bytes:
        """The blob named ``digest`` (from our own store, else fetched in parallel ranges from
        ``providers`` — default: every connected peer — and verified against the digest).
        Refuses blobs larger than ``max_size``. Raises ``p2pshard.net.blob.BlobError`` or
        ``p2pshard.net.reqresp.RpcError`` when no provider serves it."""
        data: Buffer = await self.blobs.fetch(
            digest, list(providers) if providers is not None else self.peers(), max_size=max_size,
            timeout_s=timeout_s,
        )  # fmt: skip
        return bytes(data)

    def emit(self, kind: str, text: str, **fields: Any) -> None:
        """Report a step to ``on_event`` (see :mod:`p2pshard.events`)."""
        if self.on_event is not None:
            self.on_event(NodeEvent(kind, text, fields))

    async def write_snapshot(self) -> str | None:
        """Write a snapshot of the model now (into ``config.snapshot_dir``), after the engine
        work in progress; returns its path, or None when the node keeps no snapshots."""
        writer = snapshot_writer(self.config)
        if writer is None or self.trainer is None:
            return None
        engine = self.trainer.engine

        def write() -> str:
            return str(writer(engine.round, engine.checkpoint_bytes()))

        path: str = await self.trainer.runner.call(lambda: trio.to_thread.run_sync(write))
        return path

    def report_round(self, report: RoundReport) -> None:
        for listener in self.round_listeners:
            listener(report)

    def register(self, spec: ProtocolSpec) -> None:
        """Serve a request/response protocol (see :class:`~p2pshard.net.reqresp.ProtocolSpec`)."""
        self.server.register(spec)

    def serve_stage(self, backend: StageBackend, limits: SessionLimits | None = None) -> PipelineServer:
        """Serve a layer range for pipeline inference (specs/pipeline.md): ``backend`` is e.g.
        ``p2pshard.engine.inference.StageExecutor(PRESETS["tiny"], LayerRange(0, 3))``;
        ``limits`` bound its KV-cache sessions. ``config.serve_layers`` does this at start."""
        pipeline = PipelineServer(backend, self.counters, limits)
        for spec in pipeline.specs():
            self.server.register(spec)
        self.pipeline = pipeline
        if self.connmgr is not None:  # not a client-only node: it is in the DHT
            self.nursery.start_soon(
                announce, self.discovery, self.config.network_id, self.counters, lambda: len(self.peers())
            )
        return pipeline

    async def chain(self, peers: Sequence[ID | str] = (), timeout_s: float = 30.0) -> Chain:
        """A chain of servers covering a whole model, from ``peers`` (ids of connected peers, or
        full multiaddrs to connect to; those given first are preferred) and, in a node that is in
        the DHT, the servers of this network found there. Run it with
        ``await chain.generate(prompt_tokens, max_new_tokens)`` or ``await chain.forward(tokens)``.
        Raises :class:`~p2pshard.core.pipeline.ChainError` naming the uncovered layers."""
        ids = [p if isinstance(p, ID) else await self.connect(p) for p in peers]
        if self.connmgr is not None:
            for info in await self.find_servers():
                if info.peer_id not in ids:
                    ids.append(info.peer_id)
        if not ids:
            raise ChainError("no server given, and none of this network found in the DHT")
        return await Chain.discover(self.client, ids, timeout_s)

    async def find_servers(self) -> list[PeerInfo]:
        """Servers of layer ranges of this network, found in the DHT (connected, in no order)."""
        digest = providers_digest(self.config.network_id)
        found = []
        for info in await self.discovery.find_providers(PROVIDER_KIND, digest):
            try:
                await connect_or_explain(self.connector, info)
            except ConnectError as exc:
                log.info("pipeline server %s unreachable: %s", info.peer_id, exc)
                continue
            found.append(info)
        return found

    def protocols(self) -> list[str]:
        """Every protocol id this node answers."""
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
    config: NodeConfig,
    *,
    identity: Identity | None = None,
    client_only: bool = False,
    on_event: EventCallback | None = None,
) -> AsyncIterator[Node]:
    """Start a node, join the network through ``config.bootstrap``, and stop it on exit.

    The node listens first and reports its addresses at once (``on_event`` gets a ``listening``
    event within a fraction of a second); then it dials the bootstrap peers while the training
    engine (``config.train``) is built, and reports each step (see :mod:`p2pshard.events`).
    Raises :class:`ListenError` when it cannot listen, :class:`JoinError` when no bootstrap
    peer answers within ``config.bootstrap_timeout_s``.

    ``client_only`` starts no discovery and joins no DHT: for tools that only ask questions
    (``p2pshard status``, ``p2pshard conformance live``).
    """
    _quiet_normal_closes()
    if config.data_dir is not None:
        config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if identity is None:
        identity = Identity.load_or_create(config.key)[0] if config.key else Identity.generate()
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
    early_pubsub = None if client_only else EarlyStreams(host, counters)
    _check_free(config.listen)

    def emit(kind: str, text: str, **fields: Any) -> None:
        if on_event is not None:
            on_event(NodeEvent(kind, text, fields))

    try:
        async with host.run(listen), trio.open_nursery() as nursery:
            addrs = _check_listening(host, config.listen)
            pid = host.get_id().to_base58()
            emit(
                "listening",
                f"p2pshard node {pid} listening on:\n  " + "\n  ".join(addrs),
                peer_id=pid,
                addrs=addrs,
            )
            built: list[Engine] = []
            engine_ready = trio.Event()
            if config.train and not client_only:
                nursery.start_soon(_build_engine, config, pid, built, engine_ready)
            else:
                engine_ready.set()
            if not client_only:
                await nursery.start(discovery.run)
            if bootstrap and not client_only:
                await _join(discovery, connector, bootstrap, config.bootstrap_timeout_s, emit)
            await engine_ready.wait()
            engine = built[0] if built else None
            if engine is not None:
                config = dataclasses.replace(config, network_id=engine.network_id)
                emit(
                    "engine_ready",
                    f"model ready: preset {config.preset}, round {engine.round}, network {engine.network_id}",
                    network_id=engine.network_id,
                    preset=config.preset,
                    round=engine.round,
                    model_hash=engine.model_hash().hex(),
                )
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
                on_event=on_event,
            )
            server.register(status_spec(node.status))
            server.register(node.blobs.spec())
            if pubsub is not None and node.topics is not None:
                await nursery.start(pubsub.run)
                await nursery.start(node.topics.run)
                assert early_pubsub is not None
                early_pubsub.hand_to(pubsub)
            if not client_only:
                node.connmgr = _make_connmgr(config, host, counters, pubsub, bootstrap)
                client.activity = server.activity = node.connmgr  # transfers protect, answers count
                await nursery.start(node.connmgr.run)
            if config.serve_layers and not client_only:
                stage = await trio.to_thread.run_sync(  # type: ignore[call-arg]
                    make_stage, config, abandon_on_cancel=True
                )
                spec = node.serve_stage(stage).spec
                emit(
                    "serving",
                    f"serving layers {spec.layer_start}:{spec.layer_end} of {spec.total_layers} "
                    f"({config.preset}, model {spec.model_id})",
                    layers=[spec.layer_start, spec.layer_end],
                    model_id=spec.model_id,
                )
            if engine is not None:
                node.trainer = Trainer(
                    node,
                    engine,
                    training_options(config),
                    report=node.report_round,
                    write_snapshot=snapshot_writer(config),
                )
                await nursery.start(node.trainer.run)
                if bootstrap:
                    nursery.start_soon(_check_network, node, bootstrap)
            if config.metrics and not client_only:
                node.dashboard_url = await _serve_metrics(node, config.metrics)
                emit(
                    "metrics",
                    f"dashboard: {node.dashboard_url}  metrics: {node.dashboard_url}metrics",
                    url=node.dashboard_url,
                    metrics=f"{node.dashboard_url}metrics",
                )
            if on_event is not None and not client_only:
                from p2pshard.progress import watch_progress

                nursery.start_soon(watch_progress, node)
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


async def _serve_metrics(node: Node, address: str) -> str:
    from p2pshard.observe.server import serve

    try:
        url: str = await node.nursery.start(serve, node, address)
    except OSError as exc:
        raise ListenError(f"cannot serve metrics on {address}: {exc.strerror or exc}") from exc
    return url


async def _build_engine(config: NodeConfig, peer_id: str, built: list[Engine], ready: trio.Event) -> None:
    # abandoned on cancel: Ctrl-C while torch loads stops the node at once, not after the build
    engine = await trio.to_thread.run_sync(  # type: ignore[call-arg]  # trio-typing predates the name
        make_engine, config, peer_id, abandon_on_cancel=True
    )
    built.append(engine)
    ready.set()


def _check_free(wanted: list[str]) -> None:
    """Raise ListenError if a fixed listen port cannot be ours. py-libp2p binds with
    SO_REUSEPORT, so a second node on a port already taken by a node would share it silently
    (the kernel splitting connections between the two), and a port held by another program only
    leaves an empty address list; a plain bind says which."""
    for text in wanted:
        reason = _bind_reason(text)
        if reason is not None:
            raise ListenError(f"cannot listen on {text}: {reason}")


def _check_listening(host: IHost, wanted: list[str]) -> list[str]:
    """The addresses we listen on; raises ListenError if there are none (py-libp2p only logs a
    failed listen, and the node would run on unreachable)."""
    addrs = full_addrs(host)
    if not addrs:
        raise ListenError(f"cannot listen on {', '.join(wanted)}: the address could not be bound")
    return addrs


def _bind_reason(text: str) -> str | None:
    """Why the TCP listen address ``text`` cannot be bound (None: it can, or it is not a fixed
    /ip4|ip6/<address>/tcp/<port> address; port 0 always can)."""
    import errno
    import socket

    parts = text.strip("/").split("/")
    if len(parts) < 4 or parts[0] not in ("ip4", "ip6") or parts[2] != "tcp" or parts[3] == "0":
        return None
    family = socket.AF_INET6 if parts[0] == "ip6" else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no conflict
            sock.bind((parts[1], int(parts[3])))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return "the port is already in use (another node or program); choose another --listen port"
        if exc.errno == errno.EADDRNOTAVAIL:
            return "that address is not one of this machine's"
        return exc.strerror or str(exc)
    except ValueError:
        return None
    return None


async def connect_or_explain(connector: Connector, info: PeerInfo) -> None:
    """``connector.connect(info)``, raising ConnectError that names the peer once and the reason
    each address gave (py-libp2p's own message repeats the peer id and ends in "(with
    exceptions)" without naming them)."""
    try:
        await connector.connect(info)
    except DialError as exc:
        raise ConnectError(f"cannot connect to {info.peer_id}: {dial_reasons(exc)}") from exc


def dial_reasons(exc: BaseException) -> str:
    """The distinct root causes of a failed dial, e.g. ``127.0.0.1:1: connection refused``."""
    reasons: list[str] = []

    def roots(e: BaseException) -> list[BaseException]:
        if isinstance(e, BaseExceptionGroup):
            return [r for sub in e.exceptions for r in roots(sub)]
        errors = getattr(e, "errors", None)  # py-libp2p's MultiError
        if isinstance(errors, list | tuple) and errors:
            return [r for sub in errors for r in roots(sub)]
        cause = e.__cause__ or e.__context__
        return roots(cause) if cause is not None else [e]

    for root in roots(exc):
        text = str(root) or type(root).__name__
        if isinstance(root, OSError) and root.strerror:
            text = root.strerror
            where = re.match(r"Error connecting to \('([^']*)', (\d+)\): (.*)", text)
            if where:
                text = f"{where[1]}:{where[2]}: {where[3].lower()}"
        if text not in reasons:
            reasons.append(text)
    return "; ".join(reasons) if reasons else str(exc)


async def _join(
    discovery: Discovery,
    connector: Connector,
    bootstrap: list[PeerInfo],
    timeout_s: float,
    emit: Callable[..., None],
) -> None:
    """Dial the bootstrap peers until one answers (saying so every BOOTSTRAP_NOTICE_S), then
    join the DHT through those that did; JoinError after ``timeout_s``."""
    began = trio.current_time()
    next_notice = began + BOOTSTRAP_NOTICE_S
    wait = 0.5
    errors: dict[str, str] = {}  # peer -> the first real reason it gave
    while True:
        reached: list[PeerInfo] = []
        for info in bootstrap:
            peer = str(info.peer_id)
            addr = "/".join(str(a) for a in info.addrs[:1]) + f"/p2p/{peer}"
            if peer not in errors:
                emit("bootstrap_dial", f"dialling {addr}", addr=addr, peer_id=peer)
            dial_began = trio.current_time()
            try:
                await connect_or_explain(connector, info)
            except ConnectError as exc:
                # a retry that only meets our own dial backoff (or py-libp2p's negative cache)
                # says nothing new: keep the reason the peer itself gave
                repeat = "dial backoff" in str(exc) or "negative cache" in str(exc)
                if peer not in errors and not repeat:
                    errors[peer] = str(exc)
                    emit("bootstrap_failed", str(exc), peer_id=peer, reason=str(exc))
                continue
            reached.append(info)
            ms = (trio.current_time() - dial_began) * 1000
            emit("bootstrap_connected", f"connected to {peer} in {ms:.0f} ms", peer_id=peer, ms=round(ms, 1))
        if reached:
            with trio.move_on_after(max(timeout_s, 10.0)):
                await discovery.bootstrap(reached)  # into the DHT, then one lookup of our own id
            return
        now = trio.current_time()
        if now - began >= timeout_s:
            raise JoinError(
                f"could not reach any bootstrap peer in {timeout_s:.0f} s: " + "; ".join(errors.values())
            )
        if now >= next_notice:
            waited = now - began
            emit(
                "waiting",
                f"no bootstrap peer answered in {waited:.0f} s, still trying; is the address right?",
                waited_s=round(waited, 1),
                errors=list(errors.values()),
            )
            next_notice = now + BOOTSTRAP_NOTICE_S
        await trio.sleep_until(min(now + wait, next_notice, began + timeout_s))
        wait = min(wait * 2, 4.0)


async def _check_network(node: Node, bootstrap: list[PeerInfo]) -> None:
    """Ask the bootstrap peers which network they train, and say whether it is ours."""
    for info in bootstrap:
        if not node.connector.is_connected(info.peer_id):
            continue
        try:
            status = await fetch_status(node.client, info.peer_id, timeout_s=5.0)
        except Exception as exc:  # RpcError, a peer gone, a stream reset: not a verdict
            log.info("no status from %s: %s", info.peer_id, exc)
            continue
        ours = node.config.network_id
        if status.network_id == ours:
            node.emit(
                "network",
                f"network id {ours} agreed with {info.peer_id}",
                network_id=ours,
                agreed=True,
                peer_id=str(info.peer_id),
            )
        else:
            node.emit(
                "network",
                f"peer {info.peer_id} trains network {status.network_id}, not ours ({ours}): "
                "the genesis, --preset, --inner-steps, --compression and --aggregation must match",
                network_id=ours,
                agreed=False,
                theirs=status.network_id,
                peer_id=str(info.peer_id),
            )
        return


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


def make_stage(config: NodeConfig) -> StageBackend:
    """The layer range ``config.serve_layers`` of the ``config.preset`` model (blocking: torch)."""
    from p2pshard.config import ConfigError, layer_range
    from p2pshard.engine.inference import StageExecutor
    from p2pshard.engine.model import PRESETS, LayerRange

    start, end = layer_range(config.serve_layers)
    cfg = PRESETS[config.preset]
    if end > cfg.n_stages_layers:
        raise ConfigError(
            f"serve_layers: {config.preset} has {cfg.n_stages_layers} layers (embedding, "
            f"{cfg.n_layers} blocks, head: 0:{cfg.n_stages_layers} is the whole model), not {start}:{end}"
        )
    return StageExecutor(cfg, LayerRange(start, end))


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


def _quiet_normal_closes() -> None:
    """py-libp2p logs normal events as problems, which embedders would see: its DHT a WARNING
    ``Failed to read DHT message from stream: `` (an empty reason) each time a peer closes a DHT
    stream (and ``Failed to parse protobuf message: `` when it closes mid-message), its host and
    multiselect client an ERROR each time a peer does not (yet) speak a protocol asked for (our
    gossip asks every peer, and retries) or closes the connection while a stream is being
    negotiated (as every node does when it stops). Those records go to DEBUG; our own code counts
    and reports the failures it acts on."""
    for name in (
        "libp2p.kad_dht.kad_dht",
        "libp2p.host.basic_host",
        "libp2p.protocol_muxer.multiselect_client",
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NormalEventsToDebug) for f in logger.filters):
            logger.addFilter(_NormalEventsToDebug(logger))


class _NormalEventsToDebug(logging.Filter):
    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self.logger = logger

    def filter(self, record: logging.LogRecord) -> bool:
        if self._normal(record):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return self.logger.isEnabledFor(logging.DEBUG)
        return True

    @staticmethod
    def _normal(record: logging.LogRecord) -> bool:
        if record.msg == "Failed to read DHT message from stream: %s":
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            return not args or not str(args[0]).strip()
        text = record.getMessage()
        if text.strip() == "Failed to parse protobuf message:" or text.startswith(
            "MultiselectClient handshake: read failed"
        ):
            return True
        return text.startswith("Failed to open stream to peer") and (
            "protocol not supported" in text or "handshake read failed" in text
        )


def _count_failed_negotiations(host: IHost, counters: Counters) -> None:
    """Count inbound streams whose protocol negotiation failed (unknown protocol ids included)."""
    patches.count_failed_negotiations(host, lambda: counters.incr("reqresp.rejected.negotiation_failed"))


# help(Node) and the API page show real types, not the strings ``from __future__ import
# annotations`` leaves (e.g. ``blobs: 'BlobService'``).
Node.__init__.__annotations__ = typing.get_type_hints(Node.__init__)
