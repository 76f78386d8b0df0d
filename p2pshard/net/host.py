"""The py-libp2p host as p2pshard uses it: TCP + Noise + yamux (mplex as fallback), secp256k1 identity.

py-libp2p is used for connections and raw streams only. Its defects are handled here:

* ``Swarm.dial_peer`` waits a fixed 250 ms "happy eyeballs" head start after starting each address's
  dial, unless the dial reaches ``max_connections_per_peer``; with the default of 3 every connect
  takes ≥ 250 ms although the handshake needs ~30 ms. We run with one connection per peer (all
  streams are multiplexed over it anyway), so a successful dial cancels the wait at once.
* Its ``new_host`` offers Noise, TLS, secio and plaintext unless told otherwise; we offer Noise only.
* Its auto-connector dials peers from the peerstore until it holds 100 connections (its low
  watermark). Our discovery decides whom to connect to (up to ``max_peers``), so the
  auto-connector's watermarks are set to 0; the pruner still trims above ``4 * max_peers``.
  (Its auto-connector still aims at half its high watermark, so it dials up to ``2 * max_peers``
  peers from the peerstore; and its inbound slots, ``4 * max_peers``, cap inbound connections
  below the resource manager's limit when that is higher.)
* Its Noise and yamux read and write paths held one stream to ~250 MiB/s; the host uses the
  tuned session and muxer of :mod:`p2pshard.net.transport` (same wire format, ~3x the throughput).
* Everything that changes py-libp2p's own code is in :mod:`p2pshard.net.patches`, applied here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import multiaddr
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.stream_muxer.mplex.mplex import MPLEX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID

from p2pshard.identity import Identity
from p2pshard.net import patches
from p2pshard.net.limits import NetLimits
from p2pshard.net.transport import BufferedNoiseTransport, TunedMplex, TunedYamux

Muxer = Literal["yamux", "mplex"]


class AddressError(ValueError):
    """A multiaddr that cannot be used here (malformed, or without the parts we need)."""


def build_host(
    identity: Identity,
    listen: Sequence[multiaddr.Multiaddr],
    muxers: Sequence[Muxer] = ("yamux", "mplex"),
    dial_timeout: float = 10.0,
    max_peers: int = 50,
    limits: NetLimits | None = None,
) -> IHost:
    """A host with our identity, Noise only, and the muxers in order of preference; its
    connections hold remote peers to ``limits`` (see :mod:`p2pshard.net.limits`)."""
    available = {
        "yamux": (TProtocol(YAMUX_PROTOCOL_ID), TunedYamux),
        "mplex": (TProtocol(MPLEX_PROTOCOL_ID), TunedMplex),
    }
    muxer_opt: dict[TProtocol, Any] = dict(available[m] for m in muxers)
    noise_static = new_x25519_key_pair().private_key
    limits = limits if limits is not None else NetLimits()
    noise = BufferedNoiseTransport(identity.key_pair, noise_static, limits=limits)
    sec_opt = {TProtocol(NOISE_PROTOCOL_ID): noise}
    patches.apply()
    ceiling = max(4 * max_peers, 16)
    config = ConnectionConfig(
        max_connections_per_peer=1,
        dial_timeout=dial_timeout,
        min_connections=0,
        low_watermark=0,
        high_watermark=ceiling,
        max_connections=ceiling,
    )
    host = new_host(
        key_pair=identity.key_pair,
        muxer_opt=muxer_opt,
        sec_opt=sec_opt,
        listen_addrs=list(listen),
        connection_config=config,
    )
    patches.protect_connected_peers(host)
    network = host.get_network()
    network.p2pshard_handshake_gate = limits  # type: ignore[attr-defined]
    network.p2pshard_limits = limits  # type: ignore[attr-defined]
    network.register_notifee(limits.notifee())
    return host


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
