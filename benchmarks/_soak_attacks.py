"""The attacker clients of ``benchmarks/soak.py`` (run inside ``_soak_worker.py attack KIND``).

Each attack runs from 127.0.0.1 against one node, from ``start_at`` until ``stop_at`` (wall clock),
with every loop bounded in count and in time, and everything it opened closed before it returns.
It returns a JSON-able dict: ``ran`` (False when the attack itself could not be built or run, with
``error``), the counts it achieved, and ``summary``, one line for the benchmark's table.

* ``half_open``: N raw TCP connections that never send a byte (no multistream, no Noise).
* ``slow_streams``: one connected peer opens streams to the status protocol at a steady rate,
  sends one byte of a request (the first byte of its length prefix) and stalls.
* ``sybil``: N hosts with fresh secp256k1 identities connect from one IP and hold their connections.
* ``window_overflow``: one peer opens a status stream, asks once, then writes raw yamux DATA frames
  for that stream far past the 256 KiB receive window it was granted (the frames bypass the
  client's flow control: they go straight into the Noise session under yamux's write lock).
* ``syn_flood``: one peer writes thousands of raw yamux SYN frames (WINDOW_UPDATE+SYN) with fresh
  stream ids on its connection and never negotiates a protocol on them.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import trio

YAMUX_HEADER = struct.Struct("!BBHII")
TYPE_DATA, TYPE_WINDOW_UPDATE = 0, 1
FLAG_SYN = 0x1
FIRST_RAW_STREAM_ID = 1_000_001
"""Raw frames use odd ids far above those the client's own yamux hands out (1, 3, 5, ...)."""
STATUS_PROTOCOL = "/p2pshard/status/1.0.0"
MIB = 1 << 20


async def _sleep_until(wall: float) -> None:
    await trio.sleep(max(0.0, wall - time.time()))


def _peer_info(addr: str) -> Any:
    from p2pshard.net.host import parse_peer_addr

    return parse_peer_addr(addr)


@contextlib.asynccontextmanager
async def _host() -> AsyncIterator[Any]:
    """A client host with p2pshard's stack (Noise, tuned yamux) and a fresh identity, no listener."""
    from p2pshard.identity import Identity
    from p2pshard.net.host import build_host

    host = build_host(Identity.generate(), [], max_peers=1)
    async with host.run([]):
        try:
            yield host
        finally:  # leaving host.run() alone leaves the connections open (py-libp2p 0.8.1)
            with trio.CancelScope(shield=True), trio.move_on_after(3), contextlib.suppress(Exception):
                await host.close()


def _muxed(host: Any, peer: Any) -> Any:
    conns = host.get_network().connections.get(peer)
    if not conns:
        return None
    conn = conns[0] if isinstance(conns, list) else conns
    return getattr(conn, "muxed_conn", None)


def _connected(host: Any, peer: Any) -> bool:
    muxed = _muxed(host, peer)
    return muxed is not None and not muxed.event_shutting_down.is_set()


async def _close_quietly(aclose: Any, limit_s: float = 2.0) -> None:
    with trio.move_on_after(limit_s):
        with contextlib.suppress(Exception):
            await aclose()


# -- (a) half-open TCP ------------------------------------------------------------------------


async def half_open(addr: str, start_at: float, stop_at: float, count: int) -> dict[str, Any]:
    """``count`` TCP connections that never speak, held until ``stop_at``.

    Plain blocking sockets with a 1 s connect timeout: on loopback a connect returns at once unless
    the node's accept backlog is full, which is then counted as a failure."""
    info = _peer_info(addr)
    ip = info.addrs[0].value_for_protocol("ip4")
    port = int(info.addrs[0].value_for_protocol("tcp"))
    await _sleep_until(start_at)
    socks: list[socket.socket] = []
    failed: dict[str, int] = {}
    spread = max(0.0, (stop_at - time.time()) * 0.2)  # opened over the first 20% of the phase
    t0 = time.time()
    closed_by_node = 0
    try:
        for i in range(count):
            if time.time() >= stop_at:
                break
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(1.0)
            try:
                sock.connect((ip, port))
                sock.setblocking(False)
                socks.append(sock)
            except OSError as exc:
                sock.close()
                key = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
                failed[key] = failed.get(key, 0) + 1
            if i % 20 == 19:
                await _sleep_until(t0 + spread * (i + 1) / count)
        await _sleep_until(stop_at)
        for sock in socks:  # EOF or a reset now means the node gave up on the connection
            try:
                if sock.recv(1) == b"":
                    closed_by_node += 1
            except BlockingIOError:
                pass
            except OSError:
                closed_by_node += 1
    finally:
        for sock in socks:
            sock.close()
    opened = len(socks)
    return {
        "ran": opened > 0,
        "error": None if opened else f"no connection opened: {failed}",
        "opened": opened,
        "failed": failed,
        "closed_by_node": closed_by_node,
        "summary": f"{opened}/{count} held, node closed {closed_by_node}"
        + (f", failed {failed}" if failed else ""),
    }


