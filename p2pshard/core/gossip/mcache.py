"""The gossipsub message cache: recent messages for IWANT replies and IHAVE gossip.

``history_length`` heartbeat windows are kept; IHAVE gossip advertises the newest
``history_gossip`` windows. ``shift()`` is called once per heartbeat. Each cached message keeps
its encoded ``publish`` piece so that IWANT answers reuse the bytes, and counts how often each
peer asked for it (``gossip_retransmission`` bounds IWANT abuse).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .message import GossipMessage


@dataclass(slots=True)
class CachedMessage:
    """A message in the cache: its decoded view, encoded ``RPC.publish`` piece and IWANT counts."""

    message: GossipMessage
    piece: bytes
    iwant_counts: dict[bytes, int] = field(default_factory=dict)


class MessageCache:
    """Sliding windows (newest first) of per-topic message-id lists over a dict of messages."""

    __slots__ = ("_gossip", "_msgs", "_windows")

    def __init__(self, history_length: int, history_gossip: int) -> None:
        if not 1 <= history_gossip <= history_length:
            raise ValueError("need 1 <= history_gossip <= history_length")
        self._gossip = history_gossip
        self._msgs: dict[bytes, CachedMessage] = {}
        self._windows: list[dict[str, list[bytes]]] = [{} for _ in range(history_length)]

    def __len__(self) -> int:
        return len(self._msgs)

    def __contains__(self, msg_id: object) -> bool:
        return msg_id in self._msgs

    def put(self, msg_id: bytes, message: GossipMessage, piece: bytes) -> None:
        """Cache a validated message in the current window (a second put is ignored)."""
        if msg_id in self._msgs:
            return
        self._msgs[msg_id] = CachedMessage(message, piece)
        window = self._windows[0]
        ids = window.get(message.topic)
        if ids is None:
            window[message.topic] = [msg_id]
        else:
            ids.append(msg_id)

    def get(self, msg_id: bytes) -> CachedMessage | None:
        """The cached entry, or ``None`` once it has left the last window."""
        return self._msgs.get(msg_id)

    def get_for_peer(self, msg_id: bytes, peer_id: bytes) -> tuple[CachedMessage | None, int]:
        """The entry and how many times ``peer_id`` has now asked for it (incremented)."""
        entry = self._msgs.get(msg_id)
        if entry is None:
            return None, 0
        count = entry.iwant_counts.get(peer_id, 0) + 1
        entry.iwant_counts[peer_id] = count
        return entry, count

    def gossip_ids(self, topic: str) -> list[bytes]:
        """Ids of the ``history_gossip`` newest windows for ``topic`` (what IHAVE advertises)."""
        out: list[bytes] = []
        for window in self._windows[: self._gossip]:
            out.extend(window.get(topic, ()))
        return out

    def gossip_ids_by_topic(self) -> dict[str, list[bytes]]:
        """All gossip-window ids grouped by topic (for the heartbeat)."""
        out: dict[str, list[bytes]] = {}
        for window in self._windows[: self._gossip]:
            for topic, ids in window.items():
                lst = out.get(topic)
                if lst is None:
                    out[topic] = list(ids)
                else:
                    lst.extend(ids)
        return out

    def shift(self) -> None:
        """Advance one heartbeat: forget the oldest window's messages, open a new window."""
        last = self._windows.pop()
        msgs = self._msgs
        for ids in last.values():
            for mid in ids:
                msgs.pop(mid, None)
        self._windows.insert(0, {})
