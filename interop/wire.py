"""Small wire helpers shared by the interop peers: uvarint frames, CIDs, multiaddr bytes.

The echo protocol (`/p2pshard/interop/echo/1.0.0`) is one uvarint-length-prefixed frame each way on a
fresh stream — the same framing as p2pshard's request/response protocols and the p2pd control socket.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Protocol

import trio

ECHO_PROTOCOL = "/p2pshard/interop/echo/1.0.0"
MAX_FRAME = 4 * 1024 * 1024
MAX_UVARINT_BYTES = 10


class FrameError(ValueError):
    """A peer sent a malformed or oversized frame."""


class ByteReader(Protocol):
    """Anything that hands out ``read(n)`` chunks; a py-libp2p stream or our trio adapter."""

    async def read(self, n: int) -> bytes: ...


def encode_uvarint(value: int) -> bytes:
    if value < 0:
        raise ValueError("uvarint cannot be negative")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def frame(payload: bytes) -> bytes:
    return encode_uvarint(len(payload)) + payload


class BufferedReader:
    """Exact reads over something that returns arbitrary chunks (py-libp2p ``read``, trio streams)."""

    def __init__(self, read_some: ByteReader | trio.abc.ReceiveStream) -> None:
        self._src = read_some
        self._buf = bytearray()

    async def _more(self) -> None:
        if isinstance(self._src, trio.abc.ReceiveStream):
            chunk = await self._src.receive_some(65536)
        else:
            chunk = await self._src.read(65536)
        if not chunk:
            raise EOFError("stream ended")
        self._buf += chunk

    async def read_exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            await self._more()
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    async def read_uvarint(self) -> int:
        value = 0
        for i in range(MAX_UVARINT_BYTES):
            (byte,) = await self.read_exactly(1)
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                return value
        raise FrameError("uvarint longer than 10 bytes")

    async def read_frame(self, max_size: int = MAX_FRAME) -> bytes:
        size = await self.read_uvarint()
        if size > max_size:
            raise FrameError(f"frame of {size} bytes exceeds the limit of {max_size}")
        return await self.read_exactly(size)


def raw_sha256_cid(data: bytes) -> bytes:
    """CIDv1, codec raw (0x55), multihash sha2-256 of ``data`` — binary form."""
    return b"\x01\x55\x12\x20" + hashlib.sha256(data).digest()


def cid_to_text(cid: bytes) -> str:
    """Multibase base32 (lower case, no padding), the form go and js print for CIDv1."""
    return "b" + base64.b32encode(cid).decode("ascii").lower().rstrip("=")


def cid_multihash(cid: bytes) -> bytes:
    """The multihash inside a CIDv1 with one-byte version and codec (the DHT provider key)."""
    if len(cid) < 3 or cid[0] != 0x01:
        raise ValueError("not a CIDv1 with one-byte codec")
    return cid[2:]


def unix_multiaddr_bytes(path: str) -> bytes:
    """Binary multiaddr ``/unix/<path>`` as go-multiaddr encodes it (absolute path, leading slash kept).

    py-multiaddr 0.2.0 drops the leading slash when encoding, so we build the bytes by hand:
    protocol code 400 as uvarint, then the length-prefixed path.
    """
    if not path.startswith("/"):
        raise ValueError("unix socket path must be absolute")
    raw = path.encode()
    return encode_uvarint(400) + encode_uvarint(len(raw)) + raw
