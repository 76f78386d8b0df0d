"""GRAFT/PRUNE, backoff, peer exchange, mesh maintenance, fanout, protocol levels."""

from __future__ import annotations

from p2pshard.core.gossip import (
    FLOODSUB_ID,
    MESHSUB_V10,
    MESHSUB_V11,
    Connect,
    DropReason,
    PeerKind,
    PeerScoreParams,
    TopicScoreParams,
)

from .helpers import (
    TOPIC,
    add_peers,
    config,
    ctrl_rpc,
    merged,
    message,
    msg_rpc,
    rejected,
    router,
    sent,
    sub_rpc,
)
from .sim import peer_id_of


def test_add_peer_announces_our_subscriptions() -> None:
    r = router()
    r.subscribe(TOPIC, 0.0)
    cmds = r.add_peer(peer_id_of(1), MESHSUB_V11, True, 0.0)
    rpc = merged(cmds, peer_id_of(1))
    assert [(s.subscribe, s.topicid) for s in rpc.subscriptions] == [(True, TOPIC)]
    assert r.peer_protocol(peer_id_of(1)) is PeerKind.GOSSIPSUB_V11


def test_subscribe_grafts_d_peers_and_heartbeat_keeps_bounds() -> None:
    cfg = config()
    r = router(cfg)
    pids = add_peers(r, 10)
    cmds = r.subscribe(TOPIC, 0.0)
    mesh = r.mesh_peers(TOPIC)
    assert len(mesh) == cfg.d
    for pid in mesh:
        assert [g.topicID for g in merged(cmds, pid).control.graft] == [TOPIC]
    # the other peers graft us; they are outbound connections, which go accepts beyond d_high
    for pid in [p for p in pids if p not in mesh]:
        r.handle_rpc(pid, ctrl_rpc(graft=[dict(topicID=TOPIC)]), 0.1)
    assert len(r.mesh_peers(TOPIC)) == 10
    r.heartbeat(1.0)  # ... and the heartbeat trims back to d
    assert len(r.mesh_peers(TOPIC)) == cfg.d


def test_graft_refused_when_mesh_full_from_inbound_peer_with_px() -> None:
    cfg = config()
    r = router(cfg)
    r.subscribe(TOPIC, 0.0)
    inbound = add_peers(r, 6, outbound=False)
    for pid in inbound[: cfg.d_high]:
        r.handle_rpc(pid, ctrl_rpc(graft=[dict(topicID=TOPIC)]), 0.0)
    assert len(r.mesh_peers(TOPIC)) == cfg.d_high
    cmds = r.handle_rpc(inbound[-1], ctrl_rpc(graft=[dict(topicID=TOPIC)]), 0.0)
    prune = merged(cmds, inbound[-1]).control.prune
    assert len(prune) == 1 and prune[0].topicID == TOPIC
    assert prune[0].backoff == int(cfg.prune_backoff)
    assert {pi.peerID for pi in prune[0].peers} <= set(inbound[:-1])
    assert len(prune[0].peers) > 0
    assert r.stats.dropped[DropReason.GRAFT_MESH_FULL] == 1


def test_oversubscribed_mesh_is_trimmed_keeping_outbound_quota() -> None:
    cfg = config(d=4, d_low=3, d_high=5, d_score=1, d_out=2)
    r = router(cfg)
    r.subscribe(TOPIC, 0.0)
    inbound = add_peers(r, 5, outbound=False)
    outbound = add_peers(r, 2, outbound=True, start=100)
    for pid in inbound + outbound:
        r.handle_rpc(pid, ctrl_rpc(graft=[dict(topicID=TOPIC)]), 0.0)
    assert len(r.mesh_peers(TOPIC)) == 7  # outbound grafts are accepted over d_high
    cmds = r.heartbeat(1.0)
    mesh = r.mesh_peers(TOPIC)
    assert len(mesh) == cfg.d
    assert set(outbound) <= mesh  # d_out outbound peers kept
    pruned = [p for p in inbound if p not in mesh]
    for pid in pruned:
        assert merged(cmds, pid).control.prune[0].topicID == TOPIC
        assert r.in_backoff(TOPIC, pid)


