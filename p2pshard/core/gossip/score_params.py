"""Peer-score parameters of gossipsub v1.1 (P1..P7) and the score thresholds.

Construction validates the constraints of the v1.1 spec ("Parameters" / "Score thresholds"):
non-negative weights for the rewarding terms (P1, P2, P5 may be either sign), non-positive weights
for the penalties (P3, P3b, P4, P6, P7), decays strictly inside (0, 1), positive windows and
quanta, and ``graylist <= publish <= gossip <= 0 <= accept_px, opportunistic_graft``.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .errors import ScoreParamsError, ThresholdError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def score_parameter_decay(
    decay_time: float, decay_interval: float = 1.0, decay_to_zero: float = 0.01
) -> float:
    """The per-interval decay factor that takes a counter of 1 to ``decay_to_zero`` in
    ``decay_time`` seconds (go's ``ScoreParameterDecayWithBase``)."""
    if decay_time <= 0 or decay_interval <= 0:
        raise ScoreParamsError("decay_time and decay_interval must be positive")
    ticks = decay_time / decay_interval
    return float(decay_to_zero ** (1.0 / ticks))


def _check(cond: bool, what: str, exc: type[ScoreParamsError] = ScoreParamsError) -> None:
    if not cond:
        raise exc(what)


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


@dataclass(frozen=True, slots=True)
class TopicScoreParams:
    """Per-topic score parameters (P1..P4). A weight of 0 switches its term off."""

    topic_weight: float = 1.0
    # P1: time in mesh
    time_in_mesh_weight: float = 0.01
    time_in_mesh_quantum: float = 1.0
    time_in_mesh_cap: float = 3600.0
    # P2: first message deliveries
    first_message_deliveries_weight: float = 1.0
    first_message_deliveries_decay: float = 0.5
    first_message_deliveries_cap: float = 2000.0
    # P3: mesh message delivery rate (deficit penalty); 0 weight = off
    mesh_message_deliveries_weight: float = 0.0
    mesh_message_deliveries_decay: float = 0.5
    mesh_message_deliveries_cap: float = 100.0
    mesh_message_deliveries_threshold: float = 1.0
    mesh_message_deliveries_window: float = 0.01
    mesh_message_deliveries_activation: float = 5.0
    # P3b: mesh failure penalty
    mesh_failure_penalty_weight: float = 0.0
    mesh_failure_penalty_decay: float = 0.5
    # P4: invalid messages
    invalid_message_deliveries_weight: float = -100.0
    invalid_message_deliveries_decay: float = 0.3

    def __post_init__(self) -> None:
        _check(_finite(*(getattr(self, n) for n in self.__slots__)), "parameters must be finite")
        _check(self.topic_weight >= 0, "topic_weight must be >= 0")
        _check(self.time_in_mesh_weight >= 0, "time_in_mesh_weight (P1) must be >= 0")
        _check(self.time_in_mesh_quantum > 0, "time_in_mesh_quantum must be > 0")
        _check(
            self.time_in_mesh_cap > 0 or self.time_in_mesh_weight == 0,
            "time_in_mesh_cap must be > 0",
        )
        _check(
            self.first_message_deliveries_weight >= 0,
            "first_message_deliveries_weight (P2) must be >= 0",
        )
        _check(
            self.first_message_deliveries_cap > 0 or self.first_message_deliveries_weight == 0,
            "first_message_deliveries_cap must be > 0",
        )
        _check(
            self.mesh_message_deliveries_weight <= 0,
            "mesh_message_deliveries_weight (P3) must be <= 0",
        )
        _check(
            (
                self.mesh_message_deliveries_cap > 0
                and self.mesh_message_deliveries_threshold > 0
                and self.mesh_message_deliveries_threshold <= self.mesh_message_deliveries_cap
            )
            or self.mesh_message_deliveries_weight == 0,
            "mesh_message_deliveries needs 0 < threshold <= cap",
        )
        _check(self.mesh_message_deliveries_window >= 0, "mesh_message_deliveries_window >= 0")
        _check(
            self.mesh_message_deliveries_activation >= 1.0 or self.mesh_message_deliveries_weight == 0,
            "mesh_message_deliveries_activation must be >= 1 s",
        )
        _check(self.mesh_failure_penalty_weight <= 0, "mesh_failure_penalty_weight (P3b) <= 0")
        _check(
            self.invalid_message_deliveries_weight <= 0,
            "invalid_message_deliveries_weight (P4) must be <= 0",
        )
        for name in (
            "first_message_deliveries_decay",
            "mesh_message_deliveries_decay",
            "mesh_failure_penalty_decay",
            "invalid_message_deliveries_decay",
        ):
            v = getattr(self, name)
            _check(0 < v < 1, f"{name} must be in (0, 1), got {v}")


def _no_app_score(peer_id: bytes) -> float:
    return 0.0


@dataclass(frozen=True, slots=True)
class PeerScoreParams:
    """Global score parameters (P5..P7, decay, retention) plus the per-topic table."""

    topics: Mapping[str, TopicScoreParams] = field(default_factory=dict)
    #: cap on the positive part of the summed topic scores (0 = no cap)
    topic_score_cap: float = 0.0
    # P5: application-specific score hook, called with the raw peer id
    app_specific_score: Callable[[bytes], float] = _no_app_score
    app_specific_weight: float = 1.0
    # P6: IP colocation
    ip_colocation_factor_weight: float = 0.0
    ip_colocation_factor_threshold: float = 1.0
    ip_colocation_factor_whitelist: tuple[IPNetwork, ...] = ()
    # P7: behaviour penalty
    behaviour_penalty_weight: float = -10.0
    behaviour_penalty_threshold: float = 0.0
    behaviour_penalty_decay: float = 0.9
    decay_interval: float = 1.0
    decay_to_zero: float = 0.01
    #: how long a disconnected peer's score is remembered (prevents reset-by-reconnect)
    retain_score: float = 3600.0

    def __post_init__(self) -> None:
        _check(
            _finite(
                self.topic_score_cap,
                self.app_specific_weight,
                self.ip_colocation_factor_weight,
                self.ip_colocation_factor_threshold,
                self.behaviour_penalty_weight,
                self.behaviour_penalty_threshold,
                self.behaviour_penalty_decay,
                self.decay_interval,
                self.decay_to_zero,
                self.retain_score,
            ),
            "parameters must be finite",
        )
        _check(self.topic_score_cap >= 0, "topic_score_cap must be >= 0")
        _check(self.ip_colocation_factor_weight <= 0, "ip_colocation_factor_weight (P6) <= 0")
        _check(
            self.ip_colocation_factor_threshold >= 1 or self.ip_colocation_factor_weight == 0,
            "ip_colocation_factor_threshold must be >= 1",
        )
        _check(self.behaviour_penalty_weight <= 0, "behaviour_penalty_weight (P7) must be <= 0")
        _check(self.behaviour_penalty_threshold >= 0, "behaviour_penalty_threshold must be >= 0")
        _check(0 < self.behaviour_penalty_decay < 1, "behaviour_penalty_decay must be in (0, 1)")
        _check(self.decay_interval >= 0.001, "decay_interval must be >= 1 ms")
        _check(0 < self.decay_to_zero < 1, "decay_to_zero must be in (0, 1)")
        _check(self.retain_score >= 0, "retain_score must be >= 0")
        for topic, tp in self.topics.items():
            _check(
                isinstance(topic, str) and isinstance(tp, TopicScoreParams),
                "topics maps str -> TopicScoreParams",
            )


@dataclass(frozen=True, slots=True)
class PeerScoreThresholds:
    """Score thresholds of gossipsub v1.1.

    Below ``gossip_threshold`` no IHAVE/IWANT is exchanged with the peer; below
    ``publish_threshold`` our own messages are not flood-published to it; below
    ``graylist_threshold`` all its RPCs are ignored. PX is accepted only from peers at or above
    ``accept_px_threshold``; opportunistic grafting starts when the median mesh score is below
    ``opportunistic_graft_threshold``.
    """

    gossip_threshold: float = -10.0
    publish_threshold: float = -50.0
    graylist_threshold: float = -80.0
    accept_px_threshold: float = 10.0
    opportunistic_graft_threshold: float = 20.0

    def __post_init__(self) -> None:
        _check(
            _finite(
                self.gossip_threshold,
                self.publish_threshold,
                self.graylist_threshold,
                self.accept_px_threshold,
                self.opportunistic_graft_threshold,
            ),
            "thresholds must be finite",
            ThresholdError,
        )
        _check(self.gossip_threshold <= 0, "gossip_threshold must be <= 0", ThresholdError)
        _check(
            self.publish_threshold <= self.gossip_threshold,
            "publish_threshold must be <= gossip_threshold",
            ThresholdError,
        )
        _check(
            self.graylist_threshold <= self.publish_threshold,
            "graylist_threshold must be <= publish_threshold",
            ThresholdError,
        )
        _check(self.accept_px_threshold >= 0, "accept_px_threshold must be >= 0", ThresholdError)
        _check(
            self.opportunistic_graft_threshold >= 0,
            "opportunistic_graft_threshold must be >= 0",
            ThresholdError,
        )
