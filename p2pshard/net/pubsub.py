"""The Trio driver that runs p2pshard's sans-IO gossipsub router over py-libp2p streams.

One long-lived stream per peer and direction, as gossipsub specifies: we open an outbound
stream to every connected peer that speaks ``/meshsub/1.2.0``, ``1.1.0``, ``1.0.0`` or floodsub, and
read whatever stream each peer opens to us. Frames are uvarint-length-prefixed ``RPC`` protobufs.

Flow control, with no silent drops:

* each peer has an outbound queue bounded in bytes. Our own publishes wait for room
  (backpressure to the publisher, bounded by ``publish_timeout``); a forwarded message that finds a
  peer's queue full is dropped for that peer, counted under ``pubsub.dropped.peer_queue_full``
  and logged — gossip (IHAVE/IWANT) lets the peer recover it;
* local subscribers read from bounded channels; a full channel holds up the reader of the peer
  that sent the message, which pushes back through yamux's flow control to the sender;
* everything the router discards is counted in ``router.stats`` by reason, and mirrored into the
  node's counters as ``gossip.dropped.<reason>``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from multiaddr import Multiaddr

from p2pshard.core.counters import Counters
from p2pshard.core.gossip import (
    SUPPORTED_PROTOCOLS,
    Command,
    Connect,
    Deliver,
    GossipConfig,
    GossipMessage,
    GossipRouter,
    PublishError,
    Rejected,
    SendRpc,
    Validate,
    ValidationResult,
)
from p2pshard.core.wire.framing import FramingError, encode_uvarint
from p2pshard.net.connector import Connector, DialError
from p2pshard.net.framed import FramedStream, StreamClosedEarly

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

AsyncValidator = Callable[[GossipMessage], Awaitable[ValidationResult]]


class PublishTimeout(Exception):
    """Peers' queues stayed full for longer than the publish timeout."""


@dataclass
class PubSubConfig:
    router: GossipConfig = field(default_factory=GossipConfig.build)
    peer_queue_bytes: int = 64 << 20
    """Outbound bytes queued per peer before forwards are dropped and publishes wait."""
    subscriber_queue: int = 1024
    """Messages buffered per local subscription."""
    publish_timeout: float = 30.0
    validation_timeout: float = 5.0
    max_concurrent_validations: int = 256
    stream_open_timeout: float = 5.0


