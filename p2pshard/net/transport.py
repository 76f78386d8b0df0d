"""py-libp2p's Noise session and yamux muxer with faster read and write paths; same wire format.

Measured on py-libp2p 0.8.1 (one stream, two processes, loopback): ~250 MiB/s, because

* its Noise reader makes two socket reads per Noise message (a 2-byte length, then the body) and its
  writer one socket write per message;
* its session copies every decrypted message through a ``BytesIO`` and its yamux reads a frame body
  with ``read_exactly``, which copies it twice more;
* its yamux cuts data into 64 KiB frames, and each becomes two Noise messages (65,536 + 12 bytes of
  header > 65,519 bytes of Noise plaintext).

Here the socket is read in 256 KiB chunks and a frame's Noise messages are written in one call;
decrypted messages are handed on without copies where they line up with what the muxer asks for;
yamux frames are sized to fill exactly four Noise messages; and the receiver credits the sender
in large steps, so that frames stay large. Peers see valid Noise messages and
yamux frames no larger than their receive window, which go-yamux and js yamux accept (the interop
tests send multi-frame payloads both ways). ``benchmarks/streams.py`` measures the result.

These classes reach into py-libp2p internals (``SecureSession``'s fields, ``Yamux._read_data_body``);
the module constant ``MAX_MESSAGE_SIZE`` and the name ``Yamux`` in ``muxer_multistream`` are set by
:mod:`p2pshard.net.patches`, whose version guard keeps them valid; ``tests/net/test_transport.py``
checks that a connection really runs on them.
"""

from __future__ import annotations

import trio
from libp2p.abc import IRawConnection, ISecureConn
from libp2p.io.exceptions import ConnectionClosedError, IncompleteReadError
from libp2p.peer.id import ID
from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH, NoiseTransportReadWriter
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.security.secure_session import SecureSession
from libp2p.stream_muxer.yamux import yamux as _yamux
from libp2p.stream_muxer.yamux.yamux import Yamux

__all__ = ["YAMUX_FRAME_SIZE", "BufferedNoiseTransport", "TunedYamux"]

SOCKET_READ_SIZE = 256 * 1024
NOISE_LENGTH_BYTES = 2
YAMUX_FRAME_SIZE = 4 * MAX_PLAINTEXT_LENGTH  # header + payload fill four Noise messages exactly


class BufferedNoiseReadWriter(NoiseTransportReadWriter):
    """Noise transport messages over a socket read in large chunks and written once per call.

    Same wire format and nonce sequence as py-libp2p's reader/writer; only the number of socket
    calls and copies changes. The read buffer holds at most one socket read plus one partial message.
    """

    def __init__(self, plain: NoiseTransportReadWriter) -> None:
        super().__init__(plain.read_writer.read_write_closer, plain.noise_state)  # type: ignore[arg-type]
        self._raw = plain.read_writer.read_write_closer
        self._cipher_out = plain.noise_state.noise_protocol.cipher_state_encrypt
        self._cipher_in = plain.noise_state.noise_protocol.cipher_state_decrypt
        self._buffer = bytearray()
        self._start = 0  # messages before this offset of _buffer have been returned

    async def write_msg(self, msg: bytes, prefix_encoded: bool = False) -> None:
        if prefix_encoded:  # only the handshake uses the prefix, and it has its own writer
            await super().write_msg(msg, prefix_encoded)
            return
        parts: list[bytes] = []
        with memoryview(msg) as view:
            for start in range(0, max(len(msg), 1), MAX_PLAINTEXT_LENGTH):
                sealed = self._cipher_out.encrypt_with_ad(None, view[start : start + MAX_PLAINTEXT_LENGTH])
                parts.append(len(sealed).to_bytes(NOISE_LENGTH_BYTES, "big"))
                parts.append(sealed)
        await self._raw.write(b"".join(parts))

    async def read_msg(self, prefix_encoded: bool = False) -> bytes:
        if prefix_encoded:
            return await super().read_msg(prefix_encoded)
        buffer = self._buffer
        while True:
            start = self._start
            if len(buffer) - start >= NOISE_LENGTH_BYTES:
                length = int.from_bytes(buffer[start : start + NOISE_LENGTH_BYTES], "big")
                end = start + NOISE_LENGTH_BYTES + length
                if len(buffer) >= end:
                    with memoryview(buffer) as view:
                        plain = self._cipher_in.decrypt_with_ad(None, view[start + NOISE_LENGTH_BYTES : end])
                    self._start = end
                    return bytes(plain)
            # Drop what has been consumed before reading more: at most one partial message moves.
            del buffer[:start]
            self._start = 0
            chunk = await self._raw.read(SOCKET_READ_SIZE)
            if not chunk:
                return b""  # what the stock reader's callers take for a closed connection
            buffer += chunk


