"""The fast chunked top-k encoder: the same bytes as the straightforward one it replaced, and
``sparse_out`` (what the sender's error feedback uses) equal bit for bit to what receivers decode.

``_reference_encode`` below is the encoder as it was before the bound-based selection (full
argpartition per chunk, bit-matrix index packing, unblocked INT2 fit), copied as the oracle for
tensor records.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping

import lz4.block
import numpy as np
import numpy.typing as npt
import pytest

from p2pshard.core.wire import quant, topk
from p2pshard.core.wire import tensor_pb2 as pb
from p2pshard.core.wire.tensor import (
    MAGIC,
    EncodeOptions,
    Encoding,
    ErrorFeedback,
    LowRankFactors,
    decode_tensors,
    encode_tensors,
)

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
ALL_ENCODINGS = list(Encoding)
INT_LEVELS = {Encoding.INT8: 127, Encoding.INT4: 7, Encoding.INT2: 3}

# ----------------------------------------------------------------------- the reference encoder


def _reference_encode(tensors: Mapping[str, F32], opts: EncodeOptions) -> bytes:
    bundle = pb.TensorBundle()
    for name in sorted(tensors):
        arr = np.asarray(tensors[name], dtype=np.float32, order="C")
        rec = bundle.tensors.add()
        rec.name = name
        rec.shape.extend(int(d) for d in arr.shape)
        rec.encoding = opts.encoding.value
        rec.chunk_size = opts.chunk_size
        flat = arr.reshape(-1)
        if opts.topk is None:
            rec.layout = pb.LAYOUT_DENSE
            values = flat
        else:
            rec.layout = pb.LAYOUT_CHUNKED_TOPK
            rec.k = opts.topk
            offsets, values = _ref_select_topk(flat, opts.chunk_size, opts.topk)
            rec.index_bits = opts.index_bits
            if rec.index_bits:
                rec.indices = _ref_pack_bits(offsets, rec.index_bits)
            else:
                rec.indices = offsets.astype("<u2").tobytes()
        kept = _ref_kept_per_chunk(flat.size, opts.chunk_size, opts.topk)
        rec.values, scales = _ref_encode_values(values, opts.encoding, kept)
        if scales is not None:
            rec.scales = scales.astype("<f4").tobytes()
    body = bundle.SerializeToString()
    if opts.lz4:
        packed: bytes = lz4.block.compress(body, store_size=False)
        return struct.pack("<4sBI", MAGIC, 1, len(body)) + packed
    return struct.pack("<4sBI", MAGIC, 0, len(body)) + body


def _ref_kept_per_chunk(n: int, chunk: int, k: int | None) -> I64:
    n_chunks = -(-n // chunk)
    lengths = np.full(n_chunks, chunk, dtype=np.int64)
    if n_chunks:
        lengths[-1] = n - chunk * (n_chunks - 1)
    return lengths if k is None else np.minimum(lengths, k)


def _ref_select_topk(flat: F32, chunk: int, k: int) -> tuple[I64, F32]:
    n_full = flat.size // chunk
    offsets: list[I64] = []
    if n_full:
        full = flat[: n_full * chunk].reshape(n_full, chunk)
        part = np.argpartition(-np.abs(full), k - 1, axis=1)[:, :k] if k < chunk else None
        idx = np.sort(part, axis=1) if part is not None else np.tile(np.arange(chunk), (n_full, 1))
        offsets.append(idx.reshape(-1).astype(np.int64))
    tail = flat[n_full * chunk :]
    if tail.size:
        kt = min(k, tail.size)
        idx_t = np.sort(np.argpartition(-np.abs(tail), kt - 1)[:kt]) if kt < tail.size else None
        offsets.append(np.arange(tail.size) if idx_t is None else idx_t.astype(np.int64))
    offs = np.concatenate(offsets) if offsets else np.zeros(0, dtype=np.int64)
    kept = _ref_kept_per_chunk(flat.size, chunk, k)
    base = np.repeat(np.arange(kept.size, dtype=np.int64) * chunk, kept)
    return offs, flat[base + offs]


def _ref_encode_values(values: F32, encoding: Encoding, kept: I64) -> tuple[bytes, F32 | None]:
    if encoding is Encoding.FLOAT32:
        return values.astype("<f4").tobytes(), None
    if encoding is Encoding.FLOAT16:
        return values.astype("<f2").tobytes(), None
    if encoding is Encoding.BFLOAT16:
        bits = values.astype(np.float32).view(np.uint32).astype(np.uint64)
        out = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        out[np.isnan(values)] = 0x7FC0
        return out.astype("<u2").tobytes(), None
    levels = INT_LEVELS[encoding]
    chunk_of = np.repeat(np.arange(kept.size), kept)
    absmax = np.zeros(kept.size, dtype=np.float32)
    starts = np.zeros(kept.size, dtype=np.int64)
    nonempty = kept > 0
    if values.size:
        np.cumsum(kept[:-1], out=starts[1:])
        absmax[nonempty] = np.maximum.reduceat(np.abs(values), starts[nonempty])
    scales = (absmax / np.float32(levels)).astype(np.float32)
    if encoding is Encoding.INT2:
        return _ref_encode_int2(values, scales, chunk_of, starts, nonempty)
    safe = np.where(scales > 0, scales, 1.0).astype(np.float32)
    q = np.clip(np.rint(values / safe[chunk_of]), -levels, levels).astype(np.int8)
    return _ref_pack_ints(q, encoding), scales


def _ref_encode_int2(
    values: F32, scales: F32, chunk_of: I64, starts: I64, nonempty: npt.NDArray[np.bool_]
) -> tuple[bytes, F32]:
    v = values.astype(np.float64)
    s = scales.astype(np.float64)
    for _ in range(2):
        safe = np.where(s > 0, s, 1.0)
        q = _ref_round_int2(v / safe[chunk_of]).astype(np.float64)
        num = np.zeros(s.size)
        den = np.zeros(s.size)
        if v.size:
            num[nonempty] = np.add.reduceat(q * v, starts[nonempty])
            den[nonempty] = np.add.reduceat(q * q, starts[nonempty])
        s = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    out = s.astype(np.float32)
    safe32 = np.where(out > 0, out, 1.0).astype(np.float32)
    q8 = _ref_round_int2(values.astype(np.float64) / safe32[chunk_of].astype(np.float64)).astype(np.int8)
    return _ref_pack_ints(q8, Encoding.INT2), out


def _ref_round_int2(y: npt.NDArray[np.float64]) -> I64:
    return (2 * np.clip(np.floor(y / 2.0), -2, 1) + 1).astype(np.int64)


def _ref_pack_ints(q: npt.NDArray[np.int8], encoding: Encoding) -> bytes:
    if encoding is Encoding.INT4:
        nib = (q.astype(np.int16) + 8).astype(np.uint8)
        if nib.size % 2:
            nib = np.concatenate([nib, np.zeros(1, dtype=np.uint8)])
        return (nib[0::2] | (nib[1::2] << 4)).astype(np.uint8).tobytes()
    if encoding is Encoding.INT2:
        codes = ((q.astype(np.int16) + 3) // 2).astype(np.uint8)
        pad = (-codes.size) % 4
        if pad:
            codes = np.concatenate([codes, np.zeros(pad, dtype=np.uint8)])
        packed = codes[0::4] | (codes[1::4] << 2) | (codes[2::4] << 4) | (codes[3::4] << 6)
        return packed.astype(np.uint8).tobytes()
    return q.astype(np.int8).tobytes()


def _ref_pack_bits(values: I64, width: int) -> bytes:
    bits = ((values[:, None] >> np.arange(width, dtype=np.int64)) & 1).astype(np.uint8)
    return np.packbits(bits.reshape(-1), bitorder="little").tobytes()


# ----------------------------------------------------------------------------------- inputs


def _inputs(seed: int, n: int) -> dict[str, F32]:
    """Gaussian, heavy-tailed (Student t, 2 degrees of freedom) and a matrix, all with a tail
    chunk for the chunk sizes used here; fixed seeds, so no test depends on a lucky draw."""
    rng = np.random.default_rng(seed)
    return {
        "gauss": rng.standard_normal(n, dtype=np.float32),
        "heavy": rng.standard_t(2, size=n).astype(np.float32),
        "matrix": (rng.standard_normal((97, 131)) * 1e-3).astype(np.float32),
        "short": rng.standard_normal(7, dtype=np.float32),  # fewer elements than k
    }


# (chunk, k): SparseLoCo's, the smallest and largest k, a chunk that is not a power of two (the
# bound uses only its first 2944 elements), one that is not a multiple of 8 (the compiled
# selection reads its last 5 offsets one by one), a k too large for the bound (plain argpartition).
SHAPES = [
    (4096, 88),
    (2048, 88),
    (4096, 1),
    (2048, 2048),
    (3000, 20),
    (4101, 88),
    (4096, 300),
    (4096, 700),
]


@pytest.mark.parametrize(("chunk", "k"), SHAPES)
@pytest.mark.parametrize("packed", [True, False])
def test_same_bytes_as_the_reference_encoder(chunk: int, k: int, packed: bool) -> None:
    tensors = _inputs(chunk + k, 5 * chunk + 1234)
    for encoding in ALL_ENCODINGS:
        opts = EncodeOptions(encoding, chunk, k, False, packed)
        assert encode_tensors(tensors, opts) == _reference_encode(tensors, opts), encoding


@pytest.mark.parametrize("encoding", [Encoding.INT2, Encoding.INT4, Encoding.FLOAT32])
def test_same_bytes_for_dense_records_and_with_lz4(encoding: Encoding) -> None:
    tensors = _inputs(3, 9000)
    # Values on INT2's decision boundaries (0 and +-2 scales; absmax 3 makes the first scale 1).
    tensors["levels"] = np.tile(np.array([3, 0, -0.0, 2, -2, 1, -1, -3], dtype=np.float32), 700)
    tensors["minus_two"] = np.tile(np.array([3] + [-2] * 7, dtype=np.float32), 700)
    for opts in (EncodeOptions(encoding, 4096, None, False), EncodeOptions(encoding, 4096, 88, True, True)):
        assert encode_tensors(tensors, opts) == _reference_encode(tensors, opts)


def test_same_bytes_with_nan_and_inf_chunks() -> None:
    """NaN counts as the smallest magnitude, as before; a chunk with fewer than k numbers that
    are not NaN keeps some NaN. Infinities are the largest."""
    x = np.random.default_rng(5).standard_normal(6 * 4096, dtype=np.float32)
    x[5] = x[4096 + 7] = np.inf
    x[2 * 4096 : 2 * 4096 + 300] = np.nan  # many NaN group maxima: no usable bound
    x[3 * 4096 + 11] = np.nan  # one NaN: the bound still works
    x[4 * 4096 : 5 * 4096 - 50] = np.nan  # 50 numbers left, k = 88
    opts = EncodeOptions(Encoding.FLOAT32, 4096, 88, False, True)
    assert encode_tensors({"x": x}, opts) == _reference_encode({"x": x}, opts)


def _unprunable_chunk(rng: np.random.Generator) -> F32:
    """A chunk of 4096 where the k-th largest of the 256 strided group maxima (k = 88) lets
    through ~1400 candidates: group g (columns = g mod 256) holds values in [1000 + g, 1000.2 + g]
    for g < 88, so the bound is group 0's maximum and groups 1..87 pass whole."""
    groups = np.arange(4096) % 256
    x = rng.standard_normal(4096).astype(np.float32)
    big = groups < 88
    x[big] = 1000 + groups[big] + rng.random(int(big.sum())) * 0.2
    return x * np.where(rng.random(4096) < 0.5, -1, 1).astype(np.float32)


