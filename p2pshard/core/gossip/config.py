"""Router configuration: one frozen, validated :class:`GossipConfig`.

Defaults are go-libp2p-pubsub's (which the specs call "reasonable defaults"), except the size
limits, which p2pshard raises above go's 1 MiB so benchmarks can move 1 MiB payloads. Build one
with ``GossipConfig.build(d=8, heartbeat_interval=0.7)``; invalid combinations raise a
:class:`~p2pshard.core.gossip.errors.ConfigError` subclass naming the broken rule.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .errors import GossipParamError, LimitError, MeshDegreeError, SignaturePolicyError, TimingError
from .message import MessageIdFn, default_message_id
from .score_params import PeerScoreParams, PeerScoreThresholds


class SignaturePolicy(Enum):
    """libp2p message signing policies.

    STRICT_SIGN: we sign, and every received message must carry ``from``, ``seqno`` and a valid
    signature. STRICT_NO_SIGN: we send neither, and received messages carrying ``from``,
    ``seqno``, ``signature`` or ``key`` are rejected (content-addressed topics).
    """

    STRICT_SIGN = "strict_sign"
    STRICT_NO_SIGN = "strict_no_sign"


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """All router parameters. Times are seconds (floats), like ``now``."""

    # mesh degrees (spec: D, D_lo, D_hi, D_score, D_out, D_lazy)
    d: int = 6
    d_low: int = 5
    d_high: int = 12
    d_score: int = 4
    d_out: int = 2
    d_lazy: int = 6
    gossip_factor: float = 0.25
    # message cache windows
    history_length: int = 5
    history_gossip: int = 3
    gossip_retransmission: int = 3
    # timings
    heartbeat_interval: float = 1.0
    fanout_ttl: float = 60.0
    seen_ttl: float = 120.0
    prune_backoff: float = 60.0
    unsubscribe_backoff: float = 10.0
    backoff_slack: float = 1.0
    graft_flood_threshold: float = 10.0
    iwant_followup_time: float = 3.0
    validation_timeout: float = 10.0
    # peer exchange
    do_px: bool = True
    prune_peers: int = 16
    # gossip limits
    max_ihave_length: int = 5000
    max_ihave_messages: int = 10
    max_iwant_per_heartbeat: int = 5000
    # v1.2 IDONTWANT
    idontwant_threshold: int = 1024
    max_idontwant_messages: int = 1000
    idontwant_ttl_heartbeats: int = 3
    # opportunistic grafting
    opportunistic_graft_ticks: int = 60
    opportunistic_graft_peers: int = 2
    # direct peers (raw peer ids): always forwarded to, never grafted
    direct_peers: frozenset[bytes] = frozenset()
    direct_connect_ticks: int = 300
    # publishing
    flood_publish: bool = True
    deliver_own_messages: bool = True
    signature_policy: SignaturePolicy = SignaturePolicy.STRICT_SIGN
    message_id_fn: MessageIdFn = default_message_id
    # bounds
    max_rpc_size: int = 4 * 1024 * 1024
    max_message_size: int = 2 * 1024 * 1024
    max_messages_per_rpc: int = 10_000
    max_topic_length: int = 512
    max_topics_per_peer: int = 1000
    max_message_id_length: int = 256
    max_pending_validations: int = 8192
    # scoring; None switches it off (all scores are 0)
    score_params: PeerScoreParams | None = None
    score_thresholds: PeerScoreThresholds = field(default_factory=PeerScoreThresholds)

    def __post_init__(self) -> None:
        if not (0 <= self.d_out < self.d_low <= self.d <= self.d_high):
            raise MeshDegreeError(
                f"need 0 <= d_out < d_low <= d <= d_high, got d_out={self.d_out} "
                f"d_low={self.d_low} d={self.d} d_high={self.d_high}"
            )
        if self.d_out > self.d // 2:
            raise MeshDegreeError(f"need d_out <= d // 2, got d_out={self.d_out} d={self.d}")
        if not 0 <= self.d_score <= self.d:
            raise MeshDegreeError(f"need 0 <= d_score <= d, got {self.d_score}")
        if self.d_lazy < 0:
            raise GossipParamError("d_lazy must be >= 0")
        if not 0.0 <= self.gossip_factor <= 1.0:
            raise GossipParamError("gossip_factor must be in [0, 1]")
        if not 1 <= self.history_gossip <= self.history_length:
            raise GossipParamError("need 1 <= history_gossip <= history_length")
        if self.gossip_retransmission < 1:
            raise GossipParamError("gossip_retransmission must be >= 1")
        for name in (
            "heartbeat_interval",
            "fanout_ttl",
            "seen_ttl",
            "prune_backoff",
            "unsubscribe_backoff",
            "iwant_followup_time",
            "validation_timeout",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise TimingError(f"{name} must be a finite number > 0, got {value}")
        for name in ("backoff_slack", "graft_flood_threshold"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise TimingError(f"{name} must be >= 0, got {value}")
        for name in (
            "max_ihave_length",
            "max_ihave_messages",
            "max_iwant_per_heartbeat",
            "max_idontwant_messages",
            "idontwant_ttl_heartbeats",
            "max_rpc_size",
            "max_message_size",
            "max_messages_per_rpc",
            "max_topic_length",
            "max_topics_per_peer",
            "max_message_id_length",
            "max_pending_validations",
            "opportunistic_graft_ticks",
            "direct_connect_ticks",
        ):
            if getattr(self, name) < 1:
                raise LimitError(f"{name} must be >= 1")
        for name in ("prune_peers", "opportunistic_graft_peers", "idontwant_threshold"):
            if getattr(self, name) < 0:
                raise LimitError(f"{name} must be >= 0")
        if self.max_message_size + 1024 > self.max_rpc_size:
            raise LimitError("max_rpc_size must exceed max_message_size by >= 1 KiB of headers")
        if (
            self.signature_policy is SignaturePolicy.STRICT_NO_SIGN
            and self.message_id_fn is default_message_id
        ):
            raise SignaturePolicyError(
                "StrictNoSign messages have no from/seqno: configure a content message_id_fn"
            )

    @classmethod
    def build(cls, **overrides: Any) -> GossipConfig:
        """Defaults with ``overrides`` applied; unknown names raise :class:`ConfigError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(overrides) - names
        if unknown:
            raise GossipParamError(f"unknown config fields: {sorted(unknown)}")
        return cls(**overrides)

    def replace(self, **overrides: Any) -> GossipConfig:
        """A validated copy with ``overrides`` applied."""
        base = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        base.update(overrides)
        return GossipConfig.build(**base)

    @property
    def scoring(self) -> bool:
        """Whether peer scoring is on."""
        return self.score_params is not None
