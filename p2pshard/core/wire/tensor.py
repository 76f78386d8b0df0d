"""The tensor codec: named float32 tensors <-> bytes on the wire (numpy only, no torch).

A payload is an envelope around one ``TensorBundle`` (``specs/proto/tensor.proto``)::

    b"P2T1" | compression: u8 (0 none, 1 lz4) | uncompressed length: u32 LE | body

Encoding is lossy by choice (fp16, bf16, per-chunk int8, chunked top-k); decoding is strict because
the bytes come from peers we do not trust: every claimed size, shape, chunk size, count and index is
checked against :class:`DecodeLimits` *before* memory is allocated for it, and every failure is a
:class:`TensorDecodeError` whose ``reason`` is a short stable string a caller can count.

:func:`decode_tensors` yields dense float32 arrays: a top-k record is scattered into zeros. That is
the stated rule for sparse updates everywhere downstream (aggregation treats an element a peer did
not send as an explicit zero). :func:`decode_sparse` keeps a top-k record as its kept positions and
values, after exactly the same checks, for reducers that sum a few kept values of many peers.

A low-rank record (factors P, Q with integer values and a power-of-two
scale per factor column) is multiplied out exactly in float64 whatever order a BLAS sums in, then
rounded once to float32, so every machine decodes the same bits (model hashes depend on it). Its
decoding work (rows x columns x rank) is bounded by ``DecodeLimits.max_decode_work``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import Enum

import lz4.block
import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError

from p2pshard.core.wire import tensor_pb2 as pb

__all__ = [
    "MAGIC",
    "DecodeLimits",
    "EncodeOptions",
    "Encoding",
    "LowRankFactors",
    "SparseTensor",
    "TensorDecodeError",
    "decode_sparse",
    "decode_tensors",
    "encode_tensors",
]

MAGIC = b"P2T1"
_HEADER = struct.Struct("<4sBI")
_COMPRESSION_NONE = 0
_COMPRESSION_LZ4 = 1
_MAX_CHUNK = 1 << 16  # in-chunk offsets are uint16
MAX_FACTOR_RANK = 1024
_MAX_SCALE_SPAN = 24  # rank * 127**2 * 2**24 < 2**53: low-rank products are exact in float64

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


class TensorDecodeError(ValueError):
    """A payload that does not decode; ``reason`` is short and stable (usable as a metric label)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Encoding(Enum):
    """How the numbers are written; values are the protobuf enum numbers."""

    FLOAT32 = pb.VALUE_ENCODING_FLOAT32
    FLOAT16 = pb.VALUE_ENCODING_FLOAT16
    BFLOAT16 = pb.VALUE_ENCODING_BFLOAT16
    INT8 = pb.VALUE_ENCODING_INT8
    INT4 = pb.VALUE_ENCODING_INT4
    INT2 = pb.VALUE_ENCODING_INT2


_VALUE_BYTES = {Encoding.FLOAT32: 4, Encoding.FLOAT16: 2, Encoding.BFLOAT16: 2, Encoding.INT8: 1}
# Largest integer magnitude per integer encoding. INT2's four levels are -3, -1, 1, 3 (no zero).
_INT_LEVELS = {Encoding.INT8: 127, Encoding.INT4: 7, Encoding.INT2: 3}
# How the float encodings' values lie in the payload (bfloat16: the upper half of float32's bits).
_WIRE_FLOATS = {Encoding.FLOAT32: "<f4", Encoding.FLOAT16: "<f2", Encoding.BFLOAT16: "<u2"}


def _values_len(encoding: Encoding, count: int) -> int:
    if encoding is Encoding.INT4:
        return (count + 1) // 2
    if encoding is Encoding.INT2:
        return (count + 3) // 4
    return count * _VALUE_BYTES[encoding]


@dataclass(frozen=True)
class LowRankFactors:
    """A tensor of ``shape`` sent as ``p @ q.T`` (``p``: rows x rank, ``q``: columns x rank), where
    rows = shape[0] and columns = the product of the rest. Encoded with INT8, INT4 or INT2 values."""

    shape: tuple[int, ...]
    p: npt.NDArray[np.float32]
    q: npt.NDArray[np.float32]

    def __post_init__(self) -> None:
        if len(self.shape) < 2 or self.p.ndim != 2 or self.q.ndim != 2:
            raise ValueError("low-rank factors need a shape of rank >= 2 and two matrices")
        rows, cols = self.shape[0], int(np.prod(self.shape[1:]))
        r = self.p.shape[1]
        if self.p.shape != (rows, r) or self.q.shape != (cols, r) or not 1 <= r <= MAX_FACTOR_RANK:
            raise ValueError(f"factor shapes {self.p.shape}, {self.q.shape} do not fit {self.shape}")


