"""The byte-level parts of the pubsub driver (:mod:`p2pshard.net.pubsub`): per-peer outbound queues
with a control lane, the frame reader that shows the router a large frame's head early, and the
bulk-write turns that send large forwards one peer at a time."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Awaitable, Callable

import trio
from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamEOF, StreamError
from libp2p.stream_muxer.exceptions import MuxedStreamEOF, MuxedStreamError

from p2pshard.core.wire.framing import (
    FrameTooLarge,
    MalformedVarint,
    TruncatedFrame,
    decode_uvarint,
)
from p2pshard.net.framed import READ_SIZE, StreamClosedEarly, reserve_frame
from p2pshard.net.limits import MemoryHold

URGENT_MAX_BYTES = 64 * 1024
"""Control-only frames up to this size jump ahead of queued message frames; a batch larger than
this is "bulk" and waits for the node's bulk turn (:class:`BulkTurns`)."""
WRITE_BATCH_BYTES = 1 << 20
BULK_TURN_S = 0.5
"""How long one peer may hold the bulk turn; a slower peer finishes its batch without it, so
one stalled peer cannot hold up the others."""


HEAD_BYTES = 1024
"""A frame still arriving is shown to the router once this much of it is in (or all of it that
can be): enough for a message's from, seqno and topic, written before its data."""


class PeerQueue:
    """Outbound frames for one peer, bounded in bytes.

    Two lanes: control-only frames (no messages: IDONTWANT, IHAVE/IWANT, GRAFT/PRUNE,
    subscriptions) go ahead of message frames, so that an IDONTWANT is not stuck behind a MiB of
    payload (go-libp2p-pubsub queues control with priority too). Message frames may carry a
    message id (``tag``); one the peer no longer wants when its turn comes is skipped, not sent.

    ``hold``: when set, every frame is reserved in it (against the peer's connection) before it is
    queued, and given back when it is taken or the queue closes; a frame refused is not queued
    (:attr:`refused` counts them), and a publish does not wait for memory.
    """

    def __init__(self, limit: int, hold: MemoryHold | None = None) -> None:
        self.limit = limit
        self.hold = hold
        self.refused = 0
        self.urgent: deque[bytes] = deque()
        self.frames: deque[bytes] = deque()
        self.tags: deque[bytes | None] = deque()
        self.own: deque[bool] = deque()
        self.size = 0
        self.skipped = 0
        self.has_data = trio.Event()
        self.has_room = trio.Event()
        self.has_room.set()
        self.closed = False

    def __len__(self) -> int:
        return len(self.urgent) + len(self.frames)

    def try_put(
        self, frame: bytes, *, urgent: bool = False, tag: bytes | None = None, own: bool = False
    ) -> bool:
        if self.closed or (self.size + len(frame) > self.limit and len(self)):
            return False
        if self.hold is not None and not self.hold.grow(len(frame)):
            self.refused += 1
            return False
        if urgent:
            self.urgent.append(frame)
        else:
            self.frames.append(frame)
            self.tags.append(tag)
            self.own.append(own)
        self.size += len(frame)
        self.has_data.set()
        if self.size >= self.limit:
            self.has_room = trio.Event()
        return True

    async def put_wait(
        self, frame: bytes, *, urgent: bool = False, tag: bytes | None = None, own: bool = False
    ) -> bool:
        while True:
            refused = self.refused
            if self.try_put(frame, urgent=urgent, tag=tag, own=own):
                return True
            if self.closed or self.refused > refused:  # memory refused: room is not waited for
                return False
            await self.has_room.wait()

    async def wait_data(self) -> bool:
        while not len(self):
            if self.closed:
                return False
            self.has_data = trio.Event()
            await self.has_data.wait()
        return True

    def next_is_bulk(self, threshold: int) -> bool:
        """Whether the next frame is a large forward (our own publishes never wait for a turn)."""
        return not self.urgent and bool(self.frames) and len(self.frames[0]) > threshold and not self.own[0]

    def take(
        self,
        max_bytes: int,
        unwanted: Callable[[bytes], bool] | None = None,
        *,
        below: int | None = None,
    ) -> list[bytes]:
        """Urgent frames first, then message frames, up to ``max_bytes`` (at least one frame);
        ``below``: stop at the first forwarded frame larger than this (it needs the bulk turn)."""
        batch: list[bytes] = []
        total = 0
        released = 0
        while self.urgent and (not batch or total + len(self.urgent[0]) <= max_bytes):
            frame = self.urgent.popleft()
            batch.append(frame)
            total += len(frame)
        while self.frames and (not batch or total + len(self.frames[0]) <= max_bytes):
            if below is not None and len(self.frames[0]) > below and not self.own[0]:
                break
            frame = self.frames.popleft()
            tag = self.tags.popleft()
            self.own.popleft()
            if tag is not None and unwanted is not None and unwanted(tag):
                self.skipped += 1
                released += len(frame)
                continue
            batch.append(frame)
            total += len(frame)
        self.size -= total + released
        if self.hold is not None:
            self.hold.shrink(total + released)
        if self.size < self.limit:
            self.has_room.set()
        return batch

    async def get_batch(self, max_bytes: int) -> list[bytes]:
        if not await self.wait_data():
            return []
        return self.take(max_bytes)

    def close(self) -> None:
        self.closed = True
        if self.hold is not None:
            self.hold.release()
        self.has_data.set()
        self.has_room.set()


