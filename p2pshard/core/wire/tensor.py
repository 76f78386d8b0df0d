"""The tensor codec: named float32 tensors <-> bytes on the wire (numpy and numba, no torch).

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

This module holds the public API, the envelope and the record-level rules (what each layout's
fields must hold, and every check a receiver makes). How values are quantised and packed into
bytes is in :mod:`p2pshard.core.wire.quant` (which also defines :class:`Encoding`, re-exported
here); which elements a top-k record keeps is chosen in :mod:`p2pshard.core.wire.topk`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import lz4.block
import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError

from p2pshard.core.wire import eliasfano
from p2pshard.core.wire import tensor_pb2 as pb
from p2pshard.core.wire.quant import (
    INT_LEVELS,
    WIRE_FLOATS,
    Encoding,
    dequantize,
    pack_bits,
    pack_ints,
    pow2_columns,
    quantize,
    unpack_bits,
    unpack_int2,
    unpack_int4,
    value_bytes,
    values_len,
)
from p2pshard.core.wire.topk import block_ranges, kept_count, kept_per_chunk, select_topk

__all__ = [
    "MAGIC",
    "DecodeLimits",
    "EncodeOptions",
    "Encoding",
    "ErrorFeedback",
    "LowRankFactors",
    "RecordInfo",
    "SparseTensor",
    "TensorDecodeError",
    "decode_sparse",
    "decode_tensors",
    "describe_tensors",
    "encode_tensors",
    "sum_rows",
]

MAGIC = b"P2T1"
_HEADER = struct.Struct("<4sBI")
_COMPRESSION_NONE = 0
_COMPRESSION_LZ4 = 1
_MAX_CHUNK = 1 << 16  # in-chunk offsets are uint16
MAX_FACTOR_RANK = 1024
_MAX_SCALE_SPAN = 24  # rank * 127**2 * 2**24 < 2**53: low-rank products are exact in float64
_LZ4_MAX_RATIO = 255  # an lz4 block inflates at most ~255-fold (one length byte per 255 bytes)
_LZ4_SLACK = 64

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


class TensorDecodeError(ValueError):
    """A payload that does not decode; ``reason`` is short and stable (usable as a metric label)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


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
    uint16 (12 bits for chunks of 4096: a quarter fewer index bytes). ``elias_fano``: top-k offsets
    Elias-Fano coded per chunk (:mod:`~p2pshard.core.wire.eliasfano`: ~7.5 bits each for 88 of
    4096); it overrides ``packed_indices``.
    """

    encoding: Encoding = Encoding.FLOAT32
    chunk_size: int = 4096
    topk: int | None = None
    lz4: bool = True
    packed_indices: bool = False
    elias_fano: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.chunk_size <= _MAX_CHUNK:
            raise ValueError(f"chunk_size must be in [1, {_MAX_CHUNK}]")
        if self.topk is not None and not 1 <= self.topk <= self.chunk_size:
            raise ValueError("topk must be in [1, chunk_size]")

    @property
    def index_bits(self) -> int:
        """Bits per packed offset (0: uint16 offsets, or Elias-Fano)."""
        packed = self.packed_indices and not self.elias_fano
        return max(1, (self.chunk_size - 1).bit_length()) if packed else 0


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


@dataclass(frozen=True)
class ErrorFeedback:
    """Top-k records encoded from a residual kept in place (see :func:`encode_tensors`).

    ``updates`` holds each tensor's new update; ``decay`` is what the residual is multiplied by
    before the update is added.
    """

    updates: Mapping[str, F32]
    decay: float


def encode_tensors(
    tensors: Mapping[str, npt.NDArray[np.floating] | LowRankFactors],
    opts: EncodeOptions,
    overrides: Mapping[str, EncodeOptions] | None = None,
    *,
    sparse_out: dict[str, tuple[I64, F32]] | None = None,
    feedback: ErrorFeedback | None = None,
) -> bytes:
    """Encode ``tensors`` (any float dtype; written in name order) into one payload.

    ``overrides`` gives some tensors their own options. A :class:`LowRankFactors` entry is written
    as a low-rank record with its options' encoding (INT8, INT4 or INT2).

    ``sparse_out``, if given, receives for every top-k tensor its kept elements as (ascending
    positions in the flattened tensor, the float32 values :func:`decode_tensors` will produce there,
    bit for bit), so that a sender can update its error feedback without decoding its own payload.

    ``feedback`` makes every top-k tensor of ``tensors`` a residual buffer (float32, C-ordered)
    that is updated in place: it becomes ``decay * residual + update`` before its elements are
    chosen, and what is sent of it (the decoded kept values) is then subtracted, leaving exactly
    what receivers will not see. Both happen one cache-sized run of chunks at a time, while the run
    is selected and quantised: one pass over memory instead of four for a large tensor.
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
        if o.topk is None:
            rec.layout = pb.LAYOUT_DENSE
            wire, scales = quantize(flat, o.encoding, kept_per_chunk(flat.size, o.chunk_size, None))
        else:
            rec.layout = pb.LAYOUT_CHUNKED_TOPK
            rec.k = o.topk
            rec.index_bits = o.index_bits
            update, decay = None, 1.0
            if feedback is not None:
                if arr is not item or not arr.flags.c_contiguous:
                    raise ValueError(f"{name}: a residual must be a C-ordered float32 array")
                update = np.asarray(feedback.updates[name], dtype=np.float32).reshape(-1)
                decay = feedback.decay
            want = update is not None or sparse_out is not None
            offsets, positions, wire, scales, decoded = _encode_topk(flat, o, update, decay, want)
            if o.elias_fano:
                rec.index_coding = pb.INDEX_ELIAS_FANO
                rec.indices = eliasfano.encode_offsets(offsets, flat.size, o.chunk_size, o.topk)
            elif o.index_bits:
                rec.indices = pack_bits(offsets, o.index_bits)
            else:
                rec.indices = offsets.astype("<u2").tobytes()
            if sparse_out is not None and decoded is not None:
                sparse_out[name] = (positions, decoded)
        rec.values = value_bytes(wire, o.encoding)
        if scales is not None:
            rec.scales = scales.astype("<f4").tobytes()
    body = bundle.SerializeToString()
    if opts.lz4:
        packed: bytes = lz4.block.compress(body, store_size=False)
        return _HEADER.pack(MAGIC, _COMPRESSION_LZ4, len(body)) + packed
    return _HEADER.pack(MAGIC, _COMPRESSION_NONE, len(body)) + body