class _PeerQueue:
    """Outbound frames for one peer, bounded in bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.frames: deque[bytes] = deque()
        self.size = 0
        self.has_data = trio.Event()
        self.has_room = trio.Event()
        self.has_room.set()
        self.closed = False

    def try_put(self, frame: bytes) -> bool:
        if self.closed or (self.size + len(frame) > self.limit and self.frames):
            return False
        self.frames.append(frame)
        self.size += len(frame)
        self.has_data.set()
        if self.size >= self.limit:
            self.has_room = trio.Event()
        return True

    async def put_wait(self, frame: bytes) -> bool:
        while not self.try_put(frame):
            if self.closed:
                return False
            await self.has_room.wait()
        return True

    async def get_batch(self, max_bytes: int) -> list[bytes]:
        while not self.frames:
            if self.closed:
                return []
            self.has_data = trio.Event()
            await self.has_data.wait()
        batch: list[bytes] = []
        total = 0
        while self.frames and (not batch or total + len(self.frames[0]) <= max_bytes):
            frame = self.frames.popleft()
            batch.append(frame)
            total += len(frame)
        self.size -= total
        if self.size < self.limit:
            self.has_room.set()
        return batch

    def close(self) -> None:
        self.closed = True
        self.has_data.set()
        self.has_room.set()


@dataclass
class _Peer:
    peer_id: ID
    key: bytes
    queue: _PeerQueue
    protocol: str
    cancel: trio.CancelScope = field(default_factory=trio.CancelScope)


class _Notifee(INotifee):
    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._wake()

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._wake()

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def listen(self, network: INetwork, multiaddr: Multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: Multiaddr) -> None:
        pass


class PubSub:
    """Gossipsub over a py-libp2p host. Start with ``await nursery.start(pubsub.run)``."""

    def __init__(
        self,
        host: IHost,
        connector: Connector,
        router: GossipRouter,
        counters: Counters,
        config: PubSubConfig | None = None,
    ) -> None:
        self.host = host
        self.connector = connector
        self.router = router
        self.counters = counters
        self.config = config or PubSubConfig(router=router.config)
        self._peers: dict[bytes, _Peer] = {}
        self._opening: set[bytes] = set()
        self._subscribers: dict[str, set[trio.MemorySendChannel[GossipMessage]]] = {}
        self._async_validators: dict[str, AsyncValidator] = {}
        self._validation_slots = trio.Semaphore(self.config.max_concurrent_validations)
        self._nursery: trio.Nursery | None = None
        self._peers_changed = trio.Event()
        self._mirrored_drops: dict[str, int] = {}

    # -- lifecycle --------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for proto in SUPPORTED_PROTOCOLS:
                self.host.set_stream_handler(TProtocol(proto), self._on_inbound_stream)
            self.host.get_network().register_notifee(_Notifee(self._wake))
            nursery.start_soon(self._heartbeat_loop)
            nursery.start_soon(self._peer_watch_loop)
            task_status.started()

    def _wake(self) -> None:
        self._peers_changed.set()

    def _now(self) -> float:
        return trio.current_time()

    # -- public API -------------------------------------------------------------------

    @asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[trio.MemoryReceiveChannel[GossipMessage]]:
        """Subscribe for the duration of the block; iterate the channel for messages."""
        send, receive = trio.open_memory_channel[GossipMessage](self.config.subscriber_queue)
        subs = self._subscribers.setdefault(topic, set())
        first = not subs
        subs.add(send)
        if first:
            await self._execute(self.router.subscribe(topic, self._now()), publishing=True)
        try:
            yield receive
        finally:
            subs.discard(send)
            send.close()
            if not subs:
                del self._subscribers[topic]
                with trio.CancelScope(shield=True):
                    await self._execute(self.router.unsubscribe(topic, self._now()), publishing=False)

    async def publish(self, topic: str, data: bytes) -> bytes:
        """Publish ``data``; waits while peers' queues are full. Returns the message id."""
        try:
            msg_id, commands = self.router.publish(topic, data, self._now())
        except PublishError:
            self.counters.incr("pubsub.publish_rejected")
            raise
        with trio.move_on_after(self.config.publish_timeout) as scope:
            await self._execute(commands, publishing=True)
        if scope.cancelled_caught:
            self.counters.incr("pubsub.publish_timeout")
            raise PublishTimeout(f"peers' queues stayed full for {self.config.publish_timeout}s")
        self.counters.incr("pubsub.published")
        return msg_id

    def set_validator(self, topic: str, validator: AsyncValidator | None) -> None:
        """An async validator for ``topic`` (bounded by ``validation_timeout``: a late answer is IGNORE)."""
        if validator is None:
            self._async_validators.pop(topic, None)
            self.router.set_async_validation(topic, False)
        else:
            self._async_validators[topic] = validator
            self.router.set_async_validation(topic, True)

    def mesh_sizes(self) -> dict[str, int]:
        return {topic: len(self.router.mesh_peers(topic)) for topic in sorted(self.router.subscriptions)}

    def scores(self) -> dict[str, float]:
        return {ID(p).to_base58(): self.router.peer_score(p) for p in sorted(self.router.peers)}

    def connected_pubsub_peers(self) -> list[ID]:
        return [p.peer_id for p in self._peers.values()]

    # -- commands ---------------------------------------------------------------------

    async def _execute(self, commands: list[Command], *, publishing: bool) -> None:
        for cmd in commands:
            match cmd:
                case SendRpc(peer_id=pid, data=data):
                    await self._send(pid, data, wait=publishing)
                case Deliver(topic=topic, message=message):
                    for send in list(self._subscribers.get(topic, ())):
                        try:
                            await send.send(message)
                        except (trio.ClosedResourceError, trio.BrokenResourceError):
                            continue  # the subscriber left while we were delivering
                    self.counters.incr("pubsub.delivered")
                case Validate(msg_id=msg_id, message=message, source=source):
                    assert self._nursery is not None
                    self._nursery.start_soon(self._validate, msg_id, message, source)
                case Connect(peer_id=pid, reason=reason):
                    assert self._nursery is not None
                    self._nursery.start_soon(self._dial, pid, reason)
                case Rejected(peer_id=pid, reason=reason, detail=detail):
                    log.info("gossip: rejected input from %s: %s %s", _short(pid), reason, detail)
        self._mirror_drops()

    async def _send(self, pid: bytes, data: bytes, *, wait: bool) -> None:
        peer = self._peers.get(pid)
        if peer is None:
            self.counters.incr("pubsub.dropped.peer_gone")
            return
        frame = encode_uvarint(len(data)) + data
        if wait:
            ok = await peer.queue.put_wait(frame)
        else:
            ok = peer.queue.try_put(frame)
        if not ok:
            self.counters.incr("pubsub.dropped.peer_queue_full")
            log.warning(
                "gossip: %s's queue is full (%d bytes); dropped a frame of %d bytes",
                _short(pid),
                peer.queue.size,
                len(frame),
            )

    def _mirror_drops(self) -> None:
        for reason, count in self.router.stats.dropped.items():
            seen = self._mirrored_drops.get(reason, 0)
            if count > seen:
                self.counters.incr(f"gossip.dropped.{reason}", count - seen)
                self._mirrored_drops[reason] = count

    async def _validate(self, msg_id: bytes, message: GossipMessage, source: bytes) -> None:
        validator = self._async_validators.get(message.topic)
        result = ValidationResult.IGNORE
        async with self._validation_slots:
            if validator is not None:
                with trio.move_on_after(self.config.validation_timeout):
                    try:
                        result = await validator(message)
                    except Exception:
                        log.exception("validator for %s failed", message.topic)
                        self.counters.incr("pubsub.validator_errors")
                        result = ValidationResult.IGNORE
        await self._execute(self.router.report_validation(msg_id, result, self._now()), publishing=False)

    async def _dial(self, pid: bytes, reason: str) -> None:
        try:
            await self.connector.ensure(ID(pid))
        except DialError as exc:
            log.debug("gossip: dial %s (%s) failed: %s", _short(pid), reason, exc)

    # -- peers and streams ------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = self.router.config.heartbeat_interval
        while True:
            await trio.sleep(interval)
            await self._execute(self.router.heartbeat(self._now()), publishing=False)

    async def _peer_watch_loop(self) -> None:
        assert self._nursery is not None
        while True:
            connected = {p.to_bytes(): p for p in self.connector.connected_peers()}
            for key, pid in connected.items():
                if key not in self._peers and key not in self._opening:
                    self._opening.add(key)
                    self._nursery.start_soon(self._open_outbound, pid)
            for key in [k for k in self._peers if k not in connected]:
                await self._drop_peer(key)
            self._peers_changed = trio.Event()
            with trio.move_on_after(1.0):
                await self._peers_changed.wait()

    async def _open_outbound(self, pid: ID) -> None:
        key = pid.to_bytes()
        try:
            with trio.fail_after(self.config.stream_open_timeout):
                stream = await self.host.new_stream(pid, [TProtocol(p) for p in SUPPORTED_PROTOCOLS])
        except Exception as exc:  # the peer speaks no pubsub, or went away
            log.debug("gossip: no pubsub stream to %s: %r", pid, exc)
            self._opening.discard(key)
            return
        protocol = str(stream.get_protocol())
        peer = _Peer(pid, key, _PeerQueue(self.config.peer_queue_bytes), protocol)
        self._peers[key] = peer
        self._opening.discard(key)
        outbound = _is_outbound(self.host, pid)
        await self._execute(self.router.add_peer(key, protocol, outbound, self._now()), publishing=False)
        try:
            with peer.cancel:
                await self._write_loop(peer, stream)
        finally:
            if self._peers.get(key) is peer:
                await self._drop_peer(key)

    async def _write_loop(self, peer: _Peer, stream: INetStream) -> None:
        try:
            while True:
                batch = await peer.queue.get_batch(1 << 20)
                if not batch:
                    return
                await stream.write(b"".join(batch))
        except Exception as exc:  # the stream broke: the peer is gone for pubsub
            log.debug("gossip: write to %s failed: %r", peer.peer_id, exc)
            with trio.move_on_after(1):
                await stream.reset()

    async def _drop_peer(self, key: bytes) -> None:
        peer = self._peers.pop(key, None)
        if peer is None:
            return
        peer.queue.close()
        peer.cancel.cancel()
        await self._execute(self.router.remove_peer(key, self._now()), publishing=False)

    async def _on_inbound_stream(self, stream: INetStream) -> None:
        """Read RPC frames from a peer's stream until it ends; never raises."""
        pid = stream.muxed_conn.peer_id
        key = pid.to_bytes()
        framed = FramedStream(stream, self.router.config.max_rpc_size)
        try:
            with trio.fail_after(self.config.stream_open_timeout):  # wait for our outbound side
                while key not in self._peers:
                    self._wake()
                    await trio.sleep(0.01)
            while True:
                frame = await framed.read_frame()
                if frame is None:
                    return
                if key not in self._peers:
                    return
                await self._execute(self.router.handle_rpc(key, frame, self._now()), publishing=False)
        except FramingError as exc:
            self.counters.incr(f"pubsub.rejected.{exc.reason}")
            log.info("gossip: %s broke framing: %s", pid, exc)
        except (StreamClosedEarly, trio.TooSlowError):
            pass
        except Exception:
            log.exception("gossip: reader for %s failed", pid)
        finally:
            with trio.move_on_after(1):
                await stream.reset()


def _is_outbound(host: IHost, pid: ID) -> bool:
    conns = host.get_network().connections.get(pid) or []
    for conn in conns:
        direction = getattr(conn, "direction", None)
        if direction is not None and str(getattr(direction, "name", direction)).lower() == "outbound":
            return True
    return False


def _short(pid: bytes) -> str:
    try:
        return str(ID(pid).to_base58())[-8:]
    except Exception:
        return pid.hex()[:8]
