"""Hostile input (issue 3 #4): rejected, scored, counted, and the router keeps serving."""

from __future__ import annotations

import pytest

from p2pshard.core.gossip import (
    DropReason,
    PeerScoreParams,
    PeerScoreThresholds,
    PublishError,
    TopicScoreParams,
    UnknownProtocolError,
)
from p2pshard.core.gossip.protocol import encode_message, publish_piece
from p2pshard.core.wire import rpc_pb2

from .helpers import (
    TOPIC,
    add_peers,
    config,
    ctrl_rpc,
    delivered,
    message,
    msg_rpc,
    rejected,
    router,
)
from .sim import peer_id_of

SCORED = PeerScoreParams(topics={TOPIC: TopicScoreParams()}, behaviour_penalty_weight=-1.0)


def _setup(**kw: object):  # type: ignore[no-untyped-def]
    r = router(config(score_params=SCORED, **kw))
    r.subscribe(TOPIC, 0.0)
    bad, good = add_peers(r, 2)
    return r, bad, good


def _still_serves(r, good: bytes, seq: int) -> None:  # type: ignore[no-untyped-def]
    cmds = r.handle_rpc(good, msg_rpc(message(peer_id_of(60), seq, b"fine")), 1.0)
    assert [d.message.data for d in delivered(cmds)] == [b"fine"]


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xff\xff\xff\xff",  # truncated varint tag
        b"\x12\x10abc",  # length beyond the end
        b"\x0b\x00",  # start-group wire type
        b"\x1a\x05\x0a\x03\xff\xff",  # truncated nested control
    ],
)
def test_malformed_rpc_is_rejected_penalised_and_counted(garbage: bytes) -> None:
    r, bad, good = _setup()
    cmds = r.handle_rpc(bad, garbage, 0.5)
    assert [c.reason for c in rejected(cmds)] == [DropReason.RPC_MALFORMED]
    assert r.stats.dropped[DropReason.RPC_MALFORMED] == 1
    assert r.scorer is not None and r.scorer.behaviour_penalty(bad) == 1.0
    _still_serves(r, good, 1)


def test_oversized_rpc_and_message() -> None:
    r, bad, good = _setup(max_message_size=1000, max_rpc_size=4096)
    cmds = r.handle_rpc(bad, b"\x00" * 5000, 0.5)
    assert [c.reason for c in rejected(cmds)] == [DropReason.RPC_TOO_LARGE]
    cmds = r.handle_rpc(bad, msg_rpc(message(peer_id_of(61), 1, b"x" * 1001)), 0.6)
    assert [c.reason for c in rejected(cmds)] == [DropReason.MESSAGE_TOO_LARGE]
    assert not delivered(cmds)
    with pytest.raises(PublishError) as err:
        r.publish(TOPIC, b"x" * 1001, 0.7)
    assert err.value.reason == "message_too_large"
    _still_serves(r, good, 1)


def test_bad_and_missing_signatures_are_rejected_with_p4() -> None:
    r, bad, good = _setup()
    forged = message(peer_id_of(62), 1, b"forged", signature=b"not-ok")
    unsigned = message(peer_id_of(62), 2, b"unsigned", signature=b"")
    cmds = r.handle_rpc(bad, msg_rpc(forged, unsigned), 0.5)
    assert [c.reason for c in rejected(cmds)] == [
        DropReason.MESSAGE_INVALID_SIGNATURE,
        DropReason.MESSAGE_MISSING_SIGNATURE,
    ]
    assert not delivered(cmds)
    assert r.scorer is not None and r.scorer.invalid_deliveries(bad, TOPIC) == 2
    assert r.peer_score(bad) < 0
    anonymous = message(b"", 3, b"anon")
    anonymous.ClearField("seqno")
    (fresh,) = add_peers(r, 1, start=30)  # `bad` is graylisted by now
    cmds = r.handle_rpc(fresh, msg_rpc(anonymous), 0.55)
    assert [c.reason for c in rejected(cmds)] == [DropReason.MESSAGE_MISSING_SIGNATURE]
    # a forged message does not poison the seen cache: the genuine one still gets through
    genuine = message(peer_id_of(62), 1, b"forged")
    assert [d.msg_id for d in delivered(r.handle_rpc(good, msg_rpc(genuine), 0.6))]


