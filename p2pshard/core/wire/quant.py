"""Value encodings for the tensor codec: quantisation, dequantisation and bit packing.

How a record's numbers are written: as float32, float16 or bfloat16 bits, or as integer levels
(INT8, INT4, INT2) with one float32 scale per chunk, or, for low-rank factors, one power-of-two
scale per factor column; and how integers and top-k offsets are packed into bytes (INT4 nibbles,
INT2 codes, ``width``-bit offset streams).

The encoder and the decoder share this arithmetic on purpose: :func:`dequantize` is what
receivers compute, and the sender's ``sparse_out`` (its error feedback) comes from the same
function over the same :func:`quantize` output, so both hold the same bits. The unpacking
functions return ``None`` on a bit pattern no encoder writes; the codec turns that into a
:class:`~p2pshard.core.wire.tensor.TensorDecodeError` with its reason. numpy, and one compiled
loop (:mod:`p2pshard.core.wire._kernels`) for the INT2 scale fit.
"""

from __future__ import annotations

from enum import Enum

import numpy as np
import numpy.typing as npt

from p2pshard.core.wire import tensor_pb2 as pb

__all__ = [
    "INT_LEVELS",
    "WIRE_FLOATS",
    "Encoding",
    "dequantize",
    "pack_bits",
    "pack_ints",
    "pow2_columns",
    "quantize",
    "unpack_bits",
    "unpack_int2",
    "unpack_int4",
    "value_bytes",
    "values_len",
]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


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
INT_LEVELS = {Encoding.INT8: 127, Encoding.INT4: 7, Encoding.INT2: 3}
# How the float encodings' values lie in the payload (bfloat16: the upper half of float32's bits).
WIRE_FLOATS = {Encoding.FLOAT32: "<f4", Encoding.FLOAT16: "<f2", Encoding.BFLOAT16: "<u2"}


def values_len(encoding: Encoding, count: int) -> int:
    """Bytes of a ``values`` field holding ``count`` values (INT4: two a byte, INT2: four)."""
    if encoding is Encoding.INT4:
        return (count + 1) // 2
    if encoding is Encoding.INT2:
        return (count + 3) // 4
    return count * _VALUE_BYTES[encoding]