class FrameReader:
    """Reads a peer's uvarint-length-prefixed RPC frames, and shows the router the head of a
    frame whose rest is still arriving (:meth:`GossipRouter.frame_head`: an early IDONTWANT).

    A frame that arrives in pieces is assembled from them with one copy. ``hold``: when set, such
    a frame's announced length is reserved in it before it is assembled (:class:`BufferRefused`
    if refused), and held until the next frame is asked for.
    """

    def __init__(self, stream: INetStream, max_frame_size: int, hold: MemoryHold | None = None) -> None:
        self.stream = stream
        self.max_frame_size = max_frame_size
        self.hold = hold
        self.buf = b""
        self.pos = 0

    async def _read(self, size: int) -> bytes:
        """Up to ``size`` bytes; b"" at the end of the stream."""
        try:
            return bytes(await self.stream.read(size))
        except (StreamEOF, MuxedStreamEOF):
            return b""
        except (StreamError, MuxedStreamError) as exc:
            raise StreamClosedEarly(f"stream failed: {exc or type(exc).__name__}") from exc

    async def read_frame(self, on_head: Callable[[bytes], Awaitable[None]]) -> bytes | None:
        """The next frame, or None at a clean end of the stream; raises FramingError."""
        if self.hold is not None:
            self.hold.release()  # the last frame has been handled
        while True:
            decoded = decode_uvarint(self.buf, self.pos)
            if decoded is not None:
                break
            if len(self.buf) - self.pos >= 9:
                raise MalformedVarint("uvarint too long")
            data = await self._read(READ_SIZE)
            if not data:
                if self.pos < len(self.buf):
                    raise TruncatedFrame("stream ended inside a length prefix")
                return None
            self.buf = self.buf[self.pos :] + data
            self.pos = 0
        length, start = decoded
        if length > self.max_frame_size:
            raise FrameTooLarge(length, self.max_frame_size)
        end = start + length
        if end <= len(self.buf):
            self.pos = end
            buf = self.buf
            return buf if start == 0 and end == len(buf) else buf[start:end]
        reserve_frame(self.hold, length)
        parts = [self.buf[start:]]
        got = len(parts[0])
        self.buf, self.pos = b"", 0
        shown = False
        while got < length:
            if not shown and got >= min(HEAD_BYTES, length):
                shown = True
                head = parts[0] if len(parts) == 1 else b"".join(parts)
                await on_head(head[:HEAD_BYTES])
            data = await self._read(min(READ_SIZE, length - got))
            if not data:
                raise TruncatedFrame(f"stream ended {length - got} bytes short of a {length}-byte frame")
            parts.append(data)
            got += len(data)
        return b"".join(parts)


class BulkTurns:
    """Lets one peer's writer at a time send a bulk batch, choosing the next one at random.

    Everything here is one thread: seven 1 MiB writes interleaved finish together after seven
    writes' time, so every receiver gets the message late and at the same moment, and all of them
    forward it at once (the IDONTWANTs cross the copies on the wire). One at a time, the first
    receiver has it after one write's time and its IDONTWANT reaches the others before their turn
    comes, so queued copies they no longer want are skipped. Random order, because every node
    iterating the same mesh in the same order would send to the same peer first.
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.busy = False
        self.waiting: dict[object, trio.Event] = {}

    async def acquire(self, key: object) -> None:
        if not self.busy:
            self.busy = True
            return
        event = self.waiting[key] = trio.Event()
        try:
            await event.wait()
        except BaseException:
            if self.waiting.pop(key, None) is None:  # the turn was handed to us: pass it on
                self.release()
            raise

    def release(self) -> None:
        if self.waiting:
            key = self.rng.choice(list(self.waiting))
            self.waiting.pop(key).set()  # the turn passes on; busy stays True
        else:
            self.busy = False
