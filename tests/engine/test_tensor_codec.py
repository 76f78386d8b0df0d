"""The numpy tensor codec: round trips for every encoding and layout, and hostile payloads."""

from __future__ import annotations

import struct

import lz4.block
import numpy as np
import pytest

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

RNG = np.random.default_rng(7)
TENSORS = {
    "w": RNG.standard_normal((37, 19)).astype(np.float32),  # 703 elements: a partial last chunk
    "b": RNG.standard_normal(5).astype(np.float32),
    "s": np.array(2.5, dtype=np.float32),  # rank 0
}


@pytest.mark.parametrize(
    ("encoding", "tolerance"),
    [
        (Encoding.FLOAT32, 0.0),
        (Encoding.FLOAT16, 2e-3),
        (Encoding.BFLOAT16, 1e-2),
        (Encoding.INT8, 1.0 / 127 + 1e-6),
    ],
)
@pytest.mark.parametrize("lz4_on", [True, False])
def test_dense_round_trip(encoding: Encoding, tolerance: float, lz4_on: bool) -> None:
    out = decode_tensors(encode_tensors(TENSORS, EncodeOptions(encoding, 64, None, lz4_on)))
    assert set(out) == set(TENSORS)
    for name, arr in TENSORS.items():
        assert out[name].shape == arr.shape and out[name].dtype == np.float32
        scale = float(np.abs(arr).max())
        assert float(np.abs(out[name] - arr).max()) <= tolerance * scale


def test_topk_keeps_the_largest_per_chunk_exactly_in_fp32() -> None:
    chunk, k = 64, 5
    out = decode_tensors(encode_tensors(TENSORS, EncodeOptions(Encoding.FLOAT32, chunk, k)))
    flat_in, flat_out = TENSORS["w"].reshape(-1), out["w"].reshape(-1)
    for start in range(0, flat_in.size, chunk):
        src, got = flat_in[start : start + chunk], flat_out[start : start + chunk]
        keep = min(k, src.size)
        assert np.count_nonzero(got) == keep
        top = np.argsort(-np.abs(src))[:keep]
        np.testing.assert_array_equal(got[top], src[top])
    np.testing.assert_array_equal(out["b"], TENSORS["b"])  # 5 elements <= k: all kept


def test_topk_int8_is_close_and_much_smaller() -> None:
    big = {"x": RNG.standard_normal(1 << 16).astype(np.float32)}
    dense = encode_tensors(big, EncodeOptions(Encoding.FLOAT32, lz4=True))
    sparse = encode_tensors(big, EncodeOptions(Encoding.INT8, chunk_size=2048, topk=16))
    assert len(dense) / len(sparse) > 100
    out = decode_tensors(sparse)["x"]
    kept = out != 0
    assert kept.sum() == 16 * 32
    err = np.abs(out[kept] - big["x"][kept]).max()
    assert err <= np.abs(big["x"]).max() / 127 + 1e-6


def test_bf16_rounds_to_nearest_even_and_keeps_nan() -> None:
    x = np.array([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, np.nan, -np.inf], dtype=np.float32)
    out = decode_tensors(encode_tensors({"x": x}, EncodeOptions(Encoding.BFLOAT16)))["x"]
    assert out[0] == 1.0 and out[1] == 1.0 and out[2] == 1.0 + 2**-6
    assert np.isnan(out[3]) and out[4] == -np.inf


# ---------------------------------------------------------------------------- hostile payloads


def envelope(bundle: pb.TensorBundle, claimed: int | None = None) -> bytes:
    body = bundle.SerializeToString()
    n = len(body) if claimed is None else claimed
    return struct.pack("<4sBI", MAGIC, 0, n) + body


def record(**fields: object) -> pb.TensorBundle:
    base: dict[str, object] = {
        "name": "t",
        "shape": [4],
        "layout": pb.LAYOUT_DENSE,
        "encoding": pb.VALUE_ENCODING_FLOAT32,
        "chunk_size": 4,
        "values": np.zeros(4, "<f4").tobytes(),
    }
    base.update(fields)
    bundle = pb.TensorBundle()
    bundle.tensors.add(**base)  # type: ignore[arg-type]
    return bundle


