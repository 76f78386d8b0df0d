"""The pubsub driver's frame reader: frames as they come, and the head of a frame still arriving."""

from __future__ import annotations

from typing import Any, cast

import pytest
from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamEOF, StreamReset

from p2pshard.core.wire.framing import FrameTooLarge, TruncatedFrame, encode_uvarint
from p2pshard.net.framed import StreamClosedEarly
from p2pshard.net.pubsub_io import HEAD_BYTES, FrameReader


class ChunkStream:
    """Hands out the given chunks one read at a time (cut to the size asked), then EOF."""

    def __init__(self, chunks: list[bytes], end: type[Exception] = StreamEOF) -> None:
        self.chunks = list(chunks)
        self.end = end
        self.sizes: list[int] = []

    async def read(self, n: int) -> bytes:
        self.sizes.append(n)
        if not self.chunks:
            raise self.end()
        chunk = self.chunks.pop(0)
        if len(chunk) > n:
            self.chunks.insert(0, chunk[n:])
            chunk = chunk[:n]
        return chunk


def reader(chunks: list[bytes], limit: int = 1 << 20, end: type[Exception] = StreamEOF) -> FrameReader:
    return FrameReader(cast(INetStream, ChunkStream(chunks, end)), limit)


def framed(payload: bytes) -> bytes:
    return encode_uvarint(len(payload)) + payload


async def read_all(r: FrameReader, heads: list[bytes]) -> list[bytes]:
    async def on_head(head: bytes) -> None:
        heads.append(head)

    out = []
    while (frame := await r.read_frame(on_head)) is not None:
        out.append(frame)
    return out


async def test_frames_in_one_read_come_out_whole_and_show_no_head() -> None:
    small = [b"a" * 10, b"b" * 3000, b""]
    heads: list[bytes] = []
    assert await read_all(reader([b"".join(framed(p) for p in small)]), heads) == small
    assert heads == []


async def test_a_frame_arriving_in_pieces_shows_its_head_once_before_the_rest() -> None:
    big = bytes(range(256)) * 40  # 10,240 bytes
    data = framed(big) + framed(b"next")
    chunks = [data[:5], data[5:700], data[700:3000], data[3000:]]
    heads: list[bytes] = []
    r = reader(chunks)
    assert await read_all(r, heads) == [big, b"next"]
    assert heads == [big[:HEAD_BYTES]]
    stream = cast(Any, r.stream)
    assert stream.sizes[1:4] == [10237, 9542, 7242]  # inside a frame: only the rest of it


async def test_framing_errors_are_typed() -> None:
    with pytest.raises(FrameTooLarge):
        await read_all(reader([framed(b"x" * 100)], limit=99), [])
    with pytest.raises(TruncatedFrame):
        await read_all(reader([framed(b"x" * 5000)[:2000]]), [])
    with pytest.raises(TruncatedFrame):
        await read_all(reader([b"\x80"]), [])
    with pytest.raises(StreamClosedEarly):
        await read_all(reader([framed(b"x" * 5000)[:2000]], end=StreamReset), [])