def test_chunks_the_bound_cannot_prune_fall_back_to_the_same_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(11)
    chunks = [
        _unprunable_chunk(rng) if i % 3 == 1 else rng.standard_normal(4096, dtype=np.float32)
        for i in range(12)
    ]
    x = np.concatenate(chunks)
    fallback_chunks: list[int] = []
    plain = topk._topk_plain

    def counting(rows: F32, k: int) -> I64:
        fallback_chunks.append(rows.shape[0])
        return plain(rows, k)

    monkeypatch.setattr(topk, "_topk_plain", counting)
    for encoding in (Encoding.INT2, Encoding.FLOAT32):
        opts = EncodeOptions(encoding, 4096, 88, False, True)
        assert encode_tensors({"x": x}, opts) == _reference_encode({"x": x}, opts)
    assert fallback_chunks == [4, 4]  # only the unprunable chunks, within one block of twelve


def test_gaussian_chunks_never_need_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """The speed rests on the bound leaving few candidates; without ties no chunk of i.i.d. data
    (heavy-tailed or not) should have to take a full argpartition."""

    def forbidden(rows: F32, k: int) -> I64:
        raise AssertionError(f"fallback taken for {rows.shape[0]} chunks")

    monkeypatch.setattr(topk, "_topk_plain", forbidden)
    tensors = _inputs(13, 64 * 4096)
    del tensors["short"], tensors["matrix"]  # the tail chunk of 'matrix' is shorter than 4 * 256
    encode_tensors(tensors, EncodeOptions(Encoding.INT2, 4096, 88, False, True))