def test_valid_handmade_record_decodes() -> None:
    assert decode_tensors(envelope(record()))["t"].shape == (4,)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "truncated_header"),
        (b"XXXX" + bytes(5), "bad_magic"),
        (struct.pack("<4sBI", MAGIC, 9, 0), "unknown_compression"),
        (struct.pack("<4sBI", MAGIC, 0, 10) + b"abc", "length_mismatch"),
        (struct.pack("<4sBI", MAGIC, 1, 0xFFFFFFFF) + b"abc", "claimed_size_too_large"),
        (struct.pack("<4sBI", MAGIC, 1, 100) + b"\xff\xff\xff", "bad_lz4"),
        (
            struct.pack("<4sBI", MAGIC, 1, 50) + lz4.block.compress(bytes(10), store_size=False),
            "length_mismatch",
        ),
        (struct.pack("<4sBI", MAGIC, 0, 3) + b"\xff\xff\xff", "malformed_protobuf"),
        (envelope(record(shape=[1 << 20, 1 << 20])), "too_many_elements"),
        (envelope(record(shape=[1] * 9)), "rank_too_large"),
        (envelope(record(shape=[5])), "values_length_mismatch"),
        (envelope(record(chunk_size=0)), "bad_chunk_size"),
        (envelope(record(chunk_size=1 << 17)), "bad_chunk_size"),
        (envelope(record(encoding=42)), "unknown_encoding"),
        (envelope(record(layout=7)), "unknown_layout"),
        (envelope(record(name="")), "bad_name"),
        (envelope(record(indices=b"\x00\x00")), "unexpected_indices"),
        (
            envelope(record(encoding=pb.VALUE_ENCODING_INT8, values=bytes(4), scales=b"")),
            "scales_length_mismatch",
        ),
        (
            envelope(
                record(
                    encoding=pb.VALUE_ENCODING_INT8,
                    values=b"\x80\x00\x00\x00",
                    scales=np.ones(1, "<f4").tobytes(),
                )
            ),
            "int8_out_of_range",
        ),
    ],
)
def test_hostile_payloads_raise_typed_errors(payload: bytes, reason: str) -> None:
    with pytest.raises(TensorDecodeError) as info:
        decode_tensors(payload, DecodeLimits(max_bytes=1 << 20, max_elements=1 << 20))
    assert info.value.reason == reason


def topk_record(indices: list[int], shape: int = 8, chunk: int = 4, k: int = 2) -> pb.TensorBundle:
    return record(
        shape=[shape],
        layout=pb.LAYOUT_CHUNKED_TOPK,
        chunk_size=chunk,
        k=k,
        values=np.ones(len(indices), "<f4").tobytes(),
        indices=np.array(indices, "<u2").tobytes(),
    )


@pytest.mark.parametrize(
    ("bundle", "reason"),
    [
        (topk_record([0, 3, 1, 2]), None),
        (topk_record([0, 4, 1, 2]), "index_out_of_range"),  # 4 is outside a 4-element chunk
        (topk_record([0, 3, 0, 2], shape=6), "index_out_of_range"),  # last chunk has 2 elements
        (topk_record([3, 0, 1, 2]), "indices_not_increasing"),
        (topk_record([1, 1, 1, 2]), "indices_not_increasing"),  # a duplicate
        (topk_record([0, 3, 1]), "values_length_mismatch"),
        (topk_record([0, 1, 2, 3], k=0), "bad_k"),
        (topk_record([0, 1, 2, 3], k=5), "bad_k"),
    ],
)
def test_topk_index_checks(bundle: pb.TensorBundle, reason: str | None) -> None:
    if reason is None:
        out = decode_tensors(envelope(bundle))["t"]
        np.testing.assert_array_equal(out, [1, 0, 0, 1, 0, 1, 1, 0])
        return
    with pytest.raises(TensorDecodeError) as info:
        decode_tensors(envelope(bundle))
    assert info.value.reason == reason


def test_limits_on_count_and_duplicates() -> None:
    two = record()
    two.tensors.add().CopyFrom(two.tensors[0])
    with pytest.raises(TensorDecodeError, match="duplicate_name"):
        decode_tensors(envelope(two))
    with pytest.raises(TensorDecodeError, match="too_many_tensors"):
        decode_tensors(envelope(two), DecodeLimits(max_tensors=1))
    with pytest.raises(TensorDecodeError, match="payload_too_large"):
        decode_tensors(envelope(record()), DecodeLimits(max_bytes=8))


def test_random_bytes_never_escape_as_other_errors() -> None:
    rng = np.random.default_rng(0)
    good = encode_tensors(TENSORS, EncodeOptions(Encoding.INT8, 64, 8, lz4=False))
    for _ in range(300):
        mutated = bytearray(good)
        for pos in rng.integers(9, len(good), size=3):
            mutated[pos] = int(rng.integers(0, 256))
        try:
            out = decode_tensors(bytes(mutated))
        except TensorDecodeError:
            continue  # the only exception a hostile payload may cause
        assert all(a.dtype == np.float32 for a in out.values())


