"""IHAVE/IWANT with limits and promises, IDONTWANT (v1.2) threshold and honouring."""

from __future__ import annotations

from p2pshard.core.gossip import (
    MESHSUB_V11,
    DropReason,
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
)
from .sim import peer_id_of

SCORED = PeerScoreParams(topics={TOPIC: TopicScoreParams()}, behaviour_penalty_weight=-1.0)


def test_ihave_for_unseen_ids_asks_with_iwant_and_tracks_a_promise() -> None:
    r = router(config(score_params=SCORED, iwant_followup_time=3.0))
    r.subscribe(TOPIC, 0.0)
    (pid,) = add_peers(r, 1)
    author = peer_id_of(77)
    r.handle_rpc(pid, msg_rpc(message(author, 1, b"known")), 0.0)
    known, unknown = author + (1).to_bytes(8, "big"), author + (2).to_bytes(8, "big")
    cmds = r.handle_rpc(pid, ctrl_rpc(ihave=[dict(topicID=TOPIC, messageIDs=[known, unknown])]), 0.5)
    iwant = merged(cmds, pid).control.iwant
    assert [list(iw.messageIDs) for iw in iwant] == [[unknown]]
    # the peer never delivers: after the followup time it gets a P7 penalty
    r.heartbeat(1.0)
    assert r.scorer is not None and r.scorer.behaviour_penalty(pid) == 0
    r.heartbeat(4.0)
    assert r.scorer.behaviour_penalty(pid) == 1.0
    assert r.stats.dropped[DropReason.BROKEN_PROMISE] == 1


def test_promise_kept_means_no_penalty() -> None:
    r = router(config(score_params=SCORED))
    r.subscribe(TOPIC, 0.0)
    (pid,) = add_peers(r, 1)
    author = peer_id_of(77)
    mid = author + (5).to_bytes(8, "big")
    r.handle_rpc(pid, ctrl_rpc(ihave=[dict(topicID=TOPIC, messageIDs=[mid])]), 0.0)
    r.handle_rpc(pid, msg_rpc(message(author, 5, b"here")), 1.0)
    r.heartbeat(10.0)
    assert r.scorer is not None and r.scorer.behaviour_penalty(pid) == 0


def test_ihave_limits_per_heartbeat() -> None:
    r = router(config(max_ihave_messages=2, max_ihave_length=3))
    r.subscribe(TOPIC, 0.0)
    (pid,) = add_peers(r, 1)
    ids = [b"id-%d" % i for i in range(10)]
    cmds = r.handle_rpc(pid, ctrl_rpc(ihave=[dict(topicID=TOPIC, messageIDs=ids)]), 0.0)
    asked = [m for iw in merged(cmds, pid).control.iwant for m in iw.messageIDs]
    assert len(asked) == 3  # max_ihave_length ids per heartbeat
    cmds = r.handle_rpc(pid, ctrl_rpc(ihave=[dict(topicID=TOPIC, messageIDs=ids)]), 0.1)
    assert not merged(cmds, pid).control.iwant  # budget spent
    r.handle_rpc(pid, ctrl_rpc(ihave=[dict(topicID=TOPIC, messageIDs=ids)]), 0.2)
    assert r.stats.dropped[DropReason.IHAVE_TOO_MANY] == 1  # third IHAVE in one heartbeat
    r.heartbeat(1.0)  # budgets reset
    # IHAVE for a topic we are not in is ignored and counted
    cmds = r.handle_rpc(pid, ctrl_rpc(ihave=[dict(topicID="other", messageIDs=ids)]), 1.1)
    assert not merged(cmds, pid).control.iwant
    assert r.stats.dropped[DropReason.IHAVE_UNKNOWN_TOPIC] == 1
    cmds = r.handle_rpc(pid, ctrl_rpc(ihave=[dict(topicID=TOPIC, messageIDs=ids)]), 1.2)
    assert merged(cmds, pid).control.iwant


def test_iwant_served_from_mcache_with_retransmission_limit() -> None:
    r = router(config(gossip_retransmission=2))
    r.subscribe(TOPIC, 0.0)
    (pid,) = add_peers(r, 1)
    mid, _ = r.publish(TOPIC, b"payload", 0.0)
    for _ in range(2):
        cmds = r.handle_rpc(pid, ctrl_rpc(iwant=[dict(messageIDs=[mid])]), 0.1)
        assert [m.data for m in merged(cmds, pid).publish] == [b"payload"]
    cmds = r.handle_rpc(pid, ctrl_rpc(iwant=[dict(messageIDs=[mid, b"nope"])]), 0.2)
    assert not merged(cmds, pid).publish
    assert r.stats.dropped[DropReason.IWANT_RETRANSMISSION_LIMIT] == 1
    assert r.stats.dropped[DropReason.IWANT_UNKNOWN_MESSAGE] == 1