# -- (b) slow streams -------------------------------------------------------------------------


async def slow_streams(
    addr: str, start_at: float, stop_at: float, rate: float, max_streams: int
) -> dict[str, Any]:
    """Streams to the status protocol at ``rate``/s, each sending one byte and then nothing."""
    info = _peer_info(addr)
    stats = {"opened": 0, "open_failed": 0, "answered_or_closed": 0}
    errors: dict[str, int] = {}
    async with _host() as host:
        await _sleep_until(start_at)
        with trio.fail_after(10):
            await host.connect(info)
        muxed = _muxed(host, info.peer_id)
        if muxed is not None and hasattr(muxed, "stream_backlog_semaphore"):
            muxed.stream_backlog_semaphore = trio.Semaphore(max_streams + 16)  # our own cap, not the node's

        async def one() -> None:
            try:
                with trio.fail_after(5):
                    stream = await host.new_stream(info.peer_id, [STATUS_PROTOCOL])
                    await stream.write(b"\x05")  # a length prefix promising 5 bytes that never come
            except Exception as exc:
                stats["open_failed"] += 1
                key = type(exc).__name__
                errors[key] = errors.get(key, 0) + 1
                return
            stats["opened"] += 1
            try:
                with trio.move_on_after(max(0.0, stop_at - time.time())):
                    await stream.read(1024)  # the node's answer (or its reset) ends the stall early
                    stats["answered_or_closed"] += 1
            except Exception:
                stats["answered_or_closed"] += 1
            await _close_quietly(stream.reset, 1.0)

        async with trio.open_nursery() as nursery:
            t0 = time.time()
            for i in range(max_streams):
                if time.time() >= stop_at or not _connected(host, info.peer_id):
                    break
                nursery.start_soon(one)
                await _sleep_until(t0 + (i + 1) / rate)
        dropped = not _connected(host, info.peer_id)
    return {
        "ran": stats["opened"] + stats["open_failed"] > 0,  # tried on a live connection
        "error": None if stats["opened"] + stats["open_failed"] else "no stream tried",
        **stats,
        "errors": errors,
        "connection_dropped_by_node": dropped,
        "summary": (
            f"{stats['opened']} stalled streams at {rate:g}/s, "
            f"{stats['answered_or_closed']} ended by node"
            + (f", {stats['open_failed']} failed to open {errors}" if stats["open_failed"] else "")
            + (", conn dropped" if dropped else "")
        ),
    }


# -- (c) Sybil identities ---------------------------------------------------------------------


async def sybil(
    addr: str, start_at: float, stop_at: float, count: int, concurrency: int = 16
) -> dict[str, Any]:
    """``count`` fresh identities from 127.0.0.1, each connecting once and holding on."""
    info = _peer_info(addr)
    failed: dict[str, int] = {}
    counts = {"connected": 0, "still": 0}
    limiter = trio.CapacityLimiter(concurrency)
    await _sleep_until(start_at)

    async def one() -> None:
        try:
            async with _host() as host:
                async with limiter:
                    if time.time() >= stop_at:
                        return
                    with trio.fail_after(10):
                        await host.connect(info)
                counts["connected"] += 1
                await _sleep_until(stop_at)
                counts["still"] += _connected(host, info.peer_id)
        except Exception as exc:
            key = type(exc).__name__
            failed[key] = failed.get(key, 0) + 1

    with trio.move_on_after(max(0.0, stop_at - time.time()) + 20) as scope:
        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(one)
    if scope.cancelled_caught:
        failed["slow_close"] = 1
    connected, still = counts["connected"], counts["still"]
    return {
        "ran": connected > 0,
        "error": None if connected else f"no identity connected: {failed}",
        "connected": connected,
        "still_connected_at_end": still,
        "failed": failed,
        "summary": f"{connected}/{count} identities connected, {still} still at end"
        + (f", failed {failed}" if failed else ""),
    }


# -- (d) yamux window overflow ----------------------------------------------------------------