def _encode_topk(
    flat: F32, o: EncodeOptions, update: F32 | None, decay: float, want_decoded: bool
) -> tuple[I64, I64, npt.NDArray[np.generic], F32 | None, F32 | None]:
    """A top-k record's offsets, positions, wire values, scales and (if wanted, or needed for an
    ``update``) decoded values, chosen, quantised (and, given an ``update``, accumulated into and
    subtracted from ``flat``) one run of whole chunks at a time. Chunks are independent, so the
    bytes are those of one pass."""
    chunk, k = o.chunk_size, int(o.topk or 0)
    parts: list[tuple[I64, I64, npt.NDArray[np.generic], F32 | None, F32 | None]] = []
    for lo, hi in list(block_ranges(flat.size, chunk)) or [(0, 0)]:
        run = flat[lo:hi]
        if update is not None:
            np.multiply(run, np.float32(decay), out=run)
            np.add(run, update[lo:hi], out=run)
        offsets, positions, values = select_topk(run, chunk, k)
        kept = kept_per_chunk(run.size, chunk, k)
        wire, scales = quantize(values, o.encoding, kept)
        decoded = dequantize(wire, o.encoding, scales, kept) if want_decoded else None
        if update is not None and decoded is not None:
            run[positions] -= decoded  # the residual keeps what receivers will not see
        parts.append((offsets, positions + lo, wire, scales, decoded))
    offsets, positions, wires, scales, decoded = zip(*parts, strict=True)
    return (
        np.concatenate(offsets),
        np.concatenate(positions),
        np.concatenate(wires),
        None if scales[0] is None else np.concatenate(scales),
        None if decoded[0] is None else np.concatenate(decoded),
    )


