"""Handlers for received control messages: IHAVE, IWANT, GRAFT, PRUNE, IDONTWANT.

Each follows gossipsub v1.1/v1.2 and go-libp2p-pubsub's spam hardening: gossip is exchanged
only above the gossip threshold and within per-heartbeat budgets, a GRAFT during backoff costs a
P7 penalty (two if it comes within ``graft_flood_threshold`` of the PRUNE), PX is accepted only
from peers at or above ``accept_px_threshold``.
"""

from __future__ import annotations

from collections.abc import Iterable

from p2pshard.core.wire import rpc_pb2

from .commands import Connect
from .state import PeerState, RouterState
from .stats import DropReason

_MAX_BACKOFF_FROM_PEER = 3600.0


class ControlHandlers(RouterState):
    """Mixin of :class:`GossipRouter`: the control-message half of ``handle_rpc``."""

    def _handle_control(self, peer: PeerState, ctrl: rpc_pb2.ControlMessage) -> None:
        if ctrl.ihave:
            self._handle_ihave(peer, ctrl.ihave)
        if ctrl.iwant:
            self._handle_iwant(peer, ctrl.iwant)
        if ctrl.graft:
            self._handle_graft(peer, ctrl.graft)
        if ctrl.prune:
            self._handle_prune(peer, ctrl.prune)
        if ctrl.idontwant:
            self._handle_idontwant(peer, ctrl.idontwant)

    # ------------------------------------------------------------------ IHAVE
    def _handle_ihave(self, peer: PeerState, ihaves: Iterable[rpc_pb2.ControlIHave]) -> None:
        cfg = self.config
        if self._score(peer.id) < self.thresholds.gossip_threshold:
            self._drop(DropReason.IHAVE_LOW_SCORE)
            return
        peer.ihave_count += 1
        if peer.ihave_count > cfg.max_ihave_messages:
            self._drop(DropReason.IHAVE_TOO_MANY)
            return
        budget = cfg.max_ihave_length - peer.iasked
        if budget <= 0:
            self._drop(DropReason.IHAVE_IDS_OVER_LIMIT)
            return
        seen = self._seen
        mesh = self._mesh
        max_id = cfg.max_message_id_length
        want: dict[bytes, None] = {}
        over = 0
        for ih in ihaves:
            if ih.topicID not in mesh:
                self._drop(DropReason.IHAVE_UNKNOWN_TOPIC)
                continue
            # usually every id is already seen: filter at comprehension speed first
            for mid in [m for m in ih.messageIDs if m not in seen]:
                if mid in want or len(mid) > max_id:
                    continue
                if len(want) >= cfg.max_ihave_length:
                    over += 1
                    continue
                want[mid] = None
        if over:
            self._drop(DropReason.IHAVE_IDS_OVER_LIMIT, over)
        if not want:
            return
        ids = list(want)
        if len(ids) > budget:
            self.rng.shuffle(ids)
            self._drop(DropReason.IHAVE_IDS_OVER_LIMIT, len(ids) - budget)
            ids = ids[:budget]
        peer.iasked += len(ids)
        self._control(peer).iwant.add(messageIDs=ids)
        self.stats.events["iwant_sent_ids"] += len(ids)
        if self.scorer is not None:
            # track one random id: the peer promised it and must deliver within the followup
            mid = ids[self.rng.randrange(len(ids))]
            self._promises.setdefault(mid, {}).setdefault(peer.id, self._now + cfg.iwant_followup_time)

    # ------------------------------------------------------------------ IWANT
    def _handle_iwant(self, peer: PeerState, iwants: Iterable[rpc_pb2.ControlIWant]) -> None:
        if self._score(peer.id) < self.thresholds.gossip_threshold:
            self._drop(DropReason.IWANT_LOW_SCORE)
            return
        cfg = self.config
        mcache = self._mcache
        unknown = retrans = over = served = 0
        for iw in iwants:
            for mid in iw.messageIDs:
                if peer.iwant_served >= cfg.max_iwant_per_heartbeat:
                    over += 1
                    continue
                entry, count = mcache.get_for_peer(mid, peer.id)
                if entry is None:
                    unknown += 1
                    continue
                if count > cfg.gossip_retransmission:
                    retrans += 1
                    continue
                peer.iwant_served += 1
                served += 1
                self._enqueue_msg(peer, entry.piece)
        if unknown:
            self._drop(DropReason.IWANT_UNKNOWN_MESSAGE, unknown)
        if retrans:
            self._drop(DropReason.IWANT_RETRANSMISSION_LIMIT, retrans)
        if over:
            if peer.iwant_penalised:
                self._drop(DropReason.IWANT_OVER_LIMIT, over)
            else:
                peer.iwant_penalised = True
                detail = f"{over} ids over the per-heartbeat budget"
                self._reject(peer.id, DropReason.IWANT_OVER_LIMIT, detail, penalty=1.0, count=over)
        self.stats.events["iwant_served"] += served

    # ------------------------------------------------------------------ GRAFT
    def _handle_graft(self, peer: PeerState, grafts: Iterable[rpc_pb2.ControlGraft]) -> None:
        cfg = self.config
        now = self._now
        prunes: list[tuple[str, bool]] = []
        for g in grafts:
            topic = g.topicID
            mesh = self._mesh.get(topic) if isinstance(topic, str) else None
            if mesh is None:
                self._drop(DropReason.GRAFT_UNKNOWN_TOPIC)
                continue
            if peer.id in mesh:
                continue
            if peer.direct:
                self._reject(peer.id, DropReason.GRAFT_DIRECT_PEER, topic)
                prunes.append((topic, False))
                continue
            expire = self._backoff.get(topic, {}).get(peer.id)
            if expire is not None and now < expire:
                penalty = 1.0
                if now < expire + cfg.graft_flood_threshold - cfg.prune_backoff:
                    penalty += 1.0  # grafted right after being pruned: flooding
                self._reject(peer.id, DropReason.GRAFT_BACKOFF, topic, penalty=penalty)
                prunes.append((topic, False))
                continue
            if self._score(peer.id) < 0:
                self._drop(DropReason.GRAFT_NEGATIVE_SCORE)
                prunes.append((topic, False))
                continue
            if len(mesh) >= cfg.d_high and not peer.outbound:
                self._drop(DropReason.GRAFT_MESH_FULL)
                prunes.append((topic, True))
                continue
            mesh.add(peer.id)
            if self.scorer is not None:
                self.scorer.graft(peer.id, topic, now)
            self.stats.events["graft_accepted"] += 1
        for topic, px in prunes:
            self._send_prune(peer, topic, px, cfg.prune_backoff)

    # ------------------------------------------------------------------ PRUNE
    def _handle_prune(self, peer: PeerState, prunes: Iterable[rpc_pb2.ControlPrune]) -> None:
        cfg = self.config
        for pr in prunes:
            topic = pr.topicID
            mesh = self._mesh.get(topic) if isinstance(topic, str) else None
            if mesh is None:
                continue
            if peer.id in mesh:
                self._remove_from_mesh(peer.id, topic, mesh)
                self.stats.events["pruned_by_peer"] += 1
            backoff = float(pr.backoff) if pr.HasField("backoff") and pr.backoff > 0 else cfg.prune_backoff
            self._add_backoff(peer.id, topic, min(backoff, _MAX_BACKOFF_FROM_PEER))
            if pr.peers:
                self._px_connect(peer, pr.peers)

    def _px_connect(self, peer: PeerState, infos: Iterable[rpc_pb2.PeerInfo]) -> None:
        if self._score(peer.id) < self.thresholds.accept_px_threshold:
            self._drop(DropReason.PRUNE_PX_LOW_SCORE)
            return
        cands = [
            pi for pi in infos if pi.peerID and pi.peerID != self.peer_id and pi.peerID not in self._peers
        ]
        limit = self.config.prune_peers
        if len(cands) > limit:
            self._drop(DropReason.PRUNE_PX_OVER_LIMIT, len(cands) - limit)
            cands = self.rng.sample(cands, limit)
        for pi in cands:
            record = pi.signedPeerRecord if pi.HasField("signedPeerRecord") else None
            self._cmds.append(Connect(pi.peerID, record, "px"))

    # -------------------------------------------------------------- IDONTWANT
    def _handle_idontwant(self, peer: PeerState, idws: Iterable[rpc_pb2.ControlIDontWant]) -> None:
        cfg = self.config
        tick = self._ticks
        over = 0
        dont = peer.dont_send
        for idw in idws:
            for mid in idw.messageIDs:
                if peer.idontwant_count >= cfg.max_idontwant_messages:
                    over += 1
                    continue
                peer.idontwant_count += 1
                if len(mid) <= cfg.max_message_id_length:
                    dont[mid] = tick
        if over:
            self._drop(DropReason.IDONTWANT_OVER_LIMIT, over)
