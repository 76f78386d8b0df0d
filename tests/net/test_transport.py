"""The tuned Noise session hands on exactly the bytes the stock one would, in any read pattern."""

from __future__ import annotations

import pytest
from libp2p.io.exceptions import ConnectionClosedError, IncompleteReadError

from p2pshard.net.transport import BufferedSecureSession


class _Messages:
    """Stands in for BufferedNoiseReadWriter: decrypted messages in order, then b"" (closed)."""

    def __init__(self, messages: list[bytes]) -> None:
        self.messages = list(messages)

    async def read_msg(self, prefix_encoded: bool = False) -> bytes:
        return self.messages.pop(0) if self.messages else b""


def _session(messages: list[bytes]) -> BufferedSecureSession:
    session = BufferedSecureSession.__new__(BufferedSecureSession)
    session.conn = _Messages(messages)  # type: ignore[assignment]
    session._tail, session._tail_at = b"", 0
    return session


async def test_reads_of_any_size_see_the_byte_sequence() -> None:
    messages = [bytes([i]) * size for i, size in enumerate([12, 65507, 65519, 3, 70000])]
    whole = b"".join(messages)
    for pattern in ([12, 262064, 1000], [1, 2, 3, 5, 8, 13], [None], [65519]):
        session = _session(messages)
        got = bytearray()
        step = 0
        while len(got) < len(whole):
            n = pattern[step % len(pattern)]
            piece = await session.read(n)
            assert piece and (n is None or len(piece) <= n)
            got += piece
            step += 1
        assert got == whole


async def test_read_exactly_spans_messages_and_keeps_the_rest() -> None:
    session = _session([b"h" * 12 + b"a" * 100, b"b" * 50, b"c" * 10])
    assert await session.read_exactly(12) == b"h" * 12
    assert await session.read_exactly(155) == b"a" * 100 + b"b" * 50 + b"c" * 5
    assert await session.read(100) == b"c" * 5


async def test_closed_connection() -> None:
    session = _session([b"abc"])
    with pytest.raises(IncompleteReadError):
        await session.read_exactly(4)
    with pytest.raises(ConnectionClosedError):
        await session.read(1)


async def test_connections_run_on_the_tuned_session_and_muxer() -> None:
    from p2pshard import NodeConfig, open_node
    from p2pshard.net.host import parse_peer_addr
    from p2pshard.net.transport import TunedYamux

    async with open_node(NodeConfig()) as a, open_node(NodeConfig(bootstrap=[a.addrs[0]])) as b:
        await b.connector.connect(parse_peer_addr(a.addrs[0]))
        for node in (a, b):
            conns = node.host.get_network().get_connections()
            assert conns
            for conn in conns:
                assert type(conn.muxed_conn) is TunedYamux
                assert isinstance(conn.muxed_conn.secured_conn, BufferedSecureSession)
