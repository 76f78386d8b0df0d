"""Peer scoring of gossipsub v1.1 (P1..P7), as a state machine driven by the router.

The score of a peer is
``min(sum_t w_t * (P1 w1 + P2 w2 + P3 w3 + P3b w3b + P4 w4), topic_score_cap) + P5 w5 + P6 w6 +
P7 w7`` with P3, P4, P6, P7 squared as the spec defines. Counters decay every
``decay_interval`` (run from the heartbeat); a disconnected peer's stats are kept for
``retain_score`` so that reconnecting does not wash a bad score clean.

Scores are cached per peer; any change to a peer's counters drops its cached value, and the
whole cache is dropped on every ``refresh`` (P1 and the P5 hook move with time).
"""

from __future__ import annotations

import ipaddress
from enum import Enum

from .score_params import PeerScoreParams, TopicScoreParams


class _Status(Enum):
    PENDING = 0
    VALID = 1
    INVALID = 2
    IGNORED = 3


class _TopicStats:
    __slots__ = (
        "first_deliveries",
        "graft_time",
        "in_mesh",
        "invalid_deliveries",
        "mesh_active",
        "mesh_deliveries",
        "mesh_failure_penalty",
    )

    def __init__(self) -> None:
        self.in_mesh = False
        self.graft_time = 0.0
        self.mesh_active = False
        self.first_deliveries = 0.0
        self.mesh_deliveries = 0.0
        self.mesh_failure_penalty = 0.0
        self.invalid_deliveries = 0.0


class _PeerStats:
    __slots__ = ("behaviour_penalty", "connected", "expire", "ip", "topics")

    def __init__(self, ip: str | None) -> None:
        self.connected = True
        self.expire = 0.0
        self.ip = ip
        self.topics: dict[str, _TopicStats] = {}
        self.behaviour_penalty = 0.0


class _Delivery:
    __slots__ = ("expire", "peers", "status", "topic", "validated")

    def __init__(self, topic: str, expire: float) -> None:
        self.topic = topic
        self.status = _Status.PENDING
        self.validated = 0.0
        self.expire = expire
        self.peers: set[bytes] = set()


