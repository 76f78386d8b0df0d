"""Compressor behaviour users rely on: error feedback, its decay, low-rank quality, preset outer steps."""

from __future__ import annotations

import numpy as np
import pytest

from p2pshard.engine.compression import CompressionConfig, Compressor
from p2pshard.engine.diloco import OUTER_DEFAULTS, DiLoCoConfig

RNG = np.random.default_rng(3)


def test_error_feedback_delivers_what_one_round_dropped() -> None:
    w = RNG.standard_normal((64, 4)) @ np.diag([8.0, 4.0, 2.0, 1.0]) @ RNG.standard_normal((4, 48))
    x = {"w": w.astype(np.float32)}
    c = Compressor(CompressionConfig(kind="lowrank", rank=2))
    first = c.encode(x).decoded["w"]
    total = first.copy()
    for _ in range(3):
        total += c.encode({"w": np.zeros_like(x["w"])}).decoded["w"]
    # What rank 2 (and 4-bit rounding) could not carry in round 1 went out in the next rounds.
    assert np.linalg.norm(total - w) < 0.4 * np.linalg.norm(first - w)


def test_error_feedback_decay_zero_forgets_the_residual() -> None:
    x = {"w": RNG.standard_normal((64, 48)).astype(np.float32)}
    c = Compressor(CompressionConfig(kind="lowrank", rank=2, error_feedback_decay=0.0))
    c.encode(x)
    again = c.encode({"w": np.zeros_like(x["w"])}).decoded["w"]
    assert not again.any()
    with pytest.raises(ValueError):
        CompressionConfig(error_feedback_decay=1.5)


def test_low_rank_recovers_a_low_rank_update_and_passes_vectors_through() -> None:
    m = (RNG.standard_normal((200, 4)) @ RNG.standard_normal((4, 120))).astype(np.float32)
    b = RNG.standard_normal(40).astype(np.float32)
    out = Compressor(CompressionConfig(kind="lowrank", rank=4)).encode({"m": m, "b": b})
    # 4-bit factors with power-of-two column scales: ~25% error in one round (error feedback
    # sends it later); the subspace itself is found exactly.
    assert np.linalg.norm(out.decoded["m"] - m) < 0.3 * np.linalg.norm(m)
    assert np.abs(out.decoded["b"] - b).max() <= np.abs(b).max() / 14 + 1e-6  # int4 vector
    assert len(out.payload) < out.dense_bytes / 10


def test_outer_step_defaults_per_preset_and_overrides_win() -> None:
    assert DiLoCoConfig.for_preset("micro").outer_momentum == 0.0
    tiny = DiLoCoConfig.for_preset("tiny", inner_steps=7)
    assert (tiny.outer_lr, tiny.outer_momentum, tiny.inner_steps) == (*OUTER_DEFAULTS["tiny"], 7)
    assert DiLoCoConfig() == DiLoCoConfig.for_preset("tiny")  # the devnet builds DiLoCoConfig()
    assert DiLoCoConfig.for_preset("base", outer_lr=0.1).outer_lr == 0.1
