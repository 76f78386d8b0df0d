"""A py-libp2p stream read and written as length-prefixed frames (the Trio half of core.wire.framing)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import trio
from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamEOF, StreamError
from libp2p.stream_muxer.exceptions import MuxedStreamEOF, MuxedStreamError

from p2pshard.core.wire.framing import EOF, NEED_DATA, FrameDecoder, FramingError, encode_uvarint
from p2pshard.net.limits import MemoryHold

READ_SIZE = 1 << 20
"""Bytes asked of the muxer per read: large reads keep per-call overhead low for bulk transfers."""

WRITE_COALESCE = 64 * 1024
"""Frames up to this size are written together with their prefix in one call."""


class StreamClosedEarly(Exception):
    """The peer closed or reset the stream before the expected frame arrived."""


class BufferRefused(FramingError):
    """The memory for a frame the peer announced could not be reserved (the refusal is counted)."""

    reason = "memory"


def reserve_frame(hold: MemoryHold | None, length: int | None) -> None:
    """Before more of a frame is read: reserve its whole announced ``length`` in ``hold``, or
    raise :class:`BufferRefused`."""
    if hold is not None and length is not None and length > hold.held and not hold.resize(length):
        raise BufferRefused(f"no memory for a frame of {length} bytes")


class FramedStream:
    """``hold``: when set, each frame's announced length is reserved in it before the frame is
    assembled (and kept until the hold is released: the frame is the caller's buffer then)."""

    def __init__(self, stream: INetStream, max_frame_size: int, hold: MemoryHold | None = None) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(max_frame_size)
        self.hold = hold
        self.bytes_read = 0
        self.bytes_written = 0

    @property
    def max_frame_size(self) -> int:
        return self.decoder.max_frame_size

    @max_frame_size.setter
    def max_frame_size(self, value: int) -> None:
        self.decoder.max_frame_size = value

    async def read_frame(self) -> bytes | None:
        """The next frame, or None on a clean end of stream. Raises FramingError on bad input."""
        while True:
            event = self.decoder.next_event()
            if event is EOF:
                return None
            if event is not NEED_DATA:
                assert isinstance(event, bytes)
                return event
            reserve_frame(self.hold, self.decoder.frame_length)
            try:
                data = await self.stream.read(READ_SIZE)
            except (StreamEOF, MuxedStreamEOF):
                self.decoder.receive_eof()
                continue
            except (StreamError, MuxedStreamError) as exc:
                raise StreamClosedEarly(f"stream failed: {exc or type(exc).__name__}") from exc
            if not data:
                self.decoder.receive_eof()
                continue
            self.bytes_read += len(data)
            self.decoder.receive_data(data)

    async def read_required(self) -> bytes:
        frame = await self.read_frame()
        if frame is None:
            raise StreamClosedEarly("stream ended before the expected frame")
        return frame

    async def read_raw(self, length: int, sink: Callable[[int, bytes], None]) -> None:
        """Read exactly ``length`` unframed bytes following the last frame, passing each piece to
        ``sink(offset, data)`` as it arrives (no reassembly copies)."""
        got = 0
        leftover = self.decoder.take_buffered()
        if leftover:
            piece = leftover[:length]
            sink(0, piece)
            got = len(piece)
            if len(leftover) > length:
                raise StreamClosedEarly("peer sent more bytes than it announced")
        while got < length:
            try:
                data = await self.stream.read(min(READ_SIZE, length - got))
            except (StreamEOF, MuxedStreamEOF) as exc:
                raise StreamClosedEarly(f"stream ended {length - got} bytes short") from exc
            except (StreamError, MuxedStreamError) as exc:
                raise StreamClosedEarly(f"stream failed: {exc or type(exc).__name__}") from exc
            if not data:
                raise StreamClosedEarly(f"stream ended {length - got} bytes short")
            self.bytes_read += len(data)
            sink(got, data)
            got += len(data)

    async def write_raw(self, data: bytes | memoryview, chunk_size: int) -> None:
        view = memoryview(data)  # slices of a view are not copies; the muxer copies each frame once
        for start in range(0, len(view), chunk_size):
            await self.stream.write(view[start : start + chunk_size])  # type: ignore[arg-type]
        self.bytes_written += len(data)

    async def write_frame(self, payload: bytes | memoryview) -> None:
        """Write one frame; StreamClosedEarly if the peer reset the stream (or it failed)."""
        prefix = encode_uvarint(len(payload))
        try:
            if len(payload) <= WRITE_COALESCE:
                await self.stream.write(prefix + bytes(payload))
            else:
                await self.stream.write(prefix)
                await self.stream.write(bytes(payload))
        except (StreamError, MuxedStreamError) as exc:
            raise StreamClosedEarly(f"stream failed: {exc or type(exc).__name__}") from exc
        self.bytes_written += len(prefix) + len(payload)

    async def close(self) -> None:
        with trio.move_on_after(2):
            with contextlib.suppress(Exception):  # closing a broken stream: nothing left to do
                await self.stream.close()

    async def reset(self) -> None:
        with trio.move_on_after(2):
            with contextlib.suppress(Exception):  # resetting a broken stream: nothing left to do
                await self.stream.reset()
