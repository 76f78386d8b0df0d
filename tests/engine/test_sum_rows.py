"""``sum_rows``: SparseLoCo's aggregate (the float32 sum of sparse rows, in row order) as the
torch engine computes it for the outer step."""

from __future__ import annotations

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
