"""Request/response over raw libp2p streams: one request per stream, framed protobuf, status codes.

Wire (specs/framing.md): the client opens a stream for the protocol id, writes one framed
``reqresp.Request`` and closes its write side; the server answers with one framed
``reqresp.Response`` followed, when ``stream_length > 0``, by exactly that many raw payload bytes
(the length is known up front, so the payload needs no further framing and is never reassembled).
Errors are answered with a status code when the stream still allows it, otherwise the stream is
reset. Every rejection is counted under ``reqresp.rejected.<reason>``.

Slots are guarded against slow and greedy peers (specs/limits.md): a client has
``request_timeout_s`` (1 s) from opening the stream to send its whole request, or the stream is
reset unanswered (``request_timeout``); one peer holds at most ``peer_share`` (a quarter) of a
protocol's ``max_concurrent`` slots, further requests get RESOURCE_EXHAUSTED (``peer_share``).
A request frame (server) and a response frame (client) are reserved with the resource manager
against their stream, as soon as their length is announced and before they are assembled; a
request refused is reset unanswered (``memory``), a response refused fails the call with
RESOURCE_EXHAUSTED.

py-libp2p's own ``request_response`` module is not used: it fails above ~6.5 MiB (FACTS.md).
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Protocol, TypeVar

import trio
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.protocol_muxer.exceptions import MultiselectClientError

from p2pshard.core.counters import Counters
from p2pshard.core.wire import reqresp_pb2 as pb
from p2pshard.core.wire.framing import FrameTooLarge, FramingError
from p2pshard.net.connector import Connector, DialError
from p2pshard.net.framed import BufferRefused, FramedStream, StreamClosedEarly
from p2pshard.net.transport import buffer_hold

log = logging.getLogger(__name__)


class Code(IntEnum):
    OK = pb.OK
    UNAVAILABLE = pb.UNAVAILABLE
    DEADLINE_EXCEEDED = pb.DEADLINE_EXCEEDED
    RESOURCE_EXHAUSTED = pb.RESOURCE_EXHAUSTED
    NOT_FOUND = pb.NOT_FOUND
    INVALID_ARGUMENT = pb.INVALID_ARGUMENT
    INTERNAL = pb.INTERNAL


class RpcError(Exception):
    """A request failed with a status code. Raised by handlers to answer with that code."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class UnsupportedProtocol(RpcError):
    def __init__(self, protocol: str, peer: ID) -> None:
        super().__init__(Code.NOT_FOUND, f"peer {peer} does not speak {protocol}")


@dataclass(frozen=True)
class Reply:
    body: bytes = b""
    payload: bytes | memoryview | None = None
    """Bulk bytes streamed after the response header, in frames of the protocol's chunk size."""
    sent: Callable[[], None] | None = None
    """Called once the whole reply is written (not when the client gives up before)."""


@dataclass(frozen=True)
class RequestContext:
    peer_id: ID
    protocol: str
    deadline_s: float


Handler = Callable[[RequestContext, bytes], Awaitable[Reply]]


@dataclass(frozen=True)
class ProtocolSpec:
    protocol_id: str
    handler: Handler
    max_request_size: int = 64 * 1024
    chunk_size: int = 1 << 20
    default_deadline_s: float = 10.0
    max_deadline_s: float = 120.0
    max_concurrent: int = 64


DEFAULT_REQUEST_TIMEOUT_S = 1.0
"""Time a client has to send its whole request frame once the stream is open; past it the stream
is reset unanswered (``reqresp.rejected.request_timeout``)."""
DEFAULT_PEER_SHARE = 0.25
"""The fraction of a protocol's ``max_concurrent`` slots one peer may hold at once."""


class PeerActivity(Protocol):
    """Told what peers do for us (the connection manager: a peer in a transfer is not trimmed, and
    a useful one is trimmed last)."""

    def transfer(self, peer: ID) -> AbstractContextManager[None]: ...

    def note_useful(self, peer: ID, amount: float = 1.0) -> None: ...


def _transferring(activity: PeerActivity | None, peer: ID, streaming: bool) -> AbstractContextManager[None]:
    return activity.transfer(peer) if activity is not None and streaming else contextlib.nullcontext()


class _Unanswered(Exception):
    """The stream is reset, not answered: the client did not send its request in time, or the
    request could not be reserved (the client may still be writing it, so no answer would be read)."""


