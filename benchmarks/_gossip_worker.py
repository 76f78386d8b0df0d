"""One node of the gossip benchmark (``benchmarks/gossip.py``), run as its own process.

``python benchmarks/_gossip_worker.py --impl ours|stock`` starts a node listening on 127.0.0.1,
prints ``{"addr": ...}`` and then answers JSON-line commands read from stdin with one JSON line on
stdout each. stderr goes wherever the parent points it (a log file).

Both implementations use the same py-libp2p host (``p2pshard.net.host.build_host``: secp256k1
identity, Noise, yamux, one connection per peer) and the same payloads; only the pubsub differs:

* ``ours``: ``p2pshard.open_node`` (our sans-IO router + Trio driver). Receptions per message are
  deliveries plus the router's ``message_duplicate`` drops (a duplicate is a full copy of a
  message that arrived after the first one).
* ``stock``: py-libp2p 0.8.1's ``Pubsub`` + ``GossipSub``. Receptions are counted by wrapping
  ``Pubsub.push_msg``, which its stream reader calls once for every message of every RPC received
  on a subscribed topic (duplicates and IWANT replies included) before its seen-cache check.

Payload: a header (magic, phase, seq, publish time from ``time.time()``) and padding; receivers
record ``time.time()`` when a message comes out of their subscription (same machine clock).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import struct
import sys
import time
from collections import Counter
from contextlib import AsyncExitStack
from typing import Any

import trio

TOPIC = "/bench/gossip"
HEADER = struct.Struct("!4sHId")
MAGIC = b"GBNC"
MIB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")
STOCK_MAX_RPC = 4 * MIB
"""The stock router's in- and outbound RPC cap, raised from its 1 MiB default to our max_rpc_size."""


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Recorder:
    """Receive times and reception counts per phase."""

    def __init__(self) -> None:
        self.phase = -1
        self.recv: dict[int, float] = {}
        self.pub_times: dict[int, float] = {}
        self.receptions: Counter[int] = Counter()  # phase -> copies received (stock only)
        self.rss: list[tuple[float, int, int]] = []
        self.sampling = False

    def on_message(self, data: bytes) -> None:
        now = time.time()
        if len(data) < HEADER.size:
            return
        magic, phase, seq, t_pub = HEADER.unpack_from(data)
        if magic != MAGIC or phase != self.phase:
            return
        if seq not in self.recv:
            self.recv[seq] = now
            self.pub_times[seq] = t_pub

    async def sample_rss(self) -> None:
        while True:
            if self.sampling:
                self.rss.append((time.time(), len(self.recv), rss_bytes()))
            await trio.sleep(0.2)


def yamux_waits(host: Any) -> dict[str, int]:
    """py-libp2p's yamux polls every 10 ms while a stream's send window is empty: count those
    waits and the receive windows' targets (autotuned) over all streams."""
    waits, targets = 0, []
    for conns in host.get_network().connections.values():
        for conn in conns if isinstance(conns, list) else [conns]:
            muxed = getattr(conn, "muxed_conn", None)
            for stream in getattr(muxed, "streams", {}).values():
                waits += getattr(stream, "_zero_window_waits", 0)
                targets.append(getattr(stream, "target_recv_window", 0))
    return {"zero_window_waits": waits, "max_recv_window_kib": max(targets, default=0) >> 10}


def payload(phase: int, seq: int, size: int, pad: bytes) -> bytes:
    head = HEADER.pack(MAGIC, phase, seq, time.time())
    return head + pad[: max(0, size - HEADER.size)]


