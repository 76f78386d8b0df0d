"""p2pshard's pubsub topics, declared in one place (specs/topics.md).

A topic is ``/p2pshard/<network-id>/<name>/proto``. Each carries one protobuf message type, is
bounded in size, and has a structural validator here (decode, size, field shapes, clock window)
that returns ACCEPT / REJECT / IGNORE with a stable reason string. Application validators
(signatures against the ledger, round consistency, replay caches, rate limits) plug in on top
through :class:`TopicSpec`'s ``hook``.

Message ids for p2pshard topics are content ids: the first 20 bytes of
``SHA-256("p2pshard-msgid:" || topic || 0x00 || data)``, so the same payload republished by
another peer is recognised as a duplicate. Other topics keep libp2p's ``from || seqno``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage

from p2pshard.core.gossip import ACCEPT, GossipMessage, Verdict, default_message_id, ignore, reject
from p2pshard.core.gossip.signing import KeyType, inlined_public_key, unmarshal_public_key
from p2pshard.core.wire import topics_pb2

TOPIC_PREFIX: Final = "/p2pshard/"
ENCODING: Final = "proto"
MESSAGE_ID_DOMAIN: Final = b"p2pshard-msgid:"
MESSAGE_ID_LENGTH: Final = 20
MAX_GOSSIP_MESSAGE: Final = 64 * 1024
"""Gossip carries small messages; payloads move over the blob protocol (DESIGN.md)."""
CLOCK_WINDOW_MS: Final = 5 * 60 * 1000
"""Messages stamped further than this from the receiver's clock are ignored (not penalised)."""
HASH_SIZE: Final = 32

# Scoring profile of a p2pshard network (specs/pubsub.md, "Network profile"). The router's library
# defaults graylist a peer for a single invalid message (P4 -100 < graylist -80); on a network
# where two releases may disagree on one rule, that would split it. Here a peer is graylisted
# after about seven invalid messages in quick succession, and P4 decays over minutes, not seconds.
INVALID_MESSAGE_WEIGHT: Final = -10.0
INVALID_MESSAGE_DECAY: Final = 0.9
GOSSIP_THRESHOLD: Final = -100.0
PUBLISH_THRESHOLD: Final = -200.0
GRAYLIST_THRESHOLD: Final = -400.0


Hook = Callable[[GossipMessage, ProtoMessage, int], Verdict]
"""An application check run after the structural one: (message, decoded, now_ms) -> verdict."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    message_type: type[ProtoMessage]
    author_field: str
    """The field holding the author's raw peer id; it must equal the gossip ``from``."""
    hash_fields: tuple[str, ...] = ()
    """Fields that, when set, must be 32-byte SHA-256 digests."""
    max_size: int = MAX_GOSSIP_MESSAGE


TOPICS: Final = {
    spec.name: spec
    for spec in (
        TopicSpec(
            "gradients", topics_pb2.GradientAnnouncement, "contributor", ("model_hash", "content_hash")
        ),
        TopicSpec("proofs", topics_pb2.WorkProof, "worker", ("model_hash",)),
        TopicSpec("stakes", topics_pb2.Stake, "staker"),
        TopicSpec("transactions", topics_pb2.Transaction, "sender"),
        TopicSpec("votes", topics_pb2.ValidationVote, "validator", ("proof_id",)),
        TopicSpec("capacity", topics_pb2.Capacity, "peer"),
    )
}


def topic_name(network_id: str, name: str) -> str:
    if name not in TOPICS:
        raise ValueError(f"unknown topic {name!r}; known: {', '.join(TOPICS)}")
    if not network_id or "/" in network_id:
        raise ValueError(f"bad network id {network_id!r}")
    return f"{TOPIC_PREFIX}{network_id}/{name}/{ENCODING}"


def parse_topic(topic: str) -> tuple[str, TopicSpec] | None:
    """(network id, spec) for a p2pshard topic, None for anything else."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] or parts[1] != "p2pshard" or parts[4] != ENCODING:
        return None
    spec = TOPICS.get(parts[3])
    return (parts[2], spec) if spec is not None and parts[2] else None


def message_id(msg: GossipMessage) -> bytes:
    if msg.topic.startswith(TOPIC_PREFIX):
        digest = hashlib.sha256(MESSAGE_ID_DOMAIN + msg.topic.encode() + b"\x00" + msg.data).digest()
        return digest[:MESSAGE_ID_LENGTH]
    return default_message_id(msg)


def validate(msg: GossipMessage, network_id: str, now_ms: int, hook: Hook | None = None) -> Verdict:
    """The structural rules every node applies to a p2pshard topic message (specs/topics.md)."""
    parsed = parse_topic(msg.topic)
    if parsed is None:
        return ignore("not_a_p2pshard_topic")
    topic_network, spec = parsed
    if topic_network != network_id:
        return ignore("other_network")
    if len(msg.data) > spec.max_size:
        return reject("oversized")
    decoded = spec.message_type()
    try:
        decoded.ParseFromString(msg.data)
    except DecodeError:
        return reject("undecodable")
    author = getattr(decoded, spec.author_field)
    if not author:
        return reject("missing_author")
    if msg.source and author != msg.source:
        return reject("author_not_sender")
    for name in spec.hash_fields:
        value = getattr(decoded, name)
        if value and len(value) != HASH_SIZE:
            return reject(f"bad_{name}")
    stamp = getattr(decoded, "timestamp_ms", 0)
    if abs(stamp - now_ms) > CLOCK_WINDOW_MS:
        return ignore("outside_clock_window")
    if hook is not None:
        return hook(msg, decoded, now_ms)
    return ACCEPT


SIGNING_DOMAIN: Final = b"p2pshard-topic:"


def signing_bytes(short: str, message: ProtoMessage) -> bytes:
    """What an author signs: domain tag, topic name, and the message with ``signature`` cleared,
    serialised deterministically. Binding the topic name stops a signature moving between topics."""
    bare = type(message)()
    bare.CopyFrom(message)
    bare.ClearField("signature")
    return SIGNING_DOMAIN + short.encode() + b"\x00" + bare.SerializeToString(deterministic=True)


def verify_author(author: bytes, data: bytes, signature: bytes) -> bool:
    """Check a secp256k1 signature by the key inlined in ``author`` (a raw ``16Uiu2…`` peer id)."""
    import coincurve

    marshalled = inlined_public_key(author)
    if marshalled is None:
        return False
    try:
        key_type, key = unmarshal_public_key(marshalled)
        if key_type is not KeyType.SECP256K1:
            return False
        return bool(coincurve.PublicKey(key).verify(signature, data))
    except Exception:  # malformed key or DER signature: not a valid signature
        return False
