"""Direct peers, outbound quota top-up and opportunistic grafting."""

from __future__ import annotations

from p2pshard.core.gossip import Connect, DropReason, PeerScoreParams, TopicScoreParams

from .helpers import TOPIC, add_peers, config, ctrl_rpc, merged, message, msg_rpc, router
from .sim import peer_id_of


def test_direct_peers_get_everything_are_never_grafted_and_are_redialled() -> None:
    direct = peer_id_of(1)
    r = router(config(direct_peers=frozenset({direct}), direct_connect_ticks=3))
    cmds = r.heartbeat(1.0)
    assert [c.peer_id for c in cmds if isinstance(c, Connect)] == [direct]
    r.subscribe(TOPIC, 1.0)
    add_peers(r, 1, start=1)  # the direct peer connects
    others = add_peers(r, 4, start=10)
    r.heartbeat(2.0)
    assert direct not in r.mesh_peers(TOPIC)
    cmds = r.handle_rpc(direct, ctrl_rpc(graft=[dict(topicID=TOPIC)]), 2.1)
    assert direct not in r.mesh_peers(TOPIC)
    assert merged(cmds, direct).control.prune
    assert r.stats.dropped[DropReason.GRAFT_DIRECT_PEER] == 1
    cmds = r.handle_rpc(others[0], msg_rpc(message(peer_id_of(70), 1, b"m")), 2.2)
    assert [m.data for m in merged(cmds, direct).publish] == [b"m"]
    r.remove_peer(direct, 2.5)
    cmds = r.heartbeat(3.0)  # tick 3: redial the missing direct peer
    assert [c.reason for c in cmds if isinstance(c, Connect)] == ["direct"]


def test_outbound_quota_is_topped_up() -> None:
    cfg = config(d=4, d_low=3, d_high=6, d_score=1, d_out=2)
    r = router(cfg)
    r.subscribe(TOPIC, 0.0)
    inbound = add_peers(r, 4, outbound=False)
    for pid in inbound:
        r.handle_rpc(pid, ctrl_rpc(graft=[dict(topicID=TOPIC)]), 0.0)
    outbound = add_peers(r, 3, outbound=True, start=20)
    cmds = r.heartbeat(1.0)
    grafted = [p for p in outbound if merged(cmds, p).control.graft]
    assert len(grafted) == cfg.d_out
    assert sum(1 for p in r.mesh_peers(TOPIC) if p in outbound) == cfg.d_out


def test_opportunistic_graft_adds_better_peers_when_median_is_low() -> None:
    tp = TopicScoreParams(
        time_in_mesh_weight=0.0, first_message_deliveries_weight=10.0, first_message_deliveries_decay=0.99
    )
    cfg = config(
        score_params=PeerScoreParams(topics={TOPIC: tp}),
        opportunistic_graft_ticks=2,
        opportunistic_graft_peers=1,
        d=3,
        d_low=2,
        d_high=6,
        d_out=0,
    )
    r = router(cfg)
    r.subscribe(TOPIC, 0.0)
    peers = add_peers(r, 6)
    r.heartbeat(1.0)
    mesh = set(r.mesh_peers(TOPIC))
    outsider = next(p for p in peers if p not in mesh)
    for i in range(5):  # the outsider delivers first, repeatedly: high P2 score
        r.handle_rpc(outsider, msg_rpc(message(peer_id_of(80), i, b"m%d" % i)), 1.1)
    assert r.peer_score(outsider) > cfg.score_thresholds.opportunistic_graft_threshold
    cmds = r.heartbeat(2.0)  # tick 2: opportunistic graft
    assert outsider in r.mesh_peers(TOPIC)
    assert merged(cmds, outsider).control.graft[0].topicID == TOPIC
    assert r.stats.events["opportunistic_graft"] == 1
