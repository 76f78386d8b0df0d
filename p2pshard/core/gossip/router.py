"""The sans-IO gossipsub router: the public input methods and the message path.

Inputs are method calls carrying ``now`` (seconds, monotonic); outputs are lists of commands
(see :mod:`.commands`). Control handling lives in :mod:`.control`, the heartbeat in
:mod:`.heartbeat`, sending IDONTWANT in :mod:`.idontwant`, shared state and frame assembly in :mod:`.state`.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from p2pshard.core.wire import rpc_pb2

from .commands import Command, Deliver, Validate
from .config import GossipConfig, SignaturePolicy
from .control import ControlHandlers
from .errors import PublishError
from .heartbeat import HeartbeatMixin
from .idontwant import IDontWantMixin
from .message import GossipMessage, ValidationResult, default_message_id
from .protocol import (
    DecodeError,
    PeerKind,
    decode_rpc,
    encode_publish,
    is_single_publish,
    peer_kind,
    publish_piece,
    publish_spans,
    subscription_piece,
)
from .signing import Signer, Verifier, sign_message, signing_bytes
from .state import PeerState, PendingValidation, Validator
from .stats import DropReason

_SCAN_BATCH_FROM = 64 * 1024
"""A message at least this large is cut out of a batched frame to be forwarded as received."""


class GossipRouter(ControlHandlers, HeartbeatMixin, IDontWantMixin):
    """A gossipsub v1.0/v1.1/v1.2 (+floodsub) router for one local peer.

    Not thread-safe: call it from one task. ``peer_id`` is our raw peer-id bytes; with
    StrictSign a ``signer`` for that id is required to publish.
    """

    def __init__(
        self,
        peer_id: bytes,
        config: GossipConfig | None = None,
        *,
        rng: random.Random,
        signer: Signer | None = None,
        verifier: Verifier | None = None,
    ) -> None:
        super().__init__(peer_id, config if config is not None else GossipConfig(), rng, signer, verifier)
        self._default_id = self.config.message_id_fn is default_message_id
        self._strict_sign = self.config.signature_policy is SignaturePolicy.STRICT_SIGN

    # ================================================================= peers
    def add_peer(
        self, peer_id: bytes, protocol: str, outbound: bool, now: float, ip: str | None = None
    ) -> list[Command]:
        """A pubsub stream to ``peer_id`` speaking ``protocol`` is up; sends our subscriptions.

        ``outbound``: we dialled the connection (counts toward ``d_out``). ``ip``: the remote
        address for the P6 colocation factor. Raises ``UnknownProtocolError``.
        """
        self._tick_time(now)
        kind = peer_kind(protocol)
        if peer_id in self._peers or peer_id == self.peer_id:
            self.stats.events["add_peer_ignored"] += 1
            return []
        peer = PeerState(peer_id, kind, outbound, peer_id in self.config.direct_peers, ip)
        self._peers[peer_id] = peer
        if self.scorer is not None:
            self.scorer.add_peer(peer_id, ip, self._now)
        if self._subscriptions:
            peer.out_subs = [subscription_piece(t, True) for t in sorted(self._subscriptions)]
            self._dirty[peer_id] = peer
        return self._finish()

    def remove_peer(self, peer_id: bytes, now: float) -> list[Command]:
        """The peer's streams are gone: forget it everywhere (its score is retained)."""
        self._tick_time(now)
        peer = self._peers.pop(peer_id, None)
        if peer is None:
            return []
        for topic in peer.topics:
            self._forget_subscription(peer, topic)
        self._dirty.pop(peer_id, None)
        if self.scorer is not None:
            self.scorer.remove_peer(peer_id, self._now)
        return self._finish()

    def _forget_subscription(self, peer: PeerState, topic: str) -> None:
        subs = self._topics.get(topic)
        if subs is not None:
            subs.discard(peer.id)
            if not subs:
                del self._topics[topic]
        flood = self._flood.get(topic)
        if flood is not None:
            flood.discard(peer.id)
            if not flood:
                del self._flood[topic]
        mesh = self._mesh.get(topic)
        if mesh is not None and peer.id in mesh:
            self._remove_from_mesh(peer.id, topic, mesh)
        fan = self._fanout.get(topic)
        if fan is not None:
            fan.discard(peer.id)

    # ============================================================ local API
    def subscribe(self, topic: str, now: float) -> list[Command]:
        """Join ``topic``: announce it and build a mesh (from fanout peers first)."""
        self._tick_time(now)
        self._check_topic(topic)
        if topic in self._subscriptions:
            return []
        self._subscriptions.add(topic)
        self._recent_unsub.pop(topic, None)
        piece = subscription_piece(topic, True)
        for peer in self._peers.values():
            peer.out_subs.append(piece)
            self._dirty[peer.id] = peer
        mesh: set[bytes] = set()
        self._mesh[topic] = mesh
        fan = self._fanout.pop(topic, set())
        self._fanout_last_pub.pop(topic, None)
        chosen = [p for p in fan if self._score(p) >= 0 and not self._in_backoff(topic, p)]
        if len(chosen) < self.config.d:
            cands = self._mesh_candidates(topic, set(chosen), 0.0)
            need = min(self.config.d - len(chosen), len(cands))
            chosen.extend(self.rng.sample(cands, need))
        for pid in chosen[: self.config.d]:
            self._graft(self._peers[pid], topic, mesh)
        return self._finish()

    def unsubscribe(self, topic: str, now: float) -> list[Command]:
        """Leave ``topic``: announce it and PRUNE the mesh with the unsubscribe backoff."""
        self._tick_time(now)
        if topic not in self._subscriptions:
            return []
        self._subscriptions.discard(topic)
        self._head_ids.pop(topic, None)
        piece = subscription_piece(topic, False)
        for peer in self._peers.values():
            peer.out_subs.append(piece)
            self._dirty[peer.id] = peer
        mesh = self._mesh.pop(topic, set())
        for pid in mesh:
            if self.scorer is not None:
                self.scorer.prune(pid, topic)
            self._send_prune(self._peers[pid], topic, True, self.config.unsubscribe_backoff)
        self._recent_unsub[topic] = self._now + max(
            self.config.unsubscribe_backoff, 3 * self.config.heartbeat_interval
        )
        return self._finish()

    def set_validator(self, topic: str, validator: Validator | None) -> None:
        """Run ``validator`` synchronously on every new message of ``topic`` (None removes it).

        A validator that raises counts as IGNORE (our bug must not penalise the peer).
        """
        if validator is None:
            self._validators.pop(topic, None)
        else:
            self._validators[topic] = validator

    def set_async_validation(self, topic: str, enabled: bool = True) -> None:
        """Emit :class:`Validate` for new messages of ``topic`` and wait for
        ``report_validation`` (after the synchronous validator, if any, accepted)."""
        if enabled:
            self._async_topics.add(topic)
        else:
            self._async_topics.discard(topic)

    def publish(self, topic: str, data: bytes, now: float) -> tuple[bytes, list[Command]]:
        """Publish ``data`` on ``topic``; returns the message id and the commands.

        Raises :class:`PublishError` for an invalid topic, an oversized payload, a missing
        signer under StrictSign, or a message id already seen (a duplicate publish).
        """
        self._tick_time(now)
        cfg = self.config
        self._check_topic(topic)
        if len(data) > cfg.max_message_size:
            raise PublishError("message_too_large", f"{len(data)} > {cfg.max_message_size}")
        pb = rpc_pb2.Message(data=data, topic=topic)
        if self._strict_sign:
            if self.signer is None:
                raise PublishError("no_signer", "StrictSign needs a signer to publish")
            self._seqno = (self._seqno + 1) & 0xFFFF_FFFF_FFFF_FFFF
            setattr(pb, "from", self.peer_id)
            pb.seqno = self._seqno.to_bytes(8, "big")
            sign_message(pb, self.signer)
        msg = GossipMessage.from_pb(pb)
        mid = cfg.message_id_fn(msg)
        if not self._seen.add(mid, self._now):
            raise PublishError("duplicate", "message id already seen")
        piece = encode_publish(pb)  # id first: receivers can say IDONTWANT early
        self._mcache.put(mid, msg, piece)
        targets = self._publish_targets(topic)
        if not targets:
            self._drop(DropReason.PUBLISH_NO_PEERS)
        for pid in targets:
            self._enqueue_msg(self._peers[pid], piece)
        self.stats.events["published"] += 1
        if cfg.deliver_own_messages and topic in self._subscriptions:
            self._cmds.append(Deliver(topic, mid, msg, None))
        return mid, self._finish()

    def _publish_targets(self, topic: str) -> set[bytes]:
        cfg = self.config
        threshold = self.thresholds.publish_threshold
        peers = self._peers
        targets = set(self._flood.get(topic, ()))
        if cfg.flood_publish:
            targets.update(
                p
                for p in self._topics.get(topic, ())
                if peers[p].kind.is_gossipsub and self._score(p) >= threshold
            )
            return targets
        mesh = self._mesh.get(topic)
        if mesh is not None:
            targets.update(mesh)
            return targets
        fan = self._fanout.get(topic)
        if fan is None:
            cands = self._mesh_candidates(topic, set(), threshold)
            fan = self._fanout[topic] = set(self.rng.sample(cands, min(cfg.d, len(cands))))
        self._fanout_last_pub[topic] = self._now
        targets.update(fan)
        return targets

    def report_validation(self, msg_id: bytes, result: ValidationResult, now: float) -> list[Command]:
        """The driver's verdict for an earlier :class:`Validate` command."""
        self._tick_time(now)
        pending = self._pending.pop(msg_id, None)
        if pending is None:
            self._drop(DropReason.VALIDATION_UNKNOWN)
            return []
        self._conclude(msg_id, pending.message, pending.pb, pending.source, result, pending.piece)
        return self._finish()

    def _check_topic(self, topic: str) -> None:
        if not isinstance(topic, str) or not topic or len(topic) > self.config.max_topic_length:
            raise PublishError("invalid_topic", repr(topic)[:80])

    # ============================================================== receive
    def handle_rpc(self, peer_id: bytes, data: bytes, now: float) -> list[Command]:
        """Process one received RPC frame (without its length prefix) from ``peer_id``."""
        self._tick_time(now)
        peer = self._peers.get(peer_id)
        if peer is None:
            self._drop(DropReason.RPC_UNKNOWN_PEER)
            return []
        self.stats.events["rpc_received"] += 1
        if len(data) > self.config.max_rpc_size:
            self._reject(peer_id, DropReason.RPC_TOO_LARGE, f"{len(data)} bytes", penalty=1.0)
            return self._finish()
        if self.scorer is not None and self._score(peer_id) < self.thresholds.graylist_threshold:
            self._drop(DropReason.RPC_GRAYLISTED)
            return []
        try:
            rpc = decode_rpc(data)
        except (DecodeError, ValueError, RecursionError) as exc:
            self._reject(peer_id, DropReason.RPC_MALFORMED, str(exc)[:120], penalty=1.0)
            return self._finish()
        if rpc.subscriptions:
            self._handle_subscriptions(peer, rpc.subscriptions)
        if rpc.publish:
            self._rpc_data, self._rpc_spans = data, None
            try:
                self._handle_messages(peer, rpc.publish)
            finally:
                self._rpc_data, self._rpc_spans = b"", None
        if rpc.HasField("control"):
            if peer.kind is PeerKind.FLOODSUB:
                self._drop(DropReason.CONTROL_FROM_FLOODSUB)
            else:
                self._handle_control(peer, rpc.control)
        return self._finish()

    def _handle_subscriptions(self, peer: PeerState, subs: Iterable[rpc_pb2.RPC.SubOpts]) -> None:
        cfg = self.config
        for sub in subs:
            topic = sub.topicid
            if not isinstance(topic, str) or not topic or len(topic) > cfg.max_topic_length:
                self._reject(peer.id, DropReason.SUBSCRIPTION_INVALID_TOPIC, penalty=0.0)
                continue
            if sub.subscribe:
                if topic in peer.topics:
                    continue
                if len(peer.topics) >= cfg.max_topics_per_peer:
                    self._drop(DropReason.SUBSCRIPTION_LIMIT)
                    continue
                peer.topics.add(topic)
                self._topics.setdefault(topic, set()).add(peer.id)
                if peer.kind is PeerKind.FLOODSUB or peer.direct:
                    self._flood.setdefault(topic, set()).add(peer.id)
            elif topic in peer.topics:
                peer.topics.discard(topic)
                self._forget_subscription(peer, topic)

    def _handle_messages(self, peer: PeerState, msgs: Sequence[rpc_pb2.Message]) -> None:
        limit = self.config.max_messages_per_rpc
        if len(msgs) > limit:
            self._drop(DropReason.MESSAGE_TOO_MANY_IN_RPC, len(msgs) - limit)
            msgs = msgs[:limit]
        seen = self._seen
        subs = self._subscriptions
        scorer = self.scorer
        dups = 0
        default = self._default_id
        for index, m in enumerate(msgs):
            # fast path for the common case, a duplicate: one dict lookup, no allocation -- with
            # the default id, or a custom one that is from || seqno on this topic (not hashed)
            if default or ((topic := m.topic) in subs and self._id_from_head(topic)):
                mid = getattr(m, "from") + m.seqno
                if mid in seen and m.topic in subs:
                    dups += 1
                    if scorer is not None:
                        scorer.duplicate_message(peer.id, mid, self._now)
                    continue
                self._on_message(peer, m, mid, index)
            else:
                self._on_message(peer, m, None, index)
        if dups:
            self.stats.dropped[DropReason.MESSAGE_DUPLICATE] += dups

    def _received_piece(self, index: int, size: int) -> bytes | None:
        """The ``index``-th message (``size`` bytes of data) of the RPC being handled as the
        ``publish`` entry it came in: the whole frame, uncopied, when that is all the frame holds.
        None (the message is re-encoded instead) if it cannot be cut out, or if it is small and
        shares its frame: re-encoding a small message is cheaper than scanning a batch."""
        spans = self._rpc_spans
        if spans is None:
            data = self._rpc_data
            if is_single_publish(data):
                spans = [(0, len(data))]
            elif size < _SCAN_BATCH_FROM:
                return None
            else:
                spans = publish_spans(data) or []
            self._rpc_spans = spans
        if index >= len(spans):
            return None
        start, stop = spans[index]
        data = self._rpc_data
        return data if start == 0 and stop == len(data) else data[start:stop]

    def _on_message(self, peer: PeerState, m: rpc_pb2.Message, mid: bytes | None, index: int = -1) -> None:
        """A message that is not a plain duplicate; ``mid``: ``from || seqno`` when that is the id
        (a custom id function is still asked, once, for a message that is new); ``index``: its
        place in the RPC being handled."""
        cfg = self.config
        pid = peer.id
        topic = m.topic
        if type(topic) is not str or not topic or len(topic) > cfg.max_topic_length:
            self._reject(pid, DropReason.MESSAGE_INVALID_TOPIC, penalty=1.0)
            return
        if topic not in self._subscriptions:
            if topic in self._recent_unsub:
                self._drop(DropReason.MESSAGE_NOT_SUBSCRIBED)
            else:
                self._reject(pid, DropReason.MESSAGE_UNKNOWN_TOPIC, topic[:80], penalty=1.0)
            return
        data = m.data
        if len(data) > cfg.max_message_size:
            self._reject(pid, DropReason.MESSAGE_TOO_LARGE, f"{len(data)} bytes", penalty=1.0)
            return
        # --- id and duplicate check before any expensive work
        msg: GossipMessage | None = None
        if mid is None or not self._default_id:
            msg = GossipMessage(topic, data, getattr(m, "from"), m.seqno, m.signature, m.key)
            try:
                real = cfg.message_id_fn(msg)
            except Exception as exc:  # a bad message must not crash the router
                self._reject(pid, DropReason.MESSAGE_BAD_ID, repr(exc)[:120], penalty=1.0)
                return
            if self._head_ids.get(topic) and real != msg.source + msg.seqno:
                self._head_ids[topic] = False  # the id function is not from || seqno here after all
            mid = real
        if not mid and self._strict_sign and msg is None:
            self._check_signature(peer, m, topic)  # no from/seqno: reported as unsigned
            return
        if not mid or len(mid) > cfg.max_message_id_length:
            self._reject(pid, DropReason.MESSAGE_BAD_ID, f"id length {len(mid)}", penalty=1.0)
            return
        if mid in self._seen:
            self.stats.dropped[DropReason.MESSAGE_DUPLICATE] += 1
            if self.scorer is not None:
                self.scorer.duplicate_message(pid, mid, self._now)
            return
        # --- signature policy (go order: seen check first, then signature)
        if not self._check_signature(peer, m, topic, data):
            return
        if msg is None:
            msg = GossipMessage(topic, data, getattr(m, "from"), m.seqno, m.signature, m.key)
        self._seen.add(mid, self._now)
        scorer = self.scorer
        if scorer is not None:
            scorer.validate_message(mid, topic, self._now)
            self._promises.pop(mid, None)
        self.stats.events["message_first_seen"] += 1
        if cfg.idontwant_threshold and len(data) >= cfg.idontwant_threshold and mid not in self._announced:
            self._send_idontwant(topic, mid, pid)
        result = ValidationResult.ACCEPT
        validator = self._validators.get(topic)
        if validator is not None:
            try:
                result = validator(msg)
            except Exception:
                self._drop(DropReason.VALIDATION_ERROR)
                result = ValidationResult.IGNORE
        if result is ValidationResult.ACCEPT and topic in self._async_topics:
            if len(self._pending) >= cfg.max_pending_validations:
                self._drop(DropReason.VALIDATION_QUEUE_FULL)
                if scorer is not None:
                    scorer.ignore_message(mid)
                return
            piece = self._received_piece(index, len(data)) if index >= 0 else None
            self._pending[mid] = PendingValidation(msg, m, pid, self._now, piece)
            self._cmds.append(Validate(mid, msg, pid))
            return
        piece = self._received_piece(index, len(data)) if index >= 0 else None
        self._conclude(mid, msg, m, pid, result, piece)

    def _check_signature(
        self, peer: PeerState, m: rpc_pb2.Message, topic: str, data: bytes | None = None
    ) -> bool:
        source = getattr(m, "from")
        if self._strict_sign:
            if not m.signature or not source or not m.seqno:
                reason = DropReason.MESSAGE_MISSING_SIGNATURE
            elif source == self.peer_id:
                self._drop(DropReason.MESSAGE_SELF_ORIGIN)
                return False
            elif self.verifier.verify(source, m.key, signing_bytes(m, data), m.signature):
                return True
            else:
                reason = DropReason.MESSAGE_INVALID_SIGNATURE
        elif m.HasField("signature") or m.HasField("from") or m.HasField("seqno") or m.HasField("key"):
            reason = (
                DropReason.MESSAGE_UNEXPECTED_SIGNATURE
                if m.HasField("signature") or m.HasField("key")
                else DropReason.MESSAGE_UNEXPECTED_AUTHOR
            )
        else:
            return True
        self._reject(peer.id, reason, topic[:80])
        if self.scorer is not None:
            self.scorer.reject_message(peer.id, None, topic, self._now)
        return False

    def _conclude(
        self,
        msg_id: bytes,
        message: GossipMessage,
        pb: rpc_pb2.Message,
        source: bytes,
        result: ValidationResult,
        piece: bytes | None = None,
    ) -> None:
        scorer = self.scorer
        if result is ValidationResult.ACCEPT:
            if piece is None:
                piece = publish_piece(pb.SerializeToString())
            self._mcache.put(msg_id, message, piece)
            if scorer is not None:
                scorer.deliver_message(source, msg_id, self._now)
            self._cmds.append(Deliver(message.topic, msg_id, message, source))
            self.stats.events["delivered"] += 1
            self._forward(msg_id, message, piece, source)
        elif result is ValidationResult.REJECT:
            self._reject(source, DropReason.VALIDATION_REJECT, message.topic[:80])
            if scorer is not None:
                scorer.reject_message(source, msg_id, message.topic, self._now)
        else:
            self._drop(DropReason.VALIDATION_IGNORE)
            if scorer is not None:
                scorer.ignore_message(msg_id)

    def _forward(self, mid: bytes, message: GossipMessage, piece: bytes, source: bytes) -> None:
        topic = message.topic
        author = message.source
        peers = self._peers
        honored = 0
        size = len(piece)
        dirty = self._dirty
        targets: Iterable[bytes] = self._mesh.get(topic, ())
        flood = self._flood.get(topic)
        if flood:
            targets = set(targets) | flood
        for pid in targets:
            if pid == source or pid == author:  # noqa: SIM109 - hot path, no tuple
                continue
            peer = peers[pid]
            if peer.dont_send and mid in peer.dont_send:
                honored += 1
                continue
            peer.out_msgs.append(piece)
            peer.out_msgs_size += size
            dirty[pid] = peer
        if honored:
            self._drop(DropReason.SEND_IDONTWANT_HONORED, honored)

    # ========================================================= introspection
    @property
    def subscriptions(self) -> frozenset[str]:
        return frozenset(self._subscriptions)

    @property
    def peers(self) -> frozenset[bytes]:
        return frozenset(self._peers)

    def peer_protocol(self, peer_id: bytes) -> PeerKind | None:
        peer = self._peers.get(peer_id)
        return peer.kind if peer is not None else None

    def mesh_peers(self, topic: str) -> frozenset[bytes]:
        return frozenset(self._mesh.get(topic, ()))

    def fanout_peers(self, topic: str) -> frozenset[bytes]:
        return frozenset(self._fanout.get(topic, ()))

    def topic_peers(self, topic: str) -> frozenset[bytes]:
        return frozenset(self._topics.get(topic, ()))

    def peer_score(self, peer_id: bytes) -> float:
        """Current score (0.0 when scoring is off or the peer is unknown)."""
        return self._score(peer_id)

    def in_backoff(self, topic: str, peer_id: bytes) -> bool:
        return self._in_backoff(topic, peer_id)

    def seen(self, msg_id: bytes) -> bool:
        return msg_id in self._seen

    def cached(self, msg_id: bytes) -> bool:
        return msg_id in self._mcache

    @property
    def pending_validations(self) -> int:
        return len(self._pending)
