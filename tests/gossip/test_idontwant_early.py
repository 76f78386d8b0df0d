"""v1.2 IDONTWANT as early as possible: id-first encoding, a frame's head, forwarding as received."""

from __future__ import annotations

import hashlib

from p2pshard.core.gossip import MESHSUB_V11, DropReason, GossipMessage, GossipRouter, SendRpc
from p2pshard.core.gossip.protocol import (
    encode_message,
    encode_publish,
    parse_publish_head,
    publish_piece,
    publish_spans,
)
from p2pshard.core.gossip.signing import Secp256k1Signer, sign_message, signing_bytes
from p2pshard.core.wire import rpc_pb2

from .helpers import TOPIC, add_peers, config, ctrl_rpc, merged, message, msg_rpc, router
from .sim import peer_id_of

AUTHOR = peer_id_of(80)


def mid_of(seq: int) -> bytes:
    return AUTHOR + seq.to_bytes(8, "big")


def test_id_first_encoding_is_the_same_message_and_keeps_its_signature() -> None:
    signer = Secp256k1Signer.generate()
    pb = rpc_pb2.Message(data=b"d" * 5000, topic=TOPIC, seqno=(7).to_bytes(8, "big"))
    setattr(pb, "from", signer.peer_id)
    sign_message(pb, signer)
    wire = encode_message(pb)
    assert encode_publish(pb) == publish_piece(wire)
    assert wire != pb.SerializeToString()  # data moved to the end
    parsed = rpc_pb2.Message.FromString(wire)
    assert parsed == pb
    assert signing_bytes(parsed) == signing_bytes(pb)  # what the signature covers is unchanged
    empty = rpc_pb2.Message(data=b"", topic=TOPIC)  # a present-but-empty field stays present
    assert rpc_pb2.Message.FromString(encode_message(empty)).HasField("data")


def test_a_frame_head_gives_the_default_id_only_for_id_first_messages() -> None:
    pb = message(AUTHOR, 3, b"x" * 4000)
    frame = publish_piece(encode_message(pb))
    assert parse_publish_head(frame[:200]) == (len(encode_message(pb)), AUTHOR, mid_of(3)[-8:], TOPIC)
    assert parse_publish_head(frame[:30]) is None  # cut before the topic
    assert parse_publish_head(publish_piece(pb.SerializeToString())[:200]) is None  # data first (go, js)
    assert parse_publish_head(ctrl_rpc(idontwant=[dict(messageIDs=[b"a"])])) is None
    assert parse_publish_head(b"\x12\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff") is None


def test_publish_spans_locate_each_message_as_sent() -> None:
    a, b = message(AUTHOR, 1, b"a" * 300), message(AUTHOR, 2, b"b")
    head = ctrl_rpc(graft=[dict(topicID=TOPIC)])
    data = publish_piece(encode_message(a)) + head + publish_piece(b.SerializeToString())
    spans = publish_spans(data)
    assert spans is not None and len(spans) == 2
    assert [rpc_pb2.RPC.FromString(data[s:e]).publish[0] for s, e in spans] == [a, b]
    assert publish_spans(data[:-1]) is None  # truncated: the caller re-encodes


def _mesh_router(threshold: int = 100) -> tuple[GossipRouter, list[bytes]]:
    r = router(config(idontwant_threshold=threshold, d=3, d_low=2, d_high=6))
    r.subscribe(TOPIC, 0.0)
    peers = add_peers(r, 3)
    for pid in peers:
        r.handle_rpc(pid, ctrl_rpc(graft=[dict(topicID=TOPIC)]), 0.0)
    return r, peers


def test_frame_head_says_idontwant_to_every_v12_subscriber_before_the_payload_is_in() -> None:
    r, (src, a, b) = _mesh_router()
    v11 = add_peers(r, 1, protocol=MESHSUB_V11, start=10)[0]
    outside = add_peers(r, 1, start=20)[0]  # subscribed, v1.2, not in our mesh
    assert outside not in r.mesh_peers(TOPIC)
    pb = message(AUTHOR, 1, b"x" * 5000)
    frame = publish_piece(encode_message(pb))
    cmds = r.frame_head(src, frame[:1024], 0.1)
    for pid in (a, b, outside):
        assert [list(i.messageIDs) for i in merged(cmds, pid).control.idontwant] == [[mid_of(1)]]
    assert not merged(cmds, src).control.idontwant and not merged(cmds, v11).control.idontwant
    assert not r.seen(mid_of(1))  # nothing is decided before the message is in and verified
    assert r.frame_head(src, frame[:1024], 0.2) == []  # announced once
    cmds = r.handle_rpc(src, frame, 0.3)
    assert not any(merged(cmds, pid).control.idontwant for pid in (a, b, outside))  # not twice
    assert r.seen(mid_of(1))


