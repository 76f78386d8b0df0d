"""Wire compatibility of specs/proto/rpc.proto with another libp2p implementation's schema.

py-libp2p ships its own copy of the libp2p pubsub protobuf (field numbers from the spec); frames
written by either side must parse on the other with the same meaning.
"""

from __future__ import annotations

from libp2p.pubsub.pb import rpc_pb2 as lp

from p2pshard.core.gossip import DropReason
from p2pshard.core.gossip.protocol import control_piece, publish_piece, subscription_piece
from p2pshard.core.wire import rpc_pb2 as ours

from .helpers import TOPIC, add_peers, delivered, router
from .sim import peer_id_of


def test_field_numbers_match_the_libp2p_spec() -> None:
    def numbers(desc) -> dict[str, int]:  # type: ignore[no-untyped-def]
        return {f.name: f.number for f in desc.fields}

    assert numbers(ours.RPC.DESCRIPTOR) == {"subscriptions": 1, "publish": 2, "control": 3}
    assert numbers(ours.Message.DESCRIPTOR) == {
        "from": 1,
        "data": 2,
        "seqno": 3,
        "topic": 4,
        "signature": 5,
        "key": 6,
    }
    assert numbers(ours.ControlMessage.DESCRIPTOR) == {
        "ihave": 1,
        "iwant": 2,
        "graft": 3,
        "prune": 4,
        "idontwant": 5,
    }
    assert numbers(ours.ControlPrune.DESCRIPTOR) == {"topicID": 1, "peers": 2, "backoff": 3}
    assert numbers(ours.PeerInfo.DESCRIPTOR) == {"peerID": 1, "signedPeerRecord": 2}
    assert ours.DESCRIPTOR.package == "p2pshard.pubsub"


def test_frames_from_another_implementation_are_understood() -> None:
    r = router()
    r.subscribe(TOPIC, 0.0)
    (pid,) = add_peers(r, 1, topic=None)
    rpc = lp.RPC()
    rpc.subscriptions.add(subscribe=True, topicid=TOPIC)
    m = rpc.publish.add(from_id=peer_id_of(3), data=b"hi", seqno=(1).to_bytes(8, "big"), signature=b"ok")
    m.topicIDs.append(TOPIC)
    rpc.control.graft.add(topicID=TOPIC)
    rpc.control.idontwant.add(messageIDs=[b"zz"])
    cmds = r.handle_rpc(pid, rpc.SerializeToString(), 0.1)
    assert [d.message.data for d in delivered(cmds)] == [b"hi"]
    assert pid in r.topic_peers(TOPIC) and pid in r.mesh_peers(TOPIC)
    # unknown fields (e.g. a newer peer's extensions) are ignored, not an error
    rpc2 = lp.RPC()
    rpc2.control.extensions.SetInParent()
    r.handle_rpc(pid, rpc2.SerializeToString(), 0.2)
    assert r.stats.dropped[DropReason.RPC_MALFORMED] == 0


def test_our_concatenated_frames_parse_elsewhere() -> None:
    msg = ours.Message(data=b"payload", topic=TOPIC, seqno=b"\x00" * 8)
    ctrl = ours.ControlMessage()
    ctrl.prune.add(topicID=TOPIC, backoff=60, peers=[ours.PeerInfo(peerID=b"p")])
    ctrl.ihave.add(topicID=TOPIC, messageIDs=[b"a", b"b"])
    frame = (
        subscription_piece(TOPIC, True)
        + control_piece(ctrl)
        + publish_piece(msg.SerializeToString())
        + publish_piece(msg.SerializeToString())
    )
    theirs = lp.RPC()
    theirs.ParseFromString(frame)
    assert [s.topicid for s in theirs.subscriptions] == [TOPIC]
    assert [p.data for p in theirs.publish] == [b"payload", b"payload"]
    assert list(theirs.publish[0].topicIDs) == [TOPIC]
    assert theirs.control.prune[0].backoff == 60
    assert list(theirs.control.ihave[0].messageIDs) == [b"a", b"b"]
