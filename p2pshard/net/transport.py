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

import contextlib
import struct
from collections.abc import Callable
from typing import Any, Literal

import trio
from libp2p.abc import IMuxedStream, IRawConnection, ISecureConn
from libp2p.io.exceptions import ConnectionClosedError, IncompleteReadError
from libp2p.io.utils import read_exactly
from libp2p.peer.id import ID
from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH, NoiseTransportReadWriter
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.security.secure_session import SecureSession
from libp2p.stream_muxer.exceptions import MuxedStreamError
from libp2p.stream_muxer.mplex.mplex import Mplex
from libp2p.stream_muxer.yamux import yamux as _yamux
from libp2p.stream_muxer.yamux.yamux import Yamux

from p2pshard.core.resources import Direction, Refusal, Span
from p2pshard.net.limits import DEFAULT_LIMITS, MemoryHold, NetLimits

__all__ = [
    "YAMUX_FRAME_SIZE",
    "BufferedNoiseTransport",
    "TunedMplex",
    "TunedYamux",
    "YamuxViolation",
    "buffer_hold",
]

SOCKET_READ_SIZE = 256 * 1024
NOISE_LENGTH_BYTES = 2
YAMUX_FRAME_SIZE = 4 * MAX_PLAINTEXT_LENGTH  # header + payload fill four Noise messages exactly
SYN_FLOOD_WINDOW_S = 10.0
"""A connection whose remote side has more SYNs refused than its stream limit within this many
seconds is flooding: it is closed (``limits.refused.yamux_syn_flood``), not answered RST by RST."""


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

    tap: _HeaderTap | None = None
    """Set by the connection's yamux: sees what ``read`` returns (frame headers), not what
    ``read_exactly`` returns (frame bodies)."""

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
        data = await self._read(n)
        if self.tap is not None:
            self.tap.feed(data)
        return data

    async def _read(self, n: int | None) -> bytes:
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
                    piece = await self._read(n - got)
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
    """py-libp2p's Noise XX handshake, then :class:`BufferedSecureSession` for the connection.

    Each session it makes carries ``limits`` (its host's :class:`~p2pshard.net.limits.NetLimits`),
    which the connection's muxer reads."""

    def __init__(self, *args: Any, limits: NetLimits = DEFAULT_LIMITS, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits

    async def secure_inbound(self, conn: IRawConnection) -> ISecureConn:
        return self._tag(_buffered(await super().secure_inbound(conn)))

    async def secure_outbound(self, conn: IRawConnection, peer_id: ID) -> ISecureConn:
        return self._tag(_buffered(await super().secure_outbound(conn, peer_id)))

    def _tag(self, session: ISecureConn) -> ISecureConn:
        session.p2pshard_limits = self.limits  # type: ignore[attr-defined]
        return session


def _buffered(session: ISecureConn) -> ISecureConn:
    if type(session) is SecureSession and type(session.conn) is NoiseTransportReadWriter:
        return BufferedSecureSession(session, BufferedNoiseReadWriter(session.conn))
    return session


class YamuxViolation(Exception):
    """The remote side broke a yamux rule; the connection is closed."""


class StreamRefused(MuxedStreamError):
    """A stream could not be reserved with the resource manager (its reason is counted)."""


class _HeaderTap:
    """Sees what yamux's frame loop reads outside frame bodies: the frame headers, in order (frame
    bodies are read in ``_read_data_body``, not through here). Each complete 12-byte header is shown
    to ``check`` before yamux acts on it; ``check`` raising makes yamux's loop close the connection."""

    def __init__(self, check: Callable[[bytes], None]) -> None:
        self._check = check
        self._partial = b""

    def feed(self, data: bytes) -> None:
        if len(self._partial) + len(data) < _yamux.HEADER_SIZE:
            self._partial += data
            return
        header, self._partial = self._partial + data, b""
        if len(header) != _yamux.HEADER_SIZE:  # yamux asks for at most the rest of one header
            raise YamuxViolation("header read out of step")
        self._check(header)


class _TappedSession:
    """A session other than ours, with yamux's reads going through a :class:`_HeaderTap`."""

    def __init__(self, session: ISecureConn, tap: _HeaderTap) -> None:
        self._session = session
        self._tap = tap

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    async def read(self, n: int | None = None) -> bytes:
        data: bytes = await self._session.read(n)
        self._tap.feed(data)
        return data


class TunedYamux(Yamux):
    """py-libp2p's yamux reading each DATA frame body with one copy from a buffered session, and
    holding the remote side to the rules py-libp2p leaves unchecked:

    * a DATA frame longer than the stream's receive window (what we have credited the sender) is
      a protocol violation: the connection is closed, ``limits.refused.yamux_window`` counted and
      the peer reported (py-libp2p buffers such data without limit: 512 MiB sent past the window
      added 511 MB of resident memory);
    * every stream, opened by either side, is reserved with the resource manager, with its initial
      receive window's memory, against the connection (256 streams each way), the peer and the
      system; a SYN refused is answered with a reset and counted as ``limits.refused.yamux_streams``
      and under the refusal's reason (e.g. ``streams_inbound.conn``); a stream of ours refused
      fails to open (:class:`StreamRefused`);
    * a remote side that keeps opening streams past its limit (more SYNs refused than the limit,
      256, within :data:`SYN_FLOOD_WINDOW_S`) is flooding: the connection is closed as for a window
      violation (``limits.refused.yamux_syn_flood``, and the peer reported), so a flood costs one
      close instead of a reset per SYN;
    * a receive window grows beyond 256 KiB (py-libp2p's auto-tuning, up to 16 MiB) only once the
      growth is reserved against the stream, connection, peer and system
      (:meth:`p2pshard_grow_window`, called by the patched ``YamuxStream._apply_autotune_epoch``);
      refused, the window stays as it is (``limits.refused.buffer.yamux_window``).

    So a connection buffers at most the reserved sum of its streams' windows. A stream's
    reservation is released when it is reset, or closed both ways with nothing left to read (the
    unread data of a stream the remote side opened is dropped then: our handlers do not read after
    closing).
    """

    def __init__(self, secured_conn: ISecureConn, peer_id: ID, *args: Any, **kwargs: Any) -> None:
        self.limits: NetLimits = getattr(secured_conn, "p2pshard_limits", DEFAULT_LIMITS)
        self._session = secured_conn
        self._refused: set[int] = set()
        self._refused_recent = 0  # SYNs refused since _refused_since
        self._refused_since = 0.0
        self._stream_spans: dict[int, Span] = {}  # streams, as reserved
        self.peak_stream_buffer = 0
        """The most bytes one stream of this connection was allowed to have buffered (for tests)."""
        self.peak_inbound_streams = 0
        """The most streams the remote side held open at once on this connection."""
        tap = _HeaderTap(self._check_header)
        if isinstance(secured_conn, BufferedSecureSession):
            secured_conn.tap = tap
        else:
            secured_conn = _TappedSession(secured_conn, tap)  # type: ignore[assignment]
        super().__init__(secured_conn, peer_id, *args, **kwargs)

    def _check_header(self, header: bytes) -> None:
        _, typ, flags, sid, length = struct.unpack(_yamux.YAMUX_HEADER_FORMAT, header)
        stream = self.streams.get(sid)
        opening = bool(flags & _yamux.FLAG_SYN) and stream is None
        if typ == _yamux.TYPE_DATA and length:
            if opening:
                window, buffered = _yamux.DEFAULT_WINDOW_SIZE, 0
            elif stream is not None:
                window, buffered = stream.recv_window, len(self.stream_buffers.get(sid, b""))
            else:  # a stream already gone: yamux reads the frame and drops it
                return
            if length > window:
                self.limits.violation(self.peer_id, "yamux_window")
                raise YamuxViolation(f"stream {sid}: {length} bytes sent against a window of {window}")
            self.peak_stream_buffer = max(self.peak_stream_buffer, buffered + length)
        if opening and typ in (_yamux.TYPE_DATA, _yamux.TYPE_WINDOW_UPDATE):
            self._admit_stream(sid)

    def _reserve_stream(self, direction: Direction) -> Span | None:
        """A stream's reservation (its count and its initial window's memory) against the
        connection, the peer and the system; None while the swarm has not reserved the connection
        yet. Raises :class:`StreamRefused` (counted) when a limit refuses it."""
        conn_span: Span | None = getattr(self, "p2pshard_span", None)
        if conn_span is None:
            return None
        span = self.limits.resources.open_stream(conn_span, direction, str(self.peer_id))
        if isinstance(span, Refusal) and self._release_finished_streams():  # then try once more
            span = self.limits.resources.open_stream(conn_span, direction, str(self.peer_id))
        if isinstance(span, Refusal):
            self.limits.refused(span.reason)
            raise StreamRefused(str(span))
        if not MemoryHold(self.limits, span, "yamux_window").grow(_yamux.DEFAULT_WINDOW_SIZE):
            span.close()
            raise StreamRefused(f"no memory for a {direction} stream's receive window")
        return span

    def _admit_stream(self, sid: int) -> None:
        """Reserve a stream the remote side opens, or mark it to be reset when accepted."""
        try:
            span = self._reserve_stream("inbound")
        except StreamRefused:
            self._refuse_syn(sid)
            return
        inbound = sum(1 for s in self.streams.values() if not s.is_initiator)
        if span is None:  # not yet reserved by the swarm's notifee: a plain count
            if inbound >= self.limits.yamux.max_inbound_streams:
                self._refuse_syn(sid)
                return
        else:
            self._stream_spans[sid] = span
        self.peak_inbound_streams = max(self.peak_inbound_streams, inbound + 1)

    def _refuse_syn(self, sid: int) -> None:
        """Mark ``sid`` to be reset when accepted; close the connection if the remote side floods."""
        self._refused.add(sid)
        now = trio.current_time()
        if now - self._refused_since > SYN_FLOOD_WINDOW_S:
            self._refused_since, self._refused_recent = now, 0
        self._refused_recent += 1
        if self._refused_recent > self.limits.yamux.max_inbound_streams:
            self.limits.violation(self.peer_id, "yamux_syn_flood")
            raise YamuxViolation(f"{self._refused_recent} streams refused in {SYN_FLOOD_WINDOW_S:g}s")

    async def open_stream(self) -> _yamux.YamuxStream:
        """A stream of ours, reserved like the remote side's (:class:`StreamRefused` if refused)."""
        span = self._reserve_stream("outbound")
        try:
            stream = await super().open_stream()
        except BaseException:
            if span is not None:
                span.close()
            raise
        if span is not None:
            self._stream_spans[stream.stream_id] = span
        return stream

    def p2pshard_grow_window(self, stream: _yamux.YamuxStream, n: int) -> bool:
        """Reserve ``n`` more bytes of ``stream``'s receive window, or refuse (counted): asked by
        ``YamuxStream._apply_autotune_epoch`` (:mod:`p2pshard.net.patches`) before it grows the
        window. A stream not reserved (its connection not yet known) keeps its initial window."""
        span = self._stream_spans.get(stream.stream_id)
        return span is not None and MemoryHold(self.limits, span, "yamux_window").grow(n)

    def _finalize_stream_locked(self, stream: _yamux.YamuxStream, *, fully_closed: bool) -> None:
        super()._finalize_stream_locked(stream, fully_closed=fully_closed)
        if fully_closed:
            self._release_stream(stream.stream_id)

    def _release_stream(self, sid: int) -> None:
        """Release ``sid``'s reservation if the stream is gone, reset, or closed both ways with
        nothing left to read; the data of a reset stream, or of a closed one the remote side
        opened, is dropped (nothing will read it)."""
        span = self._stream_spans.get(sid)
        if span is None:
            return
        stream = self.streams.get(sid)
        buffer = self.stream_buffers.get(sid)
        if stream is not None:
            if not (stream.reset_received or stream.closed):
                return
            if buffer and (stream.reset_received or not stream.is_initiator):
                buffer.clear()
            elif buffer:
                return  # ours, closed both ways, the answer still to be read
        del self._stream_spans[sid]
        span.close()

    def _release_finished_streams(self) -> int:
        """Release the reservations of streams that are gone or done (see :meth:`_release_stream`).

        py-libp2p keeps a closed stream whose buffer still holds data for 60 s (so that it can be
        read), and a stream the peer reset that way too, although nothing can read it any more: a
        peer that sends a request, is refused unread and resets its stream would otherwise hold a
        slot for a minute. Returns how many were released."""
        held = len(self._stream_spans)
        for sid in list(self._stream_spans):
            self._release_stream(sid)
        return held - len(self._stream_spans)

    def _release_streams(self) -> None:
        for span in self._stream_spans.values():
            span.close()
        self._stream_spans.clear()

    async def close(self, error_code: int = _yamux.GO_AWAY_NORMAL) -> None:
        try:
            await super().close(error_code)
        finally:
            self._release_streams()

    async def _cleanup_on_error(self) -> None:
        try:
            await super()._cleanup_on_error()
        finally:
            self._release_streams()

    async def accept_stream(self) -> IMuxedStream:
        """The next stream the remote side opened, resetting those refused at their SYN."""
        while True:
            stream = await super().accept_stream()
            sid = getattr(stream, "stream_id", None)
            if sid not in self._refused:
                return stream
            self._refused.discard(sid)
            self.limits.refused("yamux_streams")
            buffer = self.stream_buffers.get(sid)
            if buffer is not None:
                buffer.clear()  # its SYN data: nobody will read it
            with contextlib.suppress(Exception):  # the connection may be closing under us
                await stream.reset()

    async def _read_data_body(self, length: int) -> bytes:
        conn = self._session
        with trio.fail_after(_yamux._yamux_data_read_timeout()):
            if not isinstance(conn, BufferedSecureSession):
                return await read_exactly(conn, length)
            # yamux only measures and appends the body, so the bytearray needs no copy into bytes
            body: bytes = await conn.read_exactly(length)  # type: ignore[assignment]
            return body


class TunedMplex(Mplex):
    """py-libp2p's mplex (the fallback muxer) with the streams the remote side holds open on one
    connection bounded by ``limits.yamux.max_inbound_streams``: a stream beyond is reset and counted
    as ``limits.refused.mplex_streams``. (mplex has no flow control; py-libp2p reads each stream's
    messages through a one-slot channel, so a stream that is not read stalls the connection instead
    of growing a buffer.)"""

    def __init__(self, secured_conn: ISecureConn, peer_id: ID, *args: Any, **kwargs: Any) -> None:
        self.limits: NetLimits = getattr(secured_conn, "p2pshard_limits", DEFAULT_LIMITS)
        self.peak_inbound_streams = 0
        super().__init__(secured_conn, peer_id, *args, **kwargs)

    async def accept_stream(self) -> IMuxedStream:
        while True:
            stream = await super().accept_stream()
            inbound = sum(1 for sid in self.streams if not sid.is_initiator)
            if inbound <= self.limits.yamux.max_inbound_streams:
                self.peak_inbound_streams = max(self.peak_inbound_streams, inbound)
                return stream
            self.limits.refused("mplex_streams")
            with contextlib.suppress(Exception):  # the connection may be closing under us
                await stream.reset()


def buffer_hold(stream: Any, buffer: str, *, per: Literal["stream", "conn"] = "stream") -> MemoryHold:
    """A :class:`~p2pshard.net.limits.MemoryHold` for a buffer that the remote side of ``stream``
    (a py-libp2p ``INetStream``) fills, charged to the stream (``per="stream"``: its connection,
    peer and the system above it) or to its connection (``per="conn"``, for a buffer that outlives
    one stream, such as a gossip peer's queue). A stream of a connection the resource manager has
    not reserved (or not of our muxers) is charged to the system."""
    muxed_stream = getattr(stream, "muxed_stream", stream)
    conn = getattr(stream, "muxed_conn", None) or getattr(muxed_stream, "conn", None)
    limits: NetLimits = getattr(conn, "limits", DEFAULT_LIMITS)
    span: Span | None = getattr(conn, "p2pshard_span", None)
    if per == "stream" and isinstance(conn, TunedYamux):
        span = conn._stream_spans.get(getattr(muxed_stream, "stream_id", -1), span)
    return MemoryHold(limits, span, buffer)
