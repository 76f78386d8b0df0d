"""The py-libp2p host as p2pshard uses it: TCP + Noise + yamux (mplex as fallback), secp256k1 identity.

py-libp2p is used for connections and raw streams only. Two of its defects are handled here:

* ``Swarm.dial_peer`` waits a fixed 250 ms "happy eyeballs" head start after starting each address's
  dial, unless the dial reaches ``max_connections_per_peer``; with the default of 3 every connect
  takes ≥ 250 ms although the handshake needs ~30 ms. We run with one connection per peer (all
  streams are multiplexed over it anyway), so a successful dial cancels the wait at once.
* Its ``new_host`` offers Noise, TLS, secio and plaintext unless told otherwise; we offer Noise only.
* Its auto-connector dials peers from the peerstore until it holds 100 connections (its low
  watermark). Our discovery decides whom to connect to (up to ``max_peers``), so the
  auto-connector's watermarks are set to 0; the pruner still trims above ``4 * max_peers``.
* Its Noise reader makes two socket reads per Noise message (a 2-byte length, then the body) and
  its writer one socket write per message; its yamux cuts data into 64 KiB frames, each of which
  becomes two Noise messages (65,536 + 12 bytes of header > 65,519 bytes of Noise plaintext).
  Together these held one stream to ~250 MiB/s. ``BufferedNoiseReadWriter`` reads the socket in
  256 KiB chunks and writes all of a frame's Noise messages in one call, and yamux frames are
  sized to fill exactly four Noise messages: ~700 MiB/s on the same loopback (FACTS.md has the
  stock figures; ``benchmarks/streams.py`` measures both). Peers see only valid Noise messages
  and yamux frames no larger than their receive window, which go-yamux and js yamux accept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import multiaddr
from libp2p import new_host
from libp2p.abc import IHost, IRawConnection, ISecureConn
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH, NoiseTransportReadWriter
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.security.secure_session import SecureSession
from libp2p.stream_muxer.mplex.mplex import MPLEX_PROTOCOL_ID, Mplex
from libp2p.stream_muxer.yamux import yamux as _yamux
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from p2pshard.identity import Identity

Muxer = Literal["yamux", "mplex"]

SOCKET_READ_SIZE = 256 * 1024
NOISE_LENGTH_BYTES = 2
YAMUX_FRAME_SIZE = 4 * MAX_PLAINTEXT_LENGTH  # header + payload fill four Noise messages exactly


class BufferedNoiseReadWriter(NoiseTransportReadWriter):
    """Noise transport messages over a socket read in large chunks and written once per call.

    Same wire format and nonce sequence as py-libp2p's reader/writer; only the number of socket
    calls changes. The read buffer holds at most one socket read plus one partial message.
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
        view = memoryview(msg)
        for start in range(0, max(len(msg), 1), MAX_PLAINTEXT_LENGTH):
            sealed = self._cipher_out.encrypt_with_ad(None, bytes(view[start : start + MAX_PLAINTEXT_LENGTH]))
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
                end = (
                    start
                    + NOISE_LENGTH_BYTES
                    + int.from_bytes(buffer[start : start + NOISE_LENGTH_BYTES], "big")
                )
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


class BufferedNoiseTransport(NoiseTransport):
    """py-libp2p's Noise XX handshake, then ``BufferedNoiseReadWriter`` for the session."""

    async def secure_inbound(self, conn: IRawConnection) -> ISecureConn:
        return _buffered(await super().secure_inbound(conn))

    async def secure_outbound(self, conn: IRawConnection, peer_id: ID) -> ISecureConn:
        return _buffered(await super().secure_outbound(conn, peer_id))


def _buffered(session: ISecureConn) -> ISecureConn:
    if isinstance(session, SecureSession) and type(session.conn) is NoiseTransportReadWriter:
        session.conn = BufferedNoiseReadWriter(session.conn)
    return session


class AddressError(ValueError):
    """A multiaddr that cannot be used here (malformed, or without the parts we need)."""


def build_host(
    identity: Identity,
    listen: Sequence[multiaddr.Multiaddr],
    muxers: Sequence[Muxer] = ("yamux", "mplex"),
    dial_timeout: float = 10.0,
    max_peers: int = 50,
) -> IHost:
    """A host with our identity, Noise only, and the muxers in order of preference."""
    available = {
        "yamux": (TProtocol(YAMUX_PROTOCOL_ID), Yamux),
        "mplex": (TProtocol(MPLEX_PROTOCOL_ID), Mplex),
    }
    muxer_opt: dict[TProtocol, Any] = dict(available[m] for m in muxers)
    noise_static = new_x25519_key_pair().private_key
    sec_opt = {TProtocol(NOISE_PROTOCOL_ID): BufferedNoiseTransport(identity.key_pair, noise_static)}
    _yamux.MAX_MESSAGE_SIZE = YAMUX_FRAME_SIZE  # read by YamuxStream.write for each frame
    ceiling = max(4 * max_peers, 16)
    config = ConnectionConfig(
        max_connections_per_peer=1,
        dial_timeout=dial_timeout,
        min_connections=0,
        low_watermark=0,
        high_watermark=ceiling,
        max_connections=ceiling,
    )
    return new_host(
        key_pair=identity.key_pair,
        muxer_opt=muxer_opt,
        sec_opt=sec_opt,
        listen_addrs=list(listen),
        connection_config=config,
    )


def parse_multiaddr(text: str) -> multiaddr.Multiaddr:
    try:
        return multiaddr.Multiaddr(text)
    except Exception as exc:
        raise AddressError(f"not a multiaddr: {text!r} ({exc})") from exc


def parse_peer_addr(text: str) -> PeerInfo:
    """``/ip4/…/tcp/…/p2p/<peer id>`` → PeerInfo, with an error that says what is missing."""
    addr = parse_multiaddr(text)
    if "p2p" not in {p.name for p in addr.protocols()}:
        raise AddressError(f"{text!r} has no /p2p/<peer id> part; copy the full address a node prints")
    try:
        return info_from_p2p_addr(addr)
    except Exception as exc:
        raise AddressError(f"bad peer address {text!r}: {exc}") from exc


def full_addrs(host: IHost) -> list[str]:
    """Every listen address of ``host`` with ``/p2p/<peer id>`` appended."""
    pid = host.get_id().to_base58()
    out = []
    for addr in host.get_addrs():
        text = str(addr)
        out.append(text if "/p2p/" in text else f"{text}/p2p/{pid}")
    return out


def peer_id_from_text(text: str) -> ID:
    try:
        return ID.from_base58(text)
    except Exception as exc:
        raise AddressError(f"not a peer id: {text!r}") from exc
