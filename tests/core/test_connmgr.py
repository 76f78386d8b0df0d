"""The connection manager's decisions on fake peers (no network, time passed in)."""

from __future__ import annotations

import pytest

from p2pshard.core.connmgr import Close, ConnMgrConfig, PeerView, decide

CONFIG = ConnMgrConfig(low_water=3, high_water=5, grace_s=10, bootstrap_grace_s=100, max_per_ip=2)
NOW = 1000.0
START = 0.0


def _peer(i: int, **kw: object) -> PeerView:
    fields: dict[str, object] = {"ip": f"10.0.0.{i}", "connected_at": NOW - 500 + i, "score": float(i)}
    fields.update(kw)
    return PeerView(f"p{i}", **fields)  # type: ignore[arg-type]


def test_nothing_happens_at_or_below_the_high_watermark() -> None:
    assert decide([_peer(i) for i in range(5)], NOW, START, CONFIG) == []


def test_above_high_trims_to_low_lowest_score_first() -> None:
    closing = decide([_peer(i) for i in range(7)], NOW, START, CONFIG)
    assert closing == [Close(f"p{i}", "trim") for i in range(4)]


def test_ties_go_by_usefulness_then_the_newest_connection() -> None:
    peers = [
        _peer(1, score=0.0, usefulness=5.0),
        _peer(2, score=0.0, usefulness=1.0, connected_at=NOW - 100),
        _peer(3, score=0.0, usefulness=1.0, connected_at=NOW - 200),
        *[_peer(i, score=10.0) for i in range(4, 8)],
    ]
    closing = decide(peers, NOW, START, CONFIG)
    assert [c.peer for c in closing] == ["p2", "p3", "p1", "p7"]  # p7: the newest of p4..p7


@pytest.mark.parametrize(
    "protection",
    [
        {"in_mesh": True},
        {"in_transfer": True},
        {"protected": True},
        {"connected_at": NOW - 5},  # within the grace period of a new connection
    ],
)
def test_protected_peers_are_never_trimmed(protection: dict[str, object]) -> None:
    peers = [_peer(0, **protection), *[_peer(i) for i in range(1, 7)]]
    closing = decide(peers, NOW, START, CONFIG)
    assert "p0" not in {c.peer for c in closing}
    assert len(closing) == 4  # the others make up for it


def test_bootstrap_peers_are_protected_for_their_grace_period_only() -> None:
    peers = [_peer(0, bootstrap=True), *[_peer(i) for i in range(1, 7)]]
    assert "p0" not in {c.peer for c in decide(peers, 50.0 + START, START, CONFIG)}
    assert "p0" in {c.peer for c in decide(peers, NOW, START, CONFIG)}


def test_one_ip_holds_at_most_max_per_ip_even_below_the_watermark() -> None:
    sybils = [_peer(i, ip="192.0.2.1", score=float(i)) for i in range(4)]
    closing = decide([*sybils, _peer(9)], NOW, START, CONFIG)
    assert closing == [Close("p0", "per_ip"), Close("p1", "per_ip")]


def test_per_ip_closures_count_towards_the_watermark() -> None:
    peers = [*[_peer(i, ip="192.0.2.1") for i in range(4)], *[_peer(i) for i in range(4, 8)]]
    closing = decide(peers, NOW, START, CONFIG)
    assert [c.reason for c in closing].count("per_ip") == 2
    assert len(peers) - len(closing) == CONFIG.low_water


def test_config_rejects_inverted_watermarks() -> None:
    with pytest.raises(ValueError):
        ConnMgrConfig(low_water=6, high_water=5)