def test_prune_sets_backoff_and_heartbeat_respects_it() -> None:
    cfg = config(prune_backoff=5.0, backoff_slack=0.0)
    r = router(cfg)
    r.subscribe(TOPIC, 0.0)
    (pid,) = add_peers(r, 1)
    r.heartbeat(0.5)
    assert pid in r.mesh_peers(TOPIC)
    r.handle_rpc(pid, ctrl_rpc(prune=[dict(topicID=TOPIC, backoff=5)]), 1.0)
    assert pid not in r.mesh_peers(TOPIC)
    r.heartbeat(2.0)
    assert pid not in r.mesh_peers(TOPIC)  # still backing off
    cmds = r.heartbeat(6.5)
    assert pid in r.mesh_peers(TOPIC)  # regrafted after the backoff
    assert merged(cmds, pid).control.graft[0].topicID == TOPIC


def test_graft_during_backoff_is_penalised_and_answered_with_prune() -> None:
    cfg = config(score_params=PeerScoreParams(topics={TOPIC: TopicScoreParams()}))
    r = router(cfg)
    r.subscribe(TOPIC, 0.0)
    (pid,) = add_peers(r, 1)
    r.handle_rpc(pid, ctrl_rpc(prune=[dict(topicID=TOPIC)]), 0.0)
    cmds = r.handle_rpc(pid, ctrl_rpc(graft=[dict(topicID=TOPIC)]), 1.0)
    assert pid not in r.mesh_peers(TOPIC)
    assert merged(cmds, pid).control.prune[0].topicID == TOPIC
    assert [c.reason for c in rejected(cmds)] == [DropReason.GRAFT_BACKOFF]
    assert r.scorer is not None
    assert r.scorer.behaviour_penalty(pid) == 2.0  # within graft_flood_threshold: doubled
    assert r.peer_score(pid) < 0


def test_prune_to_v10_peer_carries_no_backoff_or_px() -> None:
    cfg = config()
    r = router(cfg)
    r.subscribe(TOPIC, 0.0)
    old = add_peers(r, 1, protocol=MESHSUB_V10, outbound=False)[0]
    others = add_peers(r, cfg.d_high, outbound=False, start=10)
    for pid in others:
        r.handle_rpc(pid, ctrl_rpc(graft=[dict(topicID=TOPIC)]), 0.0)
    cmds = r.handle_rpc(old, ctrl_rpc(graft=[dict(topicID=TOPIC)]), 0.0)
    prune = merged(cmds, old).control.prune[0]
    assert not prune.HasField("backoff") and len(prune.peers) == 0


def test_px_accepted_only_from_well_scored_peers() -> None:
    px = [dict(peerID=peer_id_of(500 + i)) for i in range(3)]
    # scoring off: accept_px threshold is 0 and every score is 0 -> accepted
    r = router()
    r.subscribe(TOPIC, 0.0)
    (pid,) = add_peers(r, 1)
    cmds = r.handle_rpc(pid, ctrl_rpc(prune=[dict(topicID=TOPIC, peers=px, backoff=60)]), 0.0)
    assert sorted(c.peer_id for c in cmds if isinstance(c, Connect)) == [
        peer_id_of(500 + i) for i in range(3)
    ]
    # scoring on with accept_px_threshold=10: a fresh peer (score 0) is not trusted
    r2 = router(config(score_params=PeerScoreParams(topics={TOPIC: TopicScoreParams()})))
    r2.subscribe(TOPIC, 0.0)
    (pid2,) = add_peers(r2, 1)
    cmds = r2.handle_rpc(pid2, ctrl_rpc(prune=[dict(topicID=TOPIC, peers=px)]), 0.0)
    assert not [c for c in cmds if isinstance(c, Connect)]
    assert r2.stats.dropped[DropReason.PRUNE_PX_LOW_SCORE] == 1


