"""The Trio driver that runs p2pshard's sans-IO gossipsub router over py-libp2p streams.

One long-lived stream per peer and direction, as gossipsub specifies: we open an outbound
stream to every connected peer that speaks ``/meshsub/1.2.0``, ``1.1.0``, ``1.0.0`` or floodsub, and
read whatever stream each peer opens to us. Frames are uvarint-length-prefixed ``RPC`` protobufs.

Flow control, with no silent drops:

* each peer has an outbound queue bounded in bytes. Our own publishes wait for room
  (backpressure to the publisher, bounded by ``publish_timeout``); a forwarded message that finds a
  peer's queue full is dropped for that peer, counted under ``pubsub.dropped.peer_queue_full``
  and logged — gossip (IHAVE/IWANT) lets the peer recover it;
* the head of a large frame still arriving goes to the router (``frame_head``) before the rest,
  so it can say IDONTWANT while the payload is on its way (:class:`FrameReader`);
* control-only frames (IDONTWANT, IHAVE/IWANT, GRAFT/PRUNE, subscriptions) go ahead of queued
  message frames; a queued message frame the peer has since declared IDONTWANT for is skipped
  when its turn comes (counted as ``pubsub.skipped_unwanted``);
* large forwards (> 64 KiB) are written one peer at a time, next peer chosen at random, each turn
  bounded (:class:`BulkTurns`), and only if still wanted when the turn comes; our own publishes
  go out at once to all peers. So the publisher's copies land together, every receiver says
  IDONTWANT, and most forwards queued meanwhile are skipped instead of crossing on the wire;
* local subscribers read from bounded channels; a full channel holds up the reader of the peer
  that sent the message, which pushes back through yamux's flow control to the sender;
* everything the router discards is counted in ``router.stats`` by reason, and mirrored into the
  node's counters as ``gossip.dropped.<reason>``.
"""

from __future__ import annotations

import logging
import random
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
from p2pshard.core.gossip.protocol import is_single_publish
from p2pshard.core.wire.framing import (
    FramingError,
    encode_uvarint,
)
from p2pshard.net.connector import Connector, DialError
from p2pshard.net.framed import StreamClosedEarly
from p2pshard.net.pubsub_io import (
    BULK_TURN_S,
    URGENT_MAX_BYTES,
    WRITE_BATCH_BYTES,
    BulkTurns,
    FrameReader,
    PeerQueue,
)
from p2pshard.net.transport import buffer_hold

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

AsyncValidator = Callable[[GossipMessage], Awaitable[ValidationResult]]


class PublishTimeout(Exception):
    """Peers' queues stayed full for longer than the publish timeout."""


@dataclass
class PubSubConfig:
    router: GossipConfig = field(default_factory=GossipConfig.build)
    peer_queue_bytes: int = 16 << 20
    """Outbound bytes queued per peer before forwards are dropped and publishes wait."""
    subscriber_queue: int = 1024
    """Messages buffered per local subscription."""
    publish_timeout: float = 30.0
    validation_timeout: float = 5.0
    max_concurrent_validations: int = 256
    stream_open_timeout: float = 5.0


@dataclass
class _Peer:
    peer_id: ID
    key: bytes
    queue: PeerQueue
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