def _encode_response(code: Code, message: str = "", body: bytes = b"", stream_length: int = 0) -> bytes:
    return pb.Response(
        code=pb.Code.ValueType(code),
        message=message,
        body=body,
        stream_length=stream_length,
    ).SerializeToString()


class ReqRespServer:
    """Dispatches inbound streams to protocol handlers; never lets a handler's error escape."""

    def __init__(
        self,
        host: IHost,
        counters: Counters,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
        peer_share: float = DEFAULT_PEER_SHARE,
    ) -> None:
        self.host = host
        self.counters = counters
        self.request_timeout_s = request_timeout_s
        self.peer_share = peer_share
        self._limits: dict[str, trio.Semaphore] = {}
        self._by_peer: dict[tuple[str, ID], int] = {}
        """Requests in progress per (protocol, peer): one peer holds at most its share of slots."""
        self.activity: PeerActivity | None = None

    def peer_limit(self, spec: ProtocolSpec) -> int:
        return max(1, int(spec.max_concurrent * self.peer_share))

    def register(self, spec: ProtocolSpec) -> None:
        self._limits[spec.protocol_id] = trio.Semaphore(spec.max_concurrent)

        async def on_stream(stream: INetStream) -> None:
            await self._serve(spec, stream)

        self.host.set_stream_handler(TProtocol(spec.protocol_id), on_stream)

    def _reject(self, spec: ProtocolSpec, reason: str) -> None:
        self.counters.incr(f"reqresp.rejected.{reason}")
        self.counters.incr(f"reqresp.rejected_by_protocol.{spec.protocol_id}")

    async def _serve(self, spec: ProtocolSpec, stream: INetStream) -> None:
        hold = buffer_hold(stream, "request")
        framed = FramedStream(stream, spec.max_request_size, hold)
        try:
            with hold:
                await self._serve_one(spec, framed, stream.muxed_conn.peer_id)
        except _Unanswered:
            await framed.reset()
        except Exception as exc:  # the peer went away mid-answer, or a bug: never kill the host
            self.counters.incr("reqresp.stream_errors")
            log.debug("%s: stream error: %r", spec.protocol_id, exc)
            await framed.reset()
        else:
            await framed.close()

    async def _serve_one(self, spec: ProtocolSpec, framed: FramedStream, peer: ID) -> None:
        limit = self._limits[spec.protocol_id]
        key = (spec.protocol_id, peer)
        held = self._by_peer.get(key, 0)
        try:
            limit.acquire_nowait()
        except trio.WouldBlock:
            self._reject(spec, "too_many_requests")
            await self._refuse(framed, "too many concurrent requests")
            return
        if held >= self.peer_limit(spec):
            limit.release()
            self._reject(spec, "peer_share")
            await self._refuse(framed, f"this peer already has {held} requests in progress")
            return
        self._by_peer[key] = held + 1
        try:
            with trio.move_on_after(min(self.request_timeout_s, spec.default_deadline_s)) as read_scope:
                request = await self._read_request(spec, framed)
            if read_scope.cancelled_caught:
                self._reject(spec, "request_timeout")
                raise _Unanswered
            if isinstance(request, RpcError):
                await framed.write_frame(_encode_response(request.code, request.message))
                return
            deadline = spec.default_deadline_s
            if request.deadline_ms:
                deadline = min(request.deadline_ms / 1000, spec.max_deadline_s)
            ctx = RequestContext(peer, spec.protocol_id, deadline)
            reply: Reply | RpcError
            with trio.move_on_after(deadline) as scope:
                try:
                    reply = await spec.handler(ctx, request.body)
                except RpcError as exc:
                    reply = exc
                except Exception as exc:
                    log.exception("%s handler failed", spec.protocol_id)
                    reply = RpcError(Code.INTERNAL, f"handler failed: {type(exc).__name__}")
            if scope.cancelled_caught:
                self.counters.incr("reqresp.handler_deadline_exceeded")
                await framed.write_frame(
                    _encode_response(Code.DEADLINE_EXCEEDED, "handler ran past the deadline")
                )
                return
            if isinstance(reply, RpcError):
                self.counters.incr(f"reqresp.answered.{reply.code.name.lower()}")
                await framed.write_frame(_encode_response(reply.code, reply.message))
                return
            with _transferring(self.activity, peer, reply.payload is not None):
                await self._write_reply(spec, framed, reply)
        finally:
            limit.release()
            left = self._by_peer.pop(key) - 1
            if left:
                self._by_peer[key] = left

    async def _refuse(self, framed: FramedStream, message: str) -> None:
        """Answer RESOURCE_EXHAUSTED without reading the request; a client that does not take the
        answer in time is reset."""
        with trio.move_on_after(self.request_timeout_s) as scope:
            await framed.write_frame(_encode_response(Code.RESOURCE_EXHAUSTED, message))
        if scope.cancelled_caught:
            raise _Unanswered

    async def _read_request(self, spec: ProtocolSpec, framed: FramedStream) -> pb.Request | RpcError:
        try:
            frame = await framed.read_required()
        except BufferRefused as exc:
            self._reject(spec, exc.reason)
            raise _Unanswered from exc
        except FrameTooLarge as exc:
            self._reject(spec, exc.reason)
            return RpcError(Code.RESOURCE_EXHAUSTED, str(exc))
        except (FramingError, StreamClosedEarly) as exc:
            reason = exc.reason if isinstance(exc, FramingError) else "truncated_frame"
            self._reject(spec, reason)
            return RpcError(Code.INVALID_ARGUMENT, str(exc))
        request = pb.Request()
        try:
            request.ParseFromString(frame)
        except DecodeError:
            self._reject(spec, "undecodable_request")
            return RpcError(Code.INVALID_ARGUMENT, "request is not a valid reqresp.Request protobuf")
        return request

    async def _write_reply(self, spec: ProtocolSpec, framed: FramedStream, reply: Reply) -> None:
        payload = memoryview(reply.payload) if reply.payload is not None else memoryview(b"")
        await framed.write_frame(_encode_response(Code.OK, body=reply.body, stream_length=len(payload)))
        await framed.write_raw(payload, spec.chunk_size)
        self.counters.incr("reqresp.answered.ok")
        if reply.sent is not None:
            reply.sent()


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    base_delay_s: float = 0.05
    max_delay_s: float = 2.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Exponential backoff with full jitter: uniform in [0, min(max, base·2^attempt)]."""
        return rng.uniform(0, min(self.max_delay_s, self.base_delay_s * (2**attempt)))


def _caused_by(exc: BaseException | None, kind: type[BaseException]) -> bool:
    for _ in range(10):  # a bounded walk down the __cause__/__context__ chain
        if exc is None:
            return False
        if isinstance(exc, kind):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


PayloadSink = Callable[[int, bytes], None]
"""Receives streamed payload bytes as (offset within the stream, data)."""
HeaderHook = Callable[[bytes, int], None]
"""Sees an OK response's (body, stream_length) before any payload byte; may raise RpcError to refuse."""