def test_iwant_flood_is_capped_counted_and_penalised() -> None:
    r = router(config(score_params=SCORED, max_iwant_per_heartbeat=5, gossip_retransmission=100))
    r.subscribe(TOPIC, 0.0)
    (pid,) = add_peers(r, 1)
    ids = [r.publish(TOPIC, b"m%d" % i, 0.0)[0] for i in range(3)]
    cmds = r.handle_rpc(pid, ctrl_rpc(iwant=[dict(messageIDs=ids * 100)]), 0.1)
    assert len(merged(cmds, pid).publish) == 5
    assert r.stats.dropped[DropReason.IWANT_OVER_LIMIT] == 295
    assert [c.reason for c in rejected(cmds)] == [DropReason.IWANT_OVER_LIMIT]
    assert r.scorer is not None and r.scorer.behaviour_penalty(pid) == 1.0
    r.handle_rpc(pid, ctrl_rpc(iwant=[dict(messageIDs=ids)]), 0.2)
    assert r.scorer.behaviour_penalty(pid) == 1.0  # one penalty per heartbeat
    # the router keeps serving other peers
    (other,) = add_peers(r, 1, start=5)
    cmds = r.handle_rpc(other, ctrl_rpc(iwant=[dict(messageIDs=ids[:1])]), 0.3)
    assert len(merged(cmds, other).publish) == 1


def test_heartbeat_emits_ihave_to_non_mesh_peers() -> None:
    cfg = config(d=2, d_low=1, d_high=2, d_score=1, d_out=0, d_lazy=3)
    r = router(cfg)
    r.subscribe(TOPIC, 0.0)
    pids = add_peers(r, 6)
    r.heartbeat(0.5)
    mid, _ = r.publish(TOPIC, b"gossip me", 0.6)
    cmds = r.heartbeat(1.0)
    mesh = r.mesh_peers(TOPIC)
    got = [p for p in pids if merged(cmds, p).control.ihave]
    assert len(got) == 3 and not set(got) & mesh
    for p in got:
        assert list(merged(cmds, p).control.ihave[0].messageIDs) == [mid]


def test_idontwant_sent_for_large_messages_to_v12_peers_only() -> None:
    cfg = config(idontwant_threshold=100, d=3, d_low=2, d_high=6)
    r = router(cfg)
    r.subscribe(TOPIC, 0.0)
    v12 = add_peers(r, 2)
    v11 = add_peers(r, 1, protocol=MESHSUB_V11, start=10)
    for pid in v12 + v11:
        r.handle_rpc(pid, ctrl_rpc(graft=[dict(topicID=TOPIC)]), 0.0)
    assert r.mesh_peers(TOPIC) == set(v12 + v11)
    src = v12[0]
    big = message(peer_id_of(80), 1, b"x" * 200)
    cmds = r.handle_rpc(src, msg_rpc(big), 0.1)
    mid = peer_id_of(80) + (1).to_bytes(8, "big")
    other = v12[1]
    assert [list(i.messageIDs) for i in merged(cmds, other).control.idontwant] == [[mid]]
    assert not merged(cmds, v11[0]).control.idontwant  # v1.1 peers never get IDONTWANT
    assert not merged(cmds, src).control.idontwant  # nor the sender
    small = message(peer_id_of(80), 2, b"x" * 10)
    cmds = r.handle_rpc(src, msg_rpc(small), 0.2)
    assert not merged(cmds, other).control.idontwant


def test_idontwant_is_honoured_when_forwarding_and_bounded() -> None:
    cfg = config(max_idontwant_messages=3)
    r = router(cfg)
    r.subscribe(TOPIC, 0.0)
    a, b = add_peers(r, 2)
    for pid in (a, b):
        r.handle_rpc(pid, ctrl_rpc(graft=[dict(topicID=TOPIC)]), 0.0)
    author = peer_id_of(90)
    mid = author + (1).to_bytes(8, "big")
    r.handle_rpc(b, ctrl_rpc(idontwant=[dict(messageIDs=[mid])]), 0.1)
    cmds = r.handle_rpc(a, msg_rpc(message(author, 1, b"data")), 0.2)
    assert not merged(cmds, b).publish  # b said it does not want it
    assert r.stats.dropped[DropReason.SEND_IDONTWANT_HONORED] == 1
    r.handle_rpc(b, ctrl_rpc(idontwant=[dict(messageIDs=[b"%d" % i for i in range(10)])]), 0.3)
    assert r.stats.dropped[DropReason.IDONTWANT_OVER_LIMIT] == 8  # 1 + 2 accepted, 8 over
    # entries expire after idontwant_ttl_heartbeats heartbeats
    for t in range(1, 5):
        r.heartbeat(float(t))
    cmds = r.handle_rpc(a, msg_rpc(message(author, 2, b"data2")), 5.0)
    assert [m.data for m in merged(cmds, b).publish] == [b"data2"]
