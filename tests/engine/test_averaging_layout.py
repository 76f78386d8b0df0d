"""The averaging layouts' pure parts: slice bounds, the bare float32 encoding, row sums."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from p2pshard.core.wire.tensor import (
    EncodeOptions,
    Encoding,
    SparseTensor,
    decode_sparse,
    encode_tensors,
    sum_rows,
)
from p2pshard.protocols.averaging import (
    AveragingError,
    decode_raw_f32,
    encode_raw_f32,
    slice_bounds,
)


@pytest.mark.parametrize(("d", "n"), [(10, 4), (4, 4), (3, 4), (0, 2), (50_000_000, 4)])
def test_slices_cover_the_vector_in_order_and_differ_by_at_most_one(d: int, n: int) -> None:
    bounds = slice_bounds(d, n)
    assert len(bounds) == n and bounds[0][0] == 0 and bounds[-1][1] == d
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1


def test_slice_bounds_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        slice_bounds(10, 0)


def test_raw_f32_round_trip_and_strictness() -> None:
    v = np.array([1.5, -2.0, np.nan], dtype=np.float32)
    out = decode_raw_f32(encode_raw_f32(v))
    assert out.dtype == np.float32 and np.array_equal(out, v, equal_nan=True)
    with pytest.raises(AveragingError):
        decode_raw_f32(b"\x00" * 5)


@pytest.mark.parametrize("size", [1, 5000, (1 << 18) * 3 + 77])
def test_sum_rows_equals_the_float32_sum_of_the_dense_rows(size: int) -> None:
    rng = np.random.default_rng(size)
    opts = EncodeOptions(Encoding.INT2, chunk_size=4096, topk=88, lz4=False, packed_indices=True)
    rows = []
    for _ in range(4):
        payload = encode_tensors({"v": rng.standard_normal(size).astype(np.float32)}, opts)
        row = decode_sparse(payload)["v"]
        assert isinstance(row, SparseTensor)
        rows.append(row)
    dense = [r.dense() for r in rows]
    expected = ((dense[0] + dense[1]) + dense[2]) + dense[3]  # float32, row order
    got = sum_rows(rows, size)
    assert got.dtype == np.float32 and np.array_equal(got, expected)
    reused = np.full(size, np.nan, dtype=np.float32)  # last round's leftovers must not leak in
    assert sum_rows(rows, size, reused) is reused and np.array_equal(reused, expected)
    mixed = sum_rows([rows[0], dense[1], rows[2], dense[3]], size)  # a dense row adds the same
    assert np.array_equal(mixed, expected)


def test_sum_rows_rejects_rows_of_another_size() -> None:
    row = SparseTensor((10,), np.array([2, 9]), np.array([1.0, 2.0], dtype=np.float32))
    assert np.array_equal(sum_rows([row], 10)[[2, 9]], [1.0, 2.0])
    dense = np.zeros(10, dtype=np.float32)
    for bad in ([row], [dense]):
        with pytest.raises(ValueError):
            sum_rows(bad, 9)