class BufferedSecureSession(SecureSession):
    """A Noise session that hands decrypted messages on whole when they fit the read, and keeps the
    unread tail of one message (not a ``BytesIO`` copy of it)."""

    def __init__(self, stock: SecureSession, conn: BufferedNoiseReadWriter) -> None:
        super().__init__(
            local_peer=stock.local_peer,
            local_private_key=stock.local_private_key,
            remote_peer=stock.remote_peer,
            remote_permanent_pubkey=stock.remote_permanent_pubkey,
            is_initiator=stock.is_initiator,
            conn=conn,
        )
        self._tail = b""  # the part of the last message not yet read, from _tail_at on
        self._tail_at = 0

    async def read(self, n: int | None = None) -> bytes:
        """Up to ``n`` bytes (all that one message holds when ``n`` is None); b"" never means EOF."""
        if n == 0:
            return b""
        if self._tail_at < len(self._tail):
            end = len(self._tail) if n is None else min(len(self._tail), self._tail_at + n)
            with memoryview(self._tail) as view:
                piece = bytes(view[self._tail_at : end])
            self._tail_at = end
            return piece
        msg = await self.conn.read_msg()
        if not msg:
            raise ConnectionClosedError("Connection closed")
        if n is None or len(msg) <= n:
            return msg
        self._tail, self._tail_at = msg, n
        return msg[:n]

    async def read_exactly(self, n: int) -> bytearray:
        """Exactly ``n`` bytes, assembled with one copy; IncompleteReadError if the connection ends."""
        out = bytearray(n)
        got = 0
        with memoryview(out) as view:
            while got < n:
                try:
                    piece = await self.read(n - got)
                except ConnectionClosedError as exc:
                    raise IncompleteReadError(
                        f"Connection closed during read operation: expected {n} bytes but received {got}",
                        expected_bytes=n,
                        received_bytes=got,
                    ) from exc
                view[got : got + len(piece)] = piece
                got += len(piece)
        return out


class BufferedNoiseTransport(NoiseTransport):
    """py-libp2p's Noise XX handshake, then :class:`BufferedSecureSession` for the connection."""

    async def secure_inbound(self, conn: IRawConnection) -> ISecureConn:
        return _buffered(await super().secure_inbound(conn))

    async def secure_outbound(self, conn: IRawConnection, peer_id: ID) -> ISecureConn:
        return _buffered(await super().secure_outbound(conn, peer_id))


def _buffered(session: ISecureConn) -> ISecureConn:
    if type(session) is SecureSession and type(session.conn) is NoiseTransportReadWriter:
        return BufferedSecureSession(session, BufferedNoiseReadWriter(session.conn))
    return session


class TunedYamux(Yamux):
    """py-libp2p's yamux reading each DATA frame body with one copy from a buffered session."""

    async def _read_data_body(self, length: int) -> bytes:
        conn = self.secured_conn
        if not isinstance(conn, BufferedSecureSession):
            return await super()._read_data_body(length)
        with trio.fail_after(_yamux._yamux_data_read_timeout()):
            # yamux only measures and appends the body, so the bytearray needs no copy into bytes
            body: bytes = await conn.read_exactly(length)  # type: ignore[assignment]
            return body
