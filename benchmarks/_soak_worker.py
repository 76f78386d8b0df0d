"""Worker processes of ``benchmarks/soak.py``; each role is one process the benchmark starts and
ends by PID. Results go to a JSON-lines file (``--out``), one record per request.

* ``node -- ARGS``: the node under test: ``p2pshard ARGS`` (``start --no-train ...``) with one
  pinned blob of ``--blob-mib`` put in its store as it opens (the CLI has no way to add one), so
  that honest peers have something to fetch.
* ``honest``: short inbound connections at a steady rate, each a fresh identity and host that
  connects, asks ``/p2pshard/status/1.0.0`` once and disconnects. Records ``{"k": "s", "t", "ok",
  "ms", "err"}``; ``ms`` is connect + status (what a ``p2pshard status`` user waits for).
* ``gossip``: two honest nodes joined to the node under test (and, by a guard, only to it): one
  publishes signed ``capacity`` messages at a steady rate, the other receives them through the
  node (``"gp"``/``"gr"`` records), fetches the node's blob over ``/p2pshard/blob/1.0.0``
  (``"b"``), and asks the node's status over its kept connection every 2 s (``"ps"``, with the
  node's counters). Told when to start on stdin once it has printed ``{"ready": ...}``.
* ``attack KIND``: one attacker of ``_soak_attacks.py``; prints its result as one JSON line.

Honest clients dial from their own loopback addresses (127.10-209.w.x, one per connection),
as honest peers come from many machines; attackers dial from 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import sys
import time
from typing import IO, Any

import trio

MIB = 1 << 20


def blob_bytes(mib: int) -> bytes:
    return hashlib.sha256(b"p2pshard-soak").digest() * (MIB // 32) * mib


async def sleep_until(wall: float) -> None:
    await trio.sleep(max(0.0, wall - time.time()))


def spread_source_ips(worker: int) -> None:
    """Bind every outbound loopback dial of this process to a fresh source address."""
    orig = trio.open_tcp_stream
    counter = itertools.count()

    async def open_from(host: str, port: int, **kw: Any) -> trio.SocketStream:
        n = next(counter)
        if host.startswith("127.") and kw.get("local_address") is None:
            kw["local_address"] = f"127.{10 + n % 200}.{worker % 250}.{1 + (n // 200) % 250}"
        return await orig(host, port, **kw)

    trio.open_tcp_stream = open_from  # type: ignore[assignment]  # py-libp2p's TCP dial calls it


def error_kind(stage: str, exc: BaseException) -> str:
    """A short, stable name for a failure: ``stage:ExceptionType`` or ``stage:RPC_CODE``."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    code = getattr(exc, "code", None)
    if code is not None and hasattr(code, "name"):
        return f"{stage}:{code.name}"
    if isinstance(exc, trio.TooSlowError):
        return f"{stage}:timeout"
    return f"{stage}:{type(exc).__name__}"


class Records:
    def __init__(self, path: str) -> None:
        self.file: IO[str] = open(path, "w", buffering=1 << 16)  # noqa: SIM115  # closed in close()
        self.last_flush = time.monotonic()

    def add(self, **record: Any) -> None:
        self.file.write(json.dumps(record, separators=(",", ":")) + "\n")
        if time.monotonic() - self.last_flush > 1.0:
            self.file.flush()
            self.last_flush = time.monotonic()

    def close(self) -> None:
        self.file.close()


# -- node --------------------------------------------------------------------------------------


def run_node(blob_mib: int, cli_args: list[str]) -> None:
    import p2pshard.cli as cli

    orig = cli.open_node

    @contextlib.asynccontextmanager
    async def seeded(config: Any, **kw: Any) -> Any:
        async with orig(config, **kw) as node:
            try:
                digest = node.blobs.store.put(blob_bytes(blob_mib), pin=True)
                print(json.dumps({"event": "soak_blob", "digest": digest.hex()}), flush=True)
            except Exception as exc:  # the store moved: blob fetches will say NOT_FOUND
                print(json.dumps({"event": "soak_blob", "error": repr(exc)}), flush=True)
            yield node

    cli.open_node = seeded  # type: ignore[assignment]
    cli.main(cli_args, prog_name="p2pshard")


# -- honest short connections ------------------------------------------------------------------


