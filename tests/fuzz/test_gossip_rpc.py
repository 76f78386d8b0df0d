"""Fuzz the gossip RPC path: the router's ``handle_rpc`` and ``frame_head`` (configured as a node
configures it: StrictSign with real secp256k1 signatures, content message ids, peer scoring and
the topics' structural validator), and the byte scanners that cut messages out of a frame.

The router's typed answer to bad input is a command (``Rejected``) and a penalty, never an
exception: ``handle_rpc`` must return for any bytes.
"""

from __future__ import annotations

import random

from hypothesis import example, given
from hypothesis import strategies as st

from p2pshard.core import topics as core_topics
from p2pshard.core.gossip import (
    FLOODSUB_ID,
    MESHSUB_V10,
    MESHSUB_V12,
    GossipConfig,
    GossipMessage,
    GossipRouter,
    PeerScoreParams,
    PeerScoreThresholds,
    TopicScoreParams,
    ValidationResult,
)
from p2pshard.core.gossip.protocol import (
    DecodeError,
    encode_publish,
    is_single_publish,
    parse_publish_head,
    publish_spans,
)
from p2pshard.core.gossip.signing import (
    KeyType,
    Secp256k1Signer,
    marshal_public_key,
    peer_id_from_public_key,
    sign_message,
)
from p2pshard.core.wire import rpc_pb2
from tests.fuzz.fuzzing import FUZZ, encoded, hostile, proto_message

NETWORK = "fuzznet"
TOPICS = [core_topics.topic_name(NETWORK, name) for name in ("gradients", "votes")] + ["plain"]
SIGNERS = [Secp256k1Signer(bytes([i + 1]) * 32) for i in range(2)]
ME = Secp256k1Signer(b"\x09" * 32)
PEERS = [s.peer_id for s in SIGNERS] + [b"\x00\x05floodx"]


def _config() -> GossipConfig:
    params = TopicScoreParams(
        invalid_message_deliveries_weight=core_topics.INVALID_MESSAGE_WEIGHT,
        invalid_message_deliveries_decay=core_topics.INVALID_MESSAGE_DECAY,
    )
    return GossipConfig.build(
        message_id_fn=core_topics.message_id,
        score_params=PeerScoreParams(topics={t: params for t in TOPICS}),
        score_thresholds=PeerScoreThresholds(
            gossip_threshold=core_topics.GOSSIP_THRESHOLD,
            publish_threshold=core_topics.PUBLISH_THRESHOLD,
            graylist_threshold=core_topics.GRAYLIST_THRESHOLD,
        ),
        max_rpc_size=64 * 1024,
        max_message_size=32 * 1024,
        idontwant_threshold=64,
    )


CONFIG = _config()


def _router(async_validation: bool) -> GossipRouter:
    r = GossipRouter(ME.peer_id, CONFIG, rng=random.Random(0), signer=ME)
    for pid, proto in zip(PEERS, (MESHSUB_V12, MESHSUB_V10, FLOODSUB_ID), strict=True):
        r.add_peer(pid, proto, outbound=True, now=0.0, ip="127.0.0.1")
    for topic in TOPICS:
        r.subscribe(topic, 0.0)

    def validator(msg: GossipMessage) -> ValidationResult:
        return core_topics.validate(msg, NETWORK, 0).result

    for topic in TOPICS[:2]:
        r.set_validator(topic, validator)
        r.set_async_validation(topic, async_validation)
    return r


def _signed(msg: rpc_pb2.Message, signer: int, sign: bool) -> rpc_pb2.Message:
    if sign:
        setattr(msg, "from", SIGNERS[signer].peer_id)
        sign_message(msg, SIGNERS[signer])
    return msg