def test_frame_head_ignores_small_unsubscribed_seen_and_content_id_messages() -> None:
    r, (src, _a, _b) = _mesh_router(threshold=1000)
    small = publish_piece(encode_message(message(AUTHOR, 1, b"x" * 10)))
    assert r.frame_head(src, small, 0.1) == []
    other = publish_piece(encode_message(message(AUTHOR, 2, b"x" * 5000, topic="/other")))
    assert r.frame_head(src, other[:1024], 0.1) == []
    done = publish_piece(encode_message(message(AUTHOR, 3, b"x" * 5000)))
    r.handle_rpc(src, done, 0.2)
    assert r.frame_head(src, done[:1024], 0.3) == []

    def content_id(msg: GossipMessage) -> bytes:
        return hashlib.sha256(msg.data).digest()[:20]

    c = router(config(idontwant_threshold=100, message_id_fn=content_id))
    c.subscribe(TOPIC, 0.0)
    pid = add_peers(c, 2)[0]
    assert c.frame_head(pid, done[:1024], 0.1) == []  # the id needs the whole payload


def test_a_new_message_is_forwarded_as_the_bytes_it_came_in() -> None:
    r, (src, a, b) = _mesh_router()
    frame = publish_piece(encode_message(message(AUTHOR, 1, b"x" * 100_000)))
    cmds = r.handle_rpc(src, frame, 0.1)
    forwards = [c for c in cmds if isinstance(c, SendRpc) and c.message_count == 1]
    assert {c.peer_id for c in forwards} == {a, b}
    assert all(c.data is frame for c in forwards)  # same object: neither re-encoded nor copied


def test_declined_tells_a_driver_what_a_peer_no_longer_wants() -> None:
    r, (src, a, _b) = _mesh_router()
    assert not r.declined(a, mid_of(5))
    r.handle_rpc(a, ctrl_rpc(idontwant=[dict(messageIDs=[mid_of(5)])]), 0.1)
    assert r.declined(a, mid_of(5)) and not r.declined(src, mid_of(5))
    assert not r.declined(peer_id_of(555), mid_of(5))  # unknown peer
    cmds = r.handle_rpc(src, msg_rpc(message(AUTHOR, 5, b"y" * 500)), 0.2)
    assert not merged(cmds, a).publish
    assert r.stats.dropped[DropReason.SEND_IDONTWANT_HONORED] == 1


def test_a_custom_id_that_is_from_seqno_on_a_topic_keeps_the_duplicate_fast_path() -> None:
    calls: list[str] = []

    def per_topic(msg: GossipMessage) -> bytes:
        calls.append(msg.topic)
        if msg.topic == TOPIC:
            return msg.source + msg.seqno
        return hashlib.sha256(msg.data).digest()[:20]

    r = router(config(message_id_fn=per_topic))
    r.subscribe(TOPIC, 0.0)
    src, other = add_peers(r, 2)
    frame = msg_rpc(message(AUTHOR, 1, b"z" * 50))
    r.handle_rpc(src, frame, 0.1)
    calls.clear()
    r.handle_rpc(other, frame, 0.2)  # a duplicate: found by from || seqno, the id function not run
    assert calls == []
    assert r.stats.dropped[DropReason.MESSAGE_DUPLICATE] == 1


def test_an_id_function_that_only_looked_like_from_seqno_is_found_out() -> None:
    def tricky(msg: GossipMessage) -> bytes:
        if len(msg.data) > 100:
            return hashlib.sha256(msg.data).digest()[:20]
        return msg.source + msg.seqno

    r = router(config(idontwant_threshold=100, message_id_fn=tricky))
    r.subscribe(TOPIC, 0.0)
    src = add_peers(r, 2)[0]
    frame = publish_piece(encode_message(message(AUTHOR, 1, b"x" * 5000)))
    assert r.frame_head(src, frame[:1024], 0.1) != []  # the probe believed it
    r.handle_rpc(src, frame, 0.2)
    assert r.seen(hashlib.sha256(b"x" * 5000).digest()[:20])  # the real id is what counts
    second = publish_piece(encode_message(message(AUTHOR, 2, b"y" * 5000)))
    assert r.frame_head(src, second[:1024], 0.3) == []  # and no more early ids on this topic


def test_messages_of_a_batched_frame_are_forwarded_intact() -> None:
    r, (src, a, _b) = _mesh_router()
    big = message(AUTHOR, 1, b"B" * 100_000)
    small = message(AUTHOR, 2, b"s" * 200)
    frame = publish_piece(encode_message(big)) + publish_piece(small.SerializeToString())
    cmds = r.handle_rpc(src, frame, 0.1)
    assert list(merged(cmds, a).publish) == [big, small]
    forwarded = [c.data for c in cmds if isinstance(c, SendRpc) and c.peer_id == a and c.message_count]
    assert publish_piece(encode_message(big)) in b"".join(forwarded)  # cut out as it came: id first


def test_the_author_is_told_too_its_queued_publish_to_us_may_still_be_skipped() -> None:
    r, (src, a, _b) = _mesh_router()
    author = add_peers(r, 1, start=80)[0]
    assert author == AUTHOR
    frame = publish_piece(encode_message(message(AUTHOR, 1, b"x" * 5000)))
    cmds = r.frame_head(src, frame[:1024], 0.1)
    assert merged(cmds, a).control.idontwant and merged(cmds, author).control.idontwant