class PeerScore:
    """Score bookkeeping for all peers of one router."""

    def __init__(self, params: PeerScoreParams, record_ttl: float) -> None:
        self.params = params
        self._record_ttl = record_ttl
        self._peers: dict[bytes, _PeerStats] = {}
        self._ips: dict[str, set[bytes]] = {}
        self._deliveries: dict[bytes, _Delivery] = {}
        self._cache: dict[bytes, float] = {}
        self._last_decay: float | None = None
        self._whitelist = params.ip_colocation_factor_whitelist

    # ----------------------------------------------------------------- peers
    def add_peer(self, peer: bytes, ip: str | None, now: float) -> None:
        """A peer connected; revive retained stats if any."""
        stats = self._peers.get(peer)
        if stats is None:
            stats = self._peers[peer] = _PeerStats(ip)
        else:
            stats.connected = True
            self._drop_ip(peer, stats.ip)
            stats.ip = ip
        if ip is not None:
            group = self._ips.setdefault(ip, set())
            group.add(peer)
            for other in group:
                self._cache.pop(other, None)
        self._cache.pop(peer, None)

    def remove_peer(self, peer: bytes, now: float) -> None:
        """A peer disconnected; keep non-positive stats for ``retain_score`` seconds."""
        stats = self._peers.get(peer)
        if stats is None:
            return
        if self.score(peer, now) > 0 or self.params.retain_score == 0:
            self._drop_ip(peer, stats.ip)
            del self._peers[peer]
            self._cache.pop(peer, None)
            return
        for topic, ts in stats.topics.items():
            ts.first_deliveries = 0.0
            tp = self.params.topics.get(topic)
            if tp is not None and ts.in_mesh:
                self._apply_mesh_failure(ts, tp)
            ts.in_mesh = False
            ts.mesh_active = False
        stats.connected = False
        stats.expire = now + self.params.retain_score
        self._cache.pop(peer, None)

    def _drop_ip(self, peer: bytes, ip: str | None) -> None:
        if ip is None:
            return
        group = self._ips.get(ip)
        if group is not None:
            group.discard(peer)
            for other in group:
                self._cache.pop(other, None)
            if not group:
                del self._ips[ip]

    def _topic_stats(self, peer: bytes, topic: str) -> tuple[_TopicStats, TopicScoreParams] | None:
        tp = self.params.topics.get(topic)
        if tp is None:
            return None
        stats = self._peers.get(peer)
        if stats is None:
            return None
        ts = stats.topics.get(topic)
        if ts is None:
            ts = stats.topics[topic] = _TopicStats()
        self._cache.pop(peer, None)
        return ts, tp

    # ------------------------------------------------------------------ mesh
    def graft(self, peer: bytes, topic: str, now: float) -> None:
        got = self._topic_stats(peer, topic)
        if got is not None:
            ts, _ = got
            ts.in_mesh = True
            ts.graft_time = now
            ts.mesh_active = False

    def prune(self, peer: bytes, topic: str) -> None:
        got = self._topic_stats(peer, topic)
        if got is not None:
            ts, tp = got
            self._apply_mesh_failure(ts, tp)
            ts.in_mesh = False
            ts.mesh_active = False  # the deficit now lives on as the sticky P3b

    @staticmethod
    def _apply_mesh_failure(ts: _TopicStats, tp: TopicScoreParams) -> None:
        threshold = tp.mesh_message_deliveries_threshold
        if ts.mesh_active and ts.mesh_deliveries < threshold:
            deficit = threshold - ts.mesh_deliveries
            ts.mesh_failure_penalty += deficit * deficit

    # -------------------------------------------------------------- messages
    def validate_message(self, msg_id: bytes, topic: str, now: float) -> None:
        """First reception of a message (before validation): open its delivery record."""
        if msg_id not in self._deliveries:
            self._deliveries[msg_id] = _Delivery(topic, now + self._record_ttl)

    def deliver_message(self, peer: bytes, msg_id: bytes, now: float) -> None:
        """The message ``peer`` delivered first was accepted: P2 for it, P3 for the others."""
        rec = self._deliveries.get(msg_id)
        if rec is None or rec.status is not _Status.PENDING:
            return
        rec.status = _Status.VALID
        rec.validated = now
        self._mark_first(peer, rec.topic)
        for other in rec.peers:
            if other != peer:
                self._mark_duplicate(other, rec.topic)

    def reject_message(self, peer: bytes, msg_id: bytes | None, topic: str, now: float) -> None:
        """A message failed validation (REJECT): P4 for ``peer`` and everyone who sent it.

        ``msg_id=None`` is for messages rejected before they got an id (bad signature): only
        ``peer`` is penalised, and no record is kept because the id may be forged.
        """
        if msg_id is None:
            self._mark_invalid(peer, topic)
            return
        rec = self._deliveries.get(msg_id)
        if rec is None:
            rec = self._deliveries[msg_id] = _Delivery(topic, now + self._record_ttl)
        if rec.status is not _Status.PENDING:
            return
        rec.status = _Status.INVALID
        self._mark_invalid(peer, topic)
        for other in rec.peers:
            if other != peer:
                self._mark_invalid(other, topic)
        rec.peers.add(peer)  # later copies from the same peers are not counted again

    def ignore_message(self, msg_id: bytes) -> None:
        """Validation said IGNORE: nobody is rewarded or penalised."""
        rec = self._deliveries.get(msg_id)
        if rec is not None and rec.status is _Status.PENDING:
            rec.status = _Status.IGNORED
            rec.peers.clear()

    def duplicate_message(self, peer: bytes, msg_id: bytes, now: float) -> None:
        """``peer`` sent a message we had already seen."""
        rec = self._deliveries.get(msg_id)
        if rec is None or peer in rec.peers:
            return
        status = rec.status
        if status is _Status.PENDING:
            rec.peers.add(peer)
        elif status is _Status.VALID:
            rec.peers.add(peer)
            tp = self.params.topics.get(rec.topic)
            if tp is not None and now - rec.validated <= tp.mesh_message_deliveries_window:
                self._mark_duplicate(peer, rec.topic)
        elif status is _Status.INVALID:
            rec.peers.add(peer)
            self._mark_invalid(peer, rec.topic)

    def _mark_first(self, peer: bytes, topic: str) -> None:
        got = self._topic_stats(peer, topic)
        if got is None:
            return
        ts, tp = got
        ts.first_deliveries = min(ts.first_deliveries + 1, tp.first_message_deliveries_cap)
        if ts.in_mesh:
            ts.mesh_deliveries = min(ts.mesh_deliveries + 1, tp.mesh_message_deliveries_cap)

    def _mark_duplicate(self, peer: bytes, topic: str) -> None:
        got = self._topic_stats(peer, topic)
        if got is not None:
            ts, tp = got
            if ts.in_mesh:
                ts.mesh_deliveries = min(ts.mesh_deliveries + 1, tp.mesh_message_deliveries_cap)

    def _mark_invalid(self, peer: bytes, topic: str) -> None:
        got = self._topic_stats(peer, topic)
        if got is not None:
            got[0].invalid_deliveries += 1

    # --------------------------------------------------------------- penalty
    def add_penalty(self, peer: bytes, count: float = 1.0) -> None:
        """P7 behaviour penalty (broken IWANT promises, GRAFT in backoff, malformed RPCs...)."""
        stats = self._peers.get(peer)
        if stats is not None:
            stats.behaviour_penalty += count
            self._cache.pop(peer, None)

    # ----------------------------------------------------------------- score
    def score(self, peer: bytes, now: float) -> float:
        cached = self._cache.get(peer)
        if cached is not None:
            return cached
        stats = self._peers.get(peer)
        if stats is None:
            return 0.0
        value = self._compute(peer, stats, now)
        self._cache[peer] = value
        return value

    def _compute(self, peer: bytes, stats: _PeerStats, now: float) -> float:
        params = self.params
        score = 0.0
        for topic, ts in stats.topics.items():
            tp = params.topics.get(topic)
            if tp is None:
                continue
            s = 0.0
            if ts.in_mesh and tp.time_in_mesh_weight:
                p1 = min((now - ts.graft_time) / tp.time_in_mesh_quantum, tp.time_in_mesh_cap)
                s += max(p1, 0.0) * tp.time_in_mesh_weight
            s += ts.first_deliveries * tp.first_message_deliveries_weight
            if ts.mesh_active and ts.mesh_deliveries < tp.mesh_message_deliveries_threshold:
                deficit = tp.mesh_message_deliveries_threshold - ts.mesh_deliveries
                s += deficit * deficit * tp.mesh_message_deliveries_weight
            s += ts.mesh_failure_penalty * tp.mesh_failure_penalty_weight
            s += ts.invalid_deliveries * ts.invalid_deliveries * tp.invalid_message_deliveries_weight
            score += s * tp.topic_weight
        if params.topic_score_cap > 0 and score > params.topic_score_cap:
            score = params.topic_score_cap
        if params.app_specific_weight:
            score += params.app_specific_score(peer) * params.app_specific_weight
        if params.ip_colocation_factor_weight and stats.ip is not None:
            score += self._p6(stats.ip) * params.ip_colocation_factor_weight
        excess = stats.behaviour_penalty - params.behaviour_penalty_threshold
        if excess > 0:
            score += excess * excess * params.behaviour_penalty_weight
        return score

    def _p6(self, ip: str) -> float:
        if self._whitelist:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                addr = None
            if addr is not None and any(addr in net for net in self._whitelist):
                return 0.0
        surplus = len(self._ips.get(ip, ())) - self.params.ip_colocation_factor_threshold
        return surplus * surplus if surplus > 0 else 0.0

    # --------------------------------------------------------------- refresh
    def refresh(self, now: float) -> None:
        """Heartbeat hook: decay counters when due, forget expired peers and records."""
        self._cache.clear()
        params = self.params
        if self._last_decay is None:
            self._last_decay = now
        elif now - self._last_decay >= params.decay_interval:
            ticks = int((now - self._last_decay) / params.decay_interval)
            self._last_decay += ticks * params.decay_interval
            self._decay(now, min(ticks, 1000))
        expired = [p for p, s in self._peers.items() if not s.connected and s.expire <= now]
        for peer in expired:
            self._drop_ip(peer, self._peers.pop(peer).ip)
        deliveries = self._deliveries
        while deliveries:
            mid = next(iter(deliveries))
            if deliveries[mid].expire > now:
                break
            del deliveries[mid]

    def _decay(self, now: float, ticks: int) -> None:
        params = self.params
        zero = params.decay_to_zero
        for stats in self._peers.values():
            for topic, ts in stats.topics.items():
                tp = params.topics.get(topic)
                if tp is None:
                    continue
                ts.first_deliveries = _decayed(
                    ts.first_deliveries, tp.first_message_deliveries_decay**ticks, zero
                )
                ts.mesh_deliveries = _decayed(
                    ts.mesh_deliveries, tp.mesh_message_deliveries_decay**ticks, zero
                )
                ts.mesh_failure_penalty = _decayed(
                    ts.mesh_failure_penalty, tp.mesh_failure_penalty_decay**ticks, zero
                )
                ts.invalid_deliveries = _decayed(
                    ts.invalid_deliveries, tp.invalid_message_deliveries_decay**ticks, zero
                )
                if ts.in_mesh and now - ts.graft_time > tp.mesh_message_deliveries_activation:
                    ts.mesh_active = True
            stats.behaviour_penalty = _decayed(
                stats.behaviour_penalty, params.behaviour_penalty_decay**ticks, zero
            )

    # ----------------------------------------------------------- inspection
    def behaviour_penalty(self, peer: bytes) -> float:
        stats = self._peers.get(peer)
        return stats.behaviour_penalty if stats is not None else 0.0

    def invalid_deliveries(self, peer: bytes, topic: str) -> float:
        stats = self._peers.get(peer)
        ts = stats.topics.get(topic) if stats is not None else None
        return ts.invalid_deliveries if ts is not None else 0.0


def _decayed(value: float, factor: float, zero: float) -> float:
    value *= factor
    return 0.0 if value < zero else value
