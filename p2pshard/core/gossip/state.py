"""Router state shared by the router's role modules (messages, control, heartbeat).

Holds the per-peer records, the topic/mesh/fanout/backoff tables, the outboxes that batch
everything destined to one peer into as few frames as possible, and the helpers every role
uses (scores, backoff, GRAFT/PRUNE emission, flushing). No I/O happens here: ``_finish`` turns
the outboxes into :class:`SendRpc` commands at the end of each input call.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from p2pshard.core.wire import rpc_pb2

from .commands import Command, Rejected, SendRpc
from .config import GossipConfig
from .mcache import MessageCache
from .message import GossipMessage, ValidationResult
from .protocol import PeerKind, control_piece
from .score import PeerScore
from .score_params import PeerScoreThresholds
from .signing import LibP2PVerifier, Signer, Verifier
from .stats import DropReason, RouterStats
from .time_cache import TimeCache

#: Synchronous validator: a pure function of the message.
Validator = Callable[[GossipMessage], ValidationResult]

_MAX_BACKOFF = 24 * 3600.0
_SEPARATE_CONTROL_ABOVE = 64 * 1024
_ZERO_THRESHOLDS = PeerScoreThresholds(0.0, 0.0, 0.0, 0.0, 0.0)


class PeerState:
    """Everything the router knows about one connected peer, plus its outbox."""

    __slots__ = (
        "direct",
        "dont_send",
        "iasked",
        "id",
        "idontwant_count",
        "ihave_count",
        "ip",
        "iwant_penalised",
        "iwant_served",
        "kind",
        "out_ctrl",
        "out_msgs",
        "out_msgs_size",
        "out_subs",
        "outbound",
        "topics",
    )

    def __init__(self, peer_id: bytes, kind: PeerKind, outbound: bool, direct: bool, ip: str | None) -> None:
        self.id = peer_id
        self.kind = kind
        self.outbound = outbound
        self.direct = direct
        self.ip = ip
        self.topics: set[str] = set()
        # v1.2: message ids the peer told us not to send -> heartbeat tick it arrived
        self.dont_send: dict[bytes, int] = {}
        # per-heartbeat budgets
        self.ihave_count = 0
        self.iasked = 0
        self.iwant_served = 0
        self.iwant_penalised = False
        self.idontwant_count = 0
        # outbox
        self.out_subs: list[bytes] = []
        self.out_msgs: list[bytes] = []
        self.out_msgs_size = 0
        self.out_ctrl: rpc_pb2.ControlMessage | None = None


class PendingValidation:
    """A message waiting for ``report_validation``."""

    __slots__ = ("message", "pb", "piece", "source", "started")

    def __init__(
        self,
        message: GossipMessage,
        pb: rpc_pb2.Message,
        source: bytes,
        started: float,
        piece: bytes | None = None,
    ) -> None:
        self.message = message
        self.pb = pb
        self.source = source
        self.started = started
        self.piece = piece  # the publish entry as received, forwarded as is


class RouterState:
    """State and shared helpers; see :class:`~p2pshard.core.gossip.router.GossipRouter`."""

    def __init__(
        self,
        peer_id: bytes,
        config: GossipConfig,
        rng: random.Random,
        signer: Signer | None = None,
        verifier: Verifier | None = None,
    ) -> None:
        if signer is not None and signer.peer_id != peer_id:
            raise ValueError("signer.peer_id differs from the router's peer_id")
        self.peer_id = peer_id
        self.config = config
        self.rng = rng
        self.signer = signer
        self.verifier: Verifier = verifier if verifier is not None else LibP2PVerifier()
        self.stats = RouterStats()
        self.thresholds = config.score_thresholds if config.scoring else _ZERO_THRESHOLDS
        self.scorer: PeerScore | None = (
            PeerScore(config.score_params, config.seen_ttl) if config.score_params is not None else None
        )
        self._now = 0.0
        self._ticks = 0
        self._peers: dict[bytes, PeerState] = {}
        self._topics: dict[str, set[bytes]] = {}  # topic -> subscribed peers (any kind)
        self._flood: dict[str, set[bytes]] = {}  # topic -> floodsub and direct peers in it
        self._subscriptions: set[str] = set()
        self._recent_unsub: dict[str, float] = {}
        self._mesh: dict[str, set[bytes]] = {}
        self._fanout: dict[str, set[bytes]] = {}
        self._fanout_last_pub: dict[str, float] = {}
        self._backoff: dict[str, dict[bytes, float]] = {}
        self._seen: TimeCache[bytes] = TimeCache(config.seen_ttl)
        self._mcache = MessageCache(config.history_length, config.history_gossip)
        self._promises: dict[bytes, dict[bytes, float]] = {}
        self._pending: dict[bytes, PendingValidation] = {}
        self._validators: dict[str, Validator] = {}
        self._async_topics: set[str] = set()
        self._seqno = rng.getrandbits(63)
        self._dirty: dict[bytes, PeerState] = {}
        self._cmds: list[Command] = []
        # early IDONTWANT (frame_head): ids announced before their message was in, and per
        # subscribed topic whether its message id is ``from || seqno`` (known from a frame's head)
        self._announced: TimeCache[bytes] = TimeCache(
            config.idontwant_ttl_heartbeats * config.heartbeat_interval
        )
        self._head_ids: dict[str, bool] = {}
        # the RPC being handled, so a new message is forwarded as the bytes it came in
        self._rpc_data = b""
        self._rpc_spans: list[tuple[int, int]] | None = None

    # ---------------------------------------------------------------- helpers
    def _tick_time(self, now: float) -> None:
        if now > self._now:
            self._now = now

    def _score(self, peer_id: bytes) -> float:
        scorer = self.scorer
        return scorer.score(peer_id, self._now) if scorer is not None else 0.0

    def _drop(self, reason: DropReason, count: int = 1) -> None:
        self.stats.dropped[reason] += count

    def _reject(
        self, peer_id: bytes, reason: DropReason, detail: str = "", penalty: float = 0.0, count: int = 1
    ) -> None:
        """A peer misbehaved: count, optionally add a P7 penalty, and report it."""
        self.stats.dropped[reason] += count
        if penalty and self.scorer is not None:
            self.scorer.add_penalty(peer_id, penalty)
        self._cmds.append(Rejected(peer_id, reason, detail))

    def _in_backoff(self, topic: str, peer_id: bytes, slack: float = 0.0) -> bool:
        table = self._backoff.get(topic)
        if table is None:
            return False
        expire = table.get(peer_id)
        return expire is not None and self._now < expire + slack

    def _add_backoff(self, peer_id: bytes, topic: str, seconds: float) -> None:
        table = self._backoff.setdefault(topic, {})
        expire = self._now + min(seconds, _MAX_BACKOFF)
        if table.get(peer_id, 0.0) < expire:
            table[peer_id] = expire

    def _mesh_candidates(
        self, topic: str, exclude: set[bytes], min_score: float, outbound_only: bool = False
    ) -> list[bytes]:
        """Gossipsub peers of ``topic`` we may graft (not excluded, direct, backed off, low)."""
        out = []
        peers = self._peers
        slack = self.config.backoff_slack
        for pid in self._topics.get(topic, ()):
            if pid in exclude:
                continue
            p = peers[pid]
            if p.kind < PeerKind.GOSSIPSUB_V10 or p.direct or (outbound_only and not p.outbound):
                continue
            if self._in_backoff(topic, pid, slack) or self._score(pid) < min_score:
                continue
            out.append(pid)
        return out

    def _conclude(
        self,
        msg_id: bytes,
        message: GossipMessage,
        pb: rpc_pb2.Message,
        source: bytes,
        result: ValidationResult,
        piece: bytes | None = None,
    ) -> None:
        """Act on a validation verdict (implemented by the router's message path)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- outbox
    def _enqueue_msg(self, peer: PeerState, piece: bytes) -> None:
        peer.out_msgs.append(piece)
        peer.out_msgs_size += len(piece)
        self._dirty[peer.id] = peer

    def _control(self, peer: PeerState) -> rpc_pb2.ControlMessage:
        ctrl = peer.out_ctrl
        if ctrl is None:
            ctrl = peer.out_ctrl = rpc_pb2.ControlMessage()
            self._dirty[peer.id] = peer
        return ctrl

    def _graft(self, peer: PeerState, topic: str, mesh: set[bytes]) -> None:
        """Add ``peer`` to our mesh for ``topic`` and tell it with a GRAFT."""
        mesh.add(peer.id)
        if self.scorer is not None:
            self.scorer.graft(peer.id, topic, self._now)
        self._control(peer).graft.add(topicID=topic)
        self.stats.events["graft_sent"] += 1

    def _send_prune(self, peer: PeerState, topic: str, do_px: bool, backoff: float) -> None:
        """PRUNE ``peer`` from ``topic`` (v1.1+: with backoff, and PX when asked)."""
        self._add_backoff(peer.id, topic, backoff)
        prune = self._control(peer).prune.add(topicID=topic)
        self.stats.events["prune_sent"] += 1
        if not peer.kind.supports_px:
            return
        prune.backoff = int(backoff)
        if do_px and self.config.do_px and self.config.prune_peers:
            cands = [
                pid
                for pid in self._topics.get(topic, ())
                if pid != peer.id and self._peers[pid].kind.is_gossipsub and self._score(pid) >= 0
            ]
            if len(cands) > self.config.prune_peers:
                cands = self.rng.sample(cands, self.config.prune_peers)
            for pid in cands:
                prune.peers.add(peerID=pid)

    def _remove_from_mesh(self, peer_id: bytes, topic: str, mesh: set[bytes]) -> None:
        mesh.discard(peer_id)
        if self.scorer is not None:
            self.scorer.prune(peer_id, topic)

    def _finish(self) -> list[Command]:
        """End of an input call: outboxes become frames, followed by the other commands."""
        out: list[Command] = []
        limit = self.config.max_rpc_size
        for peer in self._dirty.values():
            msgs = peer.out_msgs
            if not peer.out_subs and peer.out_ctrl is None and peer.out_msgs_size <= limit:
                # fast path: only messages, one frame
                data = msgs[0] if len(msgs) == 1 else b"".join(msgs)
                out.append(SendRpc(peer.id, data, len(msgs)))
                peer.out_msgs = []
                peer.out_msgs_size = 0
                continue
            head = b"".join(peer.out_subs) if peer.out_subs else b""
            if peer.out_ctrl is not None:
                head += control_piece(peer.out_ctrl)
            if head and msgs and peer.out_msgs_size > _SEPARATE_CONTROL_ABOVE:
                out.append(SendRpc(peer.id, head, 0))  # small control first, then bulk
                head = b""
            cur: list[bytes] = [head] if head else []
            size = len(head)
            count = 0
            for piece in msgs:
                if cur and size + len(piece) > limit:
                    out.append(SendRpc(peer.id, b"".join(cur), count))
                    cur, size, count = [], 0, 0
                cur.append(piece)
                size += len(piece)
                count += 1
            if cur:
                out.append(SendRpc(peer.id, cur[0] if len(cur) == 1 else b"".join(cur), count))
            peer.out_subs = []
            peer.out_msgs = []
            peer.out_msgs_size = 0
            peer.out_ctrl = None
        self._dirty.clear()
        self.stats.events["rpc_sent"] += len(out)
        if self._cmds:
            out.extend(self._cmds)
            self._cmds = []
        return out
