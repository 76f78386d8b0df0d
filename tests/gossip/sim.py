"""An in-memory network of gossip routers on a virtual clock (no sockets, no trio).

Frames travel as events ``(arrival_time, seq, dst, src, data)`` in a heap; links have a latency
(a multiple of ``tick`` so that frames arriving together are handed to ``handle_rpc`` as one
concatenated frame, which protobuf treats as one RPC) and a loss rate. Heartbeats are events
too, staggered per router. Misbehaviour is injected by the tests through ``publish`` of invalid
payloads or raw ``inject`` of frames.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from p2pshard.core.gossip import (
    MESHSUB_V12,
    Command,
    Connect,
    Deliver,
    GossipConfig,
    GossipRouter,
    Rejected,
    SendRpc,
)

HEARTBEAT = -1  # event kind marker in the ``src`` slot


class FakeSigner:
    """A signer whose signature is a fixed tag: lets big simulations skip ECDSA."""

    def __init__(self, peer_id: bytes) -> None:
        self._peer_id = peer_id

    @property
    def peer_id(self) -> bytes:
        return self._peer_id

    @property
    def key_field(self) -> bytes:
        return b""

    def sign(self, data: bytes) -> bytes:
        return b"ok"


class FakeVerifier:
    """Accepts exactly the :class:`FakeSigner` tag."""

    def verify(self, source: bytes, key: bytes, signed_data: bytes, signature: bytes) -> bool:
        return signature == b"ok"


@dataclass
class Link:
    latency: int  # in ticks
    loss: float = 0.0


@dataclass
class Node:
    index: int
    peer_id: bytes
    router: GossipRouter
    delivered: Counter[bytes] = field(default_factory=Counter)
    rejected: list[Rejected] = field(default_factory=list)
    connects: list[Connect] = field(default_factory=list)


def peer_id_of(i: int) -> bytes:
    return b"\x00\x08peer" + i.to_bytes(4, "big")


class Network:
    def __init__(
        self,
        n: int,
        config: GossipConfig,
        *,
        seed: int = 1,
        tick: float = 0.02,
        latency_ticks: tuple[int, int] = (1, 3),
        degree: int = 16,
        protocol: str | Callable[[int], str] = MESHSUB_V12,
    ) -> None:
        self.rng = random.Random(seed)
        self.tick = tick
        self.now = 0.0
        self.config = config
        self._queue: list[tuple[int, int, int, int, bytes]] = []  # (tick, seq, dst, src, data)
        self._tick_now = 0
        self._seq = 0
        self.frames_sent = 0
        self.frames_lost = 0
        self.latency_ticks = latency_ticks
        self.nodes: list[Node] = []
        self.by_id: dict[bytes, int] = {}
        self.links: dict[tuple[int, int], Link] = {}
        self.protocol = protocol
        for i in range(n):
            pid = peer_id_of(i)
            router = GossipRouter(
                pid,
                config,
                rng=random.Random(seed * 100_003 + i),
                signer=FakeSigner(pid),
                verifier=FakeVerifier(),
            )
            self.nodes.append(Node(i, pid, router))
            self.by_id[pid] = i
        # ring + random chords: connected, about ``degree`` links per node
        pairs: set[tuple[int, int]] = set()
        for i in range(n):
            pairs.add((i, (i + 1) % n))
        while len(pairs) < n * degree // 2:
            a, b = self.rng.randrange(n), self.rng.randrange(n)
            if a != b and (a, b) not in pairs and (b, a) not in pairs:
                pairs.add((a, b))
        for a, b in sorted(pairs):
            self.connect(a, b)
        self._hb_ticks = max(1, round(config.heartbeat_interval / tick))
        for node in self.nodes:
            self._push(self.rng.randrange(self._hb_ticks), node.index, HEARTBEAT, b"")

    # ----------------------------------------------------------- topology
    def _proto(self, i: int) -> str:
        return self.protocol(i) if callable(self.protocol) else self.protocol

    def connect(self, a: int, b: int) -> None:
        """``a`` dials ``b``; the pair speaks the lower of both protocols."""
        lat = self.rng.randint(*self.latency_ticks)
        self.links[(a, b)] = Link(lat)
        self.links[(b, a)] = Link(lat)
        proto = min(self._proto(a), self._proto(b))  # '/meshsub/1.0.0' < '/meshsub/1.2.0'
        na, nb = self.nodes[a], self.nodes[b]
        self.apply(a, na.router.add_peer(nb.peer_id, proto, True, self.now))
        self.apply(b, nb.router.add_peer(na.peer_id, proto, False, self.now))

    def neighbours(self, i: int) -> list[int]:
        return [b for (a, b) in self.links if a == i]

    # -------------------------------------------------------------- events
    def _push(self, t: int, dst: int, src: int, data: bytes) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (t, self._seq, dst, src, data))

    def apply(self, i: int, cmds: list[Command]) -> None:
        node = self.nodes[i]
        for cmd in cmds:
            if type(cmd) is SendRpc:
                j = self.by_id[cmd.peer_id]
                link = self.links[(i, j)]
                self.frames_sent += 1
                if link.loss and self.rng.random() < link.loss:
                    self.frames_lost += 1
                    continue
                self._push(self._tick_now + link.latency, j, i, cmd.data)
            elif type(cmd) is Deliver:
                node.delivered[cmd.msg_id] += 1
            elif type(cmd) is Rejected:
                node.rejected.append(cmd)
            elif type(cmd) is Connect:
                node.connects.append(cmd)

    def run_until(self, t_end: float) -> None:
        q = self._queue
        end = round(t_end / self.tick)
        nodes = self.nodes
        while q and q[0][0] <= end:
            k = q[0][0]
            self._tick_now = k
            t = self.now = k * self.tick
            batch: dict[tuple[int, int], list[bytes]] = defaultdict(list)
            beats: list[int] = []
            while q and q[0][0] == k:
                _, _, dst, src, data = heapq.heappop(q)
                if src == HEARTBEAT:
                    beats.append(dst)
                else:
                    batch[(dst, src)].append(data)
            for (dst, src), frames in batch.items():
                data = frames[0] if len(frames) == 1 else b"".join(frames)
                self.apply(dst, nodes[dst].router.handle_rpc(nodes[src].peer_id, data, t))
            for i in beats:
                self.apply(i, nodes[i].router.heartbeat(t))
                self._push(k + self._hb_ticks, i, HEARTBEAT, b"")
        self._tick_now = end
        self.now = end * self.tick

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    # ------------------------------------------------------------- actions
    def subscribe_all(self, topic: str) -> None:
        for node in self.nodes:
            self.apply(node.index, node.router.subscribe(topic, self.now))

    def publish(self, i: int, topic: str, data: bytes) -> bytes:
        mid, cmds = self.nodes[i].router.publish(topic, data, self.now)
        self.apply(i, cmds)
        return mid

    def inject(self, src: int, dst: int, data: bytes) -> None:
        """Deliver raw bytes from ``src`` to ``dst`` after the link latency (misbehaviour)."""
        self._push(self._tick_now + self.links[(src, dst)].latency, dst, src, data)

    # ---------------------------------------------------------- inspection
    def delivery_counts(self, msg_ids: list[bytes], nodes: list[int] | None = None) -> Counter[int]:
        """Histogram: how many times each (node, message) pair was delivered."""
        hist: Counter[int] = Counter()
        for node in self.nodes if nodes is None else [self.nodes[i] for i in nodes]:
            for mid in msg_ids:
                hist[node.delivered.get(mid, 0)] += 1
        return hist