class ReqRespClient:
    def __init__(self, connector: Connector, counters: Counters, rng: random.Random | None = None) -> None:
        self.connector = connector
        self.counters = counters
        self.rng = rng or random.Random()
        self.activity: PeerActivity | None = None

    async def call(
        self,
        peer: ID,
        protocol: str,
        body: bytes,
        *,
        timeout_s: float = 10.0,
        retry: RetryPolicy = RetryPolicy(),
        max_response_size: int = 4 << 20,
        sink: PayloadSink | None = None,
        max_stream_length: int = 0,
        on_header: HeaderHook | None = None,
    ) -> bytes:
        """Send one request and return the response body; raises RpcError with the status.

        Retries with exponential backoff on UNAVAILABLE and on connection failures, within
        ``timeout_s`` overall. A streamed payload goes to ``sink`` (and at most
        ``max_stream_length`` bytes of it are accepted); ``on_header`` sees the response body
        before the payload, so that the caller can size where the payload goes.
        """
        last: RpcError = RpcError(Code.UNAVAILABLE, "no attempt made")
        with _transferring(self.activity, peer, sink is not None), trio.move_on_after(timeout_s) as scope:
            deadline = trio.current_time() + timeout_s
            for attempt in range(retry.attempts):
                remaining = deadline - trio.current_time()
                try:
                    answer = await self._attempt(
                        peer, protocol, body, remaining, max_response_size, sink, max_stream_length, on_header
                    )
                    if self.activity is not None:
                        self.activity.note_useful(peer)
                    return answer
                except RpcError as exc:
                    last = exc
                    if exc.code != Code.UNAVAILABLE or isinstance(exc, UnsupportedProtocol):
                        raise
                self.counters.incr("reqresp.client.retries")
                await trio.sleep(retry.delay(attempt, self.rng))
        if scope.cancelled_caught:
            raise RpcError(Code.DEADLINE_EXCEEDED, f"{protocol} to {peer}: no answer in {timeout_s:.1f}s")
        raise last

    async def _attempt(
        self,
        peer: ID,
        protocol: str,
        body: bytes,
        remaining_s: float,
        max_response_size: int,
        sink: PayloadSink | None,
        max_stream_length: int,
        on_header: HeaderHook | None,
    ) -> bytes:
        try:
            stream = await self.connector.open_stream(peer, protocol)
        except DialError as exc:
            raise RpcError(Code.UNAVAILABLE, str(exc)) from exc
        except Exception as exc:
            if _caused_by(exc, MultiselectClientError):  # the peer answered "na" to the protocol
                raise UnsupportedProtocol(protocol, peer) from exc
            raise RpcError(Code.UNAVAILABLE, f"cannot open stream: {exc}") from exc
        hold = buffer_hold(stream, "response")
        framed = FramedStream(stream, max_response_size, hold)
        ok = False
        try:
            request = pb.Request(body=body, deadline_ms=max(1, int(remaining_s * 1000)))
            await framed.write_frame(request.SerializeToString())
            await stream.close_write()  # type: ignore[attr-defined]
            header = pb.Response()
            header.ParseFromString(await framed.read_required())
            if header.code != pb.OK:
                raise RpcError(Code(header.code), header.message or "(no message)")
            if on_header is not None:
                on_header(header.body, header.stream_length)
            if header.stream_length:
                if sink is None or header.stream_length > max_stream_length:
                    raise RpcError(
                        Code.RESOURCE_EXHAUSTED,
                        f"response streams {header.stream_length} bytes, more than allowed",
                    )
                await framed.read_raw(header.stream_length, sink)
            ok = True
            return bytes(header.body)
        except BufferRefused as exc:
            raise RpcError(Code.RESOURCE_EXHAUSTED, f"response from {peer}: {exc}") from exc
        except (FramingError, DecodeError, StreamClosedEarly) as exc:
            raise RpcError(Code.UNAVAILABLE, f"bad response from {peer}: {exc}") from exc
        except ValueError as exc:  # an unknown status code
            raise RpcError(Code.INTERNAL, f"bad response from {peer}: {exc}") from exc
        finally:
            hold.release()
            if ok:
                await framed.close()
            else:
                await framed.reset()


