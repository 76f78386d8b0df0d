"""Message cache windows and the seen time cache."""

from __future__ import annotations

from p2pshard.core.gossip import GossipMessage
from p2pshard.core.gossip.mcache import MessageCache
from p2pshard.core.gossip.time_cache import TimeCache


def _put(mc: MessageCache, mid: bytes, topic: str = "t") -> None:
    mc.put(mid, GossipMessage(topic, b"data"), b"piece-" + mid)


def test_gossip_covers_only_history_gossip_windows() -> None:
    mc = MessageCache(history_length=5, history_gossip=3)
    for i in range(5):
        _put(mc, b"m%d" % i)
        _put(mc, b"o%d" % i, topic="other")
        mc.shift()
    # newest first: m4 is one shift old, m0 five -> gone
    assert mc.gossip_ids("t") == [b"m4", b"m3"]  # window 0 is empty after the last shift
    assert b"m0" not in mc
    assert [mid for mid in (b"m1", b"m2", b"m3", b"m4") if mid in mc] == [b"m1", b"m2", b"m3", b"m4"]
    assert mc.gossip_ids_by_topic() == {"t": [b"m4", b"m3"], "other": [b"o4", b"o3"]}
    entry = mc.get(b"m1")
    assert entry is not None and entry.piece == b"piece-m1"


def test_message_leaves_after_history_length_shifts() -> None:
    mc = MessageCache(history_length=3, history_gossip=1)
    _put(mc, b"a")
    assert mc.gossip_ids("t") == [b"a"]
    mc.shift()
    assert mc.gossip_ids("t") == []  # beyond the gossip window but still answerable
    assert mc.get(b"a") is not None
    mc.shift()
    mc.shift()
    assert mc.get(b"a") is None
    assert len(mc) == 0


def test_iwant_counts_per_peer() -> None:
    mc = MessageCache(3, 2)
    _put(mc, b"a")
    assert mc.get_for_peer(b"a", b"p1")[1] == 1
    assert mc.get_for_peer(b"a", b"p1")[1] == 2
    assert mc.get_for_peer(b"a", b"p2")[1] == 1
    assert mc.get_for_peer(b"zz", b"p1") == (None, 0)


def test_duplicate_put_is_ignored() -> None:
    mc = MessageCache(3, 2)
    _put(mc, b"a")
    _put(mc, b"a")
    assert mc.gossip_ids("t") == [b"a"]


def test_time_cache_first_seen_and_sweep() -> None:
    tc: TimeCache[bytes] = TimeCache(ttl=10.0)
    assert tc.add(b"x", 0.0)
    assert not tc.add(b"x", 5.0)  # keeps the first expiry
    assert tc.add(b"y", 4.0)
    assert tc.sweep(9.9) == 0
    assert tc.sweep(10.0) == 1
    assert b"x" not in tc and b"y" in tc
    assert tc.sweep(100.0) == 1
    assert len(tc) == 0
