"""Sending IDONTWANT (gossipsub v1.2), as early as the message id can be known.

v1.2 asks a node to tell its peers IDONTWANT for a large message as soon as it receives it,
before validation, so that peers holding the message skip their copies. We send it on the first
receipt of the whole message, and earlier still when the message was written id-first (as we
publish, :func:`.protocol.encode_message`): the driver shows the router the head of a frame
still arriving (:meth:`IDontWantMixin.frame_head`).
"""

from __future__ import annotations

from .commands import Command
from .message import GossipMessage, default_message_id
from .protocol import PeerKind, parse_publish_head
from .state import RouterState


class IDontWantMixin(RouterState):
    """Mixin of :class:`~p2pshard.core.gossip.router.GossipRouter`: the sending side of IDONTWANT."""

    def _send_idontwant(self, topic: str, mid: bytes, source: bytes) -> None:
        """IDONTWANT ``mid`` to every v1.2 peer that might send it to us: the topic's subscribers
        (mesh peers forward it; others may have us in their mesh, or publish to us), not only
        our mesh as go does -- a few dozen bytes each against a copy of a large message. The
        author too: a driver that checks IDONTWANT when a queued copy's turn comes (ours does)
        can still skip its own publish to us if its queue is backed up."""
        peers = self._peers
        sent = False
        for pid in self._topics.get(topic, ()):
            if pid != source:
                peer = peers[pid]
                if peer.kind >= PeerKind.GOSSIPSUB_V12:
                    self._control(peer).idontwant.add(messageIDs=[mid])
                    sent = True
        if sent:
            self.stats.events["idontwant_sent"] += 1

    def frame_head(self, peer_id: bytes, head: bytes, now: float) -> list[Command]:
        """The first bytes of an RPC frame from ``peer_id`` whose rest is still arriving.

        gossipsub v1.2 asks for IDONTWANT as early as possible, before validation. When the frame
        starts with a message written id-first (:func:`.protocol.encode_message`, as we publish)
        on a subscribed topic whose message id is ``from || seqno``, at least
        ``idontwant_threshold`` bytes long and new to us, IDONTWANT goes out now rather than
        after the payload is in, so peers that hold the message skip their copies to us. The
        message itself is checked as usual once the frame is complete; this changes no state
        beyond remembering the id was announced (for ``idontwant_ttl_heartbeats``).
        """
        self._tick_time(now)
        cfg = self.config
        if not cfg.idontwant_threshold or peer_id not in self._peers:
            return []
        if self.scorer is not None and self._score(peer_id) < self.thresholds.graylist_threshold:
            return []  # handle_rpc will ignore the frame: so does its head
        parsed = parse_publish_head(head)
        if parsed is None:
            return []
        size, source, seqno, topic = parsed
        if size < cfg.idontwant_threshold or topic not in self._subscriptions:
            return []
        if not self._id_from_head(topic):
            return []
        mid = source + seqno
        if not source or not seqno or len(mid) > cfg.max_message_id_length or source == self.peer_id:
            return []
        if mid in self._seen or not self._announced.add(mid, self._now):
            return []
        self._send_idontwant(topic, mid, peer_id)
        self.stats.events["idontwant_early"] += 1
        return self._finish()

    def _id_from_head(self, topic: str) -> bool:
        """Whether ``topic``'s message id is ``from || seqno`` (the default, or a custom function
        that gives it for this topic: probed once, and dropped if a real message disagrees)."""
        known = self._head_ids.get(topic)
        if known is None:
            fn = self.config.message_id_fn
            if fn is default_message_id:
                known = True
            else:
                src, seq = b"\x00\x02\x08\x01", b"\x00\x00\x00\x00\x00\x00\x00\x07"
                try:
                    known = all(
                        fn(GossipMessage(topic, data, src, seq)) == src + seq for data in (b"", b"\x5a" * 64)
                    )
                except Exception:
                    known = False
            self._head_ids[topic] = known
        return known

    def declined(self, peer_id: bytes, msg_id: bytes) -> bool:
        """Whether ``peer_id`` told us IDONTWANT for ``msg_id`` (v1.2), still honoured: a driver
        checks it again when a queued copy's turn to be written comes."""
        peer = self._peers.get(peer_id)
        return peer is not None and msg_id in peer.dont_send
