"""Elias-Fano offsets: exact round trips, the stated size, and hostile streams refused by reason."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pshard.core.wire.eliasfano import EliasFanoError, decode_offsets, encode_offsets, stream_bytes


@st.composite
def _chunks(draw: st.DrawFn) -> tuple[np.ndarray, int, int, int]:
    chunk = draw(st.integers(1, 300))
    k = draw(st.integers(1, chunk))
    size = draw(st.integers(0, 4 * chunk))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    parts = []
    for lo in range(0, size, chunk):
        u = min(chunk, size - lo)
        parts.append(np.sort(rng.choice(u, min(k, u), replace=False)))
    offsets = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return offsets, size, chunk, k


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(_chunks())
def test_round_trip_is_exact_and_as_long_as_stated(case: tuple[np.ndarray, int, int, int]) -> None:
    offsets, size, chunk, k = case
    data = encode_offsets(offsets, size, chunk, k)
    assert len(data) == stream_bytes(size, chunk, k)
    assert np.array_equal(decode_offsets(data, size, chunk, k), offsets)


def test_sparselocos_chunks_cost_7_45_bits_an_offset() -> None:
    assert stream_bytes(4096 * 1000, 4096, 88) * 8 / (88 * 1000) == pytest.approx(7.4545, abs=1e-3)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.binary(max_size=64), st.integers(1, 64), st.integers(1, 64), st.integers(0, 256))
def test_any_stream_decodes_or_is_refused_with_a_reason(data: bytes, chunk: int, k: int, size: int) -> None:
    k = min(k, chunk)
    try:
        offsets = decode_offsets(data, size, chunk, k)
    except EliasFanoError as exc:
        assert exc.reason in {"indices_length_mismatch", "indices_bad_padding", "indices_bad_elias_fano"}
        return
    assert offsets.size == sum(min(k, min(chunk, size - lo)) for lo in range(0, size, chunk))
