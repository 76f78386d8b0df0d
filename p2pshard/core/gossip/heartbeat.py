"""The heartbeat: mesh maintenance, fanout upkeep, gossip emission and housekeeping.

Order per heartbeat (as in go-libp2p-pubsub): refresh scores; penalise broken IWANT promises;
reset per-heartbeat budgets; expire async validations; per mesh topic drop negative peers, fill
below ``d_low``, trim above ``d_high`` (keeping the ``d_score`` best and ``d_out`` outbound),
top up outbound peers, graft opportunistically; expire and refill fanout; emit IHAVE gossip;
clear stale backoffs and seen ids; shift the message cache.
"""

from __future__ import annotations

from collections import Counter

from .commands import Command, Connect
from .message import ValidationResult
from .state import RouterState
from .stats import DropReason


class HeartbeatMixin(RouterState):
    """Mixin of :class:`GossipRouter` holding ``heartbeat``."""

    def heartbeat(self, now: float) -> list[Command]:
        """Run one heartbeat at time ``now``; call every ``config.heartbeat_interval`` seconds."""
        self._tick_time(now)
        self._ticks += 1
        cfg = self.config
        if self.scorer is not None:
            self.scorer.refresh(self._now)
            self._penalise_broken_promises()
        self._reset_budgets()
        self._expire_validations()
        gossip_ids = self._mcache.gossip_ids_by_topic()
        for topic, mesh in self._mesh.items():
            self._maintain_mesh(topic, mesh)
            ids = gossip_ids.get(topic)
            if ids:
                self._emit_gossip(topic, ids, mesh)
        self._maintain_fanout(gossip_ids)
        if self._ticks % 15 == 0:
            self._clear_backoffs()
        if self._ticks == 1 or self._ticks % cfg.direct_connect_ticks == 0:
            for pid in cfg.direct_peers:
                if pid not in self._peers and pid != self.peer_id:
                    self._cmds.append(Connect(pid, None, "direct"))
        self._seen.sweep(self._now)
        self._announced.sweep(self._now)
        for topic in [t for t, until in self._recent_unsub.items() if until <= self._now]:
            del self._recent_unsub[topic]
        self._mcache.shift()
        self.stats.events["heartbeat"] += 1
        return self._finish()

    # ---------------------------------------------------------------- budgets
    def _penalise_broken_promises(self) -> None:
        now = self._now
        broken: Counter[bytes] = Counter()
        promises = self._promises
        for mid in list(promises):
            peers = promises[mid]
            for pid in [p for p, expire in peers.items() if expire <= now]:
                del peers[pid]
                broken[pid] += 1
            if not peers:
                del promises[mid]
        if broken and self.scorer is not None:
            for pid, n in broken.items():
                self.scorer.add_penalty(pid, float(n))
            self._drop(DropReason.BROKEN_PROMISE, sum(broken.values()))

    def _reset_budgets(self) -> None:
        ttl = self.config.idontwant_ttl_heartbeats
        oldest = self._ticks - ttl
        for peer in self._peers.values():
            peer.ihave_count = 0
            peer.iasked = 0
            peer.iwant_served = 0
            peer.iwant_penalised = False
            peer.idontwant_count = 0
            dont = peer.dont_send
            if dont:
                for mid in [m for m, tick in dont.items() if tick <= oldest]:
                    del dont[mid]

    def _expire_validations(self) -> None:
        pending = self._pending
        if not pending:
            return
        cutoff = self._now - self.config.validation_timeout
        expired = []
        for mid, p in pending.items():
            if p.started > cutoff:
                break
            expired.append(mid)
        for mid in expired:
            p = pending.pop(mid)
            self._drop(DropReason.VALIDATION_TIMEOUT)
            self._conclude(mid, p.message, p.pb, p.source, ValidationResult.IGNORE)

    # ------------------------------------------------------------------ mesh
    def _maintain_mesh(self, topic: str, mesh: set[bytes]) -> None:
        cfg = self.config
        peers = self._peers
        if self.scorer is not None:
            for pid in [p for p in mesh if self._score(p) < 0]:
                self._remove_from_mesh(pid, topic, mesh)
                self._send_prune(peers[pid], topic, False, cfg.prune_backoff)
        if len(mesh) < cfg.d_low:
            cands = self._mesh_candidates(topic, mesh, 0.0)
            need = cfg.d - len(mesh)
            for pid in self.rng.sample(cands, min(need, len(cands))):
                self._graft(peers[pid], topic, mesh)
        if len(mesh) > cfg.d_high:
            self._trim_mesh(topic, mesh)
        if len(mesh) >= cfg.d_low:
            outbound = sum(1 for p in mesh if peers[p].outbound)
            if outbound < cfg.d_out:
                cands = self._mesh_candidates(topic, mesh, 0.0, outbound_only=True)
                for pid in self.rng.sample(cands, min(cfg.d_out - outbound, len(cands))):
                    self._graft(peers[pid], topic, mesh)
        if self.scorer is not None and self._ticks % cfg.opportunistic_graft_ticks == 0 and len(mesh) > 1:
            scores = sorted(self._score(p) for p in mesh)
            median = scores[len(scores) // 2]
            if median < self.thresholds.opportunistic_graft_threshold:
                cands = [p for p in self._mesh_candidates(topic, mesh, 0.0) if self._score(p) > median]
                n = min(cfg.opportunistic_graft_peers, len(cands))
                for pid in self.rng.sample(cands, n):
                    self._graft(peers[pid], topic, mesh)
                self.stats.events["opportunistic_graft"] += n

    def _trim_mesh(self, topic: str, mesh: set[bytes]) -> None:
        """Keep ``d`` peers: the ``d_score`` best, the rest at random, ``d_out`` outbound."""
        cfg = self.config
        peers = self._peers
        ordered = list(mesh)
        self.rng.shuffle(ordered)
        if self.scorer is not None:
            ordered.sort(key=self._score, reverse=True)
        best, rest = ordered[: cfg.d_score], ordered[cfg.d_score :]
        self.rng.shuffle(rest)
        keep = best + rest[: cfg.d - cfg.d_score]
        outbound = sum(1 for p in keep if peers[p].outbound)
        if outbound < cfg.d_out:
            extra = [p for p in ordered if p not in keep and peers[p].outbound]
            extra = extra[: cfg.d_out - outbound]
            # replace inbound peers from the random part (never the d_score best)
            for i in range(len(keep) - 1, cfg.d_score - 1, -1):
                if not extra:
                    break
                if not peers[keep[i]].outbound:
                    keep[i] = extra.pop(0)
        keep_set = set(keep)
        for pid in [p for p in mesh if p not in keep_set]:
            self._remove_from_mesh(pid, topic, mesh)
            self._send_prune(peers[pid], topic, True, cfg.prune_backoff)

    # ---------------------------------------------------------------- fanout
    def _maintain_fanout(self, gossip_ids: dict[str, list[bytes]]) -> None:
        cfg = self.config
        now = self._now
        for topic in [t for t, last in self._fanout_last_pub.items() if last + cfg.fanout_ttl <= now]:
            del self._fanout_last_pub[topic]
            self._fanout.pop(topic, None)
        threshold = self.thresholds.publish_threshold
        for topic, fan in self._fanout.items():
            subscribed = self._topics.get(topic, set())
            for pid in [p for p in fan if p not in subscribed or self._score(p) < threshold]:
                fan.discard(pid)
            if len(fan) < cfg.d:
                cands = self._mesh_candidates(topic, fan, threshold)
                fan.update(self.rng.sample(cands, min(cfg.d - len(fan), len(cands))))
            ids = gossip_ids.get(topic)
            if ids:
                self._emit_gossip(topic, ids, fan)

    # ---------------------------------------------------------------- gossip
    def _emit_gossip(self, topic: str, ids: list[bytes], exclude: set[bytes]) -> None:
        cfg = self.config
        threshold = self.thresholds.gossip_threshold
        peers = self._peers
        cands = [
            pid
            for pid in self._topics.get(topic, ())
            if pid not in exclude
            and peers[pid].kind.is_gossipsub
            and not peers[pid].direct
            and self._score(pid) >= threshold
        ]
        target = max(cfg.d_lazy, int(cfg.gossip_factor * len(cands)))
        if len(cands) > target:
            cands = self.rng.sample(cands, target)
        for pid in cands:
            send = ids
            if len(ids) > cfg.max_ihave_length:
                send = self.rng.sample(ids, cfg.max_ihave_length)
            self._control(peers[pid]).ihave.add(topicID=topic, messageIDs=send)
        self.stats.events["ihave_sent"] += len(cands)

    def _clear_backoffs(self) -> None:
        cutoff = self._now - self.config.backoff_slack
        for topic in list(self._backoff):
            table = self._backoff[topic]
            for pid in [p for p, expire in table.items() if expire <= cutoff]:
                del table[pid]
            if not table:
                del self._backoff[topic]