def test_unsubscribe_prunes_mesh_with_unsubscribe_backoff() -> None:
    cfg = config(unsubscribe_backoff=7.0)
    r = router(cfg)
    add_peers(r, 5)
    r.subscribe(TOPIC, 0.0)
    mesh = r.mesh_peers(TOPIC)
    cmds = r.unsubscribe(TOPIC, 1.0)
    for pid in mesh:
        rpc = merged(cmds, pid)
        assert rpc.control.prune[0].backoff == 7
        assert [(s.subscribe, s.topicid) for s in rpc.subscriptions] == [(False, TOPIC)]
    assert r.mesh_peers(TOPIC) == frozenset()
    # messages still in flight for the topic are ignored without blame
    any_peer = next(iter(mesh))
    out = r.handle_rpc(any_peer, msg_rpc(message(any_peer, 1, b"late")), 1.1)
    assert not rejected(out)
    assert r.stats.dropped[DropReason.MESSAGE_NOT_SUBSCRIBED] == 1


def test_publish_without_subscription_uses_fanout_which_expires() -> None:
    cfg = config(flood_publish=False, fanout_ttl=5.0)
    r = router(cfg)
    pids = add_peers(r, 6)
    _, cmds = r.publish(TOPIC, b"hello", 0.0)
    fan = r.fanout_peers(TOPIC)
    assert len(fan) == cfg.d
    assert {c.peer_id for c in cmds if hasattr(c, "data")} == set(fan)
    r.heartbeat(1.0)
    assert r.fanout_peers(TOPIC) == fan
    r.heartbeat(6.0)
    assert r.fanout_peers(TOPIC) == frozenset()
    assert set(fan) <= set(pids)


def test_flood_publish_reaches_all_topic_peers_and_floodsub_peers() -> None:
    r = router(config())
    r.subscribe(TOPIC, 0.0)
    gossip = add_peers(r, 8)
    flood = add_peers(r, 2, protocol=FLOODSUB_ID, start=50)
    _, cmds = r.publish(TOPIC, b"hello", 0.0)
    targets = {c.peer_id for c in cmds if hasattr(c, "data")}
    assert targets == set(gossip) | set(flood)
    # floodsub peers never receive control messages, even at heartbeat
    for t in range(1, 4):
        for rpc in sent(r.heartbeat(float(t)), flood[0]):
            assert not rpc.HasField("control")


def test_floodsub_peer_gets_forwarded_messages_but_its_control_is_ignored() -> None:
    r = router(config())
    r.subscribe(TOPIC, 0.0)
    (flood,) = add_peers(r, 1, protocol=FLOODSUB_ID, start=50)
    (gs,) = add_peers(r, 1)
    cmds = r.handle_rpc(gs, msg_rpc(message(gs, 1, b"x")), 0.1)
    assert [m.data for m in merged(cmds, flood).publish] == [b"x"]
    r.handle_rpc(flood, ctrl_rpc(graft=[dict(topicID=TOPIC)]), 0.2)
    assert flood not in r.mesh_peers(TOPIC)
    assert r.stats.dropped[DropReason.CONTROL_FROM_FLOODSUB] == 1


def test_remove_peer_forgets_it_everywhere() -> None:
    r = router()
    r.subscribe(TOPIC, 0.0)
    pids = add_peers(r, 4)
    r.heartbeat(1.0)
    victim = next(iter(r.mesh_peers(TOPIC)))
    r.remove_peer(victim, 2.0)
    assert victim not in r.mesh_peers(TOPIC) and victim not in r.topic_peers(TOPIC)
    assert victim not in r.peers
    assert r.handle_rpc(victim, sub_rpc(TOPIC), 2.1) == []
    assert r.stats.dropped[DropReason.RPC_UNKNOWN_PEER] == 1
    assert len(pids) == 4
