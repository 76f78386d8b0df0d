"""Peer score terms P1..P7, decay, caps and retention."""

from __future__ import annotations

import ipaddress

import pytest

from p2pshard.core.gossip import PeerScoreParams, TopicScoreParams
from p2pshard.core.gossip.score import PeerScore

T = "topic"
P = b"peer-a"
Q = b"peer-b"


def _score(topic: TopicScoreParams | None = None, **kw: object) -> PeerScore:
    params = PeerScoreParams(topics={T: topic or TopicScoreParams()}, **kw)  # type: ignore[arg-type]
    ps = PeerScore(params, record_ttl=120.0)
    ps.add_peer(P, "10.0.0.1", 0.0)
    ps.refresh(0.0)
    return ps


def test_p1_time_in_mesh_grows_and_caps() -> None:
    tp = TopicScoreParams(
        time_in_mesh_weight=1.0,
        time_in_mesh_quantum=1.0,
        time_in_mesh_cap=10.0,
        first_message_deliveries_weight=0.0,
    )
    ps = _score(tp)
    ps.graft(P, T, 0.0)
    assert ps.score(P, 4.0) == pytest.approx(4.0)
    ps.refresh(50.0)
    assert ps.score(P, 50.0) == pytest.approx(10.0)
    ps.prune(P, T)
    assert ps.score(P, 51.0) == 0.0


def test_p2_first_deliveries_then_decay_to_zero() -> None:
    tp = TopicScoreParams(
        first_message_deliveries_weight=1.0,
        first_message_deliveries_decay=0.5,
        first_message_deliveries_cap=3.0,
        time_in_mesh_weight=0.0,
    )
    ps = _score(tp, decay_to_zero=0.1)
    for i in range(5):
        ps.validate_message(b"m%d" % i, T, 0.0)
        ps.deliver_message(P, b"m%d" % i, 0.0)
    assert ps.score(P, 0.0) == 3.0  # capped
    ps.refresh(1.0)
    assert ps.score(P, 1.0) == 1.5
    for t in range(2, 7):
        ps.refresh(float(t))
    assert ps.score(P, 6.0) == 0.0  # below decay_to_zero -> exactly 0


def test_p3_mesh_delivery_deficit_and_p3b_failure_penalty() -> None:
    tp = TopicScoreParams(
        time_in_mesh_weight=0.0,
        first_message_deliveries_weight=0.0,
        mesh_message_deliveries_weight=-1.0,
        mesh_message_deliveries_threshold=4.0,
        mesh_message_deliveries_activation=2.0,
        mesh_message_deliveries_window=0.5,
        mesh_message_deliveries_decay=0.99999,
        mesh_failure_penalty_weight=-2.0,
    )
    ps = _score(tp)
    ps.add_peer(Q, None, 0.0)
    ps.graft(P, T, 0.0)
    ps.graft(Q, T, 0.0)
    ps.refresh(1.0)
    assert ps.score(P, 1.0) == 0.0  # not active yet
    ps.validate_message(b"m", T, 3.0)
    ps.deliver_message(Q, b"m", 3.0)  # Q first
    ps.duplicate_message(P, b"m", 3.2)  # P within the window: counts for P3
    ps.validate_message(b"late", T, 3.0)
    ps.deliver_message(Q, b"late", 3.0)
    ps.duplicate_message(P, b"late", 4.0)  # outside the window: does not count
    ps.refresh(3.5)
    assert ps.score(P, 3.5) == pytest.approx(-((4.0 - 1.0) ** 2), rel=1e-3)
    ps.prune(P, T)  # leaving the mesh with a deficit -> P3b
    assert ps.score(P, 3.6) == pytest.approx(-2.0 * 9.0, rel=1e-3)