class OursNode:
    settings: dict[str, Any]

    def __init__(self, stack: AsyncExitStack, rec: Recorder, args: argparse.Namespace) -> None:
        self.stack = stack
        self.rec = rec
        self.args = args

    async def start(self) -> str:
        from p2pshard import NodeConfig, open_node
        from p2pshard.net.discovery import Discovery

        if not self.args.with_discovery:
            # The benchmark dials the full mesh itself; the stock side runs no DHT. Without this,
            # each node's young-node lookups (every 1 s for 20 s) cost it ~20% of its CPU here.
            async def no_lookups(self: Discovery) -> None:
                await trio.sleep_forever()

            Discovery._discover_forever = no_lookups  # type: ignore[method-assign]
        overrides = json.loads(self.args.ours_config) if self.args.ours_config else {}
        if overrides:  # an experiment on the router's settings: e.g. {"flood_publish": false}
            import p2pshard.node
            from p2pshard.core.gossip import GossipConfig

            class Tuned:
                @staticmethod
                def build(**kw: Any) -> GossipConfig:
                    return GossipConfig.build(**{**kw, **overrides})

            p2pshard.node.GossipConfig = Tuned  # type: ignore[misc,assignment]
        self.node = await self.stack.enter_async_context(
            open_node(NodeConfig(listen=["/ip4/127.0.0.1/tcp/0"], gossip_heartbeat_s=1.0))
        )
        assert self.node.pubsub is not None
        self.pubsub = self.node.pubsub
        cfg = self.pubsub.router.config
        pcfg = self.pubsub.config
        self.settings = {
            "impl": "p2pshard (sans-IO router + Trio driver), via open_node()",
            "D/D_low/D_high/D_lazy": f"{cfg.d}/{cfg.d_low}/{cfg.d_high}/{cfg.d_lazy}",
            "heartbeat_s": cfg.heartbeat_interval,
            "history/gossip window": f"{cfg.history_length}/{cfg.history_gossip}",
            "flood_publish": cfg.flood_publish,
            "idontwant_threshold_B": cfg.idontwant_threshold,
            "max_message/max_rpc": f"{cfg.max_message_size >> 20} MiB/{cfg.max_rpc_size >> 20} MiB",
            "signing": cfg.signature_policy.value,
            "scoring": "on (p2pshard topics only; /bench/gossip has no topic params)",
            "peer_queue": f"{pcfg.peer_queue_bytes >> 20} MiB, publisher waits (backpressure)",
            "subscriber_queue": pcfg.subscriber_queue,
            "DHT discovery lookups": "on" if self.args.with_discovery else "off (mesh dialled directly)",
            "router overrides (experiment)": self.args.ours_config
            or "none (defaults as open_node builds them)",
        }
        return self.node.addrs[0]

    async def connect(self, addr: str) -> None:
        from p2pshard.net.host import parse_peer_addr

        await self.node.connector.connect(parse_peer_addr(addr))

    async def subscribe(self, nursery: trio.Nursery) -> None:
        channel = await self.stack.enter_async_context(self.pubsub.subscribe(TOPIC))

        async def pump() -> None:
            async for msg in channel:
                self.rec.on_message(msg.data)

        nursery.start_soon(pump)

    def status(self) -> dict[str, int]:
        return {
            "peers": len(self.pubsub.connected_pubsub_peers()),
            "topic_peers": len(self.pubsub.router.topic_peers(TOPIC)),
            "mesh": self.pubsub.mesh_sizes().get(TOPIC, 0),
        }

    def duplicates(self) -> int:
        return int(self.pubsub.router.stats.dropped.get("message_duplicate", 0))

    @property
    def host(self) -> Any:
        return self.node.host

    def counters(self) -> dict[str, int]:
        snap = {f"router.dropped.{k}": int(v) for k, v in self.pubsub.router.stats.dropped.items()}
        events = self.pubsub.router.stats.events
        for name in ("idontwant_sent", "idontwant_early"):  # early: said before the payload was in
            snap[f"router.{name}"] = int(events.get(name, 0))
        snap.update({k: int(v) for k, v in self.node.counters.snapshot().items() if "pubsub" in k})
        return snap

    async def publish(self, data: bytes) -> None:
        await self.pubsub.publish(TOPIC, data)