class EarlyStreams:
    """Our pubsub protocols, answered from before the node first connects until its router runs.

    The router starts only once the node has joined (its topics' score parameters name the
    network the engine reports), but peers open their pubsub streams to us the moment we connect.
    Without handlers yet, multistream-select answers "na" to ``/meshsub/1.2.0``, then to the next
    proposal, and so on while the handlers get registered: the peer ends up on ``/meshsub/1.0.0`` or
    floodsub with us for the connection's life, and meshes fail to form. Registered before the
    first dial, these handlers hold each stream (at most ``wait_s``, within yamux's window) until
    :meth:`hand_to` names the router; a stream that waits too long is reset, and its peer opens a
    new one once it notices.
    """

    def __init__(self, host: IHost, counters: Counters, wait_s: float = 60.0) -> None:
        self._counters = counters
        self._wait_s = wait_s
        self._pubsub: PubSub | None = None
        self._ready = trio.Event()
        for proto in SUPPORTED_PROTOCOLS:
            host.set_stream_handler(TProtocol(proto), self._on_stream)

    def hand_to(self, pubsub: PubSub) -> None:
        """Pass held and later streams to ``pubsub`` (after ``pubsub.run`` started)."""
        self._pubsub = pubsub
        self._ready.set()

    async def _on_stream(self, stream: INetStream) -> None:
        with trio.move_on_after(self._wait_s):
            await self._ready.wait()
        if self._pubsub is None:
            self._counters.incr("pubsub.early_stream_expired")
            with trio.move_on_after(1):
                await stream.reset()
            return
        await self._pubsub._on_inbound_stream(stream)


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
        self._bulk_turns = BulkTurns(random.Random())

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
            await self._execute(commands, publishing=True, msg_id=msg_id)
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

    async def _execute(
        self, commands: list[Command], *, publishing: bool, msg_id: bytes | None = None
    ) -> None:
        """Carry out ``commands``. ``msg_id``: the one message the frames holding a single message
        carry (a publish, or a first receipt being forwarded), so a peer's queue can skip it once
        the peer says IDONTWANT."""
        framed: dict[int, bytes] = {}  # one prefixed copy of a frame shared by several peers
        for cmd in commands:
            match cmd:
                case SendRpc(peer_id=pid, data=data, message_count=count):
                    frame = framed.get(id(data))
                    if frame is None:
                        frame = framed[id(data)] = encode_uvarint(len(data)) + data
                    await self._send(
                        pid,
                        frame,
                        wait=publishing,
                        urgent=count == 0 and len(data) <= URGENT_MAX_BYTES,
                        tag=msg_id if count == 1 and is_single_publish(data) else None,
                        own=publishing,
                    )
                case Deliver(topic=topic, message=message):
                    for send in list(self._subscribers.get(topic, ())):
                        try:
                            await send.send(message)
                        except (trio.ClosedResourceError, trio.BrokenResourceError):
                            continue  # the subscriber left while we were delivering
                    self.counters.incr("pubsub.delivered")
                case Validate(msg_id=pending_id, message=message, source=source):
                    assert self._nursery is not None
                    self._nursery.start_soon(self._validate, pending_id, message, source)
                case Connect(peer_id=pid, reason=reason):
                    assert self._nursery is not None
                    self._nursery.start_soon(self._dial, pid, reason)
                case Rejected(peer_id=pid, reason=reason, detail=detail):
                    log.info("gossip: rejected input from %s: %s %s", _short(pid), reason, detail)
        self._mirror_drops()

    async def _send(
        self,
        pid: bytes,
        frame: bytes,
        *,
        wait: bool,
        urgent: bool = False,
        tag: bytes | None = None,
        own: bool = False,
    ) -> None:
        """Queue ``frame`` (length prefix included) for ``pid``."""
        peer = self._peers.get(pid)
        if peer is None:
            self.counters.incr("pubsub.dropped.peer_gone")
            return
        refused = peer.queue.refused
        if wait:
            ok = await peer.queue.put_wait(frame, urgent=urgent, tag=tag, own=own)
        else:
            ok = peer.queue.try_put(frame, urgent=urgent, tag=tag, own=own)
        if not ok and peer.queue.refused > refused:  # no memory for it (counted by reason too)
            self.counters.incr("pubsub.dropped.memory")
        elif not ok:
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
        await self._execute(
            self.router.report_validation(msg_id, result, self._now()), publishing=False, msg_id=msg_id
        )

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
        queue = PeerQueue(self.config.peer_queue_bytes, buffer_hold(stream, "gossip_out", per="conn"))
        peer = _Peer(pid, key, queue, protocol)
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
        queue = peer.queue
        key = peer.key

        def unwanted(msg_id: bytes) -> bool:
            return self.router.declined(key, msg_id)

        try:
            while await queue.wait_data():
                if queue.next_is_bulk(URGENT_MAX_BYTES):
                    await self._write_bulk(peer, stream, unwanted)
                else:
                    batch = queue.take(WRITE_BATCH_BYTES, unwanted, below=URGENT_MAX_BYTES)
                    if batch:
                        await stream.write(batch[0] if len(batch) == 1 else b"".join(batch))
                if queue.skipped:
                    self.counters.incr("pubsub.skipped_unwanted", queue.skipped)
                    queue.skipped = 0
        except Exception as exc:  # the stream broke: the peer is gone for pubsub
            log.debug("gossip: write to %s failed: %r", peer.peer_id, exc)
            with trio.move_on_after(1):
                await stream.reset()

    async def _write_bulk(self, peer: _Peer, stream: INetStream, unwanted: Callable[[bytes], bool]) -> None:
        """Write the next batch holding the bulk turn, for at most BULK_TURN_S of it."""
        turns = self._bulk_turns
        await turns.acquire(peer.key)
        held = [True]
        timer = trio.CancelScope()

        def give_back() -> None:
            if held[0]:
                held[0] = False
                turns.release()

        async def expire() -> None:
            with timer:
                await trio.sleep(BULK_TURN_S)
                give_back()  # a slow or stalled peer keeps writing, but without the turn

        try:
            assert self._nursery is not None
            self._nursery.start_soon(expire)
            batch = peer.queue.take(WRITE_BATCH_BYTES, unwanted)  # wanted *now*, not when queued
            if batch:
                await stream.write(batch[0] if len(batch) == 1 else b"".join(batch))
        finally:
            timer.cancel()
            give_back()

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
        reader = FrameReader(stream, self.router.config.max_rpc_size, buffer_hold(stream, "gossip_in"))

        async def on_head(head: bytes) -> None:
            if key in self._peers:
                await self._execute(self.router.frame_head(key, head, self._now()), publishing=False)

        try:
            with trio.fail_after(self.config.stream_open_timeout):  # wait for our outbound side
                while key not in self._peers:
                    self._wake()
                    await trio.sleep(0.01)
            while True:
                frame = await reader.read_frame(on_head)
                if frame is None:
                    return
                if key not in self._peers:
                    return
                events = self.router.stats.events
                served = events["iwant_served"]
                commands = self.router.handle_rpc(key, frame, self._now())
                msg_id = None
                if events["iwant_served"] == served:  # message frames are forwards only
                    delivered = [c.msg_id for c in commands if isinstance(c, Deliver)]
                    if len(delivered) == 1:
                        msg_id = delivered[0]
                await self._execute(commands, publishing=False, msg_id=msg_id)
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
