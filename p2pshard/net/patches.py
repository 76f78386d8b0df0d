"""Every change p2pshard makes to py-libp2p's own code, in one place, applied once by :func:`apply`.

Each patch reaches into internals of one py-libp2p release, so :func:`apply` first checks that the
installed release is that one (:data:`EXPECTED_VERSION`) and refuses to start otherwise: a patch
that silently stops matching the code it replaces is worse than a loud error. Each patch has a test
in ``tests/net/test_patches.py``.

The patches:

* **yamux frame size** (:func:`_tune_yamux_frames`): outgoing DATA frames fill four Noise messages
  and the receiver credits the sender once half its window is consumed (see
  :mod:`p2pshard.net.transport`).
* **yamux class** (:func:`_use_tuned_yamux`): ``MuxerMultistream.new_conn`` builds yamux
  connections as ``Yamux(...)`` by name, whatever class the host registered; the name is pointed at
  :class:`~p2pshard.net.transport.TunedYamux`, which also enforces the receive window and bounds
  the streams of a connection.
* **yamux window growth** (:func:`_reserve_window_growth`): ``YamuxStream._apply_autotune_epoch``
  doubles a stream's receive window (up to 16 MiB) whenever a window update follows the last one
  within 4 RTTs, however little was read: a stream that read a few protocol-negotiation messages
  had a multi-MiB window. The replacement doubles it only when half the window was read since the
  last update (go-yamux's rule: the reader keeps up with a sender that fills the window), and only
  once the connection (``p2pshard_grow_window``, :class:`~p2pshard.net.transport.TunedYamux`) has
  reserved the growth with the resource manager; refused, the window stays as it is.
* **listen backlog** (:func:`_deepen_listen_backlog`): py-libp2p's TCP listener calls
  ``listen(128)``; a burst of connections (1,000 half-open ones, a Sybil swarm's retries) fills
  that queue and the kernel drops honest clients' SYNs, which they resend only after 1 s (then
  3 s). Its listening sockets get a backlog of :data:`LISTEN_BACKLOG` (the kernel caps it at
  ``net.core.somaxconn``).
* **inbound slots** (:func:`_release_inbound_slot_on_close`): ``Swarm._handle_inbound_connection``
  holds one slot of ``Swarm._inbound_limiter`` per inbound connection, but its inner handler waits
  on ``manager.wait_finished()`` (the swarm's end) after the upgrade, so a slot came back only when
  the node stopped: the 201st inbound connection of a node's life was refused. The replacement holds
  the slot while the connection is open and returns it when the connection closes; handshakes in
  progress are bounded separately, by the swarm's ``p2pshard_handshake_gate`` when one is attached
  (:mod:`p2pshard.net.limits`).
* **negotiation failures** (:func:`count_failed_negotiations`, per host): py-libp2p answers "na" to
  an unknown protocol and resets the stream inside its multiselect, where no handler of ours sees it.
* **stream handler errors** (:func:`_contain_stream_handler_errors`): an exception from a stream
  handler (py-libp2p's own identify included) went up through the connection's task into the
  swarm and ended the node. It is now logged and counted, the stream reset, the node kept.
* **peerstore eviction** (:func:`_keep_own_and_connected_peers`, :func:`protect_connected_peers`):
  above 1,000 peers the peerstore evicts entries without addresses first, and our own entry (our
  keys) has none: identify then failed on ``host.get_public_key()`` for every later connection,
  and that exception ended the node after about 1,000 distinct peers. Our own entry and the peers
  we are connected to are never evicted.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

log = logging.getLogger(__name__)

EXPECTED_VERSION = "0.8.1"
"""The py-libp2p release these patches were written against (the pin in pyproject.toml)."""


class Libp2pVersionError(RuntimeError):
    """The installed py-libp2p is not the release the patches were written for."""


def installed_version() -> str:
    import libp2p

    version = getattr(libp2p, "__version__", None)
    return str(version) if version else importlib.metadata.version("libp2p")


def check_version(found: str | None = None) -> None:
    """Raise :class:`Libp2pVersionError` unless py-libp2p ``found`` (default: installed) is expected."""
    found = installed_version() if found is None else found
    if found != EXPECTED_VERSION:
        raise Libp2pVersionError(
            f"p2pshard patches py-libp2p {EXPECTED_VERSION} internals, but py-libp2p {found} is "
            f"installed; install libp2p=={EXPECTED_VERSION} (or port p2pshard/net/patches.py)"
        )


_applied = False


def apply() -> None:
    """Check the py-libp2p version and apply every patch (idempotent)."""
    global _applied
    if _applied:
        return
    check_version()
    _tune_yamux_frames()
    _use_tuned_yamux()
    _reserve_window_growth()
    _deepen_listen_backlog()
    _release_inbound_slot_on_close()
    _contain_stream_handler_errors()
    _keep_own_and_connected_peers()
    _applied = True


# -- yamux ---------------------------------------------------------------------------------------


def _tune_yamux_frames() -> None:
    """``YamuxStream.write`` reads the module constant ``MAX_MESSAGE_SIZE`` for every frame; nothing
    else uses it for limits. py-libp2p's knob ``PY_YAMUX_RELEASE_ON_READ`` (default on) credits the
    sender after every read, however small, which has the sender cut small frames; a value the user
    set is kept."""
    from libp2p.stream_muxer.yamux import yamux as _yamux

    from p2pshard.net.transport import YAMUX_FRAME_SIZE

    _yamux.MAX_MESSAGE_SIZE = YAMUX_FRAME_SIZE
    os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")


def _use_tuned_yamux() -> None:
    from libp2p.stream_muxer import muxer_multistream as _muxer_multistream

    from p2pshard.net.transport import TunedYamux

    _muxer_multistream.Yamux = TunedYamux  # type: ignore[attr-defined]


def _reserve_window_growth() -> None:
    from libp2p.stream_muxer.yamux.yamux import YamuxStream

    stock_update = YamuxStream._auto_tune_and_send_window_update

    async def counted_update(self: Any, *, bytes_read: int = 0) -> None:
        self.p2pshard_read = getattr(self, "p2pshard_read", 0) + bytes_read
        await stock_update(self, bytes_read=bytes_read)

    YamuxStream._auto_tune_and_send_window_update = counted_update  # type: ignore[method-assign]
    YamuxStream._apply_autotune_epoch = _apply_autotune_epoch  # type: ignore[method-assign]


def _apply_autotune_epoch(self: Any, buffered: int) -> int:
    """Replaces ``YamuxStream._apply_autotune_epoch``: double the target window when a window update
    is due within 4 RTTs of the last and at least half the window has been read since (counted by
    the wrapped ``_auto_tune_and_send_window_update``), and the connection reserves the growth (a
    connection without ``p2pshard_grow_window`` needs no reservation). Returns the extra credit."""
    from libp2p.stream_muxer.yamux.yamux import MAX_WINDOW_SIZE

    rtt = self._effective_rtt()
    now = trio.current_time()
    recent = rtt > 0 and not (self.epoch_start > 0 and now - self.epoch_start >= rtt * 4)
    read, self.p2pshard_read = getattr(self, "p2pshard_read", 0), 0
    self.epoch_start = now
    if not recent or read < self.target_recv_window // 2:
        return 0
    target = min(self.target_recv_window * 2, MAX_WINDOW_SIZE)
    if target <= self.target_recv_window:
        return 0
    grow_window = getattr(self.conn, "p2pshard_grow_window", None)
    if grow_window is not None and not grow_window(self, target - self.target_recv_window):
        return 0
    self.target_recv_window = target
    extra = target - (self.recv_window + buffered)
    if extra <= 0:
        return 0
    self.recv_window += extra
    return int(extra)


# -- TCP listener ------------------------------------------------------------------------------

LISTEN_BACKLOG = 4096
"""Connections the kernel queues for accept on each listening socket (capped at somaxconn)."""


def _deepen_listen_backlog() -> None:
    from libp2p.transport.tcp import tcp as _tcp

    stock = _tcp._open_reuseport_listeners

    async def open_listeners(host: str | None, port: int) -> list[trio.SocketListener]:
        listeners: list[trio.SocketListener] = await stock(host, port)
        for listener in listeners:
            listener.socket.listen(LISTEN_BACKLOG)  # on a listening socket: only the backlog changes
        return listeners

    _tcp._open_reuseport_listeners = open_listeners


# -- inbound connection slots ------------------------------------------------------------------


class HandshakeGate(Protocol):
    """Admits an inbound TCP connection to its security handshake (see :mod:`p2pshard.net.limits`)."""

    def admit(self, remote_ip: str | None, cancel: Callable[[], None]) -> Callable[[], None] | None:
        """A release callback if admitted, None if refused (the gate counts the refusal);
        ``cancel`` abandons the handshake, should the gate evict it for a newer one."""

    @property
    def handshake_timeout_s(self) -> float: ...

    def refused(self, reason: str) -> None: ...


def _release_inbound_slot_on_close() -> None:
    from libp2p.network.swarm import Swarm

    Swarm._handle_inbound_connection = _handle_inbound_connection  # type: ignore[method-assign]


async def _handle_inbound_connection(self: Any, read_write_closer: Any, maddr: Any) -> None:
    """Replaces ``Swarm._handle_inbound_connection``: the same admission, upgrade and registration,
    but the inbound slot is held only while the connection is open.

    Order: the handshake gate (pending handshakes, total and per IP) → the swarm's inbound slot
    (open inbound connections) → the connection gate (allow/deny lists) → the upgrade, bounded by
    the gate's handshake timeout → wait until the connection closes → release the slot.
    """
    gate: HandshakeGate | None = getattr(self, "p2pshard_handshake_gate", None)
    handshake = trio.CancelScope()  # cancelled if the gate evicts this handshake for a newer one
    release_handshake: Callable[[], None] | None = None
    if gate is not None:
        release_handshake = gate.admit(_remote_ip(read_write_closer), handshake.cancel)
        if release_handshake is None:
            await _close_quietly(read_write_closer)
            return
    try:
        self._inbound_limiter.acquire_nowait()
    except trio.WouldBlock:
        if gate is not None:
            gate.refused("inbound_slots")
        if release_handshake is not None:
            release_handshake()
        await _close_quietly(read_write_closer)
        return
    try:
        muxed = None
        with handshake:
            muxed = await _upgrade_inbound(self, read_write_closer, maddr, gate, release_handshake)
        if handshake.cancelled_caught:
            await _close_quietly(read_write_closer)
        if muxed is not None:
            await _wait_closed(self, muxed)
    finally:
        if release_handshake is not None:
            release_handshake()  # idempotent: _upgrade_inbound released it already
        self._inbound_limiter.release()


async def _upgrade_inbound(
    self: Any,
    read_write_closer: Any,
    maddr: Any,
    gate: HandshakeGate | None,
    release_handshake: Callable[[], None] | None,
) -> Any:
    """The muxed connection, registered with the swarm; None when refused or failed."""
    from libp2p.abc import IMuxedConn
    from libp2p.network.connection.raw_connection import RawConnection

    try:
        remote_maddr = self._build_remote_multiaddr(read_write_closer)
        if remote_maddr is not None and not await self.connection_gate.is_allowed(remote_maddr):
            if gate is not None:
                gate.refused("connection_gate")
            await _close_quietly(read_write_closer)
            return None
        if isinstance(read_write_closer, IMuxedConn):  # QUIC and the like: already secured and muxed
            await self.add_conn(read_write_closer, direction="inbound")
            return read_write_closer
        raw_conn = RawConnection(read_write_closer, False)
        timeout = gate.handshake_timeout_s if gate is not None else float("inf")
        try:
            with trio.fail_after(timeout):
                return await self.upgrade_inbound_raw_conn(raw_conn, maddr)
        except trio.TooSlowError:
            if gate is not None:
                gate.refused("handshake_timeout")
            await _close_quietly(raw_conn)
            return None
        except Exception as exc:
            log.debug("inbound connection from %s failed: %r", maddr, exc)
            await _close_quietly(raw_conn)
            return None
    finally:
        if release_handshake is not None:
            release_handshake()


async def _wait_closed(swarm: Any, muxed: Any) -> None:
    """Until ``muxed`` closes (or the swarm stops). The TCP listener closes the socket when its
    handler returns, so the handler must last as long as the connection."""
    closed = getattr(muxed, "event_closed", None)
    if closed is None:
        await swarm.manager.wait_finished()
        return
    await closed.wait()


async def _close_quietly(conn: Any) -> None:
    with trio.move_on_after(2), contextlib.suppress(Exception):  # closing a failed connection
        await conn.close()


def _remote_ip(read_write_closer: Any) -> str | None:
    try:
        remote = read_write_closer.get_remote_address()
    except Exception:  # not every transport's stream knows its remote address
        return None
    return str(remote[0]) if remote else None


# -- per-host wrappers ---------------------------------------------------------------------------


def count_failed_negotiations(host: Any, on_failure: Callable[[], None]) -> None:
    """Call ``on_failure()`` for every inbound stream whose protocol negotiation fails (unknown
    protocol ids included), by wrapping the host's multiselect ``negotiate``."""
    mux = host.get_mux()
    negotiate: Callable[..., Awaitable[Any]] = mux.negotiate

    async def counted(*args: Any, **kwargs: Any) -> Any:
        try:
            return await negotiate(*args, **kwargs)
        except Exception:
            on_failure()
            raise

    mux.negotiate = counted