# -- protocols whose request and response are single protobuf messages -----------------------

Req = TypeVar("Req", bound=ProtoMessage)
Resp = TypeVar("Resp", bound=ProtoMessage)


def decode_or_reject(message_type: type[Req], body: bytes, code: Code = Code.INVALID_ARGUMENT) -> Req:
    """Parse ``body`` as ``message_type``, or fail with ``code`` naming the type."""
    message = message_type()
    try:
        message.ParseFromString(body)
    except DecodeError as exc:
        raise RpcError(code, f"not a {message_type.DESCRIPTOR.name}") from exc
    return message


def unary_spec(
    protocol_id: str,
    request_type: type[Req],
    handler: Callable[[RequestContext, Req], Awaitable[ProtoMessage]],
    **limits: Any,
) -> ProtocolSpec:
    """A protocol answering one ``request_type`` with one protobuf message (no streamed payload)."""

    async def handle(ctx: RequestContext, body: bytes) -> Reply:
        response = await handler(ctx, decode_or_reject(request_type, body))
        return Reply(body=response.SerializeToString())

    return ProtocolSpec(protocol_id, handle, **limits)


async def call_unary(
    client: ReqRespClient,
    peer: ID,
    protocol_id: str,
    request: ProtoMessage,
    response_type: type[Resp],
    *,
    timeout_s: float,
    max_response_size: int,
) -> Resp:
    """One request, one protobuf answer; an undecodable answer is the peer's INTERNAL error."""
    body = await client.call(
        peer,
        protocol_id,
        request.SerializeToString(),
        timeout_s=timeout_s,
        max_response_size=max_response_size,
    )
    return decode_or_reject(response_type, body, Code.INTERNAL)