# ---------------------------------------------------------------------------- int4 and low rank


def test_int4_dense_round_trip_and_size() -> None:
    x = RNG.standard_normal(1001).astype(np.float32)  # odd count: a padding nibble
    payload = encode_tensors({"x": x}, EncodeOptions(Encoding.INT4, 64, lz4=False))
    out = decode_tensors(payload)["x"]
    for start in range(0, x.size, 64):
        chunk = x[start : start + 64]
        assert np.abs(out[start : start + 64] - chunk).max() <= np.abs(chunk).max() / 14 + 1e-6
    assert len(payload) < 1001 // 2 + 4 * 16 + 64


def test_low_rank_decodes_exactly_the_scaled_integer_product() -> None:
    p = RNG.standard_normal((40, 3)).astype(np.float32)
    q = RNG.standard_normal((30, 3)).astype(np.float32)
    for encoding, levels in ((Encoding.INT8, 127), (Encoding.INT4, 7)):
        payload = encode_tensors({"m": LowRankFactors((40, 5, 6), p, q)}, EncodeOptions(encoding))
        out = decode_tensors(payload)["m"]
        assert out.shape == (40, 5, 6)
        raw_len = struct.unpack_from("<4sBI", payload)[2]
        bundle = pb.TensorBundle()
        bundle.ParseFromString(lz4.block.decompress(payload[9:], uncompressed_size=raw_len))
        r = bundle.tensors[0]
        assert (r.layout, r.rank, r.chunk_size) == (pb.LAYOUT_LOW_RANK, 3, 3)
        scales = np.frombuffer(r.scales, "<f4").astype(np.float64)
        assert (np.frexp(scales)[0] == 0.5).all()  # powers of two
        # Independent reference: exact integers in Python, scaled, rounded once to float32.
        ints = np.rint(np.concatenate([p / scales[:3], q / scales[3:]]).astype(np.float64))
        ip, iq = ints[:40].astype(np.int64), ints[40:].astype(np.int64)
        want = np.array(
            [
                [
                    float(sum(int(ip[a, j]) * int(iq[b, j]) * scales[j] * scales[3 + j] for j in range(3)))
                    for b in range(30)
                ]
                for a in range(40)
            ],
            dtype=np.float64,
        ).astype(np.float32)
        np.testing.assert_array_equal(out.reshape(40, 30), want)
        approx = p @ q.T
        err = np.abs(out.reshape(40, 30) - approx).max()
        assert err < 3 * 2 * 2 * np.abs(p).max() * np.abs(q).max() / levels


def low_rank_record(**fields: object) -> pb.TensorBundle:
    rows, cols, r = 4, 3, 2
    base: dict[str, object] = {
        "shape": [rows, cols],
        "layout": pb.LAYOUT_LOW_RANK,
        "encoding": pb.VALUE_ENCODING_INT8,
        "chunk_size": r,
        "rank": r,
        "values": np.ones((rows + cols) * r, np.int8).tobytes(),
        "scales": np.ones(2 * r, "<f4").tobytes(),
    }
    base.update(fields)
    return record(**base)