# ----------------------------------------------------------------------------------- ties


def _assert_a_top_k(x: F32, positions: I64, chunk: int, k: int) -> None:
    """Every chunk keeps min(k, its length) elements, none smaller in magnitude than one left."""
    kept = np.zeros(x.size, dtype=bool)
    kept[positions] = True
    for start in range(0, x.size, chunk):
        mag, sel = np.abs(x[start : start + chunk]), kept[start : start + chunk]
        assert sel.sum() == min(k, mag.size)
        if not sel.all():
            assert mag[sel].min() >= mag[~sel].max()


Maker = Callable[[np.random.Generator, int], F32]
TIED: dict[str, Maker] = {
    "zeros": lambda rng, n: np.zeros(n, dtype=np.float32),
    "few-levels": lambda rng, n: rng.integers(-3, 4, n).astype(np.float32),
    "mostly-zero": lambda rng, n: np.where(rng.random(n) < 0.01, rng.standard_normal(n), 0).astype(
        np.float32
    ),
    "signs": lambda rng, n: np.sign(rng.standard_normal(n)).astype(np.float32),
}


@pytest.mark.parametrize("make", TIED.values(), ids=TIED.keys())
def test_ties_give_a_valid_top_k_that_decodes(make: Maker) -> None:
    x = make(np.random.default_rng(17), 9 * 4096 + 333)
    for encoding in ALL_ENCODINGS:
        sparse: dict[str, tuple[I64, F32]] = {}
        payload = encode_tensors({"x": x}, EncodeOptions(encoding, 4096, 88, False, True), sparse_out=sparse)
        positions, values = sparse["x"]
        assert np.array_equal(decode_tensors(payload)["x"][positions].view(np.uint32), values.view(np.uint32))
        _assert_a_top_k(x, positions, 4096, 88)


