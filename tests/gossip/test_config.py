"""GossipConfig builder and score-parameter validation."""

from __future__ import annotations

import math

import pytest

from p2pshard.core.gossip import (
    ConfigError,
    GossipConfig,
    GossipMessage,
    GossipParamError,
    LimitError,
    MeshDegreeError,
    PeerScoreParams,
    PeerScoreThresholds,
    ScoreParamsError,
    SignaturePolicy,
    SignaturePolicyError,
    ThresholdError,
    TimingError,
    TopicScoreParams,
    score_parameter_decay,
)


def test_defaults_are_valid_and_match_go() -> None:
    cfg = GossipConfig()
    assert (cfg.d, cfg.d_low, cfg.d_high, cfg.d_out, cfg.d_lazy) == (6, 5, 12, 2, 6)
    assert (cfg.history_length, cfg.history_gossip, cfg.heartbeat_interval) == (5, 3, 1.0)
    assert not cfg.scoring


@pytest.mark.parametrize(
    "overrides",
    [
        dict(d_out=5),  # d_out must be < d_low
        dict(d_low=7),  # d_low <= d
        dict(d_high=5),  # d <= d_high
        dict(d=8, d_low=7, d_out=5),  # d_out <= d // 2
        dict(d_score=7),  # d_score <= d
    ],
)
def test_mesh_degree_constraints(overrides: dict[str, int]) -> None:
    with pytest.raises(MeshDegreeError):
        GossipConfig.build(**overrides)


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        (dict(history_gossip=6), GossipParamError),
        (dict(history_gossip=0), GossipParamError),
        (dict(gossip_factor=1.5), GossipParamError),
        (dict(d_lazy=-1), GossipParamError),
        (dict(heartbeat_interval=0.0), TimingError),
        (dict(seen_ttl=-1.0), TimingError),
        (dict(fanout_ttl=math.inf), TimingError),
        (dict(max_ihave_length=0), LimitError),
        (dict(max_rpc_size=1024, max_message_size=1024), LimitError),
        (dict(no_such_field=1), GossipParamError),
    ],
)
def test_other_constraints(overrides: dict[str, object], error: type[ConfigError]) -> None:
    with pytest.raises(error):
        GossipConfig.build(**overrides)


def test_strict_no_sign_needs_a_content_message_id() -> None:
    with pytest.raises(SignaturePolicyError):
        GossipConfig.build(signature_policy=SignaturePolicy.STRICT_NO_SIGN)

    def content_id(m: GossipMessage) -> bytes:
        return m.data[:20]

    cfg = GossipConfig.build(signature_policy=SignaturePolicy.STRICT_NO_SIGN, message_id_fn=content_id)
    assert cfg.message_id_fn is content_id


def test_replace_revalidates() -> None:
    cfg = GossipConfig()
    assert cfg.replace(d=8, d_high=14).d == 8
    with pytest.raises(MeshDegreeError):
        cfg.replace(d=20)


def test_config_errors_are_value_errors() -> None:
    with pytest.raises(ValueError, match="d_out"):
        GossipConfig.build(d_out=9)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(time_in_mesh_weight=-1.0),
        dict(first_message_deliveries_weight=-1.0),
        dict(mesh_message_deliveries_weight=1.0),
        dict(mesh_failure_penalty_weight=1.0),
        dict(invalid_message_deliveries_weight=1.0),
        dict(invalid_message_deliveries_decay=1.0),
        dict(first_message_deliveries_decay=0.0),
        dict(time_in_mesh_quantum=0.0),
        dict(topic_weight=-1.0),
        dict(first_message_deliveries_weight=math.nan),
    ],
)
def test_topic_score_params_constraints(overrides: dict[str, float]) -> None:
    with pytest.raises(ScoreParamsError):
        TopicScoreParams(**overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(behaviour_penalty_weight=1.0),
        dict(behaviour_penalty_decay=1.5),
        dict(ip_colocation_factor_weight=1.0),
        dict(decay_to_zero=0.0),
        dict(topic_score_cap=-1.0),
    ],
)
def test_peer_score_params_constraints(overrides: dict[str, float]) -> None:
    with pytest.raises(ScoreParamsError):
        PeerScoreParams(**overrides)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "thresholds",
    [
        dict(gossip_threshold=1.0),
        dict(gossip_threshold=-10.0, publish_threshold=-5.0),
        dict(publish_threshold=-50.0, graylist_threshold=-40.0),
        dict(accept_px_threshold=-1.0),
        dict(opportunistic_graft_threshold=-1.0),
    ],
)
def test_threshold_ordering(thresholds: dict[str, float]) -> None:
    with pytest.raises(ThresholdError):
        PeerScoreThresholds(**thresholds)


def test_score_parameter_decay_reaches_zero_in_decay_time() -> None:
    decay = score_parameter_decay(10.0, 1.0, 0.01)
    assert 0 < decay < 1
    assert decay**10 == pytest.approx(0.01)