def protect_connected_peers(host: Any) -> None:
    """Tell ``host``'s peerstore which peers it must not evict: those we are connected to."""
    network = host.get_network()
    host.get_peerstore().p2pshard_protected = lambda: network.connections.keys()


# -- stream handlers and the peerstore -----------------------------------------------------------

STREAM_HANDLER_ERRORS = "p2pshard_stream_handler_errors"
"""Attribute of a swarm counting the stream handler errors it contained."""


def _contain_stream_handler_errors() -> None:
    from libp2p.network.swarm import Swarm

    original = Swarm.set_stream_handler

    def set_stream_handler(self: Any, stream_handler: Callable[[Any], Awaitable[None]]) -> None:
        async def contained(stream: Any) -> None:
            try:
                await stream_handler(stream)
            except Exception as exc:  # trio.Cancelled is a BaseException and passes through
                setattr(self, STREAM_HANDLER_ERRORS, getattr(self, STREAM_HANDLER_ERRORS, 0) + 1)
                log.warning("a stream handler failed (stream reset, node kept): %r", exc)
                with contextlib.suppress(Exception):
                    await stream.reset()

        original(self, contained)

    Swarm.set_stream_handler = set_stream_handler  # type: ignore[method-assign]


def _keep_own_and_connected_peers() -> None:
    from libp2p.peer.peerstore import PeerStore

    def enforce_peer_limit(self: Any) -> None:
        over = len(self.peer_data_map) - self.max_peers
        if over <= 0:
            return
        protected = set(getattr(self, "p2pshard_protected", lambda: ())())

        def evictable(item: tuple[Any, Any]) -> bool:
            peer_id, data = item
            return data.privkey is None and peer_id not in protected

        # py-libp2p's order among the rest: entries without addresses, then expired ones, first.
        candidates = sorted(
            filter(evictable, self.peer_data_map.items()),
            key=lambda item: (not item[1].get_addrs(), item[1].is_expired()),
            reverse=True,
        )
        for peer_id, _ in candidates[:over]:
            self.peer_record_map.pop(peer_id, None)
            del self.peer_data_map[peer_id]

    PeerStore._enforce_peer_limit = enforce_peer_limit  # type: ignore[method-assign]
