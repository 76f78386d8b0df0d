"""Runner ``tensor``: the tensor codec (specs/tensor.md, specs/proto/tensor.proto).

Handlers: ``decode`` (payload → dense float32 tensors, or the error reason) and ``encode``
(tensors + options → payload, byte-identical; lz4 is off in encode vectors because lz4 block
output is not unique across compressors).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import lz4.block
import numpy as np

from p2pshard.conformance.model import JSON, AnswerError, Case, Runner, exact, unhex
from p2pshard.core.wire import tensor_pb2 as pb
from p2pshard.core.wire.tensor import (
    MAGIC,
    DecodeLimits,
    EncodeOptions,
    Encoding,
    LowRankFactors,
    TensorDecodeError,
    decode_tensors,
    encode_tensors,
)

NAME = "tensor"
FILES = {"decode": frozenset({"input.json", "payload.bin"}), "encode": frozenset({"input.json"})}


def _f32(values: list[float] | np.ndarray) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


def _tensors_json(tensors: Mapping[str, np.ndarray]) -> dict[str, JSON]:
    return {
        name: {"shape": list(arr.shape), "values_f32le": arr.astype("<f4").tobytes().hex()}
        for name, arr in sorted(tensors.items())
    }


def _from_json(value: JSON) -> dict[str, np.ndarray]:
    if not isinstance(value, dict):
        raise AnswerError("tensors must be an object")
    out = {}
    for name, t in value.items():
        arr = np.frombuffer(unhex(t["values_f32le"], "values_f32le"), dtype="<f4").astype(np.float32)
        out[name] = arr.reshape(tuple(t["shape"]))
    return out


def envelope(body: bytes, compression: int = 0, raw_len: int | None = None, magic: bytes = MAGIC) -> bytes:
    return struct.pack("<4sBI", magic, compression, len(body) if raw_len is None else raw_len) + body


def _rec(**fields: Any) -> pb.TensorRecord:
    return pb.TensorRecord(**fields)


def _bundle(*records: pb.TensorRecord) -> bytes:
    b = pb.TensorBundle()
    b.tensors.extend(records)
    return b.SerializeToString()


def _dense(
    name: str = "w",
    shape: tuple[int, ...] = (2, 2),
    values: bytes | None = None,
    chunk: int = 4,
    encoding: int = pb.VALUE_ENCODING_FLOAT32,
) -> pb.TensorRecord:
    n = int(np.prod(shape)) if shape else 1
    return _rec(
        name=name,
        shape=list(shape),
        layout=pb.LAYOUT_DENSE,
        encoding=encoding,
        chunk_size=chunk,
        values=_f32(list(range(1, n + 1))) if values is None else values,
    )


def _topk(**kw: object) -> pb.TensorRecord:
    base: dict[str, object] = dict(
        name="s",
        shape=[6],
        layout=pb.LAYOUT_CHUNKED_TOPK,
        encoding=pb.VALUE_ENCODING_FLOAT32,
        chunk_size=4,
        k=2,
        values=_f32([1.0, -2.0, 3.0, 4.0]),
        indices=struct.pack("<4H", 0, 3, 0, 1),
    )
    base.update(kw)
    return _rec(**base)


SAMPLE = {
    "bias": np.array([0.5, -1.25, 3.0], dtype=np.float32),
    "weight": np.array([[0.1, -0.2, 0.3, -0.45], [1.5, -2.5, 0.0, 7.75]], dtype=np.float32),
}
SCALAR = {"scale": np.array(2.5, dtype=np.float32)}
RAMP = {
    "g": (np.arange(1, 21, dtype=np.float32) * np.where(np.arange(20) % 3 == 0, -1, 1)).astype(np.float32) / 8
}


def generate() -> list[Case]:
    cases: list[Case] = []

    def decode(
        name: str,
        desc: str,
        valid: bool,
        payload: bytes,
        expected: dict[str, JSON],
        limits: dict[str, int] | None = None,
    ) -> None:
        cases.append(
            Case(
                NAME,
                "decode",
                name,
                desc,
                valid,
                input_json={"limits": limits or {}},
                input_bin={"payload": payload},
                expected=expected,
            )
        )

    def err(reason: str) -> dict[str, JSON]:
        return {"error": reason}

    variants: list[tuple[str, EncodeOptions, dict[str, np.ndarray]]] = [
        ("dense_f32", EncodeOptions(Encoding.FLOAT32, 4, None, False), SAMPLE),
        ("dense_f32_lz4", EncodeOptions(Encoding.FLOAT32, 4, None, True), SAMPLE),
        ("dense_f16", EncodeOptions(Encoding.FLOAT16, 4, None, False), SAMPLE),
        ("dense_bf16", EncodeOptions(Encoding.BFLOAT16, 4, None, False), SAMPLE),
        ("dense_int8", EncodeOptions(Encoding.INT8, 4, None, False), SAMPLE),
        ("dense_int4", EncodeOptions(Encoding.INT4, 4, None, False), SAMPLE),
        ("topk_int4_odd", EncodeOptions(Encoding.INT4, 8, 3, False), RAMP),
        ("topk_f32", EncodeOptions(Encoding.FLOAT32, 8, 3, False), RAMP),
        ("topk_int8_lz4", EncodeOptions(Encoding.INT8, 8, 2, True), RAMP),
        ("topk_f16_chunk_one", EncodeOptions(Encoding.FLOAT16, 1, 1, False), SAMPLE),
        ("scalar", EncodeOptions(Encoding.FLOAT32, 1, None, False), SCALAR),
        ("empty_bundle", EncodeOptions(Encoding.FLOAT32, 4, None, False), {}),
    ]
    for name, opts, tensors in variants:
        payload = encode_tensors(tensors, opts)
        decode(
            name,
            f"a payload written by the encoder ({name})",
            True,
            payload,
            {"tensors": _tensors_json(decode_tensors(payload))},
        )
        if not opts.lz4:
            cases.append(
                Case(
                    NAME,
                    "encode",
                    name,
                    f"encode with {opts.encoding.name}, chunk {opts.chunk_size}, top-k {opts.topk}",
                    True,
                    input_json={
                        "tensors": _tensors_json(tensors),
                        "options": {
                            "encoding": opts.encoding.name,
                            "chunk_size": opts.chunk_size,
                            "topk": opts.topk,
                            "lz4": False,
                        },
                    },
                    expected={"payload": payload.hex()},
                )
            )
    hand = _bundle(_topk())
    decode(
        "topk_by_hand",
        "top-k of 6 elements in chunks of 4: offsets restart per chunk",
        True,
        envelope(hand),
        {"tensors": _tensors_json({"s": np.array([1, 0, 0, -2, 3, 4], dtype=np.float32)})},
    )
    decode(
        "zero_dim",
        "a tensor with a zero-length dimension",
        True,
        envelope(_bundle(_dense(shape=(0, 3), values=b""))),
        {"tensors": _tensors_json({"w": np.zeros((0, 3), dtype=np.float32)})},
    )
    good = envelope(_bundle(_dense()))
    decode("truncated_header", "fewer than 9 bytes", False, good[:8], err("truncated_header"))
    decode("bad_magic", "magic P2T2", False, envelope(_bundle(_dense()), magic=b"P2T2"), err("bad_magic"))
    decode(
        "unknown_compression",
        "compression byte 2",
        False,
        envelope(_bundle(_dense()), 2),
        err("unknown_compression"),
    )
    decode(
        "length_mismatch",
        "uncompressed length one more than the body",
        False,
        envelope(_bundle(_dense()), 0, len(_bundle(_dense())) + 1),
        err("length_mismatch"),
    )
    decode(
        "bad_lz4",
        "compression 1 with a body that is not lz4",
        False,
        envelope(b"\xff" * 16, 1, 64),
        err("bad_lz4"),
    )
    body = _bundle(_dense())
    decode(
        "lz4_short",
        "lz4 body that inflates to fewer bytes than claimed",
        False,
        envelope(lz4.block.compress(body, store_size=False), 1, len(body) + 10),
        err("length_mismatch"),
    )
    decode(
        "claimed_too_large",
        "claimed length above max_bytes, refused before inflating",
        False,
        envelope(b"\x00" * 4, 1, 1 << 31),
        err("claimed_size_too_large"),
        {"max_bytes": 1 << 20},
    )
    decode(
        "payload_too_large",
        "payload above max_bytes",
        False,
        good,
        err("payload_too_large"),
        {"max_bytes": 16},
    )
    decode(
        "malformed_protobuf",
        "the body is not a TensorBundle",
        False,
        envelope(b"\x0a\x50ab"),
        err("malformed_protobuf"),
    )
    decode(
        "too_many_tensors",
        "two tensors, max_tensors 1",
        False,
        envelope(_bundle(_dense("a"), _dense("b"))),
        err("too_many_tensors"),
        {"max_tensors": 1},
    )
    decode("empty_name", "a tensor without a name", False, envelope(_bundle(_dense(""))), err("bad_name"))
    decode("long_name", "a 300-character name", False, envelope(_bundle(_dense("n" * 300))), err("bad_name"))
    decode(
        "duplicate_name",
        "two tensors named w",
        False,
        envelope(_bundle(_dense(), _dense())),
        err("duplicate_name"),
    )
    decode(
        "rank_too_large",
        "rank 9",
        False,
        envelope(_bundle(_dense(shape=(1,) * 9, values=_f32([1.0])))),
        err("rank_too_large"),
    )
    decode(
        "too_many_elements",
        "one tensor above max_elements",
        False,
        good,
        err("too_many_elements"),
        {"max_elements": 3},
    )
    decode(
        "too_many_elements_total",
        "two tensors whose sum is above max_elements",
        False,
        envelope(_bundle(_dense("a"), _dense("b"))),
        err("too_many_elements"),
        {"max_elements": 6},
    )
    decode(
        "huge_shape",
        "a shape claiming (2^32 - 1)^2 elements with no values",
        False,
        envelope(_bundle(_dense(shape=(0xFFFFFFFF, 0xFFFFFFFF), values=b""))),
        err("too_many_elements"),
    )
    decode("chunk_zero", "chunk_size 0", False, envelope(_bundle(_dense(chunk=0))), err("bad_chunk_size"))
    decode(
        "chunk_too_large",
        "chunk_size 65537",
        False,
        envelope(_bundle(_dense(chunk=65537))),
        err("bad_chunk_size"),
    )
    decode(
        "unknown_encoding",
        "encoding 9",
        False,
        envelope(_bundle(_dense(encoding=9))),
        err("unknown_encoding"),
    )
    decode(
        "unspecified_encoding",
        "encoding 0 (UNSPECIFIED)",
        False,
        envelope(_bundle(_dense(encoding=0))),
        err("unknown_encoding"),
    )
    decode(
        "unknown_layout",
        "layout 0 (UNSPECIFIED)",
        False,
        envelope(_bundle(_rec(name="w", shape=[1], encoding=1, chunk_size=1, values=_f32([1.0])))),
        err("unknown_layout"),
    )
    decode("k_zero", "top-k with k 0", False, envelope(_bundle(_topk(k=0))), err("bad_k"))
    decode("k_above_chunk", "top-k with k > chunk_size", False, envelope(_bundle(_topk(k=5))), err("bad_k"))
    decode(
        "values_short",
        "dense values one element short",
        False,
        envelope(_bundle(_dense(values=_f32([1, 2, 3])))),
        err("values_length_mismatch"),
    )
    decode(
        "values_odd_f16",
        "float16 values of odd byte length",
        False,
        envelope(_bundle(_dense(encoding=2, values=b"\x00" * 7))),
        err("values_length_mismatch"),
    )
    decode(
        "dense_with_indices",
        "a dense record carrying indices",
        False,
        envelope(
            _bundle(
                _rec(
                    name="w",
                    shape=[2],
                    layout=1,
                    encoding=1,
                    chunk_size=2,
                    values=_f32([1, 2]),
                    indices=b"\x00\x00",
                )
            )
        ),
        err("unexpected_indices"),
    )
    decode(
        "indices_short",
        "top-k indices one short",
        False,
        envelope(_bundle(_topk(indices=struct.pack("<3H", 0, 3, 0)))),
        err("indices_length_mismatch"),
    )
    decode(
        "index_out_of_range",
        "offset 4 in a chunk of 4",
        False,
        envelope(_bundle(_topk(indices=struct.pack("<4H", 0, 4, 0, 1)))),
        err("index_out_of_range"),
    )
    decode(
        "index_past_tail",
        "offset 2 in the 2-element last chunk",
        False,
        envelope(_bundle(_topk(indices=struct.pack("<4H", 0, 3, 0, 2)))),
        err("index_out_of_range"),
    )
    decode(
        "indices_not_increasing",
        "offsets 3, 0 inside one chunk",
        False,
        envelope(_bundle(_topk(indices=struct.pack("<4H", 3, 0, 0, 1)))),
        err("indices_not_increasing"),
    )
    decode(
        "indices_duplicate",
        "offset 1 twice in one chunk",
        False,
        envelope(_bundle(_topk(indices=struct.pack("<4H", 1, 1, 0, 1)))),
        err("indices_not_increasing"),
    )
    decode(
        "int8_no_scales",
        "int8 values without scales",
        False,
        envelope(_bundle(_dense(encoding=4, values=b"\x01\x02\x03\x04"))),
        err("scales_length_mismatch"),
    )
    decode(
        "int8_minus_128",
        "int8 value -128 (outside [-127, 127])",
        False,
        envelope(
            _bundle(
                _rec(
                    name="w",
                    shape=[4],
                    layout=1,
                    encoding=4,
                    chunk_size=4,
                    values=b"\x01\x80\x03\x04",
                    scales=_f32([1.0]),
                )
            )
        ),
        err("int8_out_of_range"),
    )
    _int2_cases(decode, err)
    _packed_offsets_cases(decode, err)
    _elias_fano_cases(decode, err)
    _low_rank_cases(decode, err)
    return cases


def _packed_offsets_cases(decode: Any, err: Any) -> None:
    """Top-k offsets as a bit stream of ``index_bits``-bit values, lowest bit first."""
    # 6 elements in chunks of 4, k 2: offsets 0, 3 | 0, 1 in 2 bits each -> 0b01_00_11_00.
    decode(
        "topk_packed_offsets",
        "2-bit packed offsets",
        True,
        envelope(_bundle(_topk(indices=bytes([0b01001100]), index_bits=2))),
        {"tensors": _tensors_json({"s": np.array([1, 0, 0, -2, 3, 4], dtype=np.float32)})},
    )
    # 3 bits: 0, 3 | 0, 1 -> bits 000 110 000 100 (12 bits) = 0x18, 0x02; the rest of byte 2 is 0.
    decode(
        "topk_packed_offsets_odd_width",
        "3-bit packed offsets across a byte boundary",
        True,
        envelope(_bundle(_topk(indices=bytes([0x18, 0x02]), index_bits=3))),
        {"tensors": _tensors_json({"s": np.array([1, 0, 0, -2, 3, 4], dtype=np.float32)})},
    )
    bad: list[tuple[str, str, dict[str, object], str]] = [
        ("packed_bits_17", "index_bits 17", {"index_bits": 17}, "bad_index_bits"),
        ("packed_bits_too_few", "1-bit offsets for chunks of 4", {"index_bits": 1}, "bad_index_bits"),
        ("packed_long", "one byte too many", {"indices": bytes([0b01001100, 0])}, "indices_length_mismatch"),
        (
            "packed_padding",
            "a set unused bit",
            {"indices": bytes([0x18, 0x12]), "index_bits": 3},
            "indices_bad_padding",
        ),
        (
            "packed_range",
            "3-bit offset 4 in a chunk of 4",
            {"indices": bytes([0x18, 0x08]), "index_bits": 3},
            "index_out_of_range",
        ),
    ]
    for name, desc, fields, reason in bad:
        record = {"indices": bytes([0b01001100]), "index_bits": 2, **fields}
        decode(name, desc, False, envelope(_bundle(_topk(**record))), err(reason))
    decode(
        "dense_with_index_bits",
        "a dense record with index_bits",
        False,
        envelope(
            _bundle(
                _rec(
                    name="w", shape=[2], layout=1, encoding=1, chunk_size=2, values=_f32([1, 2]), index_bits=1
                )
            )
        ),
        err("unexpected_indices"),
    )


def _elias_fano_cases(decode: Any, err: Any) -> None:
    """Elias-Fano offsets (specs/tensor.md#elias-fano-offsets), worked by hand. 6 elements in
    chunks of 4, k 2: chunk 0 (u 4, n 2) has l = 1 and a 4-bit high field, chunk 1 (u 2, n 2) has
    l = 0 and a 4-bit field. Offsets 0, 3 | 0, 1: low bits 0, 1; fields 1010 (bits 0 and 1 + 1),
    1010: the stream 0,1 | 1,0,1,0 | 1,0,1,0 is bytes 0x56, 0x01."""
    ef = {"index_coding": pb.INDEX_ELIAS_FANO}
    decode(
        "topk_elias_fano",
        "Elias-Fano offsets, a short last chunk with no low bits",
        True,
        envelope(_bundle(_topk(indices=bytes([0x56, 0x01]), **ef))),
        {"tensors": _tensors_json({"s": np.array([1, 0, 0, -2, 3, 4], dtype=np.float32)})},
    )
    bad: list[tuple[str, str, dict[str, object], str]] = [
        ("elias_fano_long", "one byte too many", {"indices": b"\x56\x01\x00"}, "indices_length_mismatch"),
        ("elias_fano_short", "one byte too few", {"indices": b"\x56"}, "indices_length_mismatch"),
        ("elias_fano_padding", "a set unused bit", {"indices": b"\x56\x05"}, "indices_bad_padding"),
        ("elias_fano_three_ones", "3 set bits in a field of 2 offsets", {"indices": b"\x5e\x01"},
         "indices_bad_elias_fano"),
        ("elias_fano_duplicate", "offsets 3, 3", {"indices": b"\x5b\x01"}, "indices_not_increasing"),
        ("elias_fano_range", "offset 4 in a chunk of 4", {"indices": b"\x64\x01"}, "index_out_of_range"),
        ("elias_fano_with_index_bits", "index_bits set too", {"index_bits": 2}, "bad_index_bits"),
        ("unknown_index_coding", "index_coding 2", {"index_coding": 2}, "unknown_index_coding"),
    ]  # fmt: skip
    for name, desc, fields, reason in bad:
        record = {"indices": bytes([0x56, 0x01]), **ef, **fields}
        decode(name, desc, False, envelope(_bundle(_topk(**record))), err(reason))
    decode(
        "dense_with_index_coding",
        "a dense record with index_coding",
        False,
        envelope(
            _bundle(_rec(name="w", shape=[2], layout=1, encoding=1, chunk_size=2, values=_f32([1, 2]), **ef))
        ),
        err("unexpected_indices"),
    )


def _int2_cases(decode: Any, err: Any) -> None:
    """INT2 (codes 0..3 = -3, -1, 1, 3): decode vectors only, the scale is the encoder's choice."""
    # 5 values in chunks of 4: codes 3, 0, 1, 2 | 2; scales 0.5 and 2.
    packed = bytes([3 | 0 << 2 | 1 << 4 | 2 << 6, 2])
    dense = _dense(shape=(5,), encoding=pb.VALUE_ENCODING_INT2, values=packed)
    dense.scales = _f32([0.5, 2.0])
    decode(
        "int2_dense",
        "INT2 values, first in the lowest two bits; a 1-element last chunk",
        True,
        envelope(_bundle(dense)),
        {"tensors": _tensors_json({"w": np.array([1.5, -1.5, -0.5, 0.5, 2.0], dtype=np.float32)})},
    )
    padded = _dense(shape=(5,), encoding=pb.VALUE_ENCODING_INT2, values=bytes([packed[0], 2 | 1 << 4]))
    padded.scales = _f32([0.5, 2.0])
    decode(
        "int2_bad_padding",
        "a set bit past the last INT2 value",
        False,
        envelope(_bundle(padded)),
        err("int2_bad_padding"),
    )
    topk = _topk(
        encoding=pb.VALUE_ENCODING_INT2,
        values=bytes([0 | 3 << 2 | 1 << 4 | 2 << 6]),
        scales=_f32([0.25, 1.0]),
    )
    decode(
        "int2_topk",
        "top-k 2 of 6 in chunks of 4 with INT2 values",
        True,
        envelope(_bundle(topk)),
        {"tensors": _tensors_json({"s": np.array([-0.75, 0, 0, 0.75, -1, 1], dtype=np.float32)})},
    )
    # Rank 1, shape (2, 3): P = [3, -1] (codes 3, 1), Q = [1, -3, 1] (codes 2, 0, 2); scales 2^-1, 2^2.
    int2_lr = _low_rank(encoding=pb.VALUE_ENCODING_INT2, values=bytes([3 | 1 << 2 | 2 << 4 | 0 << 6, 2]))
    decode(
        "low_rank_int2",
        "rank 1 with INT2 factors",
        True,
        envelope(_bundle(int2_lr)),
        {"tensors": _tensors_json({"m": np.array([[6, -18, 6], [-2, 6, -2]], dtype=np.float32)})},
    )


def _low_rank(**kw: object) -> pb.TensorRecord:
    """Shape (2, 3), rank 1, INT8: P = [1, -2], Q = [3, 0, 1], scales 2^-1 and 2^2."""
    base: dict[str, object] = dict(
        name="m",
        shape=[2, 3],
        layout=pb.LAYOUT_LOW_RANK,
        encoding=pb.VALUE_ENCODING_INT8,
        chunk_size=1,
        rank=1,
        values=bytes([1, 0xFE, 3, 0, 1]),
        scales=_f32([0.5, 4.0]),
    )
    base.update(kw)
    return _rec(**base)


def _low_rank_cases(decode: Any, err: Any) -> None:
    lr = _low_rank()
    decode(
        "low_rank_by_hand",
        "rank 1: element (a, b) = P[a] Q[b] sP sQ",
        True,
        envelope(_bundle(lr)),
        {"tensors": _tensors_json({"m": np.array([[6, 0, 2], [-12, 0, -4]], dtype=np.float32)})},
    )
    # INT4, rank 2, shape (2, 1, 2): P = [[1, -7], [2, 0]], Q = [[7, 1], [-3, 2]]; nibbles q + 8.
    ints = [1, -7, 2, 0, 7, 1, -3, 2]
    nib = [q + 8 for q in ints]
    int4 = _low_rank(
        shape=[2, 1, 2],
        encoding=pb.VALUE_ENCODING_INT4,
        chunk_size=2,
        rank=2,
        values=bytes(nib[i] | nib[i + 1] << 4 for i in range(0, 8, 2)),
        scales=_f32([1.0, 0.25, 2.0, 2.0**-20]),
    )
    p = np.array([[1, -7], [2, 0]], dtype=np.float64) * [1.0, 0.25]
    q = np.array([[7, 1], [-3, 2]], dtype=np.float64) * [2.0, 2.0**-20]
    decode(
        "low_rank_int4",
        "rank 2, INT4 factors, a 3-dimensional tensor seen as 2 x 2",
        True,
        envelope(_bundle(int4)),
        {"tensors": _tensors_json({"m": (p @ q.T).astype(np.float32).reshape(2, 1, 2)})},
    )
    rng = np.random.default_rng(7)
    factors = LowRankFactors(
        (6, 5), rng.normal(size=(6, 3)).astype(np.float32), rng.normal(size=(5, 3)).astype(np.float32)
    )
    written = encode_tensors({"m": factors}, EncodeOptions(Encoding.INT8, 4, None, False))
    decode(
        "low_rank_encoder",
        "rank 3 factors written by the encoder",
        True,
        written,
        {"tensors": _tensors_json(decode_tensors(written))},
    )
    for name, desc, rec, reason, limits in [
        (
            "low_rank_vector",
            "a low-rank record of 1 dimension",
            _low_rank(shape=[6]),
            "low_rank_needs_matrix",
            None,
        ),
        (
            "low_rank_float",
            "low-rank with FLOAT32 values",
            _low_rank(encoding=pb.VALUE_ENCODING_FLOAT32),
            "low_rank_needs_int_encoding",
            None,
        ),
        ("low_rank_rank_zero", "rank 0", _low_rank(rank=0), "bad_rank", None),
        (
            "low_rank_rank_above_rows",
            "rank 3 of a 2 x 3 matrix",
            _low_rank(rank=3, chunk_size=3),
            "bad_rank",
            None,
        ),
        ("low_rank_chunk_not_rank", "chunk_size 2 with rank 1", _low_rank(chunk_size=2), "bad_rank", None),
        ("low_rank_with_k", "low-rank with k set", _low_rank(k=1), "unexpected_indices", None),
        (
            "low_rank_work",
            "decoding work 6 over a limit of 5",
            _low_rank(),
            "too_much_decode_work",
            {"max_decode_work": 5},
        ),
        (
            "low_rank_values_short",
            "4 integers for 5",
            _low_rank(values=bytes([1, 2, 3, 4])),
            "values_length_mismatch",
            None,
        ),
        (
            "low_rank_int8_minus_128",
            "an int8 factor of -128",
            _low_rank(values=bytes([1, 0x80, 3, 0, 1])),
            "int8_out_of_range",
            None,
        ),
        (
            "low_rank_one_scale",
            "1 scale for rank 1 (2 needed)",
            _low_rank(scales=_f32([0.5])),
            "scales_length_mismatch",
            None,
        ),
        (
            "low_rank_scale_three",
            "a scale of 3",
            _low_rank(scales=_f32([3.0, 4.0])),
            "scale_not_power_of_two",
            None,
        ),
        (
            "low_rank_scale_negative",
            "a scale of -2",
            _low_rank(scales=_f32([-2.0, 4.0])),
            "scale_not_power_of_two",
            None,
        ),
        (
            "low_rank_scale_zero",
            "a scale of 0",
            _low_rank(scales=_f32([0.0, 4.0])),
            "scale_not_power_of_two",
            None,
        ),
        (
            "low_rank_scale_inf",
            "an infinite scale",
            _low_rank(scales=_f32([np.inf, 4.0])),
            "scale_not_power_of_two",
            None,
        ),
        (
            "low_rank_scale_span",
            "column products 2^0 and 2^25: more than 2^24 apart",
            _low_rank(rank=2, chunk_size=2, values=bytes(10), scales=_f32([1.0, 2.0**25, 1.0, 1.0])),
            "scale_range_too_large",
            None,
        ),
        (
            "low_rank_scale_span_edge",
            "column products 2^0 and 2^24: allowed (all-zero factors decode to zeros)",
            _low_rank(rank=2, chunk_size=2, values=bytes(10), scales=_f32([1.0, 2.0**24, 1.0, 1.0])),
            None,
            None,
        ),
        (
            "dense_with_rank",
            "a dense record with rank set",
            _dense(encoding=pb.VALUE_ENCODING_FLOAT32),
            "unexpected_rank",
            None,
        ),
        (
            "int4_nibble_zero",
            "an int4 nibble 0 (the value -8)",
            _dense(shape=(4,), encoding=pb.VALUE_ENCODING_INT4, values=bytes([0x98, 0x90]), chunk=4),
            "int4_out_of_range",
            None,
        ),
        (
            "int4_padding",
            "3 int4 values whose padding nibble is not 0",
            _dense(shape=(3,), encoding=pb.VALUE_ENCODING_INT4, values=bytes([0x98, 0x19]), chunk=4),
            "int4_out_of_range",
            None,
        ),
    ]:
        if name == "dense_with_rank":
            rec.rank = 1
        if name.startswith("int4_"):
            rec.scales = _f32([1.0])
        if reason is None:
            decode(
                name,
                desc,
                True,
                envelope(_bundle(rec)),
                {"tensors": _tensors_json(decode_tensors(envelope(_bundle(rec))))},
            )
        else:
            decode(name, desc, False, envelope(_bundle(rec)), err(reason), limits)


def answer(handler: str, inp: Mapping[str, JSON]) -> Mapping[str, JSON]:
    if handler == "decode":
        limits = inp.get("limits") or {}
        if not isinstance(limits, dict):
            raise AnswerError("limits must be an object")
        try:
            tensors = decode_tensors(unhex(inp.get("payload"), "payload"), DecodeLimits(**limits))
        except TensorDecodeError as exc:
            return {"error": exc.reason}
        return {"tensors": _tensors_json(tensors)}
    if handler == "encode":
        o = inp.get("options")
        if not isinstance(o, dict):
            raise AnswerError("options must be an object")
        opts = EncodeOptions(Encoding[o["encoding"]], int(o["chunk_size"]), o.get("topk"), bool(o.get("lz4")))
        return {"payload": encode_tensors(_from_json(inp.get("tensors")), opts).hex()}
    raise AnswerError(f"unknown handler {handler!r}")


RUNNER = Runner(NAME, FILES, generate, answer, exact)