# ----------------------------------------------------------------------------------- sparse_out


@pytest.mark.parametrize("encoding", ALL_ENCODINGS)
@pytest.mark.parametrize("packed", [True, False])
def test_sparse_out_is_what_the_receiver_decodes_bit_for_bit(encoding: Encoding, packed: bool) -> None:
    tensors = _inputs(23, 3 * 4096 + 999)
    tensors["zeros"] = np.zeros((3, 5000), dtype=np.float32)
    tensors["neg_zero"] = np.full(100, -0.0, dtype=np.float32)
    sparse: dict[str, tuple[I64, F32]] = {}
    payload = encode_tensors(tensors, EncodeOptions(encoding, 4096, 88, False, packed), sparse_out=sparse)
    decoded = decode_tensors(payload)
    assert set(sparse) == set(tensors)
    for name, (positions, values) in sparse.items():
        flat = decoded[name].reshape(-1)
        assert positions.dtype == np.int64 and values.dtype == np.float32
        assert np.all(np.diff(positions) > 0)
        kept = _ref_kept_per_chunk(flat.size, 4096, 88)
        assert positions.size == values.size == int(kept.sum())
        assert np.array_equal(flat[positions].view(np.uint32), values.view(np.uint32)), name
        rest = np.ones(flat.size, dtype=bool)
        rest[positions] = False
        assert not flat[rest].view(np.uint32).any()  # everything else decodes to +0.0