@pytest.mark.parametrize(
    ("bundle", "reason"),
    [
        (low_rank_record(), None),
        (low_rank_record(shape=[12]), "low_rank_needs_matrix"),
        (low_rank_record(encoding=pb.VALUE_ENCODING_FLOAT32), "low_rank_needs_int_encoding"),
        (low_rank_record(rank=0), "bad_rank"),
        (low_rank_record(rank=4, chunk_size=4), "bad_rank"),  # rank above min(rows, cols) = 3
        (low_rank_record(chunk_size=3), "bad_rank"),  # one scale per factor row: chunk == rank
        (low_rank_record(k=1), "unexpected_indices"),
        (low_rank_record(values=bytes(13)), "values_length_mismatch"),
        (low_rank_record(scales=bytes(4)), "scales_length_mismatch"),
        (low_rank_record(scales=np.array([1, 3, 1, 1], "<f4").tobytes()), "scale_not_power_of_two"),
        (low_rank_record(scales=np.array([1, 1, 0, 1], "<f4").tobytes()), "scale_not_power_of_two"),
        (low_rank_record(scales=np.array([1, np.inf, 1, 1], "<f4").tobytes()), "scale_not_power_of_two"),
        (low_rank_record(scales=np.array([2.0**20, 1, 2.0**5, 1], "<f4").tobytes()), "scale_range_too_large"),
        (low_rank_record(scales=np.array([2.0**20, 1, 2.0**4, 1], "<f4").tobytes()), None),
        (low_rank_record(values=b"\x80" + bytes(13)), "int8_out_of_range"),
        (low_rank_record(shape=[1 << 10, 1 << 10], rank=1, chunk_size=1), "values_length_mismatch"),
        (
            low_rank_record(encoding=pb.VALUE_ENCODING_INT4, values=bytes([0x88] * 7)),
            None,
        ),
        (low_rank_record(encoding=pb.VALUE_ENCODING_INT4, values=bytes([0x80] * 7)), "int4_out_of_range"),
        (record(rank=2), "unexpected_rank"),
    ],
)
def test_low_rank_checks(bundle: pb.TensorBundle, reason: str | None) -> None:
    if reason is None:
        out = decode_tensors(envelope(bundle))["t"]
        assert out.shape == (4, 3) and np.isfinite(out).all()
        return
    with pytest.raises(TensorDecodeError) as info:
        decode_tensors(envelope(bundle))
    assert info.value.reason == reason


def test_low_rank_decode_work_is_bounded() -> None:
    big = low_rank_record(
        shape=[1024, 1024],
        rank=64,
        chunk_size=64,
        values=bytes(2048 * 64),
        scales=np.ones(128, "<f4").tobytes(),
    )
    lim = DecodeLimits(max_bytes=1 << 20, max_elements=1 << 20, max_decode_work=1 << 25)
    with pytest.raises(TensorDecodeError) as info:
        decode_tensors(envelope(big), lim)
    assert info.value.reason == "too_much_decode_work"


def test_int4_padding_nibble_must_be_zero() -> None:
    bad = record(
        shape=[3],
        encoding=pb.VALUE_ENCODING_INT4,
        chunk_size=3,
        values=bytes([0x88, 0x98]),  # the 4th nibble pads an odd count and must be 0
        scales=np.ones(1, "<f4").tobytes(),
    )
    with pytest.raises(TensorDecodeError) as info:
        decode_tensors(envelope(bad))
    assert info.value.reason == "int4_out_of_range"
    good = record(
        shape=[3],
        encoding=pb.VALUE_ENCODING_INT4,
        chunk_size=3,
        values=bytes([0x97, 0x08]),
        scales=np.ones(1, "<f4").tobytes(),
    )
    np.testing.assert_array_equal(decode_tensors(envelope(good))["t"], [-1, 1, 0])


def test_random_bytes_in_low_rank_payloads_never_escape_as_other_errors() -> None:
    rng = np.random.default_rng(1)
    factors = LowRankFactors((37, 19), RNG.standard_normal((37, 4)), RNG.standard_normal((19, 4)))
    good = encode_tensors({"m": factors, "b": TENSORS["b"]}, EncodeOptions(Encoding.INT4, lz4=False))
    for _ in range(300):
        mutated = bytearray(good)
        for pos in rng.integers(9, len(good), size=3):
            mutated[pos] = int(rng.integers(0, 256))
        try:
            out = decode_tensors(bytes(mutated), DecodeLimits(max_elements=1 << 16, max_decode_work=1 << 20))
        except TensorDecodeError:
            continue
        assert all(a.dtype == np.float32 for a in out.values())


# ---------------------------------------------------------------------------- int2


def test_int2_codes_decode_to_the_four_levels_times_the_chunk_scale() -> None:
    # codes 0..3 = -3, -1, 1, 3; first value in the lowest two bits; 5 values, 2 chunks (4 + 1).
    codes = [3, 0, 1, 2, 2]
    packed = bytes([codes[0] | codes[1] << 2 | codes[2] << 4 | codes[3] << 6, codes[4]])
    bundle = record(
        shape=[5],
        encoding=pb.VALUE_ENCODING_INT2,
        values=packed,
        scales=np.array([0.5, 2.0], "<f4").tobytes(),
    )
    np.testing.assert_array_equal(decode_tensors(envelope(bundle))["t"], [1.5, -1.5, -0.5, 0.5, 2.0])


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"values": bytes([0xFF, 0x04])}, "int2_bad_padding"),  # bits past the 5th value set
        ({"values": bytes([0xFF])}, "values_length_mismatch"),
        ({"values": bytes([0xFF, 0x03, 0x00])}, "values_length_mismatch"),
        ({"scales": np.ones(1, "<f4").tobytes()}, "scales_length_mismatch"),
    ],
)
def test_int2_rejects_bad_padding_and_lengths(fields: dict[str, object], reason: str) -> None:
    base: dict[str, object] = {
        "shape": [5],
        "encoding": pb.VALUE_ENCODING_INT2,
        "values": bytes([0xFF, 0x03]),
        "scales": np.ones(2, "<f4").tobytes(),
    }
    with pytest.raises(TensorDecodeError) as info:
        decode_tensors(envelope(record(**{**base, **fields})))
    assert info.value.reason == reason


