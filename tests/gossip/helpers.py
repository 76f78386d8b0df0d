"""Small helpers for unit tests: one router under test, hand-made peers and RPCs."""

from __future__ import annotations

import random
from typing import Any

from p2pshard.core.gossip import (
    MESHSUB_V12,
    Command,
    Deliver,
    GossipConfig,
    GossipRouter,
    Rejected,
    SendRpc,
)
from p2pshard.core.wire import rpc_pb2

from .sim import FakeSigner, FakeVerifier, peer_id_of

TOPIC = "/p2pshard/test/votes/proto"
ME = peer_id_of(9999)


def config(**kw: Any) -> GossipConfig:
    base: dict[str, Any] = dict(d=3, d_low=2, d_high=4, d_score=1, d_out=1, d_lazy=2)
    base.update(kw)
    return GossipConfig.build(**base)


def router(cfg: GossipConfig | None = None, seed: int = 0) -> GossipRouter:
    return GossipRouter(
        ME, cfg or config(), rng=random.Random(seed), signer=FakeSigner(ME), verifier=FakeVerifier()
    )


def add_peers(
    r: GossipRouter,
    n: int,
    *,
    protocol: str = MESHSUB_V12,
    outbound: bool = True,
    topic: str | None = TOPIC,
    now: float = 0.0,
    start: int = 0,
) -> list[bytes]:
    """Connect ``n`` peers, each announcing ``topic``."""
    pids = []
    for i in range(start, start + n):
        pid = peer_id_of(i)
        r.add_peer(pid, protocol, outbound, now)
        if topic is not None:
            r.handle_rpc(pid, sub_rpc(topic), now)
        pids.append(pid)
    return pids


def sub_rpc(topic: str, subscribe: bool = True) -> bytes:
    rpc = rpc_pb2.RPC()
    rpc.subscriptions.add(subscribe=subscribe, topicid=topic)
    return rpc.SerializeToString()


def message(
    author: bytes, seq: int, data: bytes, topic: str = TOPIC, signature: bytes = b"ok"
) -> rpc_pb2.Message:
    m = rpc_pb2.Message(data=data, topic=topic, seqno=seq.to_bytes(8, "big"), signature=signature)
    setattr(m, "from", author)
    return m


def msg_rpc(*msgs: rpc_pb2.Message) -> bytes:
    rpc = rpc_pb2.RPC()
    rpc.publish.extend(msgs)
    return rpc.SerializeToString()


def ctrl_rpc(**fields: Any) -> bytes:
    rpc = rpc_pb2.RPC()
    ctrl = rpc.control
    for name, items in fields.items():
        for item in items:
            getattr(ctrl, name).add(**item)
    return rpc.SerializeToString()


def sent(cmds: list[Command], peer: bytes | None = None) -> list[rpc_pb2.RPC]:
    """Decode the frames sent (to ``peer`` if given)."""
    out = []
    for c in cmds:
        if isinstance(c, SendRpc) and (peer is None or c.peer_id == peer):
            rpc = rpc_pb2.RPC()
            rpc.ParseFromString(c.data)
            out.append(rpc)
    return out


def merged(cmds: list[Command], peer: bytes) -> rpc_pb2.RPC:
    rpc = rpc_pb2.RPC()
    for part in sent(cmds, peer):
        rpc.MergeFrom(part)
    return rpc


def delivered(cmds: list[Command]) -> list[Deliver]:
    return [c for c in cmds if isinstance(c, Deliver)]


def rejected(cmds: list[Command]) -> list[Rejected]:
    return [c for c in cmds if isinstance(c, Rejected)]