def test_unknown_topic_messages_are_counted_and_penalised() -> None:
    r, bad, good = _setup()
    cmds = r.handle_rpc(bad, msg_rpc(message(peer_id_of(63), 1, b"?", topic="/never")), 0.5)
    assert [c.reason for c in rejected(cmds)] == [DropReason.MESSAGE_UNKNOWN_TOPIC]
    assert r.scorer is not None and r.scorer.behaviour_penalty(bad) == 1.0
    # a topic that is not valid UTF-8 is malformed input, not a crash
    raw = rpc_pb2.RPC()
    m = raw.publish.add()
    m.data = b"x"
    blob = raw.SerializeToString() + b"\x12\x04\x22\x02\xff\xfe"
    cmds = r.handle_rpc(bad, blob, 0.6)
    assert DropReason.MESSAGE_INVALID_TOPIC in [c.reason for c in rejected(cmds)]
    _still_serves(r, good, 1)


def test_graylisted_peer_is_ignored_entirely() -> None:
    thresholds = PeerScoreThresholds(
        gossip_threshold=-1,
        publish_threshold=-2,
        graylist_threshold=-3,
        accept_px_threshold=0,
        opportunistic_graft_threshold=0,
    )
    r, bad, good = _setup(score_thresholds=thresholds)
    for i in range(2):  # two P7 penalties: score = -(2**2) = -4
        r.handle_rpc(bad, b"\xff" * 3, 0.1 * i)
    assert r.peer_score(bad) < -3
    cmds = r.handle_rpc(bad, msg_rpc(message(peer_id_of(64), 1, b"valid")), 0.5)
    assert cmds == []
    assert r.stats.dropped[DropReason.RPC_GRAYLISTED] == 1
    head = publish_piece(encode_message(message(peer_id_of(64), 2, b"v" * 5000)))[:1024]
    assert r.frame_head(bad, head, 0.5) == []  # nor does the head of a frame make it say IDONTWANT
    # the graylisted peer is also pruned from the mesh at the next heartbeat
    r.heartbeat(1.0)
    assert bad not in r.mesh_peers(TOPIC)
    _still_serves(r, good, 2)


def test_too_many_subscriptions_and_bad_topics() -> None:
    r = router(config(max_topics_per_peer=3))
    (pid,) = add_peers(r, 1, topic=None)
    rpc = rpc_pb2.RPC()
    for i in range(5):
        rpc.subscriptions.add(subscribe=True, topicid=f"t{i}")
    rpc.subscriptions.add(subscribe=True, topicid="")
    cmds = r.handle_rpc(pid, rpc.SerializeToString(), 0.0)
    assert r.stats.dropped[DropReason.SUBSCRIPTION_LIMIT] == 2
    assert [c.reason for c in rejected(cmds)] == [DropReason.SUBSCRIPTION_INVALID_TOPIC]
    assert sum(1 for i in range(5) if pid in r.topic_peers(f"t{i}")) == 3


def test_control_flood_is_bounded() -> None:
    r, bad, good = _setup(max_ihave_messages=1, max_ihave_length=10)
    ids = [b"%08d" % i for i in range(20_000)]
    cmds = r.handle_rpc(bad, ctrl_rpc(ihave=[dict(topicID=TOPIC, messageIDs=ids)]), 0.5)
    asked = sum(len(c.control.iwant[0].messageIDs) for c in _decoded(cmds, bad))
    assert asked == 10
    assert r.stats.dropped[DropReason.IHAVE_IDS_OVER_LIMIT] >= 19_990 - 10
    _still_serves(r, good, 1)


def _decoded(cmds, peer):  # type: ignore[no-untyped-def]
    from .helpers import sent

    return [rpc for rpc in sent(cmds, peer) if rpc.control.iwant]


def test_unknown_protocol_and_self_are_refused() -> None:
    r = router()
    with pytest.raises(UnknownProtocolError):
        r.add_peer(peer_id_of(1), "/meshsub/9.9.9", True, 0.0)
    assert r.add_peer(r.peer_id, "/meshsub/1.1.0", True, 0.0) == []
    assert r.peers == frozenset()


def test_publish_errors() -> None:
    r = router()
    with pytest.raises(PublishError):
        r.publish("", b"x", 0.0)
    r.subscribe(TOPIC, 0.0)
    no_signer = type(r)(peer_id_of(5), config(), rng=__import__("random").Random(1))
    with pytest.raises(PublishError) as err:
        no_signer.publish(TOPIC, b"x", 0.0)
    assert err.value.reason == "no_signer"
