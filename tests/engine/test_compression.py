"""Compressor behaviour users rely on: error feedback, its decay, low-rank quality, preset outer steps."""

from __future__ import annotations

import numpy as np
import pytest

from p2pshard.core.wire.tensor import SparseTensor, decode_sparse
from p2pshard.engine.compression import SPARSELOCO, SPARSELOCO_12BIT, CompressionConfig, Compressor
from p2pshard.engine.diloco import OUTER_DEFAULTS, SPARSE_OUTER, DiLoCoConfig

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
        CompressionConfig(kind="topk", error_feedback_decay=1.5)


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


def test_sparseloco_residual_keeps_exactly_what_was_not_sent_and_decays() -> None:
    x = {"update": RNG.standard_normal(3 * 4096 + 100).astype(np.float32)}
    c = Compressor(SPARSELOCO)
    out = c.encode(x)
    sent = out.decoded["update"]
    # 88 per chunk of 4096, and min(88, 100) of the short last chunk.
    assert np.count_nonzero(sent) == 4 * 88
    np.testing.assert_array_equal(c.residual["update"], (x["update"] - sent).astype(np.float32))
    # Next round: the target is the new update plus 0.95 x the residual, and again nothing is lost.
    y = {"update": RNG.standard_normal(x["update"].size).astype(np.float32)}
    residual = c.residual["update"].copy()
    again = c.encode(y).decoded["update"]
    target = (y["update"] + np.float32(0.95) * residual).astype(np.float32)
    np.testing.assert_array_equal(c.residual["update"], (target - again).astype(np.float32))
    # What is sent are the largest of each chunk of the target, with their signs.
    kept = again != 0
    # ...and the encoder knows it without decoding: its sparse rows are the receivers', bit for bit.
    third = c.encode(y)
    mine, theirs = third.sparse, decode_sparse(third.payload)
    assert mine is not None and set(mine) == set(theirs) == {"update"}
    row = theirs["update"]
    assert isinstance(row, SparseTensor) and mine["update"].shape == row.shape
    assert np.array_equal(mine["update"].index, row.index)
    assert np.array_equal(mine["update"].values.view(np.uint32), row.values.view(np.uint32))
    assert (np.sign(again[kept]) == np.sign(target[kept])).all()
    for start in range(0, 3 * 4096, 4096):
        t, k = np.abs(target[start : start + 4096]), kept[start : start + 4096]
        assert t[k].min() >= t[~k].max()


@pytest.mark.parametrize(
    ("config", "index_bits", "ratio"), [(SPARSELOCO, 7.45, 150), (SPARSELOCO_12BIT, 12, 100)]
)
def test_sparseloco_sends_over_150x_fewer_bytes_than_fp32(
    config: CompressionConfig, index_bits: float, ratio: int
) -> None:
    n = 834_304  # the tiny preset
    out = Compressor(config).encode({"update": RNG.standard_normal(n).astype(np.float32)})
    assert out.dense_bytes == 4 * n
    # The payload is everything a receiver gets: 2-bit values, offsets (Elias-Fano: 7.45 bits each
    # for 88 of 4096; or fixed 12-bit), a scale per chunk, headers.
    chunks = -(-n // 4096)
    body = int(chunks * 88 * (2 + index_bits) / 8) + 4 * chunks
    assert body < len(out.payload) < body + 64
    assert out.dense_bytes / len(out.payload) > ratio


def test_elias_fano_offsets_lose_nothing() -> None:
    """The index coding is lossless: both SparseLoCo variants send the same update, and keep the
    same residual, round after round."""
    n = 3 * 4096 + 1000  # a short last chunk too
    a, b = Compressor(SPARSELOCO), Compressor(SPARSELOCO_12BIT)
    for _ in range(3):
        update = {"w": RNG.standard_normal(n).astype(np.float32)}
        ea, eb = a.encode(update), b.encode(update)
        assert len(ea.payload) < len(eb.payload)
        assert np.array_equal(ea.decoded["w"], eb.decoded["w"])
        assert np.array_equal(a.residual["w"], b.residual["w"])


def test_sparse_outer_step_has_no_momentum_and_overrides_still_win() -> None:
    d = DiLoCoConfig.for_preset("tiny", sparse=True, inner_steps=7)
    assert (d.outer_lr, d.outer_momentum, d.inner_steps) == (*SPARSE_OUTER, 7)
    assert SPARSE_OUTER[1] == 0.0 and d.outer_sum
    assert DiLoCoConfig.for_preset("tiny", sparse=True, outer_lr=2.0).outer_lr == 2.0
    assert DiLoCoConfig.for_preset("tiny") == DiLoCoConfig()  # the dense default is unchanged
    assert not DiLoCoConfig().outer_sum


def test_bits_options_are_checked() -> None:
    assert CompressionConfig(kind="lowrank", factor_bits=2).factor_bits == 2
    for bad in ({"factor_bits": 3}, {"value_bits": 1}):
        with pytest.raises(ValueError):
            CompressionConfig(kind="lowrank", **bad)  # type: ignore[arg-type]
