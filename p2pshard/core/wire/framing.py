"""Length-prefixed framing: every frame is ``uvarint(len(payload)) || payload``.

This is the sans-IO half of every p2pshard stream protocol (see ``specs/framing.md``).
:class:`FrameDecoder` follows h11's shape: feed bytes with :meth:`FrameDecoder.receive_data`,
signal the end of the stream with :meth:`FrameDecoder.receive_eof`, then pull events with
:meth:`FrameDecoder.next_event`, which returns a payload, :data:`NEED_DATA` or :data:`EOF`.

Rules a decoder enforces (each violation raises a :class:`FramingError` subclass and the decoder
stays broken; the caller answers with the error's status and closes the stream):

* a varint is at most :data:`MAX_VARINT_BYTES` bytes and minimally encoded;
* a declared length above the decoder's ``max_frame_size`` is refused *before* any payload is
  buffered, so an oversized prefix costs the receiver nothing;
* the stream may only end on a frame boundary.
"""

from __future__ import annotations

from enum import Enum
from typing import Final

MAX_VARINT_BYTES: Final = 9
"""Longest accepted uvarint: 9 bytes carry 63 bits, more than any frame length we accept."""

MAX_FRAME_SIZE: Final = 4 * 1024 * 1024
"""Default upper bound on one frame's payload (4 MiB); protocols set their own (see specs)."""


class Sentinel(Enum):
    NEED_DATA = "NEED_DATA"
    EOF = "EOF"


NEED_DATA: Final = Sentinel.NEED_DATA
EOF: Final = Sentinel.EOF


class FramingError(Exception):
    """The peer broke the framing rules. ``reason`` is a short stable token for counters."""

    reason = "framing"


class MalformedVarint(FramingError):
    reason = "malformed_varint"


class FrameTooLarge(FramingError):
    reason = "frame_too_large"

    def __init__(self, declared: int, limit: int) -> None:
        super().__init__(f"frame of {declared} bytes exceeds the limit of {limit} bytes")
        self.declared = declared
        self.limit = limit


class TruncatedFrame(FramingError):
    reason = "truncated_frame"


def encode_uvarint(value: int) -> bytes:
    """Unsigned LEB128, as protobuf and multiformats write it."""
    if value < 0:
        raise ValueError("uvarint cannot encode a negative number")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_uvarint(data: bytes | bytearray | memoryview, pos: int = 0) -> tuple[int, int] | None:
    """Decode one uvarint at ``pos``. Returns ``(value, next_pos)``, or None if more bytes are needed.

    Raises :class:`MalformedVarint` for a varint longer than :data:`MAX_VARINT_BYTES` or one that is
    not minimally encoded (a trailing ``0x00`` continuation byte).
    """
    value = 0
    shift = 0
    end = len(data)
    for i in range(MAX_VARINT_BYTES):
        if pos + i >= end:
            return None
        byte = data[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise MalformedVarint("uvarint is not minimally encoded")
            return value, pos + i + 1
        shift += 7
    raise MalformedVarint(f"uvarint longer than {MAX_VARINT_BYTES} bytes")


def encode_frame(payload: bytes | bytearray | memoryview) -> bytes:
    return encode_uvarint(len(payload)) + bytes(payload)


class FrameDecoder:
    """Incremental decoder for a stream of length-prefixed frames."""

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        if max_frame_size <= 0:
            raise ValueError("max_frame_size must be positive")
        self.max_frame_size = max_frame_size
        self._buf = bytearray()
        self._pos = 0
        self._need: int | None = None  # payload length of the frame being read
        self._eof = False
        self._error: FramingError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buf) - self._pos

    @property
    def frame_length(self) -> int | None:
        """The payload length of the frame being received, once its prefix is in; else None."""
        return self._need

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof:
            raise RuntimeError("receive_data after receive_eof")
        if self._pos and self._pos >= len(self._buf) // 2:
            del self._buf[: self._pos]  # compact, amortised O(1) per byte
            self._pos = 0
        self._buf += data

    def take_buffered(self) -> bytes:
        """Hand over bytes received past the last frame (for protocols that switch to raw bytes
        after a frame, as a streamed response payload does). Only valid between frames."""
        if self._need is not None:
            raise RuntimeError("take_buffered inside a frame")
        data = bytes(self._buf[self._pos :])
        self._buf.clear()
        self._pos = 0
        return data

    def receive_eof(self) -> None:
        self._eof = True

    def next_event(self) -> bytes | Sentinel:
        """The next complete frame's payload, :data:`NEED_DATA`, or :data:`EOF` (clean end)."""
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except FramingError as exc:
            self._error = exc
            raise

    def _next(self) -> bytes | Sentinel:
        if self._need is None:
            decoded = decode_uvarint(self._buf, self._pos)
            if decoded is None:
                if self._eof:
                    if self.buffered:
                        raise TruncatedFrame("stream ended inside a length prefix")
                    return EOF
                return NEED_DATA
            length, self._pos = decoded
            if length > self.max_frame_size:
                raise FrameTooLarge(length, self.max_frame_size)
            self._need = length
        if self.buffered < self._need:
            if self._eof:
                raise TruncatedFrame(
                    f"stream ended {self._need - self.buffered} bytes short of a {self._need}-byte frame"
                )
            return NEED_DATA
        start = self._pos
        self._pos += self._need
        self._need = None
        return bytes(self._buf[start : self._pos])
