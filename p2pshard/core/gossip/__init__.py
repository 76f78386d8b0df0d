"""p2pshard's gossipsub router, sans-IO (gossipsub v1.0 / v1.1 / v1.2 and floodsub peers).

The router is a pure state machine: no sockets, no clock, no trio. A driver (``p2pshard.net``)
owns the streams and a clock and feeds the router; every input returns ``list[Command]`` that
the driver carries out in order.

Driver contract
---------------
Construction::

    router = GossipRouter(local_peer_id_bytes, GossipConfig.build(d=6), rng=random.Random(),
                          signer=Secp256k1Signer(private_key_bytes))

Inputs (``now`` is a monotonic float in seconds, e.g. ``trio.current_time()``):

* ``add_peer(peer_id, protocol, outbound, now, ip=None)`` once a pubsub stream is negotiated;
  ``protocol`` is one of :data:`SUPPORTED_PROTOCOLS` (offer them in that order).
* ``remove_peer(peer_id, now)`` when the peer's streams are gone.
* ``handle_rpc(peer_id, frame, now)`` for every length-prefixed frame read from the peer's
  inbound stream (pass the frame without its uvarint prefix; cap the prefix at
  ``config.max_rpc_size`` before reading; the router checks again and counts).
* ``heartbeat(now)`` every ``config.heartbeat_interval`` seconds.
* ``subscribe(topic, now)``, ``unsubscribe(topic, now)``.
* ``publish(topic, data, now) -> (msg_id, commands)``; raises :class:`PublishError`.
* ``set_validator(topic, fn)`` for synchronous validators, ``set_async_validation(topic)`` to
  receive :class:`Validate` commands, answered by ``report_validation(msg_id, result, now)``.

Outputs (frozen dataclasses, :data:`Command`):

* :class:`SendRpc` ``(peer_id, data, message_count)``: write ``uvarint(len(data)) + data`` to
  the peer's outbound stream. Frames are already batched per peer and bounded by
  ``max_rpc_size``; a message is encoded once and shared by all peers' frames.
* :class:`Deliver` ``(topic, msg_id, message, received_from)``: give to local subscribers.
* :class:`Validate` ``(msg_id, message, source)``: validate, then ``report_validation``.
* :class:`Connect` ``(peer_id, signed_peer_record, reason)``: dial (peer exchange, direct peers).
* :class:`Rejected` ``(peer_id, reason, detail)``: log only; already counted and scored.

Write the ``SendRpc`` frames of one peer in the order given (a control frame may precede a
large message frame on purpose, e.g. IDONTWANT). Everything dropped is counted in
``router.stats.dropped`` by :class:`DropReason` (``router.stats.snapshot()`` for export); events
(delivered, forwarded, grafts, IWANT served...) are in ``router.stats.events``. Peer ids are
opaque raw ``bytes`` (the multihash bytes, as in ``Message.from``); the core never imports
libp2p. For ``p2pshard status``: ``peers``, ``subscriptions``, ``mesh_peers(topic)``,
``fanout_peers(topic)``, ``topic_peers(topic)``, ``peer_protocol(pid)``, ``peer_score(pid)``.

Message ids default to libp2p's ``from || seqno``; p2pshard topics pass
``GossipConfig.build(message_id_fn=..., signature_policy=...)`` with a content hash. Signing uses
an injected :class:`Signer` (default :class:`Secp256k1Signer`, coincurve) and :class:`Verifier`
(default :class:`LibP2PVerifier`: secp256k1, ed25519, RSA, ECDSA authors).

Example::

    cmds = router.add_peer(pid, "/meshsub/1.2.0", outbound=True, now=trio.current_time())
    cmds += router.subscribe("/p2pshard/net/gradients/proto", now)
    msg_id, more = router.publish("/p2pshard/net/gradients/proto", payload, now)
    for cmd in cmds + more:
        match cmd:
            case SendRpc(peer_id=p, data=d): await outbound[p].send(d)   # bounded channel
            case Deliver(topic=t, message=m): await subscribers[t].send(m)
            case Validate(msg_id=i, message=m): nursery.start_soon(validate, i, m)
            case Connect(peer_id=p): nursery.start_soon(dial, p)
            case Rejected(): log.info(...)
"""

from __future__ import annotations

from .commands import Command, Connect, Deliver, Rejected, SendRpc, Validate
from .config import GossipConfig, SignaturePolicy
from .errors import (
    ConfigError,
    GossipError,
    GossipParamError,
    LimitError,
    MeshDegreeError,
    PublishError,
    ScoreParamsError,
    SignaturePolicyError,
    SigningError,
    ThresholdError,
    TimingError,
    UnknownProtocolError,
)
from .message import (
    ACCEPT,
    GossipMessage,
    MessageIdFn,
    ValidationResult,
    Verdict,
    default_message_id,
    ignore,
    reject,
)
from .protocol import (
    FLOODSUB_ID,
    MESHSUB_V10,
    MESHSUB_V11,
    MESHSUB_V12,
    SUPPORTED_PROTOCOLS,
    PeerKind,
)
from .router import GossipRouter
from .score_params import (
    PeerScoreParams,
    PeerScoreThresholds,
    TopicScoreParams,
    score_parameter_decay,
)
from .signing import (
    LibP2PVerifier,
    Secp256k1Signer,
    Signer,
    Verifier,
    peer_id_from_public_key,
)
from .state import Validator
from .stats import DropReason, RouterStats

__all__ = [
    "ACCEPT",
    "FLOODSUB_ID",
    "MESHSUB_V10",
    "MESHSUB_V11",
    "MESHSUB_V12",
    "SUPPORTED_PROTOCOLS",
    "Command",
    "ConfigError",
    "Connect",
    "Deliver",
    "DropReason",
    "GossipConfig",
    "GossipError",
    "GossipMessage",
    "GossipParamError",
    "GossipRouter",
    "LibP2PVerifier",
    "LimitError",
    "MeshDegreeError",
    "MessageIdFn",
    "PeerKind",
    "PeerScoreParams",
    "PeerScoreThresholds",
    "PublishError",
    "Rejected",
    "RouterStats",
    "ScoreParamsError",
    "Secp256k1Signer",
    "SendRpc",
    "SignaturePolicy",
    "SignaturePolicyError",
    "Signer",
    "SigningError",
    "ThresholdError",
    "TimingError",
    "TopicScoreParams",
    "UnknownProtocolError",
    "Validate",
    "ValidationResult",
    "Validator",
    "Verdict",
    "Verifier",
    "default_message_id",
    "ignore",
    "peer_id_from_public_key",
    "reject",
    "score_parameter_decay",
]