def test_int2_topk_keeps_the_largest_with_their_signs_in_a_sixteenth_of_int8() -> None:
    x = {"x": RNG.standard_normal(1 << 14).astype(np.float32)}
    int8 = encode_tensors(x, EncodeOptions(Encoding.INT8, chunk_size=4096, topk=64, lz4=False))
    int2 = encode_tensors(x, EncodeOptions(Encoding.INT2, chunk_size=4096, topk=64, lz4=False))
    # 64 kept per chunk: 2 index bytes each, then 1 byte (int8) or 2 bits (int2) per value.
    assert len(int8) - len(int2) >= 4 * 64 * 3 // 4 * 0.99
    out = decode_tensors(int2)["x"]
    kept = out != 0
    assert kept.sum() == 4 * 64
    assert (np.sign(out[kept]) == np.sign(x["x"][kept])).all()
    # Top-k values have similar magnitudes: the fitted scale keeps the error small.
    assert np.linalg.norm(out[kept] - x["x"][kept]) < 0.25 * np.linalg.norm(x["x"][kept])


def test_int2_low_rank_is_exact_and_zero_factors_decode_to_zero() -> None:
    p = RNG.standard_normal((40, 3)).astype(np.float32)
    q = RNG.standard_normal((30, 3)).astype(np.float32)
    payload = encode_tensors({"m": LowRankFactors((40, 30), p, q)}, EncodeOptions(Encoding.INT2, lz4=False))
    bundle = pb.TensorBundle()
    bundle.ParseFromString(payload[9:])
    r = bundle.tensors[0]
    assert r.encoding == pb.VALUE_ENCODING_INT2 and len(r.values) == (40 + 30) * 3 // 4 + 1
    scales = np.frombuffer(r.scales, "<f4").astype(np.float64)
    raw = np.frombuffer(r.values, np.uint8)
    codes = np.stack([(raw >> (2 * i)) & 3 for i in range(4)], axis=1).reshape(-1)[: 70 * 3]
    ints = 2 * codes.astype(np.int64) - 3
    ip, iq = ints[:120].reshape(40, 3), ints[120:].reshape(30, 3)
    want = ((ip * scales[:3]) @ (iq * scales[3:]).T).astype(np.float32)  # small exact values
    np.testing.assert_array_equal(decode_tensors(payload)["m"], want)
    approx = p.astype(np.float64) @ q.T.astype(np.float64)
    assert np.linalg.norm(want - approx) < 0.8 * np.linalg.norm(approx)
    zero = LowRankFactors((40, 30), np.zeros_like(p), np.zeros_like(q))
    out = decode_tensors(encode_tensors({"m": zero}, EncodeOptions(Encoding.INT2)))["m"]
    assert not out.any()


# ---------------------------------------------------------------------------- packed top-k offsets


def test_packed_offsets_decode_like_uint16_ones_in_fewer_bytes() -> None:
    x = {"x": RNG.standard_normal(10_000).astype(np.float32)}  # a partial last chunk
    for chunk, k, bits in ((4096, 64, 12), (256, 4, 8), (5, 2, 3), (1, 1, 1)):
        plain = encode_tensors(x, EncodeOptions(Encoding.INT2, chunk, k, lz4=False))
        packed = encode_tensors(x, EncodeOptions(Encoding.INT2, chunk, k, lz4=False, packed_indices=True))
        np.testing.assert_array_equal(decode_tensors(packed)["x"], decode_tensors(plain)["x"])
        count = int(np.minimum(k, np.diff([*range(0, 10_000, chunk), 10_000])).sum())
        saved = 2 * count - (count * bits + 7) // 8
        assert 0 <= saved - (len(plain) - len(packed)) <= 4  # + the index_bits field, varint lengths