async def window_overflow(
    addr: str, start_at: float, stop_at: float, total_mib: int, frame_kib: int = 256
) -> dict[str, Any]:
    """Ask for status once on a stream, then pour ``total_mib`` of raw DATA frames into it."""
    from p2pshard.core.wire import reqresp_pb2
    from p2pshard.core.wire.framing import encode_frame

    info = _peer_info(addr)
    sent = 0
    reason = ""
    async with _host() as host:
        await _sleep_until(start_at)
        with trio.fail_after(10):
            await host.connect(info)
            stream = await host.new_stream(info.peer_id, [STATUS_PROTOCOL])
            await stream.write(encode_frame(reqresp_pb2.Request(deadline_ms=5000).SerializeToString()))
            with trio.move_on_after(5):
                await stream.read(4096)  # the answer: the handler has read all it will read
        muxed = _muxed(host, info.peer_id)
        stream_id = getattr(getattr(stream, "muxed_stream", None), "stream_id", None)
        if muxed is None or stream_id is None or not hasattr(muxed, "_write_frame"):
            return {
                "ran": False,
                "error": "no yamux connection/stream id to write raw frames on",
                "summary": "",
            }
        frame = YAMUX_HEADER.pack(0, TYPE_DATA, 0, stream_id, frame_kib * 1024) + bytes(frame_kib * 1024)
        t0 = time.time()
        with trio.move_on_after(max(1.0, (stop_at - time.time()) * 0.5)):
            try:
                while sent < total_mib * MIB and _connected(host, info.peer_id):
                    await muxed._write_frame(frame)
                    sent += frame_kib * 1024
            except Exception as exc:
                reason = f"write failed: {type(exc).__name__}"
        pour_s = time.time() - t0
        await _sleep_until(stop_at)  # hold: whatever the node buffered stays buffered
        dropped = not _connected(host, info.peer_id)
    return {
        "ran": True,
        "error": None,
        "sent_mib": round(sent / MIB, 1),
        "pour_s": round(pour_s, 2),
        "connection_dropped_by_node": dropped,
        "stopped": reason,
        "summary": f"{sent / MIB:.0f}/{total_mib} MiB past the window in {pour_s:.1f}s"
        + (", conn dropped by node" if dropped else ", conn kept")
        + (f" ({reason})" if reason else ""),
    }


# -- (e) stream SYN flood ---------------------------------------------------------------------


async def syn_flood(
    addr: str, start_at: float, stop_at: float, count: int, batch: int = 500
) -> dict[str, Any]:
    """``count`` yamux SYNs with fresh stream ids on one connection, over the first half of the phase."""
    info = _peer_info(addr)
    sent = 0
    reason = ""
    async with _host() as host:
        await _sleep_until(start_at)
        with trio.fail_after(10):
            await host.connect(info)
        if time.time() >= stop_at:
            return {"ran": False, "error": f"connected {time.time() - start_at:.1f}s late", "summary": ""}
        muxed = _muxed(host, info.peer_id)
        if muxed is None or not hasattr(muxed, "_write_frame"):
            return {"ran": False, "error": "no yamux connection to write raw frames on", "summary": ""}
        batches = max(1, -(-count // batch))
        spread = max(0.0, (stop_at - time.time()) * 0.5)
        t0 = time.time()
        sid = FIRST_RAW_STREAM_ID
        try:
            for b in range(batches):
                if time.time() >= stop_at or not _connected(host, info.peer_id):
                    break
                n = min(batch, count - sent)
                frames = b"".join(
                    YAMUX_HEADER.pack(0, TYPE_WINDOW_UPDATE, FLAG_SYN, sid + 2 * k, 0) for k in range(n)
                )
                sid += 2 * n
                with trio.fail_after(max(0.5, stop_at - time.time())):
                    await muxed._write_frame(frames)
                sent += n
                await _sleep_until(t0 + spread * (b + 1) / batches)
        except Exception as exc:
            reason = f"write failed: {type(exc).__name__}"
        await _sleep_until(stop_at)
        dropped = not _connected(host, info.peer_id)
    return {
        "ran": sent > 0,
        "error": None if sent else f"no SYN sent: {reason}",
        "sent": sent,
        "connection_dropped_by_node": dropped,
        "stopped": reason,
        "summary": f"{sent}/{count} SYNs on one connection"
        + (", conn dropped by node" if dropped else ", conn kept")
        + (f" ({reason})" if reason else ""),
    }


ATTACKS = {
    "half_open": half_open,
    "slow_streams": slow_streams,
    "sybil": sybil,
    "window_overflow": window_overflow,
    "syn_flood": syn_flood,
}