@dataclass(frozen=True)
class EncodeOptions:
    """What the sender chooses. ``topk`` = kept elements per chunk; ``None`` sends dense.

    ``packed_indices``: top-k offsets as a bit stream of ceil(log2(chunk_size)) bits each instead of
    uint16 (12 bits for chunks of 4096: a quarter fewer index bytes).
    """

    encoding: Encoding = Encoding.FLOAT32
    chunk_size: int = 4096
    topk: int | None = None
    lz4: bool = True
    packed_indices: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.chunk_size <= _MAX_CHUNK:
            raise ValueError(f"chunk_size must be in [1, {_MAX_CHUNK}]")
        if self.topk is not None and not 1 <= self.topk <= self.chunk_size:
            raise ValueError("topk must be in [1, chunk_size]")

    @property
    def index_bits(self) -> int:
        """Bits per packed offset (0: uint16 offsets)."""
        return max(1, (self.chunk_size - 1).bit_length()) if self.packed_indices else 0


@dataclass(frozen=True)
class DecodeLimits:
    """Upper bounds a receiver enforces; defaults fit a ~100M-parameter fp32 update."""

    max_bytes: int = 512 << 20
    max_tensors: int = 4096
    max_elements: int = 128 << 20
    max_rank: int = 8
    max_name_len: int = 256
    max_decode_work: int = 1 << 34  # sum of rows x columns x rank over low-rank records


# --------------------------------------------------------------------------------------- encode


def encode_tensors(
    tensors: Mapping[str, npt.NDArray[np.floating] | LowRankFactors],
    opts: EncodeOptions,
    overrides: Mapping[str, EncodeOptions] | None = None,
    *,
    sparse_out: dict[str, tuple[I64, F32]] | None = None,
) -> bytes:
    """Encode ``tensors`` (any float dtype; written in name order) into one payload.

    ``overrides`` gives some tensors their own options. A :class:`LowRankFactors` entry is written
    as a low-rank record with its options' encoding (INT8, INT4 or INT2).

    ``sparse_out``, if given, receives for every top-k tensor its kept elements as (ascending
    positions in the flattened tensor, the float32 values :func:`decode_tensors` will produce there,
    bit for bit), so that a sender can update its error feedback without decoding its own payload.
    """
    bundle = pb.TensorBundle()
    for name in sorted(tensors):
        item = tensors[name]
        o = (overrides or {}).get(name, opts)
        if isinstance(item, LowRankFactors):
            _encode_low_rank(bundle.tensors.add(), name, item, o.encoding)
            continue
        arr = np.asarray(item, dtype=np.float32, order="C")  # keeps rank 0
        rec = bundle.tensors.add()
        rec.name = name
        rec.shape.extend(int(d) for d in arr.shape)
        rec.encoding = o.encoding.value
        rec.chunk_size = o.chunk_size
        flat = arr.reshape(-1)
        kept = _kept_per_chunk(flat.size, o.chunk_size, o.topk)
        if o.topk is None:
            rec.layout = pb.LAYOUT_DENSE
            values = flat
        else:
            rec.layout = pb.LAYOUT_CHUNKED_TOPK
            rec.k = o.topk
            offsets, positions, values = _select_topk(flat, o.chunk_size, o.topk)
            rec.index_bits = o.index_bits
            rec.indices = (
                _pack_bits(offsets, o.index_bits) if o.index_bits else offsets.astype("<u2").tobytes()
            )
        wire, scales = _quantize(values, o.encoding, kept)
        rec.values = _value_bytes(wire, o.encoding)
        if scales is not None:
            rec.scales = scales.astype("<f4").tobytes()
        if sparse_out is not None and o.topk is not None:
            sparse_out[name] = (positions, _dequantize(wire, o.encoding, scales, kept))
    body = bundle.SerializeToString()
    if opts.lz4:
        packed: bytes = lz4.block.compress(body, store_size=False)
        return _HEADER.pack(MAGIC, _COMPRESSION_LZ4, len(body)) + packed
    return _HEADER.pack(MAGIC, _COMPRESSION_NONE, len(body)) + body


def _encode_low_rank(rec: pb.TensorRecord, name: str, f: LowRankFactors, encoding: Encoding) -> None:
    if encoding not in _INT_LEVELS:
        raise ValueError("low-rank factors are sent as INT8, INT4 or INT2")
    r = int(f.p.shape[1])
    p = np.asarray(f.p, dtype=np.float64)
    q = np.asarray(f.q, dtype=np.float64)
    ep, iq_p = _pow2_columns(p, encoding)
    eq, iq_q = _pow2_columns(q, encoding)
    # Keep the products' exponent range within 2**24: columns far below the largest are dropped
    # (they would be under float32 resolution of the result anyway).
    e = ep + eq
    if encoding is Encoding.INT2:
        live = (np.abs(p).max(axis=0) > 0) & (np.abs(q).max(axis=0) > 0)
    else:
        live = (np.abs(iq_p).sum(axis=0) > 0) & (np.abs(iq_q).sum(axis=0) > 0)
    top = int(e[live].max()) if live.any() else 0
    drop = ~live | (e < top - _MAX_SCALE_SPAN)
    if encoding is Encoding.INT2:
        # No zero level: a dropped column is sent as all +1 at the smallest product scale the span
        # allows (below float32 resolution of the largest column), or, with no live column at all,
        # at 2**-200, which rounds to exactly 0 in float32.
        low = top - _MAX_SCALE_SPAN if live.any() else -200
        iq_p[:, drop] = 1
        iq_q[:, drop] = 1
        eq[drop] = low // 2
        ep[drop] = low - low // 2
    else:
        iq_p[:, drop] = 0
        iq_q[:, drop] = 0
        ep[drop] = top - eq[drop]  # any in-range exponent for a zero column
    rec.name = name
    rec.shape.extend(int(d) for d in f.shape)
    rec.layout = pb.LAYOUT_LOW_RANK
    rec.encoding = encoding.value
    rec.chunk_size = r
    rec.rank = r
    ints = np.concatenate([iq_p.reshape(-1), iq_q.reshape(-1)]).astype(np.int8)
    rec.values = _pack_ints(ints, encoding)
    scales = np.ldexp(np.ones(2 * r, dtype=np.float32), np.concatenate([ep, eq]).astype(np.int32))
    rec.scales = scales.astype("<f4").tobytes()