def _encode_low_rank(rec: pb.TensorRecord, name: str, f: LowRankFactors, encoding: Encoding) -> None:
    if encoding not in INT_LEVELS:
        raise ValueError("low-rank factors are sent as INT8, INT4 or INT2")
    r = int(f.p.shape[1])
    p = np.asarray(f.p, dtype=np.float64)
    q = np.asarray(f.q, dtype=np.float64)
    ep, iq_p = pow2_columns(p, encoding)
    eq, iq_q = pow2_columns(q, encoding)
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
    rec.values = pack_ints(ints, encoding)
    scales = np.ldexp(np.ones(2 * r, dtype=np.float32), np.concatenate([ep, eq]).astype(np.int32))
    rec.scales = scales.astype("<f4").tobytes()


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


# Rows are summed one cache-sized block of the result at a time (256K float32 = 1 MiB).
_SUM_BLOCK = 1 << 18


def sum_rows(rows: Sequence[SparseTensor | F32], size: int, out: F32 | None = None) -> F32:
    """The float32 sum of ``size``-element rows (sparse or dense), from +0.0, in row order.

    Written into ``out`` when given: a buffer kept from round to round (a fresh 200 MB one costs
    ~0.2 s of page faults on some machines). Elementwise float32 additions in a fixed order give the
    same bits on every machine. A sparse row's positions ascend, so a block's share of it is one
    contiguous run; zeroing a block and adding every row into it while it is in cache is about twice
    as fast as adding each row across the whole vector in turn.
    """
    cuts: list[I64 | None] = []
    edges = [*range(0, size, _SUM_BLOCK), size]
    for row in rows:
        if isinstance(row, SparseTensor):
            if row.index.size and (int(row.index[0]) < 0 or int(row.index[-1]) >= size):
                raise ValueError(f"a sparse row reaches outside {size} elements")
            cuts.append(np.searchsorted(row.index, edges))
        elif row.size != size:
            raise ValueError(f"a dense row of {row.size} elements, not {size}")
        else:
            cuts.append(None)
    if out is None:
        out = np.empty(size, dtype=np.float32)
    elif out.shape != (size,) or out.dtype != np.float32:
        raise ValueError(f"out must be a float32 vector of {size} elements")
    for b in range(len(edges) - 1):
        lo, hi = edges[b], edges[b + 1]
        out[lo:hi] = 0.0
        for row, cut in zip(rows, cuts, strict=True):
            if isinstance(row, SparseTensor) and cut is not None:
                run = slice(cut[b], cut[b + 1])
                out[row.index[run]] += row.values[run]  # positions are unique within a row
            else:
                out[lo:hi] += np.asarray(row, dtype=np.float32).reshape(-1)[lo:hi]
    return out


def decode_tensors(data: bytes, limits: DecodeLimits | None = None) -> dict[str, F32]:
    """Decode a payload into dense float32 arrays, or raise :class:`TensorDecodeError`.

    Values are not judged here (NaN decodes as NaN); whether a tensor is *acceptable* is the
    receiver's policy (see ``p2pshard.engine.aggregation.screen_update``).
    """
    return {
        name: t.dense() if isinstance(t, SparseTensor) else t
        for name, t in decode_sparse(data, limits).items()
    }


@dataclass(frozen=True)
class RecordInfo:
    """What a record claims, read without decoding its values (see :func:`describe_tensors`)."""

    name: str
    shape: tuple[int, ...]
    layout: int
    """A ``tensor.Layout`` value (``pb.LAYOUT_DENSE``, ...)."""
    encoding: int
    """A ``tensor.ValueEncoding`` value (``Encoding.FLOAT32.value``, ...)."""


