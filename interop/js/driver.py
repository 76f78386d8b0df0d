"""The js-libp2p peer: ``node --import polyfill.mjs peer.mjs`` as a child process, driven by JSON lines.

Commands go to the child's stdin as ``{"id": N, "cmd": …}``; the child answers each with one line
carrying the same id. Replies are matched to waiting callers by id, so commands may overlap.
Pubsub messages arrive unasked as ``{"event": "message", …}`` lines and queue here per topic
(bounded; an overflow fails the peer loudly instead of dropping). Bytes travel as hex strings.
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import multiaddr
import trio
from libp2p.peer.id import ID

from interop.procs import PeerProcess, PeerProcessError, run_peer_process

HERE = Path(__file__).resolve().parent
START_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_S = 20.0
MAX_QUEUED_MESSAGES = 1000


class JsCommandError(RuntimeError):
    """The js peer answered a command with ok=false."""


@dataclass(frozen=True)
class JsMessage:
    topic: str
    data: bytes
    signed: bool
    from_peer: ID | None
    seqno: int | None
    received_from: ID | None  # the neighbour that forwarded it (gossipsub's propagationSource)


class JsPeer:
    """A running js-libp2p peer."""

    def __init__(self) -> None:
        self.proc: PeerProcess | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self._ready: dict[str, Any] | None = None
        self._ready_event = trio.Event()
        self._bad_lines: list[str] = []
        self._topics: dict[
            str, tuple[trio.MemorySendChannel[JsMessage], trio.MemoryReceiveChannel[JsMessage]]
        ] = {}
        self.overflowed: list[str] = []
        self.peer_id: ID
        self.addrs: list[multiaddr.Multiaddr]

    def _on_stdout(self, line: str) -> None:
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            self._bad_lines.append(line)
            return
        if msg.get("event") == "ready":
            self._ready = msg
            self._ready_event.set()
            return
        if msg.get("event") == "message":
            self._on_message(msg)
            return
        chan = self._waiting.pop(msg.get("id"), None)
        if chan is not None:
            chan.send_nowait(msg)

    def _on_message(self, msg: dict[str, Any]) -> None:
        topic = str(msg["topic"])
        item = JsMessage(
            topic=topic,
            data=bytes.fromhex(msg["data"]),
            signed=msg["type"] == "signed",
            from_peer=ID.from_base58(msg["from"]) if msg["from"] else None,
            seqno=int(msg["seqno"]) if msg["seqno"] is not None else None,
            received_from=ID.from_base58(msg["receivedFrom"]) if msg.get("receivedFrom") else None,
        )
        try:
            self._queue(topic)[0].send_nowait(item)
        except trio.WouldBlock:
            # The test stopped reading; remember it so that next_message fails instead of lying.
            self.overflowed.append(topic)

    def _queue(
        self, topic: str
    ) -> tuple[trio.MemorySendChannel[JsMessage], trio.MemoryReceiveChannel[JsMessage]]:
        if topic not in self._topics:
            self._topics[topic] = trio.open_memory_channel[JsMessage](MAX_QUEUED_MESSAGES)
        return self._topics[topic]

    def describe(self) -> str:
        return self.proc.describe() if self.proc is not None else "js peer (not started)"

    async def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        """Send one command and wait (at most COMMAND_TIMEOUT_S) for its reply.

        Raises JsCommandError when the peer answers ok=false.
        """
        assert self.proc is not None and self.proc.process.stdin is not None
        cid = next(self._ids)
        send, recv = trio.open_memory_channel[dict[str, Any]](1)
        self._waiting[cid] = send
        try:
            line = json.dumps({"id": cid, "cmd": cmd, **args}) + "\n"
            with trio.fail_after(COMMAND_TIMEOUT_S):
                await self.proc.process.stdin.send_all(line.encode())
                reply = await recv.receive()
        except trio.TooSlowError:
            raise PeerProcessError(
                f"js peer: no reply to {cmd} in {COMMAND_TIMEOUT_S} s; {self.describe()}"
            ) from None
        finally:
            self._waiting.pop(cid, None)
        if not reply.get("ok"):
            raise JsCommandError(f"{cmd}: {reply.get('error')}")
        return reply

    # ---- typed wrappers ----
    async def info(self) -> dict[str, Any]:
        return await self.call("info")

    async def dial(self, addr: str) -> dict[str, Any]:
        return await self.call("dial", addr=addr)

    async def deny_peer(self, peer: ID) -> None:
        """Refuse connections to and from ``peer`` from now on (closes any that exist)."""
        await self.call("deny-peer", peer=peer.to_base58())

    async def peer_protocols(self, peer: ID) -> list[str]:
        return list((await self.call("peer-protocols", peer=peer.to_base58()))["protocols"])

    async def subscribe(self, topic: str) -> None:
        await self.call("subscribe", topic=topic)

    async def topic_peers(self, topic: str) -> tuple[set[str], set[str]]:
        """(subscribers known for ``topic``, mesh peers for ``topic``) as base58 ids."""
        r = await self.call("topic-peers", topic=topic)
        return set(r["subscribers"]), set(r["mesh"])

    async def publish(self, topic: str, data: bytes) -> list[str]:
        r = await self.call("publish", topic=topic, data=data.hex())
        return list(r["recipients"])

    async def next_message(self, topic: str) -> JsMessage:
        """The next message received on ``topic``; the caller bounds the wait."""
        if topic in self.overflowed:
            raise PeerProcessError(f"more than {MAX_QUEUED_MESSAGES} unread messages on {topic}")
        return await self._queue(topic)[1].receive()

    async def serve_echo(self, protocol: str) -> None:
        await self.call("serve-echo", protocol=protocol)

    async def open_stream_echo(self, addr: str, protocol: str, data: bytes) -> tuple[str, bytes]:
        """Open ``protocol`` to ``addr``, send one frame, return (negotiated protocol, reply)."""
        r = await self.call("open-stream", addr=addr, protocol=protocol, data=data.hex())
        return r["protocol"], bytes.fromhex(r["data"])

    async def dht_find_peer(self, peer: ID) -> list[multiaddr.Multiaddr]:
        r = await self.call("dht-find-peer", peer=peer.to_base58())
        if r["peer"] != peer.to_base58():
            raise JsCommandError(f"dht-find-peer returned {r['peer']} for {peer}")
        return [multiaddr.Multiaddr(a) for a in r["addrs"]]

    async def dht_provide(self, cid_text: str) -> None:
        await self.call("dht-provide", cid=cid_text)

    async def dht_find_providers(self, cid_text: str, count: int = 20) -> list[ID]:
        r = await self.call("dht-find-providers", cid=cid_text, max=count)
        return [ID.from_base58(p["peer"]) for p in r["providers"]]


def node_argv(key_type: str) -> list[str]:
    node = shutil.which("node")
    if node is None:
        raise PeerProcessError("node is not on PATH (Node 20 or newer is needed)")
    return [node, "--import", "./polyfill.mjs", "peer.mjs", "--key", key_type]


@asynccontextmanager
async def start_js_peer(key_type: str = "Ed25519") -> AsyncIterator[JsPeer]:
    """Start the js peer on 127.0.0.1 and wait for its ready line."""
    if not (HERE / "node_modules" / "libp2p").is_dir():
        raise PeerProcessError(f"{HERE / 'node_modules'} is missing: run `bash interop/setup.sh`")
    peer = JsPeer()
    async with run_peer_process(
        "js-libp2p", node_argv(key_type), cwd=HERE, on_stdout=peer._on_stdout
    ) as proc:
        peer.proc = proc
        try:
            with trio.fail_after(START_TIMEOUT_S):
                await peer._ready_event.wait()
        except trio.TooSlowError:
            raise PeerProcessError(f"js peer did not start: {proc.describe()}") from None
        assert peer._ready is not None
        peer.peer_id = ID.from_base58(peer._ready["peerId"])
        peer.addrs = [multiaddr.Multiaddr(a) for a in peer._ready["addrs"]]
        try:
            yield peer
        finally:
            # Ask politely (it closes its connections); run_peer_process then ends it by PID anyway.
            stdin = proc.process.stdin
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                try:
                    if stdin is not None:
                        await stdin.send_all(b'{"id":0,"cmd":"stop"}\n')
                    await proc.process.wait()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
