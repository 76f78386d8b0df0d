from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from p2pshard import NodeConfig, open_node
from p2pshard.node import Node


@pytest.fixture
async def two_nodes() -> AsyncIterator[tuple[Node, Node]]:
    """Two connected nodes on 127.0.0.1: (server, client)."""
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(open_node(NodeConfig()))
        b = await stack.enter_async_context(open_node(NodeConfig(bootstrap=[a.addrs[0]])))
        yield a, b