def test_p4_invalid_messages_penalise_all_senders_and_decay() -> None:
    tp = TopicScoreParams(
        invalid_message_deliveries_weight=-10.0,
        invalid_message_deliveries_decay=0.5,
        time_in_mesh_weight=0.0,
        first_message_deliveries_weight=0.0,
    )
    ps = _score(tp)
    ps.add_peer(Q, None, 0.0)
    ps.validate_message(b"bad", T, 0.0)
    ps.duplicate_message(Q, b"bad", 0.1)  # Q also sent it while validation was pending
    ps.reject_message(P, b"bad", T, 0.2)
    assert ps.score(P, 0.2) == -10.0 and ps.score(Q, 0.2) == -10.0
    ps.duplicate_message(Q, b"bad", 0.3)  # counted once per peer
    assert ps.score(Q, 0.3) == -10.0
    ps.refresh(1.0)
    assert ps.score(P, 1.0) == pytest.approx(-10.0 * 0.25)
    # IGNORE blames nobody
    ps.validate_message(b"meh", T, 1.0)
    ps.duplicate_message(Q, b"meh", 1.0)
    ps.ignore_message(b"meh")
    assert ps.score(Q, 1.0) == pytest.approx(-2.5)


def test_topic_weight_and_cap() -> None:
    tp = TopicScoreParams(topic_weight=0.5, first_message_deliveries_weight=10.0, time_in_mesh_weight=0.0)
    ps = _score(tp, topic_score_cap=3.0)
    ps.validate_message(b"m", T, 0.0)
    ps.deliver_message(P, b"m", 0.0)
    assert ps.score(P, 0.0) == 3.0  # 0.5 * 10 = 5, capped at 3


def test_p5_app_specific_hook() -> None:
    ps = _score(app_specific_score=lambda pid: 7.0 if pid == P else -1.0, app_specific_weight=2.0)
    ps.add_peer(Q, None, 0.0)
    assert ps.score(P, 0.0) == 14.0 and ps.score(Q, 0.0) == -2.0


def test_p6_ip_colocation_with_whitelist() -> None:
    # retain_score=0: a disconnected peer stops counting at once (with retention it keeps
    # counting, like go, so that disconnecting does not shed the colocation penalty)
    ps = _score(
        ip_colocation_factor_weight=-1.0,
        ip_colocation_factor_threshold=1.0,
        ip_colocation_factor_whitelist=(ipaddress.ip_network("192.168.0.0/16"),),
        retain_score=0.0,
    )
    ps.add_peer(Q, "10.0.0.1", 0.0)
    ps.add_peer(b"c", "10.0.0.1", 0.0)
    assert ps.score(P, 0.0) == -4.0  # 3 peers on one IP, threshold 1 -> surplus 2 squared
    ps.remove_peer(b"c", 0.0)
    assert ps.score(P, 0.0) == -1.0
    for pid in (b"x", b"y", b"z"):
        ps.add_peer(pid, "192.168.1.5", 0.0)
    assert ps.score(b"x", 0.0) == 0.0


def test_p7_behaviour_penalty_threshold_and_decay() -> None:
    ps = _score(behaviour_penalty_weight=-1.0, behaviour_penalty_threshold=1.0, behaviour_penalty_decay=0.5)
    ps.add_penalty(P, 1)
    assert ps.score(P, 0.0) == 0.0  # at the threshold: free
    ps.add_penalty(P, 2)
    assert ps.score(P, 0.0) == -4.0
    ps.refresh(1.0)
    assert ps.score(P, 1.0) == pytest.approx(-0.25)


def test_bad_score_survives_reconnect_until_retain_expires() -> None:
    ps = _score(behaviour_penalty_weight=-1.0, retain_score=10.0)
    ps.add_penalty(P, 3)
    ps.remove_peer(P, 1.0)
    ps.add_peer(P, "10.0.0.1", 2.0)
    assert ps.score(P, 2.0) < 0
    ps.remove_peer(P, 3.0)
    ps.refresh(14.0)
    ps.add_peer(P, "10.0.0.1", 14.0)
    assert ps.score(P, 14.0) == 0.0
