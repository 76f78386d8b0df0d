from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pshard.core.wire.framing import (
    EOF,
    MAX_VARINT_BYTES,
    NEED_DATA,
    FrameDecoder,
    FrameTooLarge,
    FramingError,
    MalformedVarint,
    TruncatedFrame,
    decode_uvarint,
    encode_frame,
    encode_uvarint,
)


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**32, 2**62])
def test_uvarint_round_trip(value: int) -> None:
    encoded = encode_uvarint(value)
    assert decode_uvarint(encoded) == (value, len(encoded))


def test_uvarint_known_encoding() -> None:
    assert encode_uvarint(300) == b"\xac\x02"


def test_uvarint_needs_more_data() -> None:
    assert decode_uvarint(b"\x80\x80") is None


def test_uvarint_rejects_non_minimal() -> None:
    with pytest.raises(MalformedVarint):
        decode_uvarint(b"\x81\x00")


def test_uvarint_rejects_overlong() -> None:
    with pytest.raises(MalformedVarint):
        decode_uvarint(b"\xff" * MAX_VARINT_BYTES + b"\x01")


def test_decoder_byte_by_byte() -> None:
    frames = [b"", b"a", b"x" * 1000]
    wire = b"".join(encode_frame(f) for f in frames)
    dec = FrameDecoder(4096)
    out = []
    for i in range(len(wire)):
        dec.receive_data(wire[i : i + 1])
        while (ev := dec.next_event()) is not NEED_DATA:
            out.append(ev)
    dec.receive_eof()
    assert out == frames
    assert dec.next_event() is EOF


def test_oversized_prefix_refused_before_payload() -> None:
    dec = FrameDecoder(1024)
    dec.receive_data(encode_uvarint(1 << 30))  # no payload sent at all
    with pytest.raises(FrameTooLarge) as info:
        dec.next_event()
    assert info.value.declared == 1 << 30 and info.value.limit == 1024
    with pytest.raises(FrameTooLarge):  # the decoder stays broken
        dec.next_event()


def test_truncated_frame_at_eof() -> None:
    dec = FrameDecoder(1024)
    dec.receive_data(encode_frame(b"hello")[:-2])
    assert dec.next_event() is NEED_DATA
    dec.receive_eof()
    with pytest.raises(TruncatedFrame):
        dec.next_event()


def test_truncated_prefix_at_eof() -> None:
    dec = FrameDecoder(1024)
    dec.receive_data(b"\x80")
    dec.receive_eof()
    with pytest.raises(TruncatedFrame):
        dec.next_event()


@given(st.binary(max_size=200), st.integers(min_value=1, max_value=64))
def test_decoder_fuzz_only_raises_framing_errors(data: bytes, limit: int) -> None:
    dec = FrameDecoder(limit)
    dec.receive_data(data)
    dec.receive_eof()
    try:
        for _ in range(len(data) + 2):
            ev = dec.next_event()
            if ev is EOF:
                break
            assert isinstance(ev, bytes) and len(ev) <= limit
    except FramingError:
        pass


@given(st.lists(st.binary(max_size=300), max_size=20), st.integers(min_value=1, max_value=50))
def test_decoder_split_anywhere(frames: list[bytes], step: int) -> None:
    wire = b"".join(encode_frame(f) for f in frames)
    dec = FrameDecoder(1024)
    out = []
    for i in range(0, len(wire), step):
        dec.receive_data(wire[i : i + step])
        while (ev := dec.next_event()) is not NEED_DATA:
            out.append(ev)
    assert out == frames