messages = st.builds(
    _signed,
    proto_message(
        rpc_pb2.Message,
        overrides={
            "topic": st.sampled_from(TOPICS) | st.text(max_size=8),
            "data": st.binary(max_size=80) | st.binary(min_size=70, max_size=200),
            "seqno": st.binary(min_size=8, max_size=8),
        },
    ),
    st.integers(0, 1),
    st.booleans(),
)
control = proto_message(
    rpc_pb2.ControlMessage,
    depth=3,
    overrides={"topicID": st.sampled_from(TOPICS), "peerID": st.sampled_from(PEERS) | st.binary(max_size=40)},
)
subs = proto_message(
    rpc_pb2.RPC.SubOpts, overrides={"topicid": st.sampled_from(TOPICS) | st.text(max_size=8)}
)


@st.composite
def _rpc_bytes(draw: st.DrawFn) -> bytes:
    """A valid RPC, written as a node writes it: id-first messages concatenated, then control."""
    parts = [encode_publish(m) for m in draw(st.lists(messages, max_size=3))]
    rpc = rpc_pb2.RPC()
    for s in draw(st.lists(subs, max_size=2)):
        rpc.subscriptions.add().CopyFrom(s)
    if draw(st.booleans()):
        rpc.control.CopyFrom(draw(control))
    parts.insert(draw(st.integers(0, len(parts))), rpc.SerializeToString())
    return b"".join(parts)


rpcs = _rpc_bytes() | encoded(proto_message(rpc_pb2.RPC, depth=3))


def _unsupported_curve_message() -> bytes:
    """A message signed, it says, by an ECDSA key on secp112r1 (which cryptography does not
    support): LibP2PVerifier let cryptography's UnsupportedAlgorithm escape handle_rpc."""
    alg = bytes.fromhex("301006072a8648ce3d020106052b81040006")  # ecPublicKey, secp112r1
    point = b"\x04" + b"\x01" * 28
    spki = (
        b"\x30"
        + bytes([len(alg) + len(point) + 3])
        + alg
        + b"\x03"
        + bytes([len(point) + 1])
        + b"\x00"
        + point
    )
    key = marshal_public_key(KeyType.ECDSA, spki)
    m = rpc_pb2.Message(
        topic="plain", data=b"x", seqno=bytes(8), signature=b"0\x06\x02\x01\x01\x02\x01\x01", key=key
    )
    setattr(m, "from", peer_id_from_public_key(key))
    return encode_publish(m)


@FUZZ
@given(hostile(rpcs), st.integers(0, 2), st.booleans())
@example(_unsupported_curve_message(), 0, False)
@example(b"\x12\x00", 0, False)
@example(b"\x1a\x03\x1a\x01\x00", 1, False)
def test_gossip_rpc(data: bytes, peer: int, async_validation: bool) -> None:
    router = _router(async_validation)
    pid = PEERS[peer]
    router.frame_head(pid, data[:1024], 1.0)
    router.handle_rpc(pid, data, 1.0)
    for pending in list(router._pending):
        router.report_validation(pending, ValidationResult.ACCEPT, 1.5)
    router.heartbeat(2.0)
    router.handle_rpc(pid, data, 2.5)  # again: duplicates, backoffs, scores after the first
    router.heartbeat(3.0)


@FUZZ
@given(hostile(rpcs))
@example(b"\x12\x05\x0a\x03abc\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01")
def test_publish_spans(data: bytes) -> None:
    """Every span is a whole ``publish`` entry, and they are the messages protobuf reads."""
    spans = publish_spans(data)
    single = is_single_publish(data)
    head = parse_publish_head(data[:1024])
    if head is not None:
        assert head[0] >= 0 and isinstance(head[3], str)
    try:
        rpc = rpc_pb2.RPC.FromString(data)
    except DecodeError:
        rpc = None
    if spans is not None:
        last = 0
        for start, stop in spans:
            assert last <= start < stop <= len(data) and data[start] == 0x12
            last = stop
        if rpc is not None:
            assert len(spans) == len(rpc.publish)
            for (start, stop), msg in zip(spans, rpc.publish, strict=True):
                assert rpc_pb2.RPC.FromString(data[start:stop]).publish[0] == msg
    if single and rpc is not None:
        assert len(rpc.publish) == 1 and not rpc.subscriptions and not rpc.HasField("control")