async def honest(args: argparse.Namespace) -> None:
    from p2pshard.core.counters import Counters
    from p2pshard.identity import Identity
    from p2pshard.net.connector import Connector
    from p2pshard.net.host import build_host, parse_peer_addr
    from p2pshard.net.reqresp import ReqRespClient
    from p2pshard.protocols.status import fetch_status

    spread_source_ips(args.worker)
    info = parse_peer_addr(args.addr)
    out = Records(args.out)
    slots = trio.Semaphore(args.max_inflight)

    async def one() -> None:
        t = time.time()
        stage = "setup"
        answered_ms: float | None = None
        connect_ms = 0.0
        try:
            with trio.fail_after(args.timeout):
                host = build_host(Identity.generate(), [], max_peers=1)
                async with host.run([]):
                    counters = Counters()
                    connector = Connector(host, counters, dial_timeout_s=args.timeout)
                    stage = "connect"
                    await connector.connect(info)
                    connect_ms = (time.time() - t) * 1000
                    stage = "status"
                    await fetch_status(
                        ReqRespClient(connector, counters), info.peer_id, timeout_s=args.timeout
                    )
                    answered_ms = (time.time() - t) * 1000
                    stage = "close"
                    # Leaving host.run() does not close the connection (py-libp2p 0.8.1): the
                    # node would see it open until this process ends. Close it as a client would.
                    await host.disconnect(info.peer_id)
            out.add(k="s", t=t, ok=1, ms=answered_ms, cms=connect_ms)
        except Exception as exc:
            if answered_ms is not None:  # answered; only the teardown failed
                out.add(k="s", t=t, ok=1, ms=answered_ms, cms=connect_ms, close_err=error_kind(stage, exc))
            else:
                out.add(k="s", t=t, ok=0, ms=(time.time() - t) * 1000, err=error_kind(stage, exc))
        finally:
            slots.release()

    await sleep_until(args.start_at)
    t0 = time.time()
    async with trio.open_nursery() as nursery:
        for i in itertools.count():
            due = t0 + i / args.rate
            if due >= args.stop_at:
                break
            await sleep_until(due)
            await slots.acquire()  # at most --max-inflight at once: the schedule slips instead
            nursery.start_soon(one)
    out.close()


# -- gossip, blob fetches and status over kept connections -------------------------------------


async def gossip(args: argparse.Namespace) -> None:
    from p2pshard import NodeConfig, open_node
    from p2pshard.core.wire import topics_pb2
    from p2pshard.net.discovery import Discovery
    from p2pshard.net.host import parse_peer_addr
    from p2pshard.protocols.status import fetch_status

    async def no_lookups(self: Discovery) -> None:  # these two talk to the node under test only
        await trio.sleep_forever()

    Discovery._discover_forever = no_lookups  # type: ignore[method-assign]
    spread_source_ips(args.worker)
    info = parse_peer_addr(args.addr)
    out = Records(args.out)
    blob = blob_bytes(args.blob_mib)
    digest = hashlib.sha256(blob).digest()
    buf = bytearray(len(blob))
    cfg = NodeConfig(
        listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[args.addr], train=False, network_id=args.network_id
    )
    received: dict[int, float] = {}
    warm = trio.Event()
    direct_links = 0

    async with open_node(cfg) as pub, open_node(cfg) as sub:
        assert pub.topics is not None and sub.topics is not None

        async def on_capacity(msg: Any, decoded: Any) -> None:
            parts = decoded.device.split()
            if len(parts) == 3 and parts[0] == "soak":
                seq = int(parts[1])
                if seq < 0:
                    warm.set()
                elif seq not in received:
                    received[seq] = time.time()
                    out.add(k="gr", seq=seq, t=received[seq], ms=(received[seq] - float(parts[2])) * 1000)

        sub.topics.on_message("capacity", on_capacity)

        async def publish(seq: int) -> None:
            now = time.time()
            msg = topics_pb2.Capacity(
                peer=pub.peer_id.to_bytes(), device=f"soak {seq} {now:.6f}", timestamp_ms=int(now * 1000)
            )
            try:
                with trio.fail_after(5):
                    await pub.topics.publish("capacity", msg)
                if seq >= 0:
                    out.add(k="gp", seq=seq, t=now)
            except Exception as exc:
                if seq >= 0:
                    out.add(k="gp", seq=seq, t=now, err=error_kind("publish", exc))

        async def guard_path() -> None:  # messages must go through the node under test
            nonlocal direct_links
            while True:
                if sub.connector.is_connected(pub.peer_id):
                    direct_links += 1
                    with contextlib.suppress(Exception):
                        await sub.host.disconnect(pub.peer_id)
                await trio.sleep(0.5)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(guard_path)
            t_ready = time.time()
            with trio.move_on_after(args.warm_timeout):
                for i in itertools.count(1):
                    await publish(-i)
                    with trio.move_on_after(0.5):
                        await warm.wait()
                    if warm.is_set():
                        break
            print(json.dumps({"ready": warm.is_set(), "warm_s": round(time.time() - t_ready, 2)}), flush=True)
            line = await trio.to_thread.run_sync(sys.stdin.readline)
            window = json.loads(line)
            start_at, stop_at = window["start_at"], window["stop_at"]

            async def publisher() -> None:
                await sleep_until(start_at)
                late = max(0, int((time.time() - start_at) * args.rate))  # no burst to catch up
                for seq in itertools.count(late):
                    due = start_at + seq / args.rate
                    if due >= stop_at:
                        return
                    await sleep_until(due)
                    nursery.start_soon(publish, seq)

            async def fetcher() -> None:
                await sleep_until(start_at)
                late = max(0, int((time.time() - start_at) * args.blob_rate))
                for i in itertools.count(late):
                    due = start_at + i / args.blob_rate
                    if due >= stop_at:
                        return
                    await sleep_until(due)
                    t = time.time()
                    try:
                        await sub.blobs.fetch_into(
                            digest, [info.peer_id], memoryview(buf), timeout_s=args.timeout
                        )
                        out.add(k="b", t=t, ok=1, ms=(time.time() - t) * 1000)
                    except Exception as exc:
                        out.add(k="b", t=t, ok=0, ms=(time.time() - t) * 1000, err=error_kind("blob", exc))

            async def status_poller() -> None:
                await sleep_until(start_at)
                while time.time() < stop_at + 2:
                    t = time.time()
                    try:
                        resp = await fetch_status(sub.client, info.peer_id, timeout_s=5)
                        out.add(k="ps", t=t, ok=1, ms=(time.time() - t) * 1000, counters=dict(resp.counters))
                    except Exception as exc:
                        out.add(k="ps", t=t, ok=0, ms=(time.time() - t) * 1000, err=error_kind("status", exc))
                    await trio.sleep(2.0)

            async with trio.open_nursery() as load:
                load.start_soon(publisher)
                load.start_soon(fetcher)
                load.start_soon(status_poller)
            await trio.sleep(3)  # the last messages' way through the node
            out.add(k="end", t=time.time(), direct_links=direct_links)
            out.close()
            nursery.cancel_scope.cancel()


