"""The tensor codec: named float32 tensors <-> bytes on the wire (numpy only, no torch).

A payload is an envelope around one ``TensorBundle`` (``specs/proto/tensor.proto``)::

    b"P2T1" | compression: u8 (0 none, 1 lz4) | uncompressed length: u32 LE | body

Encoding is lossy by choice (fp16, bf16, per-chunk int8, chunked top-k); decoding is strict because
the bytes come from peers we do not trust: every claimed size, shape, chunk size, count and index is
checked against :class:`DecodeLimits` *before* memory is allocated for it, and every failure is a
:class:`TensorDecodeError` whose ``reason`` is a short stable string a caller can count.

Decoding always yields dense float32 arrays: a top-k record is scattered into zeros. That is the
stated rule for sparse updates everywhere downstream (aggregation treats an element a peer did not
send as an explicit zero).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
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
    "TensorDecodeError",
    "decode_tensors",
    "encode_tensors",
]

MAGIC = b"P2T1"
_HEADER = struct.Struct("<4sBI")
_COMPRESSION_NONE = 0
_COMPRESSION_LZ4 = 1
_MAX_CHUNK = 1 << 16  # in-chunk offsets are uint16

F32 = npt.NDArray[np.float32]


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


_VALUE_BYTES = {Encoding.FLOAT32: 4, Encoding.FLOAT16: 2, Encoding.BFLOAT16: 2, Encoding.INT8: 1}


@dataclass(frozen=True)
class EncodeOptions:
    """What the sender chooses. ``topk`` = kept elements per chunk; ``None`` sends dense."""

    encoding: Encoding = Encoding.FLOAT32
    chunk_size: int = 4096
    topk: int | None = None
    lz4: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.chunk_size <= _MAX_CHUNK:
            raise ValueError(f"chunk_size must be in [1, {_MAX_CHUNK}]")
        if self.topk is not None and not 1 <= self.topk <= self.chunk_size:
            raise ValueError("topk must be in [1, chunk_size]")


@dataclass(frozen=True)
class DecodeLimits:
    """Upper bounds a receiver enforces; defaults fit a ~100M-parameter fp32 update."""

    max_bytes: int = 512 << 20
    max_tensors: int = 4096
    max_elements: int = 128 << 20
    max_rank: int = 8
    max_name_len: int = 256


# --------------------------------------------------------------------------------------- encode


def encode_tensors(tensors: Mapping[str, npt.NDArray[np.floating]], opts: EncodeOptions) -> bytes:
    """Encode ``tensors`` (any float dtype; written in name order) into one payload."""
    bundle = pb.TensorBundle()
    for name in sorted(tensors):
        arr = np.asarray(tensors[name], dtype=np.float32, order="C")  # keeps rank 0
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
            offsets, values = _select_topk(flat, opts.chunk_size, opts.topk)
            rec.indices = offsets.astype("<u2").tobytes()
        kept_per_chunk = _kept_per_chunk(flat.size, opts.chunk_size, opts.topk)
        rec.values, scales = _encode_values(values, opts.encoding, kept_per_chunk)
        if scales is not None:
            rec.scales = scales.astype("<f4").tobytes()
    body = bundle.SerializeToString()
    if opts.lz4:
        packed: bytes = lz4.block.compress(body, store_size=False)
        return _HEADER.pack(MAGIC, _COMPRESSION_LZ4, len(body)) + packed
    return _HEADER.pack(MAGIC, _COMPRESSION_NONE, len(body)) + body


def _kept_per_chunk(n: int, chunk: int, k: int | None) -> npt.NDArray[np.int64]:
    """Elements kept in each chunk: all of them (dense) or min(k, chunk length) (top-k)."""
    n_chunks = -(-n // chunk)
    lengths = np.full(n_chunks, chunk, dtype=np.int64)
    if n_chunks:
        lengths[-1] = n - chunk * (n_chunks - 1)
    return lengths if k is None else np.minimum(lengths, k)


def _select_topk(flat: F32, chunk: int, k: int) -> tuple[npt.NDArray[np.int64], F32]:
    """Largest-magnitude ``k`` per chunk: (in-chunk offsets ascending per chunk, their values)."""
    n_full = flat.size // chunk
    offsets: list[npt.NDArray[np.int64]] = []
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
    kept = _kept_per_chunk(flat.size, chunk, k)
    base = np.repeat(np.arange(kept.size, dtype=np.int64) * chunk, kept)
    return offs, flat[base + offs]


def _encode_values(
    values: F32, encoding: Encoding, kept_per_chunk: npt.NDArray[np.int64]
) -> tuple[bytes, F32 | None]:
    if encoding is Encoding.FLOAT32:
        return values.astype("<f4").tobytes(), None
    if encoding is Encoding.FLOAT16:
        return values.astype("<f2").tobytes(), None
    if encoding is Encoding.BFLOAT16:
        return _to_bf16(values).astype("<u2").tobytes(), None
    # INT8: one scale per chunk, symmetric, so that the chunk's largest magnitude maps to 127.
    chunk_of = np.repeat(np.arange(kept_per_chunk.size), kept_per_chunk)
    absmax = np.zeros(kept_per_chunk.size, dtype=np.float32)
    np.maximum.at(absmax, chunk_of, np.abs(values))
    scales = (absmax / 127.0).astype(np.float32)
    safe = np.where(scales > 0, scales, 1.0).astype(np.float32)
    q = np.clip(np.rint(values / safe[chunk_of]), -127, 127).astype(np.int8)
    return q.tobytes(), scales


def _to_bf16(values: F32) -> npt.NDArray[np.uint16]:
    bits = values.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)  # round to nearest, ties to even
    out = (rounded >> 16).astype(np.uint16)
    nan = np.isnan(values)
    out[nan] = 0x7FC0
    return out


# --------------------------------------------------------------------------------------- decode


def decode_tensors(data: bytes, limits: DecodeLimits | None = None) -> dict[str, F32]:
    """Decode a payload into dense float32 arrays, or raise :class:`TensorDecodeError`.

    Values are not judged here (NaN decodes as NaN); whether a tensor is *acceptable* is the
    receiver's policy (see ``p2pshard.engine.aggregation.screen_update``).
    """
    lim = limits or DecodeLimits()
    body = _open_envelope(data, lim)
    bundle = pb.TensorBundle()
    try:
        bundle.ParseFromString(body)
    except DecodeError as exc:
        raise TensorDecodeError("malformed-protobuf", str(exc)) from exc
    if len(bundle.tensors) > lim.max_tensors:
        raise TensorDecodeError("too-many-tensors", str(len(bundle.tensors)))
    out: dict[str, F32] = {}
    total = 0
    for rec in bundle.tensors:
        if not rec.name or len(rec.name) > lim.max_name_len:
            raise TensorDecodeError("bad-name", rec.name[:64])
        if rec.name in out:
            raise TensorDecodeError("duplicate-name", rec.name)
        n = _checked_size(rec, lim)
        total += n
        if total > lim.max_elements:
            raise TensorDecodeError("too-many-elements", str(total))
        out[rec.name] = _decode_record(rec, n).reshape(tuple(rec.shape))
    return out


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


def _decode_record(rec: pb.TensorRecord, n: int) -> F32:
    try:
        encoding = Encoding(rec.encoding)
    except ValueError:
        raise TensorDecodeError("unknown-encoding", str(rec.encoding)) from None
    chunk = int(rec.chunk_size)
    if rec.layout == pb.LAYOUT_DENSE:
        k: int | None = None
    elif rec.layout == pb.LAYOUT_CHUNKED_TOPK:
        if not 1 <= rec.k <= chunk:
            raise TensorDecodeError("bad-k", str(rec.k))
        k = int(rec.k)
    else:
        raise TensorDecodeError("unknown-layout", str(rec.layout))
    kept = _kept_per_chunk(n, chunk, k)
    count = int(kept.sum())
    if len(rec.values) != count * _VALUE_BYTES[encoding]:
        raise TensorDecodeError("values-length-mismatch", rec.name)
    values = _decode_values(rec, encoding, kept, count)
    if k is None:
        if rec.indices:
            raise TensorDecodeError("unexpected-indices", rec.name)
        return values
    if len(rec.indices) != 2 * count:
        raise TensorDecodeError("indices-length-mismatch", rec.name)
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
    dense = np.zeros(n, dtype=np.float32)
    base = np.repeat(np.arange(kept.size, dtype=np.int64) * chunk, kept)
    dense[base + offsets] = values
    return dense


def _decode_values(rec: pb.TensorRecord, encoding: Encoding, kept: npt.NDArray[np.int64], count: int) -> F32:
    if encoding is Encoding.FLOAT32:
        return np.frombuffer(rec.values, dtype="<f4").astype(np.float32)
    if encoding is Encoding.FLOAT16:
        return np.frombuffer(rec.values, dtype="<f2").astype(np.float32)
    if encoding is Encoding.BFLOAT16:
        bits = np.frombuffer(rec.values, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32)
    if len(rec.scales) != 4 * kept.size:
        raise TensorDecodeError("scales-length-mismatch", rec.name)
    scales = np.frombuffer(rec.scales, dtype="<f4").astype(np.float32)
    q = np.frombuffer(rec.values, dtype=np.int8)
    if count and np.any(q == -128):
        raise TensorDecodeError("int8-out-of-range", rec.name)
    with np.errstate(over="ignore", invalid="ignore"):  # absurd scales decode to inf/nan,
        return q.astype(np.float32) * np.repeat(scales, kept)  # which screening rejects
