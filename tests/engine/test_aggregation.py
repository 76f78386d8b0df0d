"""Screening and robust aggregation with Byzantine rows."""

from __future__ import annotations

import numpy as np
import pytest

from p2pshard.engine.aggregation import RULES, AggregationConfig, aggregate, screen_update
from p2pshard.protocols.engine_api import UpdateRejected

SHAPES = {"a": (2, 3), "b": (4,)}
D = 10
RNG = np.random.default_rng(3)
TRUE = RNG.standard_normal(D).astype(np.float32)
HONEST = (TRUE + 0.05 * RNG.standard_normal((4, D))).astype(np.float32)
ROBUST = ["trimmed_mean", "median", "krum", "multi_krum", "centered_clip"]


def tensors(**over: np.ndarray) -> dict[str, np.ndarray]:
    t = {"a": np.ones((2, 3), np.float32), "b": np.ones(4, np.float32)}
    t.update(over)
    return t


@pytest.mark.parametrize(
    ("update", "reason"),
    [
        ({"a": np.ones((2, 3), np.float32)}, "missing_tensor"),
        (tensors(c=np.ones(1, np.float32)), "unexpected_tensor"),
        (tensors(a=np.ones((3, 2), np.float32)), "wrong_shape"),
        (tensors(b=np.array([1, np.nan, 1, 1], np.float32)), "non_finite"),
        (tensors(b=np.array([1, np.inf, 1, 1], np.float32)), "non_finite"),
        (tensors(b=np.full(4, 1e3, np.float32)), "norm_too_large"),
    ],
)
def test_screen_rejects_with_reason(update: dict[str, np.ndarray], reason: str) -> None:
    with pytest.raises(UpdateRejected) as info:
        screen_update(update, SHAPES, max_norm=100.0)
    assert info.value.reason == reason


def test_screen_flattens_in_name_order() -> None:
    flat = screen_update(tensors(b=np.arange(4, dtype=np.float32)), SHAPES, max_norm=100.0)
    np.testing.assert_array_equal(flat, [1, 1, 1, 1, 1, 1, 0, 1, 2, 3])


def test_all_rules_agree_on_identical_rows() -> None:
    rows = np.stack([TRUE] * 5)
    for rule in RULES:
        out = aggregate(rows, AggregationConfig(rule=rule)).vector
        np.testing.assert_allclose(out, TRUE, rtol=1e-6, err_msg=rule)


@pytest.mark.parametrize("rule", ROBUST)
@pytest.mark.parametrize("attack", ["sign_flip_x10", "scaled_x100", "far_point"])
def test_robust_rules_stay_near_the_honest_mean(rule: str, attack: str) -> None:
    bad = {
        "sign_flip_x10": -10 * TRUE,
        "scaled_x100": 100 * TRUE,
        "far_point": np.full(D, 50.0, np.float32),
    }[attack]
    rows = np.vstack([HONEST[:2], bad[None, :], HONEST[2:]]).astype(np.float32)
    honest_mean = HONEST.mean(axis=0)
    robust = aggregate(rows, AggregationConfig(rule=rule, f=1)).vector
    naive = aggregate(rows, AggregationConfig(rule="mean")).vector
    scale = float(np.linalg.norm(honest_mean))
    assert np.linalg.norm(robust - honest_mean) < 0.35 * scale, rule
    assert np.linalg.norm(naive - honest_mean) > 2 * scale  # the attack does hurt a plain mean


def test_krum_selects_one_honest_row_and_multi_krum_drops_the_attacker() -> None:
    rows = np.vstack([HONEST, 100 * TRUE[None, :]]).astype(np.float32)
    krum = aggregate(rows, AggregationConfig(rule="krum", f=1))
    assert len(krum.selected) == 1 and krum.selected[0] < 4
    multi = aggregate(rows, AggregationConfig(rule="multi_krum", f=1))
    assert multi.selected == (0, 1, 2, 3)


def test_sparse_rows_are_dense_with_zeros_for_coordinate_rules() -> None:
    # Three peers each sent a different coordinate (top-k): the median sees two zeros per coordinate.
    rows = np.diag([1.0, 2.0, 3.0]).astype(np.float32)
    np.testing.assert_array_equal(aggregate(rows, AggregationConfig("median")).vector, [0, 0, 0])
    np.testing.assert_allclose(aggregate(rows, AggregationConfig("mean")).vector, [1 / 3, 2 / 3, 1])


def test_aggregation_is_deterministic_and_small_inputs_work() -> None:
    rows = RNG.standard_normal((5, 1000)).astype(np.float32)
    for rule in RULES:
        a = aggregate(rows, AggregationConfig(rule=rule, f=2)).vector
        b = aggregate(rows.copy(), AggregationConfig(rule=rule, f=2)).vector
        assert a.tobytes() == b.tobytes(), rule
        one = aggregate(rows[:1], AggregationConfig(rule=rule, f=2)).vector
        np.testing.assert_allclose(one, rows[0], rtol=1e-6, err_msg=rule)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="unknown aggregation rule"):
        AggregationConfig(rule="average")
    with pytest.raises(ValueError):
        aggregate(np.zeros((0, 3), np.float32), AggregationConfig())
