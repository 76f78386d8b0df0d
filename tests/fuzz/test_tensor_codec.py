"""Fuzz the tensor codec's decoders (payloads from peers): ``decode_sparse`` / ``decode_tensors``
over every layout (dense, chunked top-k with uint16 or packed offsets, low-rank) and encoding,
with and without lz4. The typed error is :class:`TensorDecodeError`; memory stays proportional
to the payload (checked with tracemalloc), whatever sizes the payload claims."""

from __future__ import annotations

import struct
import tracemalloc

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st

from p2pshard.core.wire import tensor_pb2 as pb
from p2pshard.core.wire.tensor import (
    MAGIC,
    DecodeLimits,
    EncodeOptions,
    Encoding,
    LowRankFactors,
    SparseTensor,
    TensorDecodeError,
    decode_sparse,
    decode_tensors,
    encode_tensors,
)
from tests.fuzz.fuzzing import FUZZ, hostile

LIMITS = DecodeLimits(max_bytes=1 << 16, max_tensors=8, max_elements=1 << 14, max_decode_work=1 << 18)
MEMORY_LIMITS = DecodeLimits(max_bytes=1 << 24, max_decode_work=1 << 16)
"""Default element and tensor limits (128M elements), so claimed sizes are large; low-rank
products (legitimately larger than their factors) bounded to 64K elements of work."""

shapes = st.lists(st.integers(1, 9), min_size=0, max_size=3).map(tuple)


@st.composite
def _options(draw: st.DrawFn) -> EncodeOptions:
    chunk = draw(st.sampled_from((1, 3, 8, 16, 64)))
    topk = draw(st.none() | st.integers(1, chunk))
    return EncodeOptions(
        encoding=draw(st.sampled_from(list(Encoding))),
        chunk_size=chunk,
        topk=topk,
        lz4=draw(st.booleans()),
        packed_indices=topk is not None and draw(st.booleans()),
        elias_fano=topk is not None and draw(st.booleans()),
    )


@st.composite
def _payloads(draw: st.DrawFn) -> bytes:
    rng = np.random.default_rng(draw(st.integers(0, 1 << 16)))
    tensors: dict[str, np.ndarray | LowRankFactors] = {}
    overrides: dict[str, EncodeOptions] = {}
    for i in range(draw(st.integers(1, 3))):
        name = f"t{i}"
        if draw(st.integers(0, 4)) == 0:
            rows, cols = draw(st.integers(1, 6)), draw(st.integers(1, 6))
            r = draw(st.integers(1, min(rows, cols)))
            p = rng.standard_normal((rows, r)).astype(np.float32)
            q = rng.standard_normal((cols, r)).astype(np.float32)
            tensors[name] = LowRankFactors((rows, cols), p, q)
            enc = draw(st.sampled_from((Encoding.INT8, Encoding.INT4, Encoding.INT2)))
            overrides[name] = EncodeOptions(encoding=enc)
        else:
            tensors[name] = rng.standard_normal(draw(shapes)).astype(np.float32)
            overrides[name] = draw(_options())
    return encode_tensors(tensors, draw(_options()), overrides)


payloads = _payloads()


def _envelope(body: bytes) -> bytes:
    return struct.pack("<4sBI", MAGIC, 0, len(body)) + body


def _record(**fields: object) -> bytes:
    bundle = pb.TensorBundle()
    bundle.tensors.add(name="x", **fields)  # type: ignore[arg-type]
    return _envelope(bundle.SerializeToString())


def _check(out: dict[str, SparseTensor | np.ndarray], limits: DecodeLimits) -> None:
    assert len(out) <= limits.max_tensors
    for t in out.values():
        if isinstance(t, SparseTensor):
            n = int(np.prod(t.shape))
            assert t.values.dtype == np.float32 and t.index.shape == t.values.shape
            assert t.index.size == 0 or (t.index[0] >= 0 and t.index[-1] < n)
            assert np.all(np.diff(t.index) > 0)
        else:
            assert t.dtype == np.float32 and t.size <= limits.max_elements


@FUZZ
@given(hostile(payloads), st.booleans())
@example(_record(shape=[0, 7], chunk_size=1, layout=pb.LAYOUT_DENSE, encoding=1), True)
def test_tensor_codec(data: bytes, sparse: bool) -> None:
    try:
        out = decode_sparse(data, LIMITS) if sparse else decode_tensors(data, LIMITS)
    except TensorDecodeError:
        return
    _check(out, LIMITS)


@FUZZ
@given(hostile(payloads))
# A 26-byte payload claiming 100M one-element chunks made the decoder allocate a per-chunk count
# array (800 MB) before it compared the values' length with the claim.
@example(_record(shape=[100_000_000], chunk_size=1, layout=pb.LAYOUT_DENSE, encoding=4))
@example(_record(shape=[100_000_000], chunk_size=1, layout=pb.LAYOUT_CHUNKED_TOPK, k=1, encoding=6))
# A 19-byte lz4 payload claiming 16 MB (up to max_bytes, 512 MB by default) made lz4 allocate its
# whole output buffer up front.
@example(struct.pack("<4sBI", MAGIC, 1, 16 << 20) + b"\x00" * 10)
def test_tensor_codec_memory(data: bytes) -> None:
    """Peak allocation while decoding stays proportional to the payload: lz4 inflates a block at
    most 255-fold, and nothing else may cost more than 64 bytes per payload byte (+1 MiB)."""
    tracemalloc.start()
    try:
        out = decode_sparse(data, MEMORY_LIMITS)
    except TensorDecodeError:
        out = None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak <= (255 + 64) * len(data) + (1 << 20), f"{peak} bytes allocated for {len(data)}"
    if out is not None:
        _check(out, MEMORY_LIMITS)