def _pow2_columns(
    x: npt.NDArray[np.float64], encoding: Encoding
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Per column: the exponent e of a power-of-two scale and the integers.

    INT8/INT4: the smallest 2**e >= absmax / levels. INT2 (levels -3, -1, 1, 3): that exponent or
    one or two below it, whichever leaves the smallest squared error (clipping the largest entries
    costs less than sending most entries at +-1 of a too-coarse scale).
    """
    levels = _INT_LEVELS[encoding]
    absmax = np.abs(x).max(axis=0)
    safe = np.where(absmax > 0, absmax / levels, 1.0)
    e = np.clip(np.ceil(np.log2(safe)).astype(np.int64), -100, 100)  # well inside float32 range
    if encoding is not Encoding.INT2:
        ints = np.clip(np.rint(x / np.ldexp(1.0, e)), -levels, levels).astype(np.int64)
        return e, ints
    best_e, best_q, best_err = e, _round_int2(x / np.ldexp(1.0, e)), None
    for shift in (0, 1, 2):
        e_try = np.clip(e - shift, -100, 100)
        s = np.ldexp(1.0, e_try)
        q_try = _round_int2(x / s)
        err = ((q_try * s - x) ** 2).sum(axis=0)
        if best_err is None:
            best_err = err
            continue
        better = err < best_err
        best_e = np.where(better, e_try, best_e)
        best_q = np.where(better[None, :], q_try, best_q)
        best_err = np.where(better, err, best_err)
    return best_e, best_q


def _round_int2(y: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """The nearest of -3, -1, 1, 3 (ties away from zero's side: 2 -> 3, 0 -> 1, -2 -> -1)."""
    return (2 * np.clip(np.floor(y / 2.0), -2, 1) + 1).astype(np.int64)


def _kept_per_chunk(n: int, chunk: int, k: int | None) -> npt.NDArray[np.int64]:
    """Elements kept in each chunk: all of them (dense) or min(k, chunk length) (top-k)."""
    n_chunks = -(-n // chunk)
    lengths = np.full(n_chunks, chunk, dtype=np.int64)
    if n_chunks:
        lengths[-1] = n - chunk * (n_chunks - 1)
    return lengths if k is None else np.minimum(lengths, k)


# Top-k selection runs over blocks of chunks that fit a core's L2 cache (512K floats = 2 MiB).
_TOPK_BLOCK = 1 << 19
# A chunk whose lower bound leaves more than this many candidates per kept element (ties, or data
# whose large values share one stride class) is selected by a full argpartition instead.
_MAX_CANDIDATES_PER_K = 4
# INT2 scales are fitted over blocks of whole chunks of about this many values (cache-sized).
_INT2_BLOCK = 1 << 16


def _select_topk(flat: F32, chunk: int, k: int) -> tuple[I64, I64, F32]:
    """Largest-magnitude ``k`` per chunk: (in-chunk offsets, flat positions, values), each in
    ascending position order within a chunk."""
    n_full = flat.size // chunk
    offsets, values = _topk_rows(flat[: n_full * chunk].reshape(n_full, chunk), k)
    tail = flat[n_full * chunk :]
    if tail.size:
        tail_offsets, tail_values = _topk_rows(tail.reshape(1, -1), min(k, tail.size))
        offsets = np.concatenate([offsets, tail_offsets])
        values = np.concatenate([values, tail_values])
    kept = _kept_per_chunk(flat.size, chunk, k)
    return offsets, np.repeat(np.arange(kept.size, dtype=np.int64) * chunk, kept) + offsets, values


def _topk_rows(rows: F32, k: int) -> tuple[I64, F32]:
    """Per row, the offsets of its ``k`` largest magnitudes (ascending) and their values, both
    flattened. Rows go in cache-sized blocks; values are gathered while their block is cached."""
    n, chunk = rows.shape
    if k == chunk:
        return np.tile(np.arange(chunk, dtype=np.int64), n), rows.reshape(-1)
    offsets = np.empty((n, k), dtype=np.int64)
    values = np.empty((n, k), dtype=np.float32)
    groups = _bound_groups(chunk, k)
    step = max(1, _TOPK_BLOCK // chunk)
    for r0 in range(0, n, step):
        block = rows[r0 : r0 + step]
        offs = _topk_bounded(block, k, groups) if groups else _topk_plain(block, k)
        offsets[r0 : r0 + step] = offs
        values[r0 : r0 + step] = block.reshape(-1)[offs + chunk * np.arange(len(offs))[:, None]]
    return offsets.reshape(-1), values.reshape(-1)


def _topk_plain(rows: F32, k: int) -> I64:
    """The reference selection: a full argpartition per row (NaN counts as the smallest)."""
    part = np.argpartition(-np.abs(rows), k - 1, axis=1)[:, :k]
    return np.sort(part, axis=1).astype(np.int64, copy=False)


def _bound_groups(chunk: int, k: int) -> int:
    """How many groups :func:`_topk_bounded` splits a chunk into, or 0 where it would not pay.

    About 3k groups: the k-th largest group maximum then leaves ~1.2k candidates per chunk for
    i.i.d. data of any distribution (only ranks matter). Four or more elements per group, or the
    bound prunes too little to beat a plain argpartition.
    """
    groups = max(64, 1 << (2 * k - 1).bit_length())
    return groups if chunk >= 4 * groups else 0


def _topk_bounded(rows: F32, k: int, groups: int) -> I64:
    """:func:`_topk_plain`'s result (the same set unless magnitudes tie), ~5x faster.

    The group maxima of a row are elements of the row, so the k-th largest of them is a lower
    bound on the row's k-th largest magnitude: every kept element is among the candidates at or
    above it. Groups are strided (column mod ``groups``) so their maxima are elementwise maxima of
    contiguous vectors. The exact k-th largest is then found among the few candidates; rows where
    that is not exactly k elements (ties at the threshold, NaN, too many candidates) fall back.
    """
    r, chunk = rows.shape
    mag = np.abs(rows)
    used = chunk // groups * groups
    maxima = mag[:, :used].reshape(r, -1, groups).max(axis=1)
    bound = np.partition(maxima, groups - k, axis=1)[:, groups - k]
    cand = np.flatnonzero(mag >= bound[:, None])  # row-major: ascending offsets within a row
    row = cand // chunk
    vals = mag.reshape(-1)[cand]
    keep = vals >= _kth_largest(vals, row, r, k)[row]
    cand, row = cand[keep], row[keep]
    exact = np.bincount(row, minlength=r) == k
    if exact.all():
        picked: I64 = (cand - row * chunk).reshape(r, k)
        return picked
    out = np.empty((r, k), dtype=np.int64)
    keep = exact[row]
    out[exact] = (cand[keep] - row[keep] * chunk).reshape(-1, k)
    out[~exact] = _topk_plain(rows[~exact], k)
    return out


def _kth_largest(vals: F32, row: I64, r: int, k: int) -> F32:
    """Per row, the k-th largest of its candidate ``vals`` (NaN for a row with fewer than k or
    too many), by padding the candidates into a small (rows x most candidates) matrix."""
    count = np.bincount(row, minlength=r)
    usable = (count >= k) & (count <= _MAX_CANDIDATES_PER_K * k)
    if not usable.any():
        return np.full(r, np.nan, dtype=np.float32)
    if not usable.all():
        sel = usable[row]
        vals, row = vals[sel], row[sel]
        count = np.where(usable, count, 0)
    width = int(count.max())
    start = np.cumsum(count) - count
    pad = np.full(r * width, -1.0, dtype=np.float32)  # below every magnitude
    pad[np.arange(vals.size) + (np.arange(r) * width - start)[row]] = vals
    kth = np.partition(pad.reshape(r, width), width - k, axis=1)[:, width - k]
    return np.where(usable, kth, np.float32(np.nan))


def _quantize(values: F32, encoding: Encoding, kept: I64) -> tuple[npt.NDArray[np.generic], F32 | None]:
    """The values as the wire holds them (float32, float16 or bfloat16 bits, or integer levels
    and one scale per chunk): the payload's bytes and ``sparse_out`` both come from this array."""
    if encoding is Encoding.BFLOAT16:
        return _to_bf16(values).astype("<u2"), None
    if encoding in _WIRE_FLOATS:
        return values.astype(_WIRE_FLOATS[encoding]), None
    if encoding is Encoding.INT2:
        return _quantize_int2(values, kept)
    levels = _INT_LEVELS[encoding]
    scales = _absmax_scales(values, kept, levels)
    safe = np.where(scales > 0, scales, 1.0).astype(np.float32)
    return np.clip(np.rint(values / np.repeat(safe, kept)), -levels, levels).astype(np.int8), scales


def _absmax_scales(values: F32, kept: I64, levels: int) -> F32:
    """One symmetric scale per chunk that maps the chunk's largest magnitude to ``levels``."""
    if not values.size:
        return np.zeros(kept.size, dtype=np.float32)
    absmax = np.maximum.reduceat(np.abs(values), np.cumsum(kept) - kept)
    return (absmax / np.float32(levels)).astype(np.float32)


def _quantize_int2(values: F32, kept: I64) -> tuple[npt.NDArray[np.int8], F32]:
    """:func:`_fit_int2` over blocks of whole chunks, so that its float64 temporaries stay in cache."""
    q = np.empty(values.size, dtype=np.int8)
    scales = np.empty(kept.size, dtype=np.float32)
    per_block = max(1, _INT2_BLOCK // int(kept.max(initial=1)))
    ends = np.cumsum(kept)
    for c0 in range(0, kept.size, per_block):
        c1 = min(c0 + per_block, kept.size)
        lo, hi = int(ends[c0] - kept[c0]), int(ends[c1 - 1])
        q[lo:hi], scales[c0:c1] = _fit_int2(values[lo:hi], kept[c0:c1])
    return q, scales


def _fit_int2(values: F32, kept: I64) -> tuple[npt.NDArray[np.int8], F32]:
    """INT2 levels with a least-squares scale per chunk (two Lloyd steps from absmax / 3).

    With only four levels the scale matters: a chunk of similar magnitudes (what top-k keeps) is
    best sent as +-1 times about its mean magnitude, a bell-shaped one with +-3 for its tail. For
    fixed levels q the error-minimising scale is sum(q v) / sum(q q); two rounds of re-assigning q
    and re-fitting reach it closely. Decoders do not care how the scale was chosen, but the steps
    stay float64 sums by ``reduceat`` so that the bytes stay those of earlier versions.
    """
    v = values.astype(np.float64)
    s = _absmax_scales(values, kept, _INT_LEVELS[Encoding.INT2]).astype(np.float64)
    starts = np.cumsum(kept) - kept
    for _ in range(2):
        q = _int2_levels(v / np.repeat(np.where(s > 0, s, 1.0), kept))
        num = np.add.reduceat(q * v, starts)
        den = np.add.reduceat(q * q, starts)
        s = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    out = s.astype(np.float32)
    safe = np.where(out > 0, out, 1.0).astype(np.float32).astype(np.float64)
    return _int2_levels(v / np.repeat(safe, kept)).astype(np.int8), out


def _int2_levels(y: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """:func:`_round_int2` as float64 by three comparisons: fewer passes over the data, and NaN
    (which no receiver accepts anyway) becomes -3 without an invalid-cast warning."""
    q = np.greater_equal(y, -2.0).astype(np.float64)
    q += y >= 0.0
    q += y >= 2.0
    q *= 2.0
    q -= 3.0
    return q


def _value_bytes(wire: npt.NDArray[np.generic], encoding: Encoding) -> bytes:
    """The ``values`` field: :func:`_quantize`'s array as bytes (integer levels packed)."""
    if encoding in (Encoding.INT4, Encoding.INT2):
        return _pack_ints(wire.astype(np.int8, copy=False), encoding)
    return wire.tobytes()


def _dequantize(wire: npt.NDArray[np.generic], encoding: Encoding, scales: F32 | None, kept: I64) -> F32:
    """Float32 values from what the wire holds: the decoder's arithmetic, which the encoder's
    ``sparse_out`` shares so that both give the same bits."""
    if encoding is Encoding.BFLOAT16:
        return (wire.astype(np.uint32) << 16).view(np.float32)
    if scales is None:
        return wire.astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # absurd scales decode to inf/nan,
        return wire.astype(np.float32) * np.repeat(scales, kept)  # which screening rejects


def _pack_ints(q: npt.NDArray[np.int8] | npt.NDArray[np.int64], encoding: Encoding) -> bytes:
    """Integer values as the encoding writes them (INT8 bytes, INT4 nibbles, INT2 codes)."""
    if encoding is Encoding.INT4:
        return _pack_int4(q.astype(np.int8))
    if encoding is Encoding.INT2:
        codes = ((q.astype(np.int16) + 3) // 2).astype(np.uint8)  # -3, -1, 1, 3 -> 0, 1, 2, 3
        pad = (-codes.size) % 4
        if pad:
            codes = np.concatenate([codes, np.zeros(pad, dtype=np.uint8)])
        packed = codes[0::4] | (codes[1::4] << 2) | (codes[2::4] << 4) | (codes[3::4] << 6)
        return packed.astype(np.uint8).tobytes()
    return q.astype(np.int8).tobytes()


def _pack_int4(q: npt.NDArray[np.int8]) -> bytes:
    nib = (q.astype(np.int16) + 8).astype(np.uint8)
    if nib.size % 2:
        nib = np.concatenate([nib, np.zeros(1, dtype=np.uint8)])
    return (nib[0::2] | (nib[1::2] << 4)).astype(np.uint8).tobytes()


def _unpack_int4(data: bytes, count: int) -> npt.NDArray[np.int8] | None:
    """The 4-bit values, or None if a nibble is 0 (not a value) or the padding is not 0."""
    raw = np.frombuffer(data, dtype=np.uint8)
    nib = np.empty(2 * raw.size, dtype=np.uint8)
    nib[0::2] = raw & 0x0F
    nib[1::2] = raw >> 4
    if np.any(nib[count:] != 0) or (count and np.any(nib[:count] == 0)):
        return None
    return (nib[:count].astype(np.int16) - 8).astype(np.int8)


def _pack_bits(values: npt.NDArray[np.int64], width: int) -> bytes:
    """Unsigned ``width``-bit values as a little-endian bit stream (lowest bit first).

    Eight values fill exactly ``width`` bytes, so each eight are or-ed into two 64-bit words (bits
    0-63 and 64-127; width <= 16) at fixed shifts and the words' first ``width`` bytes are kept.
    """
    padded = np.zeros(-(-values.size // 8) * 8, dtype=np.uint64)
    padded[: values.size] = values
    v = padded.reshape(-1, 8)
    words = np.zeros((2, v.shape[0]), dtype=np.uint64)
    for j in range(8):
        word, shift = divmod(j * width, 64)
        words[word] |= v[:, j] << np.uint64(shift)
        if word == 0 and shift + width > 64:  # straddles the two words
            words[1] |= v[:, j] >> np.uint64(64 - shift)
    stream = np.ascontiguousarray(words.T, dtype="<u8").view(np.uint8)[:, :width]
    return stream.tobytes()[: (values.size * width + 7) // 8]


def _unpack_bits(data: bytes, count: int, width: int) -> npt.NDArray[np.int64] | None:
    """``count`` values of ``width`` bits, or None if an unused bit of the last byte is set.

    Each value spans at most 3 bytes (width <= 16); they are gathered as a 24-bit word.
    """
    raw = np.frombuffer(data, dtype=np.uint8)
    total = count * width
    if total % 8 and int(raw[-1]) >> (total % 8):
        return None
    padded = np.concatenate([raw, np.zeros(2, dtype=np.uint8)]).astype(np.int64)
    start = np.arange(count, dtype=np.int64) * width
    byte, shift = start >> 3, start & 7
    word = padded[byte] | (padded[byte + 1] << 8) | (padded[byte + 2] << 16)
    out: npt.NDArray[np.int64] = (word >> shift) & ((1 << width) - 1)
    return out


def _unpack_int2(data: bytes, count: int) -> npt.NDArray[np.int8] | None:
    """The 2-bit values (-3, -1, 1, 3), or None if the unused bits of the last byte are not 0."""
    raw = np.frombuffer(data, dtype=np.uint8)
    codes = np.empty(4 * raw.size, dtype=np.uint8)
    for i in range(4):
        codes[i::4] = (raw >> (2 * i)) & 0x03
    if np.any(codes[count:] != 0):
        return None
    return (2 * codes[:count].astype(np.int16) - 3).astype(np.int8)


def _to_bf16(values: F32) -> npt.NDArray[np.uint16]:
    bits = values.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)  # round to nearest, ties to even
    out = (rounded >> 16).astype(np.uint16)
    nan = np.isnan(values)
    out[nan] = 0x7FC0
    return out


# --------------------------------------------------------------------------------------- decode


@dataclass(frozen=True)
class SparseTensor:
    """A top-k record as sent: ``values[i]`` is the element at flat position ``index[i]`` of a
    tensor of ``shape``; positions ascend and are unique; every other element is zero."""

    shape: tuple[int, ...]
    index: I64
    values: F32

    def dense(self) -> F32:
        out = np.zeros(int(np.prod(self.shape)), dtype=np.float32)
        out[self.index] = self.values
        return out.reshape(self.shape)


def decode_tensors(data: bytes, limits: DecodeLimits | None = None) -> dict[str, F32]:
    """Decode a payload into dense float32 arrays, or raise :class:`TensorDecodeError`.

    Values are not judged here (NaN decodes as NaN); whether a tensor is *acceptable* is the
    receiver's policy (see ``p2pshard.engine.aggregation.screen_update``).
    """
    out: dict[str, F32] = {}
    for rec, n, lim, work in _records(data, limits):
        if rec.layout == pb.LAYOUT_CHUNKED_TOPK:
            out[rec.name] = _decode_topk(rec, n).dense()
        else:
            out[rec.name] = _decode_record(rec, n, lim, work).reshape(tuple(rec.shape))
    return out


def decode_sparse(data: bytes, limits: DecodeLimits | None = None) -> dict[str, SparseTensor | F32]:
    """Like :func:`decode_tensors` (the same checks, the same errors), but a top-k record stays a
    :class:`SparseTensor`: no dense array of the tensor's full size is made for it."""
    out: dict[str, SparseTensor | F32] = {}
    for rec, n, lim, work in _records(data, limits):
        if rec.layout == pb.LAYOUT_CHUNKED_TOPK:
            out[rec.name] = _decode_topk(rec, n)
        else:
            out[rec.name] = _decode_record(rec, n, lim, work).reshape(tuple(rec.shape))
    return out


def _records(
    data: bytes, limits: DecodeLimits | None
) -> Iterator[tuple[pb.TensorRecord, int, DecodeLimits, list[int]]]:
    """The bundle's records with their checked element counts, after the envelope, bundle and
    per-record size checks; also the limits and the running low-rank work counter."""
    lim = limits or DecodeLimits()
    body = _open_envelope(data, lim)
    bundle = pb.TensorBundle()
    try:
        bundle.ParseFromString(body)
    except DecodeError as exc:
        raise TensorDecodeError("malformed-protobuf", str(exc)) from exc
    if len(bundle.tensors) > lim.max_tensors:
        raise TensorDecodeError("too-many-tensors", str(len(bundle.tensors)))
    seen: set[str] = set()
    total = 0
    work = [0]  # low-rank decoding work so far
    for rec in bundle.tensors:
        if not rec.name or len(rec.name) > lim.max_name_len:
            raise TensorDecodeError("bad-name", rec.name[:64])
        if rec.name in seen:
            raise TensorDecodeError("duplicate-name", rec.name)
        seen.add(rec.name)
        n = _checked_size(rec, lim)
        total += n
        if total > lim.max_elements:
            raise TensorDecodeError("too-many-elements", str(total))
        yield rec, n, lim, work


def _open_envelope(data: bytes, lim: DecodeLimits) -> bytes:
    if len(data) < _HEADER.size:
        raise TensorDecodeError("truncated-header")
    if len(data) > lim.max_bytes:
        raise TensorDecodeError("payload-too-large", str(len(data)))
    magic, compression, raw_len = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise TensorDecodeError("bad-magic")
    if raw_len > lim.max_bytes:
        raise TensorDecodeError("claimed-size-too-large", str(raw_len))
    body = memoryview(data)[_HEADER.size :]
    if compression == _COMPRESSION_NONE:
        if len(body) != raw_len:
            raise TensorDecodeError("length-mismatch", f"{len(body)} != {raw_len}")
        return bytes(body)
    if compression != _COMPRESSION_LZ4:
        raise TensorDecodeError("unknown-compression", str(compression))
    try:
        raw = lz4.block.decompress(body, uncompressed_size=raw_len)
    except lz4.block.LZ4BlockError as exc:
        raise TensorDecodeError("bad-lz4", str(exc)) from exc
    if len(raw) != raw_len:
        raise TensorDecodeError("length-mismatch", f"{len(raw)} != {raw_len}")
    return bytes(raw)


def _checked_size(rec: pb.TensorRecord, lim: DecodeLimits) -> int:
    if len(rec.shape) > lim.max_rank:
        raise TensorDecodeError("rank-too-large", str(len(rec.shape)))
    n = 1
    for d in rec.shape:
        n *= int(d)
        if n > lim.max_elements:
            raise TensorDecodeError("too-many-elements", rec.name)
    if not 1 <= rec.chunk_size <= _MAX_CHUNK:
        raise TensorDecodeError("bad-chunk-size", str(rec.chunk_size))
    return n


def _encoding(rec: pb.TensorRecord) -> Encoding:
    try:
        return Encoding(rec.encoding)
    except ValueError:
        raise TensorDecodeError("unknown-encoding", str(rec.encoding)) from None


def _decode_record(rec: pb.TensorRecord, n: int, lim: DecodeLimits, work: list[int]) -> F32:
    """A dense or low-rank record (top-k records go to :func:`_decode_topk`)."""
    encoding = _encoding(rec)
    if rec.layout == pb.LAYOUT_LOW_RANK:
        return _decode_low_rank(rec, n, encoding, lim, work)
    if rec.rank:
        raise TensorDecodeError("unexpected-rank", rec.name)
    if rec.layout != pb.LAYOUT_DENSE:
        raise TensorDecodeError("unknown-layout", str(rec.layout))
    kept = _kept_per_chunk(n, int(rec.chunk_size), None)
    count = int(kept.sum())
    if len(rec.values) != _values_len(encoding, count):
        raise TensorDecodeError("values-length-mismatch", rec.name)
    values = _decode_values(rec, encoding, kept, count)
    if rec.indices or rec.index_bits:
        raise TensorDecodeError("unexpected-indices", rec.name)
    return values


def _decode_topk(rec: pb.TensorRecord, n: int) -> SparseTensor:
    """A chunked top-k record: values, then offsets checked in range and rising per chunk."""
    encoding = _encoding(rec)
    chunk = int(rec.chunk_size)
    if rec.rank:
        raise TensorDecodeError("unexpected-rank", rec.name)
    if not 1 <= rec.k <= chunk:
        raise TensorDecodeError("bad-k", str(rec.k))
    kept = _kept_per_chunk(n, chunk, int(rec.k))
    count = int(kept.sum())
    if len(rec.values) != _values_len(encoding, count):
        raise TensorDecodeError("values-length-mismatch", rec.name)
    values = _decode_values(rec, encoding, kept, count)
    width = int(rec.index_bits)
    if width > 16 or (width and chunk > 1 << width):
        raise TensorDecodeError("bad-index-bits", f"{width} bits for chunks of {chunk}")
    if len(rec.indices) != (2 * count if not width else (count * width + 7) // 8):
        raise TensorDecodeError("indices-length-mismatch", rec.name)
    if width:
        unpacked = _unpack_bits(rec.indices, count, width)
        if unpacked is None:
            raise TensorDecodeError("indices-bad-padding", rec.name)
        offsets = unpacked
    else:
        offsets = np.frombuffer(rec.indices, dtype="<u2").astype(np.int64)
    chunk_len = _kept_per_chunk(n, chunk, None)
    limit = np.repeat(chunk_len, kept)
    if np.any(offsets >= limit):
        raise TensorDecodeError("index-out-of-range", rec.name)
    # Strictly increasing within each chunk: no duplicates, one canonical encoding per update.
    starts = np.zeros(kept.size, dtype=np.int64)
    np.cumsum(kept[:-1], out=starts[1:])
    rising = np.diff(offsets) > 0
    if count > 1:
        rising[starts[1:] - 1] = True  # across a chunk boundary offsets start again
        if not rising.all():
            raise TensorDecodeError("indices-not-increasing", rec.name)
    base = np.repeat(np.arange(kept.size, dtype=np.int64) * chunk, kept)
    return SparseTensor(tuple(int(d) for d in rec.shape), base + offsets, values)


def _decode_low_rank(
    rec: pb.TensorRecord, n: int, encoding: Encoding, lim: DecodeLimits, work: list[int]
) -> F32:
    if len(rec.shape) < 2:
        raise TensorDecodeError("low-rank-needs-matrix", rec.name)
    if encoding not in _INT_LEVELS:
        raise TensorDecodeError("low-rank-needs-int-encoding", rec.name)
    rows = int(rec.shape[0])
    cols = n // rows if rows else 0
    r = int(rec.rank)
    if not 1 <= r <= min(rows, cols, MAX_FACTOR_RANK) or rec.chunk_size != r:
        raise TensorDecodeError("bad-rank", f"{rec.name}: rank {r}, chunk {rec.chunk_size}")
    if rec.k or rec.indices or rec.index_bits:
        raise TensorDecodeError("unexpected-indices", rec.name)
    work[0] += n * r
    if work[0] > lim.max_decode_work:
        raise TensorDecodeError("too-much-decode-work", rec.name)
    count = (rows + cols) * r
    if len(rec.values) != _values_len(encoding, count):
        raise TensorDecodeError("values-length-mismatch", rec.name)
    ints = _decode_ints(rec, encoding, count)
    if len(rec.scales) != 8 * r:
        raise TensorDecodeError("scales-length-mismatch", rec.name)
    scales = np.frombuffer(rec.scales, dtype="<f4").astype(np.float64)
    mantissa, exps = np.frexp(scales)
    if not (np.isfinite(scales).all() and (mantissa == 0.5).all()):
        raise TensorDecodeError("scale-not-power-of-two", rec.name)
    e = (exps[:r] + exps[r:]).astype(np.int64) - 2  # frexp: 2**k = 0.5 * 2**(k + 1)
    low = int(e.min())
    if int(e.max()) - low > _MAX_SCALE_SPAN:
        raise TensorDecodeError("scale-range-too-large", rec.name)
    ip = ints[: rows * r].reshape(rows, r).astype(np.float64) * np.ldexp(1.0, e - low)[None, :]
    iq = ints[rows * r :].reshape(cols, r).astype(np.float64)
    # Every partial sum is an integer below 2**53: exact in float64 in any summation order.
    product = ip @ iq.T
    with np.errstate(over="ignore", under="ignore"):
        out: F32 = np.ldexp(product, low).astype(np.float32)  # exact scaling, one rounding
    return out.reshape(-1)


def _decode_ints(rec: pb.TensorRecord, encoding: Encoding, count: int) -> npt.NDArray[np.int8]:
    if encoding is Encoding.INT4:
        q4 = _unpack_int4(rec.values, count)
        if q4 is None:
            raise TensorDecodeError("int4-out-of-range", rec.name)
        return q4
    if encoding is Encoding.INT2:
        q2 = _unpack_int2(rec.values, count)
        if q2 is None:
            raise TensorDecodeError("int2-bad-padding", rec.name)
        return q2
    q = np.frombuffer(rec.values, dtype=np.int8)
    if count and np.any(q == -128):
        raise TensorDecodeError("int8-out-of-range", rec.name)
    return q


def _decode_values(rec: pb.TensorRecord, encoding: Encoding, kept: npt.NDArray[np.int64], count: int) -> F32:
    if encoding in _WIRE_FLOATS:
        return _dequantize(np.frombuffer(rec.values, dtype=_WIRE_FLOATS[encoding]), encoding, None, kept)
    if len(rec.scales) != 4 * kept.size:
        raise TensorDecodeError("scales-length-mismatch", rec.name)
    scales = np.frombuffer(rec.scales, dtype="<f4").astype(np.float32)
    return _dequantize(_decode_ints(rec, encoding, count), encoding, scales, kept)
