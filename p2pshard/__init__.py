"""p2pshard: a decentralized training network and the libp2p protocol library under it.

Embedding API::

    async with p2pshard.open_node(p2pshard.NodeConfig(listen=["/ip4/127.0.0.1/tcp/0"])) as node:
        print(node.addrs)
"""

from __future__ import annotations

__version__ = "0.1.0"

from p2pshard.config import NodeConfig
from p2pshard.events import NodeEvent
from p2pshard.node import Node, open_node

__all__ = ["Node", "NodeConfig", "NodeEvent", "__version__", "open_node"]
