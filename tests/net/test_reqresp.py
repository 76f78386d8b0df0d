"""Request/response over real libp2p streams between two in-process nodes on 127.0.0.1."""

from __future__ import annotations

import pytest
import trio

from p2pshard.core.wire import reqresp_pb2 as pb
from p2pshard.core.wire.framing import FramingError, encode_frame, encode_uvarint
from p2pshard.net.framed import FramedStream, StreamClosedEarly
from p2pshard.net.reqresp import (
    Code,
    ProtocolSpec,
    Reply,
    RequestContext,
    RetryPolicy,
    RpcError,
    UnsupportedProtocol,
)
from p2pshard.node import Node
from p2pshard.protocols.status import STATUS_PROTOCOL, fetch_status
from tests.util import eventually


async def _raw_exchange(client: Node, server: Node, protocol: str, data: bytes) -> pb.Response | None:
    """Write raw bytes on a fresh stream; return the decoded response, or None if the stream was reset."""
    stream = await client.connector.open_stream(server.peer_id, protocol)
    framed = FramedStream(stream, 1 << 20)
    await stream.write(data)
    await stream.close_write()  # type: ignore[attr-defined]
    try:
        with trio.fail_after(5):
            frame = await framed.read_frame()
    except (StreamClosedEarly, FramingError, trio.TooSlowError):
        return None  # reset, or no answer: the server refused to talk
    if frame is None:
        return None
    resp = pb.Response()
    resp.ParseFromString(frame)
    return resp


async def _still_serves(client: Node, server: Node) -> None:
    status = await fetch_status(client.client, server.peer_id)
    assert status.peer_id == server.peer_id.to_base58()


async def test_status_lists_peer_protocols_and_version(two_nodes: tuple[Node, Node]) -> None:
    server, client = two_nodes
    status = await fetch_status(client.client, server.peer_id)
    assert status.version and status.agent.startswith("p2pshard/")
    assert STATUS_PROTOCOL in status.protocols
    assert status.uptime_s >= 0
    # the asking peer is left out of the peer list
    assert client.peer_id.to_base58() not in [p.peer_id for p in status.peers]


async def test_garbage_gets_invalid_argument_and_is_counted(two_nodes: tuple[Node, Node]) -> None:
    server, client = two_nodes
    resp = await _raw_exchange(client, server, STATUS_PROTOCOL, encode_frame(b"\xff\xff\xff garbage"))
    assert resp is not None and resp.code == Code.INVALID_ARGUMENT
    assert server.counters.get("reqresp.rejected.undecodable_request") == 1
    await _still_serves(client, server)


async def test_oversized_length_prefix_gets_resource_exhausted(two_nodes: tuple[Node, Node]) -> None:
    server, client = two_nodes
    resp = await _raw_exchange(client, server, STATUS_PROTOCOL, encode_uvarint(1 << 40) + b"x" * 10)
    assert resp is not None and resp.code == Code.RESOURCE_EXHAUSTED
    assert "exceeds the limit" in resp.message
    assert server.counters.get("reqresp.rejected.frame_too_large") == 1
    await _still_serves(client, server)


async def test_truncated_frame_is_rejected(two_nodes: tuple[Node, Node]) -> None:
    server, client = two_nodes
    resp = await _raw_exchange(client, server, STATUS_PROTOCOL, encode_uvarint(100) + b"short")
    assert resp is not None and resp.code == Code.INVALID_ARGUMENT
    assert server.counters.get("reqresp.rejected.truncated_frame") == 1
    await _still_serves(client, server)


async def test_malformed_varint_is_rejected(two_nodes: tuple[Node, Node]) -> None:
    server, client = two_nodes
    resp = await _raw_exchange(client, server, STATUS_PROTOCOL, b"\xff" * 12)
    assert resp is not None and resp.code == Code.INVALID_ARGUMENT
    assert server.counters.get("reqresp.rejected.malformed_varint") == 1
    await _still_serves(client, server)


async def test_unknown_protocol_is_refused_and_counted(two_nodes: tuple[Node, Node]) -> None:
    server, client = two_nodes
    with pytest.raises(UnsupportedProtocol) as refused:
        await client.client.call(server.peer_id, "/p2pshard/nope/1.0.0", b"", timeout_s=5)
    assert refused.value.code == Code.NOT_FOUND
    await eventually(lambda: server.counters.get("reqresp.rejected.negotiation_failed") >= 1)
    await _still_serves(client, server)


async def test_handler_errors_become_status_codes(two_nodes: tuple[Node, Node]) -> None:
    server, client = two_nodes

    async def broken(ctx: RequestContext, body: bytes) -> Reply:
        if body == b"missing":
            raise RpcError(Code.NOT_FOUND, "no such thing")
        raise KeyError("bug")

    server.register(ProtocolSpec("/test/broken/1.0.0", broken))
    for body, code in [(b"missing", Code.NOT_FOUND), (b"bug", Code.INTERNAL)]:
        with pytest.raises(RpcError) as failed:
            await client.client.call(server.peer_id, "/test/broken/1.0.0", body, timeout_s=5)
        assert failed.value.code == code
    await _still_serves(client, server)


async def test_unavailable_is_retried_with_backoff(two_nodes: tuple[Node, Node]) -> None:
    server, client = two_nodes
    calls = 0

    async def flaky(ctx: RequestContext, body: bytes) -> Reply:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise RpcError(Code.UNAVAILABLE, "warming up")
        return Reply(body=b"ok:" + body)

    server.register(ProtocolSpec("/test/flaky/1.0.0", flaky))
    out = await client.client.call(
        server.peer_id,
        "/test/flaky/1.0.0",
        b"x",
        timeout_s=10,
        retry=RetryPolicy(attempts=4, base_delay_s=0.01),
    )
    assert out == b"ok:x" and calls == 3
    assert client.counters.get("reqresp.client.retries") == 2


async def test_deadline_exceeded(two_nodes: tuple[Node, Node]) -> None:
    server, client = two_nodes

    async def slow(ctx: RequestContext, body: bytes) -> Reply:
        await trio.sleep(30)
        return Reply()

    server.register(ProtocolSpec("/test/slow/1.0.0", slow))
    with pytest.raises(RpcError) as late:
        await client.client.call(server.peer_id, "/test/slow/1.0.0", b"", timeout_s=0.5)
    assert late.value.code == Code.DEADLINE_EXCEEDED
    await _still_serves(client, server)


async def test_concurrency_limit_answers_resource_exhausted(two_nodes: tuple[Node, Node]) -> None:
    server, client = two_nodes
    release = trio.Event()

    async def held(ctx: RequestContext, body: bytes) -> Reply:
        await release.wait()
        return Reply(body=b"done")

    server.register(ProtocolSpec("/test/held/1.0.0", held, max_concurrent=1))
    results: list[bytes] = []
    async with trio.open_nursery() as nursery:

        async def first() -> None:
            results.append(await client.client.call(server.peer_id, "/test/held/1.0.0", b"", timeout_s=10))

        nursery.start_soon(first)
        await eventually(lambda: server.server._limits["/test/held/1.0.0"].value == 0)
        with pytest.raises(RpcError) as refused:  # a second concurrent request is refused
            await client.client.call(server.peer_id, "/test/held/1.0.0", b"", timeout_s=5)
        assert refused.value.code == Code.RESOURCE_EXHAUSTED
        release.set()
    assert results == [b"done"]
    assert server.counters.get("reqresp.rejected.too_many_requests") == 1