def pow2_columns(
    x: npt.NDArray[np.float64], encoding: Encoding
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Per column: the exponent e of a power-of-two scale and the integers.

    INT8/INT4: the smallest 2**e >= absmax / levels. INT2 (levels -3, -1, 1, 3): that exponent or
    one or two below it, whichever leaves the smallest squared error (clipping the largest entries
    costs less than sending most entries at +-1 of a too-coarse scale).
    """
    levels = INT_LEVELS[encoding]
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


def quantize(values: F32, encoding: Encoding, kept: I64) -> tuple[npt.NDArray[np.generic], F32 | None]:
    """The values as the wire holds them (float32, float16 or bfloat16 bits, or integer levels
    and one scale per chunk): the payload's bytes and ``sparse_out`` both come from this array."""
    if encoding is Encoding.BFLOAT16:
        return _to_bf16(values).astype("<u2"), None
    if encoding in WIRE_FLOATS:
        return values.astype(WIRE_FLOATS[encoding]), None
    if encoding is Encoding.INT2:
        return _quantize_int2(values, kept)
    levels = INT_LEVELS[encoding]
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
    """INT2 levels with a least-squares scale per chunk (two Lloyd steps from absmax / 3).

    With only four levels the scale matters: a chunk of similar magnitudes (what top-k keeps) is
    best sent as +-1 times about its mean magnitude, a bell-shaped one with +-3 for its tail. For
    fixed levels q the error-minimising scale is sum(q v) / sum(q q); two rounds of re-assigning q
    and re-fitting reach it closely. Decoders do not care how the scale was chosen, but the steps
    stay float64 sums in numpy's ``reduceat`` order so that the bytes stay those of earlier
    versions. A compiled loop (:func:`p2pshard.core.wire._kernels.fit_int2`): one pass per chunk.
    """
    from p2pshard.core.wire._kernels import fit_int2

    q = np.empty(values.size, dtype=np.int8)
    scales = np.empty(kept.size, dtype=np.float32)
    fit_int2(np.ascontiguousarray(values, dtype=np.float32), kept.astype(np.int64), q, scales)
    return q, scales


def value_bytes(wire: npt.NDArray[np.generic], encoding: Encoding) -> bytes:
    """The ``values`` field: :func:`quantize`'s array as bytes (integer levels packed)."""
    if encoding in (Encoding.INT4, Encoding.INT2):
        return pack_ints(wire.astype(np.int8, copy=False), encoding)
    return wire.tobytes()


def dequantize(wire: npt.NDArray[np.generic], encoding: Encoding, scales: F32 | None, kept: I64) -> F32:
    """Float32 values from what the wire holds: the decoder's arithmetic, which the encoder's
    ``sparse_out`` shares so that both give the same bits."""
    if encoding is Encoding.BFLOAT16:
        return (wire.astype(np.uint32) << 16).view(np.float32)
    if scales is None:
        return wire.astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # absurd scales decode to inf/nan,
        return wire.astype(np.float32) * np.repeat(scales, kept)  # which screening rejects


def pack_ints(q: npt.NDArray[np.int8] | npt.NDArray[np.int64], encoding: Encoding) -> bytes:
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


def unpack_int4(data: bytes, count: int) -> npt.NDArray[np.int8] | None:
    """The 4-bit values, or None if a nibble is 0 (not a value) or the padding is not 0."""
    raw = np.frombuffer(data, dtype=np.uint8)
    nib = np.empty(2 * raw.size, dtype=np.uint8)
    nib[0::2] = raw & 0x0F
    nib[1::2] = raw >> 4
    if np.any(nib[count:] != 0) or (count and np.any(nib[:count] == 0)):
        return None
    return (nib[:count].astype(np.int16) - 8).astype(np.int8)


def pack_bits(values: npt.NDArray[np.int64], width: int) -> bytes:
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


def unpack_bits(data: bytes, count: int, width: int) -> npt.NDArray[np.uint16] | None:
    """``count`` values of ``width`` bits (<= 16), or None if an unused bit of the last byte is set.

    The inverse of :func:`pack_bits`. 12 bits (chunks of 4096, SparseLoCo's) are two values in
    three bytes; any other width is read eight values at a time: they fill exactly ``width``
    bytes, read as two little-endian 64-bit words and cut at fixed shifts.
    """
    raw = np.frombuffer(data, dtype=np.uint8)
    total = count * width
    if total % 8 and int(raw[-1]) >> (total % 8):
        return None
    if width == 12:
        return _unpack_12(raw, count)
    groups = -(-count // 8)
    padded = np.zeros(groups * width, dtype=np.uint8)
    padded[: raw.size] = raw
    block = np.zeros((groups, 16), dtype=np.uint8)
    block[:, :width] = padded.reshape(groups, width)
    words = block.view("<u8")
    lo, hi = words[:, 0], words[:, 1]
    mask = np.uint64((1 << width) - 1)
    out = np.empty((groups, 8), dtype=np.uint16)
    for j in range(8):
        word, shift = divmod(j * width, 64)
        if word:
            out[:, j] = (hi >> np.uint64(shift)) & mask
        elif shift + width > 64:  # straddles the two words
            out[:, j] = ((lo >> np.uint64(shift)) | (hi << np.uint64(64 - shift))) & mask
        else:
            out[:, j] = (lo >> np.uint64(shift)) & mask
    return out.reshape(-1)[:count]


def _unpack_12(raw: npt.NDArray[np.uint8], count: int) -> npt.NDArray[np.uint16]:
    """12-bit values: bytes b0 b1 b2 hold b0 | (b1 & 15) << 8 and b1 >> 4 | b2 << 4."""
    pairs = -(-count // 2)
    padded = np.zeros(3 * pairs, dtype=np.uint16)
    padded[: raw.size] = raw
    b = padded.reshape(pairs, 3)
    out = np.empty((pairs, 2), dtype=np.uint16)
    np.bitwise_or(b[:, 0], (b[:, 1] & 0xF) << 8, out=out[:, 0])
    np.bitwise_or(b[:, 1] >> 4, b[:, 2] << 4, out=out[:, 1])
    return out.reshape(-1)[:count]


def unpack_int2(data: bytes, count: int) -> npt.NDArray[np.int8] | None:
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