class StockNode:
    settings: dict[str, Any]

    def __init__(self, stack: AsyncExitStack, rec: Recorder, args: argparse.Namespace) -> None:
        self.stack = stack
        self.rec = rec
        self.args = args
        self.copies = 0

    async def start(self) -> str:
        import functools

        import multiaddr
        from libp2p.pubsub import gossipsub, rpc_queue
        from libp2p.pubsub import pubsub as pubsub_mod
        from libp2p.pubsub.gossipsub import GossipSub
        from libp2p.pubsub.pubsub import Pubsub
        from libp2p.tools.anyio_service import background_trio_service

        from p2pshard.identity import Identity
        from p2pshard.net.host import build_host, full_addrs

        # Its outbound queues are built with RpcQueue() defaults: a 1 MiB cap that silently drops a
        # 1 MiB message (payload + headers). Raise it to 4 MiB like ours; keep its queue length.
        pubsub_mod.RpcQueue = functools.partial(  # type: ignore[misc]
            rpc_queue.RpcQueue, max_message_size=STOCK_MAX_RPC
        )
        listen = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
        self.host = build_host(Identity.generate(), [listen])
        self.router = GossipSub(
            protocols=[gossipsub.PROTOCOL_ID_V12, gossipsub.PROTOCOL_ID_V11, gossipsub.PROTOCOL_ID],
            degree=6,
            degree_low=5,
            degree_high=12,
            gossip_window=3,
            gossip_history=5,
            heartbeat_interval=1,
            heartbeat_initial_delay=0.1,
            spam_protection_enabled=not self.args.stock_spam_limit_off,
            adaptive_gossip_enabled=not self.args.stock_adaptive_off,
        )
        self.pubsub = Pubsub(self.host, self.router, strict_signing=True, max_inbound_rpc_size=STOCK_MAX_RPC)
        self.settings = {
            "impl": "py-libp2p 0.8.1 Pubsub + GossipSub (same host: Noise, yamux, secp256k1)",
            "D/D_low/D_high/D_lazy": "6/5/12/(its gossip factor)",
            "heartbeat_s": 1,
            "history/gossip window": "5/3",
            "flood_publish": "n/a (not implemented: publishes to mesh peers)",
            "idontwant": "sent for every message to mesh peers (no threshold)",
            "max_message/max_rpc": "4 MiB in and out (raised from its silent 1 MiB)",
            "signing": "strict_sign",
            "scoring": "its defaults (weights 0)",
            "spam_protection (10 msg/s/topic)": "off"
            if self.args.stock_spam_limit_off
            else "ON (stock default)",
            "adaptive_gossip": "off (else it may stretch the heartbeat to 60 s)"
            if self.args.stock_adaptive_off
            else "ON (stock default)",
            "peer_queue": "32 RPCs, excess dropped (stock; not configurable)",
            "subscriber_queue": "32 (stock; excess dropped)",
            "eclipse_protection": "on (stock default)",
        }
        await self.stack.enter_async_context(self.host.run([listen]))
        await self.stack.enter_async_context(background_trio_service(self.pubsub))
        await self.stack.enter_async_context(background_trio_service(self.router))
        with trio.fail_after(10):
            await self.pubsub.wait_until_ready()
        my_id = self.host.get_id()
        original = self.pubsub.push_msg
        rec = self.rec

        async def counted_push_msg(forwarder: Any, msg: Any) -> None:
            if forwarder != my_id and len(msg.data) >= HEADER.size:
                magic, phase, _seq, _t = HEADER.unpack_from(msg.data)
                if magic == MAGIC:
                    rec.receptions[phase] += 1
            await original(forwarder, msg)

        self.pubsub.push_msg = counted_push_msg  # type: ignore[method-assign]
        return full_addrs(self.host)[0]

    async def connect(self, addr: str) -> None:
        from p2pshard.net.host import parse_peer_addr

        await self.host.connect(parse_peer_addr(addr))

    async def subscribe(self, nursery: trio.Nursery) -> None:
        sub = await self.pubsub.subscribe(TOPIC)

        async def pump() -> None:
            async for msg in sub:
                self.rec.on_message(bytes(msg.data))

        nursery.start_soon(pump)

    def status(self) -> dict[str, int]:
        return {
            "peers": len(self.pubsub.peers),
            "topic_peers": len(self.pubsub.peer_topics.get(TOPIC, ())),
            "mesh": len(self.router.mesh.get(TOPIC, ())),
        }

    def duplicates(self) -> int:
        return 0

    def counters(self) -> dict[str, int]:
        return {}

    async def publish(self, data: bytes) -> None:
        await self.pubsub.publish(TOPIC, data)


async def quiesce(node: Any, rec: Recorder, quiet_s: float = 0.3, limit_s: float = 3.0) -> None:
    """Wait until no copy of anything arrives for ``quiet_s`` (late duplicates of the previous
    phase must not be counted in the next one), at most ``limit_s``."""
    with trio.move_on_after(limit_s):
        last = (node.duplicates(), sum(rec.receptions.values()), len(rec.recv))
        while True:
            await trio.sleep(quiet_s)
            now = (node.duplicates(), sum(rec.receptions.values()), len(rec.recv))
            if now == last:
                return
            last = now


async def publish_phase(node: Any, phase: int, count: int, rate: float, size: int) -> dict[str, Any]:
    pad = os.urandom(size)
    errors: Counter[str] = Counter()
    t0 = time.perf_counter()
    published = 0
    for seq in range(count):
        delay = t0 + seq / rate - time.perf_counter()
        if delay > 0:
            await trio.sleep(delay)
        try:
            with trio.fail_after(30):
                await node.publish(payload(phase, seq, size, pad))
            published += 1
        except Exception as exc:  # counted and reported: the figure must show it
            errors[type(exc).__name__] += 1
    elapsed = time.perf_counter() - t0
    return {"published": published, "elapsed": elapsed, "errors": dict(errors)}


