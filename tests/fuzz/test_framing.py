"""Fuzz the uvarint framing: the core's incremental decoder, the pubsub driver's frame reader and
the request/response stream reader, which must agree frame for frame on any byte stream."""

from __future__ import annotations

from typing import cast

from hypothesis import example, given
from hypothesis import strategies as st
from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamReset

from p2pshard.core.wire.framing import (
    EOF,
    MAX_VARINT_BYTES,
    NEED_DATA,
    FrameDecoder,
    FramingError,
    MalformedVarint,
    decode_uvarint,
    encode_frame,
    encode_uvarint,
)
from p2pshard.net.framed import FramedStream, StreamClosedEarly
from p2pshard.net.pubsub_io import HEAD_BYTES, FrameReader
from tests.fuzz.fuzzing import FUZZ, FakeStream, chunked, hostile, run_sync

LIMITS = st.sampled_from([1, 16, 300, 2048, 1 << 20])

payloads = st.lists(st.binary(max_size=40) | st.binary(min_size=1000, max_size=1500), max_size=4)
frame_streams = payloads.map(lambda ps: b"".join(encode_frame(p) for p in ps))


@FUZZ
@given(st.binary(max_size=16), st.integers(0, 16))
@example(b"\x80" * 9, 0)
@example(b"\x80\x00", 0)
def test_uvarint(data: bytes, pos: int) -> None:
    try:
        decoded = decode_uvarint(data, pos)
    except MalformedVarint:
        return
    if decoded is None:
        assert len(data) - pos < MAX_VARINT_BYTES
        return
    value, end = decoded
    assert pos < end <= len(data) and end - pos <= MAX_VARINT_BYTES
    assert encode_uvarint(value) == data[pos:end]  # minimal: one encoding per value


def _core_frames(data: bytes, pieces: list[bytes], limit: int) -> tuple[list[bytes], type[Exception] | None]:
    dec = FrameDecoder(limit)
    frames: list[bytes] = []
    feed = list(pieces)
    for _ in range(2 * len(data) + len(pieces) + 4):  # each frame takes at least one byte
        try:
            event = dec.next_event()
        except FramingError as exc:
            return frames, type(exc)
        if event is EOF:
            return frames, None
        if event is NEED_DATA:
            if feed:
                dec.receive_data(feed.pop(0))
            else:
                dec.receive_eof()
            continue
        assert isinstance(event, bytes) and len(event) <= limit
        frames.append(event)
        assert dec.buffered <= len(data)
    raise AssertionError("the decoder did not finish")


@FUZZ
@given(hostile(frame_streams), LIMITS, st.data())
@example(b"\x05abc", 1 << 20, None)
@example(b"\xff" * 10, 1 << 20, None)
def test_frame_decoder(data: bytes, limit: int, draw: st.DataObject | None) -> None:
    pieces = draw.draw(chunked(data)) if draw is not None else [data]
    frames, error = _core_frames(data, pieces, limit)
    assert sum(len(f) for f in frames) <= len(data)
    if error is None:
        assert b"".join(encode_frame(f) for f in frames) == data  # a clean end: all of it framed


@FUZZ
@given(hostile(frame_streams), LIMITS, st.data(), st.booleans())
@example(b"\x80\x80\x80\x80\x80\x80\x80\x80", 1 << 20, None, False)
def test_pubsub_frame_reader(data: bytes, limit: int, draw: st.DataObject | None, reset: bool) -> None:
    """net/pubsub_io.FrameReader: the same frames and the same verdict as the core's decoder."""
    pieces = draw.draw(chunked(data)) if draw is not None else [data]
    expected, expected_error = _core_frames(data, pieces, limit)
    stream = FakeStream(pieces, StreamReset if reset else None)
    reader = FrameReader(cast(INetStream, stream), limit)
    heads: list[bytes] = []

    async def on_head(head: bytes) -> None:
        heads.append(head)

    frames: list[bytes] = []
    error: type[Exception] | None = None
    for _ in range(len(data) + 2):
        try:
            frame = run_sync(reader.read_frame(on_head))
        except (FramingError, StreamClosedEarly) as exc:
            error = type(exc)
            break
        if frame is None:
            break
        frames.append(frame)
        for head in heads:
            assert len(head) <= HEAD_BYTES and frame.startswith(head)
        heads.clear()
    else:
        raise AssertionError("the reader did not finish")
    assert frames == expected[: len(frames)]
    if reset:
        # a reset stream is "closed early" wherever the reader was; frames before it still count
        assert error is StreamClosedEarly or (error is not None and issubclass(error, FramingError))
        return
    assert frames == expected
    if expected_error is None:
        assert error is None
    else:
        assert error is not None and issubclass(error, FramingError)


@FUZZ
@given(hostile(frame_streams), LIMITS, st.data(), st.integers(0, 64))
def test_framed_stream(data: bytes, limit: int, draw: st.DataObject, raw: int) -> None:
    """net/framed.FramedStream (every request/response stream): frames, then raw payload bytes."""
    pieces = draw.draw(chunked(data))
    expected, expected_error = _core_frames(data, pieces, limit)
    framed = FramedStream(cast(INetStream, FakeStream(pieces)), limit)
    frames: list[bytes] = []
    for _ in range(len(data) + 2):
        try:
            frame = run_sync(framed.read_frame())
        except FramingError as exc:
            assert expected_error is not None and issubclass(type(exc), FramingError)
            return
        if frame is None:
            break
        frames.append(frame)
        if len(frames) == 1 and raw:
            got = [0]

            def sink(offset: int, piece: bytes, got: list[int] = got) -> None:
                assert offset == got[0]
                got[0] += len(piece)

            try:
                run_sync(framed.read_raw(raw, sink))
            except StreamClosedEarly:
                return
            assert got[0] == raw
            return
    assert frames == expected
    assert expected_error is None