# -- attacks -----------------------------------------------------------------------------------


async def attack(args: argparse.Namespace) -> dict[str, Any]:
    import _soak_attacks  # type: ignore[import-not-found]  # benchmarks/ is sys.path[0]

    fn = _soak_attacks.ATTACKS[args.kind]
    params = json.loads(args.params)
    late = time.time() - args.start_at  # imports done: an attacker that starts late says so
    with trio.fail_after(max(1.0, args.stop_at - time.time()) + 60):
        result: dict[str, Any] = await fn(args.addr, args.start_at, args.stop_at, **params)
    if late > 0.5:
        result["started_late_s"] = round(late, 1)
        result["summary"] = f"{result.get('summary', '')} (started {late:.1f}s late)"
        if not result.get("ran"):
            result["error"] = f"{result.get('error')} (started {late:.1f}s late)"
    return result


READY = "soak-worker ready"


def preload(role: str) -> None:
    """Import what the role needs before it says it is ready."""
    import p2pshard.net.host
    import p2pshard.protocols.status  # noqa: F401

    if role == "attack":
        import _soak_attacks  # type: ignore[import-not-found]  # noqa: F401


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "node":
        split = sys.argv.index("--") if "--" in sys.argv else len(sys.argv)
        parser = argparse.ArgumentParser()
        parser.add_argument("role")
        parser.add_argument("--blob-mib", type=int, default=1)
        args = parser.parse_args(sys.argv[1:split])
        run_node(args.blob_mib, sys.argv[split + 1 :])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["honest", "gossip", "attack"])
    parser.add_argument("kind", nargs="?")
    parser.add_argument("--addr", required=True)
    parser.add_argument("--out", default="/dev/null")
    parser.add_argument("--start-at", type=float, default=0.0)
    parser.add_argument("--stop-at", type=float, default=0.0)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--max-inflight", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--worker", type=int, default=0)
    parser.add_argument("--network-id", default="devnet")
    parser.add_argument("--blob-mib", type=int, default=1)
    parser.add_argument("--blob-rate", type=float, default=1.0)
    parser.add_argument("--warm-timeout", type=float, default=20.0)
    parser.add_argument("--params", default="{}")
    args = parser.parse_args()
    preload(args.role)
    if args.role != "gossip" and not args.start_at:
        # Imports done: say so, then wait for the phase window (the benchmark starts its clock
        # only when every worker is ready, so slow starts on a busy machine cost no phase time).
        print(READY, file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            return
        window = json.loads(line)
        args.start_at, args.stop_at = window["start_at"], window["stop_at"]
    if args.role == "honest":
        trio.run(honest, args)
    elif args.role == "gossip":
        trio.run(gossip, args)
    else:
        try:
            result = trio.run(attack, args)
        except BaseException as exc:  # the attack could not be built or run: say so
            while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
                exc = exc.exceptions[0]
            what = "no connection to the node in time" if isinstance(exc, trio.TooSlowError) else str(exc)
            result = {"ran": False, "error": f"{type(exc).__name__}: {what}"[:300], "summary": ""}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