def describe_tensors(data: bytes, limits: DecodeLimits | None = None) -> list[RecordInfo]:
    """Each record's name, shape, layout and encoding, after the envelope, bundle and size checks
    of :func:`decode_tensors` (so a claimed size past ``limits`` is refused here too) but before
    any value is decoded: a receiver judges what a payload claims before paying for its values."""
    return [
        RecordInfo(rec.name, tuple(int(d) for d in rec.shape), int(rec.layout), int(rec.encoding))
        for rec, _n, _lim, _work in _records(data, limits)
    ]


def decode_sparse(data: bytes, limits: DecodeLimits | None = None) -> dict[str, SparseTensor | F32]:
    """Like :func:`decode_tensors` (which densifies what this returns), but a top-k record stays a
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
        raise TensorDecodeError("malformed_protobuf", str(exc)) from exc
    if len(bundle.tensors) > lim.max_tensors:
        raise TensorDecodeError("too_many_tensors", str(len(bundle.tensors)))
    seen: set[str] = set()
    total = 0
    work = [0]  # low-rank decoding work so far
    for rec in bundle.tensors:
        if not rec.name or len(rec.name) > lim.max_name_len:
            raise TensorDecodeError("bad_name", rec.name[:64])
        if rec.name in seen:
            raise TensorDecodeError("duplicate_name", rec.name)
        seen.add(rec.name)
        n = _checked_size(rec, lim)
        total += n
        if total > lim.max_elements:
            raise TensorDecodeError("too_many_elements", str(total))
        yield rec, n, lim, work


def _open_envelope(data: bytes, lim: DecodeLimits) -> bytes:
    if len(data) < _HEADER.size:
        raise TensorDecodeError("truncated_header")
    if len(data) > lim.max_bytes:
        raise TensorDecodeError("payload_too_large", str(len(data)))
    magic, compression, raw_len = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise TensorDecodeError("bad_magic")
    if raw_len > lim.max_bytes:
        raise TensorDecodeError("claimed_size_too_large", str(raw_len))
    body = memoryview(data)[_HEADER.size :]
    if compression == _COMPRESSION_NONE:
        if len(body) != raw_len:
            raise TensorDecodeError("length_mismatch", f"{len(body)} != {raw_len}")
        return bytes(body)
    if compression != _COMPRESSION_LZ4:
        raise TensorDecodeError("unknown_compression", str(compression))
    if raw_len > _LZ4_MAX_RATIO * len(body) + _LZ4_SLACK:
        # lz4 allocates the claimed size before it reads a byte: a claim that no block of this
        # length can inflate to would cost up to max_bytes for a 10-byte payload.
        raise TensorDecodeError("claimed_size_too_large", f"{raw_len} from an lz4 block of {len(body)}")
    try:
        raw = lz4.block.decompress(body, uncompressed_size=raw_len)
    except lz4.block.LZ4BlockError as exc:
        raise TensorDecodeError("bad_lz4", str(exc)) from exc
    if len(raw) != raw_len:
        raise TensorDecodeError("length_mismatch", f"{len(raw)} != {raw_len}")
    return bytes(raw)


def _checked_size(rec: pb.TensorRecord, lim: DecodeLimits) -> int:
    if len(rec.shape) > lim.max_rank:
        raise TensorDecodeError("rank_too_large", str(len(rec.shape)))
    n = 1
    for d in rec.shape:
        n *= int(d)
        if n > lim.max_elements:
            raise TensorDecodeError("too_many_elements", rec.name)
    if not 1 <= rec.chunk_size <= _MAX_CHUNK:
        raise TensorDecodeError("bad_chunk_size", str(rec.chunk_size))
    return n


def _encoding(rec: pb.TensorRecord) -> Encoding:
    try:
        return Encoding(rec.encoding)
    except ValueError:
        raise TensorDecodeError("unknown_encoding", str(rec.encoding)) from None


def _decode_record(rec: pb.TensorRecord, n: int, lim: DecodeLimits, work: list[int]) -> F32:
    """A dense or low-rank record (top-k records go to :func:`_decode_topk`)."""
    encoding = _encoding(rec)
    if rec.layout == pb.LAYOUT_LOW_RANK:
        return _decode_low_rank(rec, n, encoding, lim, work)
    if rec.rank:
        raise TensorDecodeError("unexpected_rank", rec.name)
    if rec.layout != pb.LAYOUT_DENSE:
        raise TensorDecodeError("unknown_layout", str(rec.layout))
    chunk = int(rec.chunk_size)
    count = n  # every element is kept
    if len(rec.values) != values_len(encoding, count):
        raise TensorDecodeError("values_length_mismatch", rec.name)
    values = _decode_values(rec, encoding, n, chunk, None, count)
    if rec.indices or rec.index_bits or rec.index_coding:
        raise TensorDecodeError("unexpected_indices", rec.name)
    return values


def _decode_topk(rec: pb.TensorRecord, n: int) -> SparseTensor:
    """A chunked top-k record: values, then offsets checked in range and rising per chunk."""
    encoding = _encoding(rec)
    chunk = int(rec.chunk_size)
    if rec.rank:
        raise TensorDecodeError("unexpected_rank", rec.name)
    if not 1 <= rec.k <= chunk:
        raise TensorDecodeError("bad_k", str(rec.k))
    count = kept_count(n, chunk, int(rec.k))
    if len(rec.values) != values_len(encoding, count):
        raise TensorDecodeError("values_length_mismatch", rec.name)
    values = _decode_values(rec, encoding, n, chunk, int(rec.k), count)
    width = int(rec.index_bits)
    if width > 16 or (width and chunk > 1 << width):
        raise TensorDecodeError("bad_index_bits", f"{width} bits for chunks of {chunk}")
    offsets: npt.NDArray[np.integer]
    if rec.index_coding == pb.INDEX_ELIAS_FANO:
        if width:
            raise TensorDecodeError("bad_index_bits", f"{width} bits with Elias-Fano offsets")
        try:
            offsets = eliasfano.decode_offsets(rec.indices, n, chunk, int(rec.k))
        except eliasfano.EliasFanoError as exc:
            raise TensorDecodeError(exc.reason, rec.name) from None
    elif rec.index_coding != pb.INDEX_FIXED:
        raise TensorDecodeError("unknown_index_coding", str(rec.index_coding))
    elif len(rec.indices) != (2 * count if not width else (count * width + 7) // 8):
        raise TensorDecodeError("indices_length_mismatch", rec.name)
    elif width:
        unpacked = unpack_bits(rec.indices, count, width)
        if unpacked is None:
            raise TensorDecodeError("indices_bad_padding", rec.name)
        offsets = unpacked
    else:
        offsets = np.frombuffer(rec.indices, dtype="<u2")
    positions = _topk_positions(offsets, n, chunk, int(rec.k), rec.name)
    return SparseTensor(tuple(int(d) for d in rec.shape), positions, values)


def _topk_positions(offsets: npt.NDArray[np.integer], n: int, chunk: int, k: int, name: str) -> I64:
    """Flat positions of a top-k record's in-chunk offsets, after checking that every offset lies
    inside its chunk and that they rise strictly within each chunk (no duplicates: one canonical
    encoding per update). Full chunks are handled as one (chunks, k) matrix."""
    full, tail = divmod(n, chunk)
    head = offsets[: full * k].reshape(full, k)
    rest = offsets[full * k :]  # min(k, tail) offsets of the short last chunk
    if (head.size and int(head.max()) >= chunk) or (rest.size and int(rest.max()) >= tail):
        raise TensorDecodeError("index_out_of_range", name)
    if not ((head[:, 1:] > head[:, :-1]).all() and (rest[1:] > rest[:-1]).all()):
        raise TensorDecodeError("indices_not_increasing", name)
    out = np.empty(offsets.size, dtype=np.int64)
    np.add(
        head,
        np.arange(0, full * chunk, chunk, dtype=np.int64)[:, None],
        out=out[: head.size].reshape(full, k),
    )
    np.add(rest, full * chunk, out=out[head.size :], dtype=np.int64)
    return out


def _decode_low_rank(
    rec: pb.TensorRecord, n: int, encoding: Encoding, lim: DecodeLimits, work: list[int]
) -> F32:
    if len(rec.shape) < 2:
        raise TensorDecodeError("low_rank_needs_matrix", rec.name)
    if encoding not in INT_LEVELS:
        raise TensorDecodeError("low_rank_needs_int_encoding", rec.name)
    rows = int(rec.shape[0])
    cols = n // rows if rows else 0
    r = int(rec.rank)
    if not 1 <= r <= min(rows, cols, MAX_FACTOR_RANK) or rec.chunk_size != r:
        raise TensorDecodeError("bad_rank", f"{rec.name}: rank {r}, chunk {rec.chunk_size}")
    if rec.k or rec.indices or rec.index_bits or rec.index_coding:
        raise TensorDecodeError("unexpected_indices", rec.name)
    work[0] += n * r
    if work[0] > lim.max_decode_work:
        raise TensorDecodeError("too_much_decode_work", rec.name)
    count = (rows + cols) * r
    if len(rec.values) != values_len(encoding, count):
        raise TensorDecodeError("values_length_mismatch", rec.name)
    ints = _decode_ints(rec, encoding, count)
    if len(rec.scales) != 8 * r:
        raise TensorDecodeError("scales_length_mismatch", rec.name)
    scales = np.frombuffer(rec.scales, dtype="<f4").astype(np.float64)
    mantissa, exps = np.frexp(scales)
    if not (np.isfinite(scales).all() and (mantissa == 0.5).all()):
        raise TensorDecodeError("scale_not_power_of_two", rec.name)
    e = (exps[:r] + exps[r:]).astype(np.int64) - 2  # frexp: 2**k = 0.5 * 2**(k + 1)
    low = int(e.min())
    if int(e.max()) - low > _MAX_SCALE_SPAN:
        raise TensorDecodeError("scale_range_too_large", rec.name)
    ip = ints[: rows * r].reshape(rows, r).astype(np.float64) * np.ldexp(1.0, e - low)[None, :]
    iq = ints[rows * r :].reshape(cols, r).astype(np.float64)
    # Every partial sum is an integer below 2**53: exact in float64 in any summation order.
    product = ip @ iq.T
    with np.errstate(over="ignore", under="ignore"):
        out: F32 = np.ldexp(product, low).astype(np.float32)  # exact scaling, one rounding
    return out.reshape(-1)


def _decode_ints(rec: pb.TensorRecord, encoding: Encoding, count: int) -> npt.NDArray[np.int8]:
    if encoding is Encoding.INT4:
        q4 = unpack_int4(rec.values, count)
        if q4 is None:
            raise TensorDecodeError("int4_out_of_range", rec.name)
        return q4
    if encoding is Encoding.INT2:
        q2 = unpack_int2(rec.values, count)
        if q2 is None:
            raise TensorDecodeError("int2_bad_padding", rec.name)
        return q2
    q = np.frombuffer(rec.values, dtype=np.int8)
    if count and np.any(q == -128):
        raise TensorDecodeError("int8_out_of_range", rec.name)
    return q


def _decode_values(
    rec: pb.TensorRecord, encoding: Encoding, n: int, chunk: int, k: int | None, count: int
) -> F32:
    """The ``count`` values of a dense (``k`` None) or top-k record of ``n`` elements, after its
    ``values`` length has been checked. Per-chunk arrays are made only once the scales' length
    has shown that the chunks were really sent: a claimed shape alone allocates nothing."""
    if encoding in WIRE_FLOATS:
        no_chunks = np.zeros(0, dtype=np.int64)  # float values have no per-chunk scale
        return dequantize(np.frombuffer(rec.values, dtype=WIRE_FLOATS[encoding]), encoding, None, no_chunks)
    if len(rec.scales) != 4 * (-(-n // chunk)):
        raise TensorDecodeError("scales_length_mismatch", rec.name)
    scales = np.frombuffer(rec.scales, dtype="<f4").astype(np.float32)
    ints = _decode_ints(rec, encoding, count)
    return dequantize(ints, encoding, scales, kept_per_chunk(n, chunk, k))
