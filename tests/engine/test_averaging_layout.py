"""The averaging layouts' pure parts: slice bounds and the bare float32 encoding."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from p2pshard.protocols.averaging import AveragingError, decode_raw_f32, encode_raw_f32, slice_bounds


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
