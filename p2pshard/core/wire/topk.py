"""Chunked top-k selection for the tensor codec: per chunk, the ``k`` largest magnitudes.

A sparse update keeps the ``k`` largest-magnitude elements of every chunk of ``chunk_size``
elements (the last chunk may be shorter). The plain way, a full ``argpartition`` per chunk, is the
reference; :func:`select_topk` gives its result (in ascending offsets) several times faster,
because a sparse pseudo-gradient is encoded every round on the training loop's critical path. The
payload bytes depend on which elements are kept, so any change here must keep the reference's
choice: chunks where the fast path cannot be sure of it (ties at the threshold, NaN, too many
candidates) are selected by the reference.

The speed comes from a lower bound: the k-th largest of ~3k strided group maxima bounds a chunk's
k-th largest magnitude from below, leaving ~1.2k candidates in which the exact threshold is found.
That loop is compiled (numba, :mod:`p2pshard.core.wire._kernels`, imported on first use: a few
seconds of compiling the first time, cached on disk after).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

__all__ = ["block_ranges", "kept_count", "kept_per_chunk", "select_topk"]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


def kept_per_chunk(n: int, chunk: int, k: int | None) -> npt.NDArray[np.int64]:
    """Elements kept in each chunk: all of them (dense) or min(k, chunk length) (top-k)."""
    n_chunks = -(-n // chunk)
    lengths = np.full(n_chunks, chunk, dtype=np.int64)
    if n_chunks:
        lengths[-1] = n - chunk * (n_chunks - 1)
    return lengths if k is None else np.minimum(lengths, k)


def kept_count(n: int, chunk: int, k: int | None) -> int:
    """``kept_per_chunk(n, chunk, k).sum()`` without making the per-chunk array: a decoder checks
    a record's claimed size against the bytes it holds before it allocates anything per chunk."""
    if k is None:
        return n
    full, tail = divmod(n, chunk)
    return full * min(k, chunk) + min(k, tail)


# Encoders work over runs of chunks that fit a core's L2 cache (512K floats = 2 MiB).
_TOPK_BLOCK = 1 << 19
# A chunk whose lower bound leaves more than this many candidates per kept element (ties, or data
# whose large values share one stride class) is selected by a full argpartition instead.
_MAX_CANDIDATES_PER_K = 4


def block_ranges(size: int, chunk: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of cache-sized runs of whole chunks covering ``size`` elements (the last
    run may end in a short chunk): an encoder that selects, quantises and updates its error
    feedback one run at a time reads each element from memory once."""
    step = max(1, _TOPK_BLOCK // chunk) * chunk
    for start in range(0, size, step):
        yield start, min(start + step, size)


def select_topk(flat: F32, chunk: int, k: int) -> tuple[I64, I64, F32]:
    """Largest-magnitude ``k`` per chunk: (in-chunk offsets, flat positions, values), each in
    ascending position order within a chunk."""
    n_full = flat.size // chunk
    offsets, values = _topk_rows(flat[: n_full * chunk].reshape(n_full, chunk), k)
    tail = flat[n_full * chunk :]
    if tail.size:
        tail_offsets, tail_values = _topk_rows(tail.reshape(1, -1), min(k, tail.size))
        offsets = np.concatenate([offsets, tail_offsets])
        values = np.concatenate([values, tail_values])
    kept = kept_per_chunk(flat.size, chunk, k)
    return offsets, np.repeat(np.arange(kept.size, dtype=np.int64) * chunk, kept) + offsets, values


def _topk_rows(rows: F32, k: int) -> tuple[I64, F32]:
    """Per row, the offsets of its ``k`` largest magnitudes (ascending) and their values, both
    flattened: the compiled selection where a bound can prune, the plain one where it cannot."""
    n, chunk = rows.shape
    if k == chunk:
        return np.tile(np.arange(chunk, dtype=np.int64), n), rows.reshape(-1)
    groups = _bound_groups(chunk, k)
    if not groups:
        offsets = _topk_plain(rows, k)
        return offsets.reshape(-1), np.take_along_axis(rows, offsets, axis=1).reshape(-1)
    from p2pshard.core.wire._kernels import select_chunks

    offsets = np.empty((n, k), dtype=np.int64)
    values = np.empty((n, k), dtype=np.float32)
    unsure = np.zeros(n, dtype=bool)
    bits = np.ascontiguousarray(rows).reshape(-1).view(np.uint32)
    cap = _MAX_CANDIDATES_PER_K * k
    select_chunks(
        bits, chunk, k, groups, cap, offsets.reshape(-1), values.reshape(-1).view(np.uint32), unsure
    )
    if unsure.any():
        plain = _topk_plain(rows[unsure], k)
        offsets[unsure] = plain
        values[unsure] = np.take_along_axis(rows[unsure], plain, axis=1)
    return offsets.reshape(-1), values.reshape(-1)


def _topk_plain(rows: F32, k: int) -> I64:
    """The reference selection: a full argpartition per row (NaN counts as the smallest)."""
    part = np.argpartition(-np.abs(rows), k - 1, axis=1)[:, :k]
    return np.sort(part, axis=1).astype(np.int64, copy=False)


def _bound_groups(chunk: int, k: int) -> int:
    """How many groups the compiled selection splits a chunk into, or 0 where it would not pay.

    About 3k groups: the k-th largest group maximum then leaves ~1.2k candidates per chunk for
    i.i.d. data of any distribution (only ranks matter). Four or more elements per group, or the
    bound prunes too little to beat a plain argpartition.
    """
    groups = max(64, 1 << (2 * k - 1).bit_length())
    return groups if chunk >= 4 * groups else 0
