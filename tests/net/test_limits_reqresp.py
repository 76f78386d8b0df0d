"""Request slots: a slow or greedy peer cannot take a protocol away from everyone else.

Status allows 16 requests at once. It used to wait 5 s for each request to arrive and to give
slots first come, first served, so 32 one-byte streams per second kept it answering
RESOURCE_EXHAUSTED to every honest client. These tests fail on that code.
"""

from __future__ import annotations

import trio
from libp2p.abc import INetStream

from p2pshard import NodeConfig, open_node
from p2pshard.net.host import parse_peer_addr
from p2pshard.net.reqresp import Code, RpcError
from p2pshard.node import Node
from p2pshard.protocols.status import STATUS_PROTOCOL, fetch_status
from tests.util import eventually


async def _slow_streams(attacker: Node, server: Node, per_second: int, seconds: float) -> list[INetStream]:
    """Open ``per_second`` status streams a second, each sending one byte of its request, then nothing."""
    opened: list[INetStream] = []
    end = trio.current_time() + seconds
    while trio.current_time() < end:
        for _ in range(per_second // 8):
            try:
                stream = await attacker.connector.open_stream(server.peer_id, STATUS_PROTOCOL)
                await stream.write(b"\x05")  # "5 bytes follow", which never do
                opened.append(stream)
            except Exception:
                pass  # reset under us: what the server does to slow streams
        await trio.sleep(1 / 8)
    return opened


async def test_slow_streams_do_not_deny_status_to_honest_clients() -> None:
    async with (
        open_node(NodeConfig()) as server,
        open_node(NodeConfig(), client_only=True) as attacker,
        open_node(NodeConfig(), client_only=True) as honest,
    ):
        for node in (attacker, honest):
            await node.connector.connect(parse_peer_addr(server.addrs[0]))
        answers: list[Code] = []

        async def ask_every_100ms(until: float) -> None:
            while trio.current_time() < until:
                try:
                    await fetch_status(honest.client, server.peer_id, timeout_s=2)
                    answers.append(Code.OK)
                except RpcError as exc:
                    answers.append(exc.code)
                await trio.sleep(0.1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(_slow_streams, attacker, server, 32, 3.0)
            await trio.sleep(1.0)  # let the attacker fill what it can
            await ask_every_100ms(trio.current_time() + 2.0)
        assert len(answers) >= 5
        assert answers == [Code.OK] * len(answers)
        assert server.counters.get("reqresp.rejected.request_timeout") > 0
        assert server.counters.get("reqresp.rejected.peer_share") > 0


async def test_a_slow_request_is_reset_after_the_request_timeout() -> None:
    async with open_node(NodeConfig()) as server, open_node(NodeConfig(), client_only=True) as client:
        await client.connector.connect(parse_peer_addr(server.addrs[0]))
        stream = await client.connector.open_stream(server.peer_id, STATUS_PROTOCOL)
        await stream.write(b"\x05")
        started = trio.current_time()
        await eventually(lambda: server.counters.get("reqresp.rejected.request_timeout") == 1, within_s=5)
        assert trio.current_time() - started < 2.5  # the default request timeout is 1 s
        with trio.fail_after(5):
            try:
                data = await stream.read(100)
            except Exception:
                data = b""  # reset: what we expect
        assert data == b""  # no answer was written