async def serve(args: argparse.Namespace) -> None:
    rec = Recorder()
    out = sys.stdout
    async with AsyncExitStack() as stack:
        node: Any = OursNode(stack, rec, args) if args.impl == "ours" else StockNode(stack, rec, args)
        addr = await node.start()
        nursery = await stack.enter_async_context(trio.open_nursery())
        stack.callback(nursery.cancel_scope.cancel)
        nursery.start_soon(rec.sample_rss)
        out.write(json.dumps({"addr": addr, "pid": os.getpid(), "settings": node.settings}) + "\n")
        out.flush()
        stdin = trio.lowlevel.FdStream(os.dup(0))
        buf = b""
        dup_start = 0
        cpu_start = cpu_seconds()
        while True:
            while b"\n" not in buf:
                chunk = await stdin.receive_some(65536)
                if not chunk:
                    return
                buf += chunk
            line, buf = buf.split(b"\n", 1)
            cmd = json.loads(line)
            reply: dict[str, Any] = {"ok": True}
            match cmd["cmd"]:
                case "connect":
                    failed = 0
                    for peer in cmd["peers"]:
                        try:
                            with trio.fail_after(10):
                                await node.connect(peer)
                        except Exception as exc:
                            failed += 1
                            reply["error"] = repr(exc)
                    reply["failed"] = failed
                case "subscribe":
                    await node.subscribe(nursery)
                case "status":
                    reply.update(node.status())
                case "phase_start":
                    if cmd.get("quiesce"):  # later phases start quiet: the previous one ended so
                        await quiesce(node, rec)
                    rec.phase = cmd["phase"]
                    rec.recv = {}
                    rec.pub_times = {}
                    rec.rss = []
                    rec.sampling = bool(cmd.get("sample_rss"))
                    cpu_start = cpu_seconds()
                    dup_start = node.duplicates()
                    reply["rss"] = rss_bytes()
                case "publish":
                    reply.update(
                        await publish_phase(node, cmd["phase"], cmd["count"], cmd["rate"], cmd["size"])
                    )
                case "progress":
                    reply["received"] = len(rec.recv)
                case "phase_end":
                    await quiesce(node, rec)
                    rec.sampling = False
                    seqs = sorted(rec.recv)
                    reply["seqs"] = seqs
                    reply["latency"] = [rec.recv[s] - rec.pub_times[s] for s in seqs]
                    reply["recv_times"] = [rec.recv[s] for s in seqs]
                    if args.impl == "ours":
                        reply["receptions"] = len(seqs) + node.duplicates() - dup_start
                    else:
                        reply["receptions"] = rec.receptions[rec.phase]
                    reply["rss_series"] = rec.rss
                    reply["cpu_s"] = cpu_seconds() - cpu_start
                    reply["rss"] = rss_bytes()
                    reply["peak_rss"] = peak_rss_bytes()
                case "counters":
                    reply["counters"] = node.counters()
                    reply["counters"].update(yamux_waits(node.host))
                    reply["peak_rss"] = peak_rss_bytes()
                case "quit":
                    out.write(json.dumps(reply) + "\n")
                    out.flush()
                    return
                case other:
                    reply = {"ok": False, "error": f"unknown command {other!r}"}
            out.write(json.dumps(reply) + "\n")
            out.flush()


def preload() -> None:
    """Import what a node needs, so that processes forked from the parent start at once."""
    import libp2p.pubsub.gossipsub
    import libp2p.pubsub.pubsub  # noqa: F401

    import p2pshard.node  # noqa: F401


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--impl", choices=["ours", "stock"], required=True)
    parser.add_argument("--stock-spam-limit-off", action="store_true")
    parser.add_argument("--stock-adaptive-off", action="store_true")
    parser.add_argument("--with-discovery", action="store_true")
    parser.add_argument("--ours-config", default="")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    profile_dir = os.environ.get("GOSSIP_BENCH_PROFILE")
    profiler = None
    if profile_dir:  # cProfile of the whole node, written at exit: <dir>/<impl>-<pid>.prof
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        trio.run(serve, args)
    except BaseException as exc:  # py-libp2p's shutdown noise ("Nursery is closed") and Ctrl-C
        if not isinstance(exc, KeyboardInterrupt):
            print(f"worker exit: {exc!r}", file=sys.stderr)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(os.path.join(str(profile_dir), f"{args.impl}-{os.getpid()}.prof"))
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