def test_sparse_out_leaves_out_dense_and_low_rank_records() -> None:
    rng = np.random.default_rng(29)
    tensors: dict[str, F32 | LowRankFactors] = {
        "sparse": rng.standard_normal(5000, dtype=np.float32),
        "dense": rng.standard_normal(5000, dtype=np.float32),
        "factors": LowRankFactors(
            (8, 6),
            rng.standard_normal((8, 2)).astype(np.float32),
            rng.standard_normal((6, 2)).astype(np.float32),
        ),
    }
    opts = EncodeOptions(Encoding.INT8, 1024, 16, False)
    overrides = {"dense": EncodeOptions(Encoding.INT8, 1024, None, False)}
    sparse: dict[str, tuple[I64, F32]] = {}
    payload = encode_tensors(tensors, opts, overrides, sparse_out=sparse)
    assert list(sparse) == ["sparse"]
    positions, values = sparse["sparse"]
    assert np.array_equal(decode_tensors(payload)["sparse"][positions], values)
    assert encode_tensors(tensors, opts, overrides) == payload


@pytest.mark.parametrize("width", range(1, 17))
def test_packed_offsets_match_the_bit_matrix_packing(width: int) -> None:
    rng = np.random.default_rng(width)
    for n in (0, 1, 7, 8, 9, 63, 1001):
        values = rng.integers(0, 1 << width, n).astype(np.int64)
        assert quant.pack_bits(values, width) == _ref_pack_bits(values, width)


# ------------------------------------------------------------------- runs and error feedback


def test_runs_of_a_few_chunks_give_the_bytes_of_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """A record is encoded one cache-sized run of chunks at a time; with runs of three chunks
    (and a run ending in the short last chunk) the bytes are still the reference's."""
    monkeypatch.setattr(topk, "_TOPK_BLOCK", 3 * 4096)
    tensors = _inputs(31, 10 * 4096 + 555)
    for encoding in ALL_ENCODINGS:
        opts = EncodeOptions(encoding, 4096, 88, False, True)
        assert encode_tensors(tensors, opts) == _reference_encode(tensors, opts), encoding


@pytest.mark.parametrize("encoding", ALL_ENCODINGS)
def test_error_feedback_sends_the_decayed_sum_and_keeps_what_was_not_sent(
    encoding: Encoding, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(topk, "_TOPK_BLOCK", 3 * 4096)
    rng = np.random.default_rng(37)
    residual = {n: v * np.float32(0.5) for n, v in _inputs(37, 7 * 4096 + 99).items()}
    update = {n: rng.standard_normal(v.shape, dtype=np.float32) for n, v in residual.items()}
    decay = np.float32(0.9)
    target = {n: np.add(np.multiply(residual[n], decay), update[n]) for n in residual}
    opts = EncodeOptions(encoding, 4096, 88, False, True)
    sparse: dict[str, tuple[I64, F32]] = {}
    payload = encode_tensors(residual, opts, sparse_out=sparse, feedback=ErrorFeedback(update, 0.9))
    assert payload == _reference_encode(target, opts)
    decoded = decode_tensors(payload)
    for name, left in residual.items():
        expected = np.subtract(target[name], decoded[name], dtype=np.float32)
        assert np.array_equal(left.view(np.uint32), expected.view(np.uint32)), name
        positions, values = sparse[name]
        assert np.array_equal(decoded[name].reshape(-1)[positions], values)


def test_error_feedback_needs_float32_residuals_it_can_update() -> None:
    residual = {"x": np.zeros(5000, dtype=np.float64)}
    feedback = ErrorFeedback({"x": np.ones(5000, dtype=np.float32)}, 0.9)
    with pytest.raises(ValueError, match="C-ordered float32"):
        encode_tensors(residual, EncodeOptions(Encoding.INT8, 1024, 16), feedback=feedback)
    assert not residual["x"].any()


def test_the_largest_at_the_end_of_a_chunk_that_is_not_a_multiple_of_8_are_kept() -> None:
    chunk, k = 4101, 88
    x = np.random.default_rng(41).standard_normal(6 * chunk, dtype=np.float32)
    ends = (np.arange(6)[:, None] * chunk + np.arange(chunk - 5, chunk)).reshape(-1)
    x[ends] = 100.0 + np.arange(ends.size, dtype=np.float32)
    opts = EncodeOptions(Encoding.FLOAT32, chunk, k, False, True)
    sparse: dict[str, tuple[I64, F32]] = {}
    assert encode_tensors({"x": x}, opts, sparse_out=sparse) == _reference_encode({"x": x}, opts)
    assert set(ends) <= set(sparse["x"][0].tolist())