def test_packed_offsets_by_hand() -> None:
    # 6 elements in chunks of 4, k = 2, 2-bit offsets 0, 3 | 0, 1, lowest bit first: 0b01_00_11_00.
    bundle = record(
        shape=[6],
        layout=pb.LAYOUT_CHUNKED_TOPK,
        k=2,
        values=np.array([1, -2, 3, 4], "<f4").tobytes(),
        indices=bytes([0b01001100]),
        index_bits=2,
    )
    np.testing.assert_array_equal(decode_tensors(envelope(bundle))["t"], [1, 0, 0, -2, 3, 4])


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"index_bits": 17}, "bad_index_bits"),
        ({"index_bits": 1}, "bad_index_bits"),  # chunks of 4 need 2 bits
        ({"indices": bytes([0b01001100, 0])}, "indices_length_mismatch"),
        ({"index_bits": 3, "indices": bytes([0b00011000, 0b10010])}, "indices_bad_padding"),
        ({"indices": bytes([0b01011100])}, "indices_not_increasing"),  # 0, 3 | 1, 1
        ({"layout": pb.LAYOUT_DENSE, "k": 0, "indices": b""}, "unexpected_indices"),
    ],
)
def test_packed_offsets_are_checked(fields: dict[str, object], reason: str) -> None:
    base: dict[str, object] = {
        "shape": [6],
        "layout": pb.LAYOUT_CHUNKED_TOPK,
        "k": 2,
        "values": np.array([1, -2, 3, 4], "<f4").tobytes(),
        "indices": bytes([0b01001100]),
        "index_bits": 2,
    }
    if fields.get("layout") == pb.LAYOUT_DENSE:
        base["values"] = np.zeros(6, "<f4").tobytes()
    with pytest.raises(TensorDecodeError) as info:
        decode_tensors(envelope(record(**{**base, **fields})))
    assert info.value.reason == reason


def test_random_bytes_in_int2_packed_payloads_never_escape_as_other_errors() -> None:
    rng = np.random.default_rng(2)
    x = {"x": RNG.standard_normal(5000).astype(np.float32)}
    good = encode_tensors(x, EncodeOptions(Encoding.INT2, 1024, 20, lz4=False, packed_indices=True))
    for _ in range(300):
        mutated = bytearray(good)
        for pos in rng.integers(9, len(good), size=3):
            mutated[pos] = int(rng.integers(0, 256))
        try:
            out = decode_tensors(bytes(mutated), DecodeLimits(max_elements=1 << 16))
        except TensorDecodeError:
            continue
        assert all(a.dtype == np.float32 for a in out.values())


def test_sparse_decoding_judges_exactly_like_dense_decoding() -> None:
    """decode_sparse: the same accepted payloads, the same rejection reasons, the same elements."""
    rng = np.random.default_rng(4)
    x = {
        "x": RNG.standard_normal((50, 100)).astype(np.float32),
        "b": RNG.standard_normal(7).astype(np.float32),
    }
    good = encode_tensors(x, EncodeOptions(Encoding.INT2, 1024, 20, lz4=False, packed_indices=True))
    sparse = decode_sparse(good)
    top = sparse["x"]
    assert isinstance(top, SparseTensor) and top.index.size == 5 * 20  # 5000 elements, 5 chunks
    assert np.all(np.diff(top.index) > 0)
    lim = DecodeLimits(max_elements=1 << 16)
    for trial in range(300):
        mutated = bytearray(good)
        if trial:
            for pos in rng.integers(9, len(good), size=3):
                mutated[pos] = int(rng.integers(0, 256))
        try:
            dense = decode_tensors(bytes(mutated), lim)
        except TensorDecodeError as exc:
            with pytest.raises(TensorDecodeError) as info:
                decode_sparse(bytes(mutated), lim)
            assert info.value.reason == exc.reason
            continue
        got = decode_sparse(bytes(mutated), lim)
        assert got.keys() == dense.keys()
        for name, arr in dense.items():
            item = got[name]
            as_dense = item.dense() if isinstance(item, SparseTensor) else item
            np.testing.assert_array_equal(as_dense, arr)


def test_bit_packing_round_trips_every_width_and_length() -> None:
    from p2pshard.core.wire import quant

    rng = np.random.default_rng(5)
    for width in range(1, 17):
        for n in (0, 1, 7, 8, 9, 17, 1001):
            v = rng.integers(0, 1 << width, size=n).astype(np.int64)
            packed = quant.pack_bits(v, width)
            assert len(packed) == (n * width + 7) // 8
            out = quant.unpack_bits(packed, n, width)
            assert out is not None and out.dtype == np.uint16
            np.testing.assert_array_equal(out, v)
