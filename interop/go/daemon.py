"""The go-libp2p peer: hivemind 1.1.12's ``p2pd`` daemon as a child process, and a trio control client.

The daemon is controlled over a unix socket with the p2pd control protocol: uvarint-length-delimited
``Request``/``Response`` protobufs (``p2pd_control.proto``, a copy with our own package name). One
request per control connection here, except that STREAM_OPEN turns its connection into the stream,
and PUBSUB SUBSCRIBE turns it into a feed of ``PSMessage`` frames. Inbound streams for a registered
protocol arrive as connections from the daemon to a unix socket of ours, each starting with a
delimited ``StreamInfo``.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import multiaddr
import trio
from libp2p.peer.id import ID

from interop.go import p2pd_control_pb2 as pb
from interop.procs import PeerProcess, PeerProcessError, run_peer_process
from interop.wire import MAX_FRAME, BufferedReader, frame, unix_multiaddr_bytes

BIN = Path(__file__).resolve().parent.parent / ".bin" / "p2pd"
START_TIMEOUT_S = 20.0
CONTROL_TIMEOUT_S = 15.0
MAX_QUEUED_MESSAGES = 1000

# Exactly the flags FACTS.md names. Never `-b`: it would dial the public IPFS bootstrap peers.
DAEMON_FLAGS = (
    "-hostAddrs=/ip4/127.0.0.1/tcp/0",
    "-pubsub",
    "-pubsubRouter=gossipsub",
    "-dhtServer",
    "-gossipsubHeartbeatInterval=500ms",
)


class DaemonError(RuntimeError):
    """The daemon answered a control request with an ERROR response."""


@dataclass(frozen=True)
class StreamInfo:
    peer: ID
    addr: multiaddr.Multiaddr
    protocol: str


@dataclass(frozen=True)
class PubsubMessage:
    from_peer: ID
    data: bytes
    seqno: bytes
    topics: tuple[str, ...]
    signature: bytes
    key: bytes


class ControlStream:
    """One control connection: write delimited requests, read delimited responses."""

    def __init__(self, sock: trio.SocketStream) -> None:
        self.sock = sock
        self.reader = BufferedReader(sock)

    async def send(self, msg: pb.Request) -> None:
        await self.sock.send_all(frame(msg.SerializeToString()))

    async def receive(
        self, cls: type[pb.Response] | type[pb.DHTResponse] | type[pb.PSMessage] | type[pb.StreamInfo]
    ) -> object:
        data = await self.reader.read_frame(MAX_FRAME)
        msg = cls()
        msg.ParseFromString(data)
        return msg

    async def response(self) -> pb.Response:
        resp = await self.receive(pb.Response)
        assert isinstance(resp, pb.Response)
        if resp.type == pb.Response.ERROR:
            raise DaemonError(resp.error.msg)
        return resp


class DaemonStream:
    """A libp2p stream piped through a unix socket by the daemon; ``read``/``write`` like py-libp2p."""

    def __init__(self, sock: trio.SocketStream, info: StreamInfo, reader: BufferedReader) -> None:
        self.sock = sock
        self.info = info
        self.reader = reader  # may already hold bytes that arrived with the header

    async def write(self, data: bytes) -> None:
        await self.sock.send_all(data)

    async def read_frame(self, max_size: int = MAX_FRAME) -> bytes:
        return await self.reader.read_frame(max_size)

    async def aclose(self) -> None:
        await self.sock.aclose()


StreamHandler = Callable[[DaemonStream], Awaitable[None]]


def _stream_info(msg: pb.StreamInfo) -> StreamInfo:
    return StreamInfo(ID(msg.peer), multiaddr.Multiaddr(msg.addr), msg.proto)


class P2pd:
    """A running p2pd and the client that controls it."""

    def __init__(self, workdir: Path, nursery: trio.Nursery) -> None:
        self.workdir = workdir
        self.control_path = str(workdir / "p2pd.sock")
        self._nursery = nursery
        self._handler_seq = 0
        self._subs: dict[str, trio.MemoryReceiveChannel[PubsubMessage]] = {}
        self.overflowed: set[str] = set()
        self.proc: PeerProcess | None = None
        # What the daemon printed at start ("Peer ID: …", then "Peer Addrs:" and one address a line).
        self.printed_peer_id: ID | None = None
        self.printed_addrs: list[multiaddr.Multiaddr] = []
        self._in_addrs = False
        self._printed = trio.Event()
        # What IDENTIFY says, filled in by start_p2pd.
        self.peer_id: ID
        self.addrs: list[multiaddr.Multiaddr]

    def _on_stdout(self, line: str) -> None:
        text = line.strip()
        if (m := _PEER_ID.match(text)) is not None:
            self.printed_peer_id = ID.from_base58(m.group(1))
            self._in_addrs = False
        elif text == "Peer Addrs:":
            self._in_addrs = True
        elif self._in_addrs and _ADDR.match(text):
            addr = multiaddr.Multiaddr(text)
            if addr not in self.printed_addrs:
                self.printed_addrs.append(addr)
            if self.printed_peer_id is not None:
                self._printed.set()
        else:
            self._in_addrs = False

    def describe(self) -> str:
        return self.proc.describe() if self.proc is not None else "p2pd (not started)"

    # ---- control plumbing ----
    @asynccontextmanager
    async def _control(self) -> AsyncIterator[ControlStream]:
        sock = await trio.open_unix_socket(self.control_path)
        try:
            yield ControlStream(sock)
        finally:
            await sock.aclose()

    async def _request(self, req: pb.Request) -> pb.Response:
        with trio.fail_after(CONTROL_TIMEOUT_S):
            async with self._control() as ctl:
                await ctl.send(req)
                return await ctl.response()

    # ---- requests ----
    async def identify(self) -> tuple[ID, list[multiaddr.Multiaddr]]:
        resp = await self._request(pb.Request(type=pb.Request.IDENTIFY))
        return ID(resp.identify.id), [multiaddr.Multiaddr(a) for a in resp.identify.addrs]

    async def connect(self, peer: ID, addrs: Sequence[multiaddr.Multiaddr]) -> None:
        await self._request(
            pb.Request(
                type=pb.Request.CONNECT,
                connect=pb.ConnectRequest(peer=peer.to_bytes(), addrs=[a.to_bytes() for a in addrs]),
            )
        )

    async def list_peers(self) -> dict[ID, list[multiaddr.Multiaddr]]:
        resp = await self._request(pb.Request(type=pb.Request.LIST_PEERS))
        return {ID(p.id): [multiaddr.Multiaddr(a) for a in p.addrs] for p in resp.peers}

    async def open_stream(self, peer: ID, protocols: Sequence[str]) -> DaemonStream:
        """Open a libp2p stream; the caller owns (and must close) the returned stream."""
        sock = await trio.open_unix_socket(self.control_path)
        try:
            with trio.fail_after(CONTROL_TIMEOUT_S):
                ctl = ControlStream(sock)
                await ctl.send(
                    pb.Request(
                        type=pb.Request.STREAM_OPEN,
                        streamOpen=pb.StreamOpenRequest(peer=peer.to_bytes(), proto=list(protocols)),
                    )
                )
                resp = await ctl.response()
        except BaseException:
            await sock.aclose()
            raise
        return DaemonStream(sock, _stream_info(resp.streamInfo), ctl.reader)

    async def add_stream_handler(self, protocols: Sequence[str], handler: StreamHandler) -> None:
        """Serve ``protocols``: the daemon connects to our socket for each inbound stream."""
        self._handler_seq += 1
        path = str(self.workdir / f"handler-{self._handler_seq}.sock")
        listeners = [await _unix_listener(path)]
        self._nursery.start_soon(self._serve_handler, listeners, handler)
        await self._request(
            pb.Request(
                type=pb.Request.STREAM_HANDLER,
                streamHandler=pb.StreamHandlerRequest(
                    addr=unix_multiaddr_bytes(path), proto=list(protocols), balanced=False
                ),
            )
        )

    async def _serve_handler(self, listeners: list[trio.SocketListener], handler: StreamHandler) -> None:
        async def one(sock: trio.SocketStream) -> None:
            try:
                reader = BufferedReader(sock)
                with trio.fail_after(CONTROL_TIMEOUT_S):
                    head = pb.StreamInfo()
                    head.ParseFromString(await reader.read_frame(MAX_FRAME))
                await handler(DaemonStream(sock, _stream_info(head), reader))
            except Exception as exc:  # a handler's failure must not take the daemon client down
                if self.proc is not None:
                    self.proc.tail.append(f"[client] stream handler failed: {exc!r}")
            finally:
                await sock.aclose()

        await trio.serve_listeners(one, listeners)

    async def dht_find_peer(self, peer: ID) -> list[multiaddr.Multiaddr]:
        resp = await self._request(
            pb.Request(
                type=pb.Request.DHT,
                dht=pb.DHTRequest(type=pb.DHTRequest.FIND_PEER, peer=peer.to_bytes()),
            )
        )
        if ID(resp.dht.peer.id) != peer:
            raise DaemonError(f"FIND_PEER returned {ID(resp.dht.peer.id)} for {peer}")
        return [multiaddr.Multiaddr(a) for a in resp.dht.peer.addrs]

    async def dht_provide(self, cid: bytes) -> None:
        await self._request(
            pb.Request(
                type=pb.Request.DHT,
                dht=pb.DHTRequest(type=pb.DHTRequest.PROVIDE, cid=cid),
            )
        )

    async def dht_find_providers(self, cid: bytes, count: int = 20) -> list[ID]:
        with trio.fail_after(CONTROL_TIMEOUT_S):
            async with self._control() as ctl:
                await ctl.send(
                    pb.Request(
                        type=pb.Request.DHT,
                        dht=pb.DHTRequest(type=pb.DHTRequest.FIND_PROVIDERS, cid=cid, count=count),
                    )
                )
                resp = await ctl.response()
                if resp.dht.type != pb.DHTResponse.BEGIN:
                    raise DaemonError(f"FIND_PROVIDERS: expected BEGIN, got {resp.dht.type}")
                found: list[ID] = []
                while True:
                    item = await ctl.receive(pb.DHTResponse)
                    assert isinstance(item, pb.DHTResponse)
                    if item.type == pb.DHTResponse.END:
                        return found
                    found.append(ID(item.peer.id))

    async def pubsub_subscribe(self, topic: str) -> None:
        """Subscribe; received messages queue up for ``next_message``."""
        send, recv = trio.open_memory_channel[PubsubMessage](MAX_QUEUED_MESSAGES)
        ready = trio.Event()
        self._nursery.start_soon(self._subscription, topic, send, ready)
        with trio.fail_after(CONTROL_TIMEOUT_S):
            await ready.wait()
        self._subs[topic] = recv

    async def _subscription(
        self, topic: str, send: trio.MemorySendChannel[PubsubMessage], ready: trio.Event
    ) -> None:
        async with self._control() as ctl, send:
            await ctl.send(
                pb.Request(
                    type=pb.Request.PUBSUB, pubsub=pb.PSRequest(type=pb.PSRequest.SUBSCRIBE, topic=topic)
                )
            )
            await ctl.response()
            ready.set()
            while True:
                msg = await ctl.receive(pb.PSMessage)
                assert isinstance(msg, pb.PSMessage)
                try:
                    send.send_nowait(
                        PubsubMessage(
                            ID(getattr(msg, "from")),
                            msg.data,
                            msg.seqno,
                            tuple(msg.topicIDs),
                            msg.signature,
                            msg.key,
                        )
                    )
                except trio.WouldBlock:
                    # The test stopped reading; next_message fails instead of hiding a drop.
                    self.overflowed.add(topic)

    async def next_message(self, topic: str) -> PubsubMessage:
        """The next message received on ``topic``; the caller bounds the wait."""
        if topic in self.overflowed:
            raise DaemonError(f"more than {MAX_QUEUED_MESSAGES} unread messages on {topic}")
        return await self._subs[topic].receive()

    async def pubsub_publish(self, topic: str, data: bytes) -> None:
        await self._request(
            pb.Request(
                type=pb.Request.PUBSUB, pubsub=pb.PSRequest(type=pb.PSRequest.PUBLISH, topic=topic, data=data)
            )
        )

    async def pubsub_peers(self, topic: str) -> list[ID]:
        resp = await self._request(
            pb.Request(type=pb.Request.PUBSUB, pubsub=pb.PSRequest(type=pb.PSRequest.LIST_PEERS, topic=topic))
        )
        return [ID(p) for p in resp.pubsub.peerIDs]

    async def pubsub_topics(self) -> list[str]:
        resp = await self._request(
            pb.Request(type=pb.Request.PUBSUB, pubsub=pb.PSRequest(type=pb.PSRequest.GET_TOPICS))
        )
        return list(resp.pubsub.topics)


async def _unix_listener(path: str) -> trio.SocketListener:
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(16)
    return trio.SocketListener(sock)


_PEER_ID = re.compile(r"^Peer ID:\s*(\S+)$")
_ADDR = re.compile(r"^/\S+$")


@asynccontextmanager
async def start_p2pd(binary: Path = BIN) -> AsyncIterator[P2pd]:
    """Start a p2pd on 127.0.0.1 and wait until it printed its peer id and addresses.

    The control socket lives in a short /tmp directory (unix socket paths are limited to 108 bytes).
    """
    if not os.access(binary, os.X_OK):
        raise PeerProcessError(f"{binary} is missing: run `bash interop/setup.sh` first")
    workdir = Path(tempfile.mkdtemp(prefix="p2pd-", dir="/tmp"))
    argv = [str(binary), f"-listen=/unix{workdir}/p2pd.sock", *DAEMON_FLAGS]
    try:
        async with trio.open_nursery() as nursery:
            daemon = P2pd(workdir, nursery)
            async with run_peer_process("p2pd", argv, on_stdout=daemon._on_stdout, merge_stderr=True) as proc:
                daemon.proc = proc
                try:
                    with trio.fail_after(START_TIMEOUT_S):
                        await daemon._printed.wait()
                except trio.TooSlowError:
                    raise PeerProcessError(f"p2pd did not start: {proc.describe()}") from None
                daemon.peer_id, daemon.addrs = await daemon.identify()
                if daemon.peer_id != daemon.printed_peer_id:
                    raise PeerProcessError(
                        f"IDENTIFY says {daemon.peer_id}, stdout said {daemon.printed_peer_id}"
                    )
                try:
                    yield daemon
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
