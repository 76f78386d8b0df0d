"""Averaging benchmark: 4 peers average a d-parameter fp32 update -- p2pshard against hivemind 1.1.12.

Both sides run as separate processes on 127.0.0.1 (one per peer), started and ended by this script
by PID:

Both groups are up at once and their rounds alternate (hivemind, then each p2pshard case, per
repeat), so load from elsewhere on the machine falls on both alike; both run with the same glibc
allocator settings (``ALLOCATOR_ENV``). Every timed round comes right after an untimed round of
the same system and case (``--warmup``): a node repeats one kind of round, and a 0.4 s sparse
round timed right after a 10 s, 600 MB dense gather measures the gather's aftermath (caches and
memory in another state: +25-40% CPU in the sparse round on this machine).

- hivemind: ``hivemind.averaging.DecentralizedAverager`` (group of 4, no compression), in its own
  environment ``benchmarks/.venv-hivemind`` (created by ``benchmarks/setup_hivemind.sh``; never the
  project venv). NAT port mapping, AutoNAT and relays are off; it listens on 127.0.0.1 only. The
  time reported is its all-reduce proper (``_aggregate_with_group``, after matchmaking), slowest
  peer, median over the repeats; matchmaking time is printed separately.
- p2pshard: 4 nodes (``open_node``), each publishing into its blob store and fetching the others'
  parts over ``/p2pshard/blob/1.0.0`` (noise + yamux), reducing with the engine's aggregation code.
  Dense parts travel as bare float32 (``encode_raw_f32``; the blob digest already verifies them).
  Dense: the reduce-scatter layout (``p2pshard.protocols.averaging.reduce_scatter_average``) and a
  plain gather for comparison. Compressed: the engine's default pseudo-gradient compression,
  SparseLoCo, through the engine's ``Compressor`` (error feedback included; top 88 of every 4096
  in 2 bits, ~100x fewer bytes), gathered: every peer fetches the others' payloads, decodes them
  sparse (``decode_sparse``; its own row is the encoder's ``EncodedUpdate.sparse``, the same bits)
  and sums them in float32 (``sum_rows``: what the engine does, as SparseLoCo's outer step applies
  the sum); and rank-6 low-rank factors (~100x) gathered.
  The time is each peer's own from receiving the coordinator's "go" to holding the averaged
  vector, slowest peer, median over the repeats (every peer's result is
  then hashed, off the clock, and all must agree): it includes encoding, the digest exchange
  through the coordinator (a stand-in for the gossip announcement), fetching, decoding, reducing
  and assembling. Compressed cases also show the time from the last peer's announcement on.

Usage::

    python benchmarks/averaging.py --quick         # d = 2M, under 60 s
    python benchmarks/averaging.py                 # d = 50M (200 MB per peer), a few minutes
    python benchmarks/averaging.py --params 10000000 --repeats 3 --skip-hivemind
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HIVEMIND_VENV = HERE / ".venv-hivemind"
HIVEMIND_PY = HIVEMIND_VENV / "bin" / "python"
PEERS = 4
# A page fault costs ~3.5 us on this VM (a fresh 50 MB bytearray: ~40 ms), and glibc returns big
# freed buffers to the OS, so each round faults its buffers in again. Every worker of BOTH systems
# runs with glibc told to allocate from its heap and keep up to 1 GiB of freed memory for reuse.
ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def update_for(seed: int, d: int) -> np.ndarray:
    """The update peer ``seed`` contributes: standard normal fp32 (same bytes on both sides)."""
    return np.random.default_rng(seed).standard_normal(d, dtype=np.float32)


def model_shapes(d: int) -> dict[str, tuple[int, ...]]:
    """Cut ``d`` parameters into transformer-like tensors: 1024x1024 matrices, the rest a vector.

    The compressed path encodes per tensor, as the engine does for a real model.
    """
    side = 1024 if d >= 4 * 1024 * 1024 else 256
    n_mat = max(0, (d - 1) // (side * side))
    shapes: dict[str, tuple[int, ...]] = {f"w{i:03d}": (side, side) for i in range(n_mat)}
    rest = d - n_mat * side * side
    if rest:
        shapes["zz_vector"] = (rest,)
    return shapes


def compression_for(mode: str) -> Any:
    """``default``: the engine's default (SparseLoCo); ``lowrank``: rank-6 factors (~100x)."""
    from p2pshard.engine.compression import DEFAULT, CompressionConfig

    if mode == "lowrank":
        return CompressionConfig(kind="lowrank", rank=6)
    return DEFAULT


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------- p2pshard worker


def p2pshard_worker(index: int, bootstrap: list[str]) -> None:
    import trio

    trio.run(_p2pshard_worker, index, bootstrap)


async def _p2pshard_worker(index: int, bootstrap: list[str]) -> None:
    from dataclasses import replace

    import trio
    from libp2p.peer.id import ID

    from p2pshard import NodeConfig, open_node
    from p2pshard.core.wire.tensor import (
        DecodeLimits,
        EncodeOptions,
        decode_sparse,
        decode_tensors,
        encode_tensors,
        sum_rows,
    )
    from p2pshard.engine.aggregation import AggregationConfig, aggregate
    from p2pshard.engine.compression import CompressionConfig, Compressor
    from p2pshard.protocols.averaging import (
        AveragingStats,
        decode_raw_f32,
        encode_raw_f32,
        gather_average,
        reduce_scatter_average,
    )

    stdin = trio.wrap_file(sys.stdin)
    mean = AggregationConfig(rule="mean")
    cfg = NodeConfig(listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=bootstrap, network_id="bench-averaging")
    async with open_node(cfg) as node:
        emit({"addr": node.addrs[0], "peer_id": node.peer_id.to_base58()})
        vector = np.zeros(0, dtype=np.float32)
        peers: list[ID] = []
        compressors: dict[str, Compressor] = {}  # error feedback carries over between rounds
        buffers: dict[str, np.ndarray] = {}
        while True:
            msg = json.loads(await stdin.readline())
            if msg["cmd"] == "exit":
                break
            if msg["cmd"] == "prepare":
                vector = update_for(index, int(msg["d"]))
                peers = [ID.from_base58(p) for p in msg["peers"] if p != node.peer_id.to_base58()]
                emit({"ready": True})
                continue

            marks: list[tuple[str, float]] = []  # (phase, seconds since "go") at each exchange
            go = time.perf_counter()

            async def exchange(
                phase: str, digests: Any, marks: Any = marks, go: float = go
            ) -> dict[ID, list[bytes]]:
                marks.append((f"{phase}>", time.perf_counter() - go))
                emit({"exchange": phase, "digests": [d.hex() for d in digests]})
                reply = json.loads(await stdin.readline())
                marks.append((f"{phase}<", time.perf_counter() - go))
                return {ID.from_base58(p): [bytes.fromhex(x) for x in ds] for p, ds in reply["table"].items()}

            mode, layout = msg["mode"], msg["layout"]
            limits = DecodeLimits(
                max_bytes=8 * vector.size + (1 << 20),
                max_elements=vector.size + 1,
                max_tensors=len(model_shapes(vector.size)) + 1,
                max_decode_work=64 * vector.size,
            )
            comp = CompressionConfig(kind="none") if mode == "dense" else compression_for(mode)
            reduce_rows: Any = None
            own_row: Any = None
            if mode == "dense":
                encode, decode = encode_raw_f32, decode_raw_f32  # bare float32, zero-copy decode
            elif comp.sparse:
                # Top-k (SparseLoCo): the engine's Compressor with its error feedback; a row stays
                # sparse (kept indices and values) and the reducer sums the kept values.
                if mode not in compressors:
                    compressors[mode] = Compressor(comp)
                sparse_c = compressors[mode]

                mine: dict[str, Any] = {}

                def encode(
                    v: np.ndarray, c: Any = sparse_c, limits: DecodeLimits = limits, mine: Any = mine
                ) -> bytes:
                    encoded = c.encode({"update": v}, limits)
                    mine["row"] = encoded.sparse["update"]  # what the others decode of it
                    payload: bytes = encoded.payload
                    return payload

                def own_row(mine: Any = mine) -> Any:
                    return mine["row"]

                def decode(b: bytes, limits: DecodeLimits = limits) -> Any:
                    return decode_sparse(b, limits)["update"]

                # The result goes into a buffer kept across rounds, as hivemind averages into its
                # own tensors in place.
                if mode not in buffers:
                    buffers[mode] = np.empty(vector.size, dtype=np.float32)
                result_buffer = buffers[mode]

                def reduce_rows(rows: Any, d: int = vector.size, out: Any = result_buffer) -> np.ndarray:
                    # SparseLoCo's outer step applies the sum (diloco.SPARSE_OUTER): float32, in
                    # member order, the engine's arithmetic for it (TorchEngine.apply_round).
                    return sum_rows(rows, d, out)
            elif not comp.per_tensor:
                # Elementwise encodings: the flat vector (or a slice of it), stateless codec.
                opts = replace(comp.encode_options(), lz4=comp.kind != "none")

                def encode(v: np.ndarray, opts: EncodeOptions = opts) -> bytes:
                    return encode_tensors({"v": v}, opts)

                def decode(b: bytes, limits: DecodeLimits = limits) -> np.ndarray:
                    return decode_tensors(b, limits)["v"]
            else:
                # Low rank needs the matrices; the engine's Compressor (error feedback included).
                shapes = model_shapes(vector.size)
                if mode not in compressors:
                    compressors[mode] = Compressor(comp)
                compressor = compressors[mode]

                def encode(
                    v: np.ndarray, shapes: Any = shapes, c: Any = compressor, limits: DecodeLimits = limits
                ) -> bytes:
                    tensors, off = {}, 0
                    for name in sorted(shapes):
                        size = int(np.prod(shapes[name]))
                        tensors[name] = v[off : off + size].reshape(shapes[name])
                        off += size
                    payload: bytes = c.encode(tensors, limits).payload
                    return payload

                def decode(b: bytes, shapes: Any = shapes, limits: DecodeLimits = limits) -> np.ndarray:
                    t = decode_tensors(b, limits)
                    return np.concatenate([t[n].reshape(-1) for n in sorted(shapes)])

            def reduce(rows: Any) -> np.ndarray:
                if len(rows[0]) <= 1 << 20:
                    return aggregate(np.stack(rows), mean).vector
                # The same arithmetic as the aggregation rule's mean (float64, row order, one
                # rounding), streamed instead of stacking n rows in float64 (1.6 GB at 50M).
                acc = rows[0].astype(np.float64)
                for row in rows[1:]:
                    acc += row
                acc /= len(rows)
                return acc.astype(np.float32)

            fn: Any = reduce_scatter_average
            extra: dict[str, Any] = {}
            if layout == "gather":
                fn = gather_average
                extra = {"own_row": own_row}
            if reduce_rows is not None:
                reduce = reduce_rows
            stats = AveragingStats()
            cpu0 = time.process_time()
            sys0 = os.times().system
            thr0 = time.thread_time()
            t0 = go  # (setting up the codec closures above takes microseconds)
            result = await fn(
                node.blobs,
                node.peer_id,
                peers,
                vector,
                encode=encode,
                decode=decode,
                reduce=reduce,
                exchange=exchange,
                max_size=8 * vector.size + (1 << 20),
                stats=stats,
                **extra,
            )
            emit(
                {
                    "done": time.perf_counter() - t0,
                    "cpu_s": time.process_time() - cpu0,
                    "sys_s": os.times().system - sys0,
                    "main_s": time.thread_time() - thr0,
                    "head": [float(x) for x in result[:4]],
                    # (after the clock stopped) every peer must hold the same bits
                    "sha256": hashlib.sha256(np.ascontiguousarray(result).data).hexdigest(),
                    "encode_s": stats.encode_s,
                    "fetch_s": stats.fetch_s,
                    "decode_reduce_s": stats.decode_reduce_s,
                    "bytes_in": stats.bytes_in,
                    "marks": marks,
                }
            )


# --------------------------------------------------------------------------- hivemind worker


def hivemind_worker(index: int, initial_peers: list[str], d: int) -> None:
    import hivemind
    import torch
    from hivemind.averaging import DecentralizedAverager

    torch.set_num_threads(1)

    class TimedAverager(DecentralizedAverager):  # type: ignore[misc]
        """Prints how long the all-reduce proper takes (this runs in the averager's process)."""

        async def _aggregate_with_group(self, group_info: Any, *args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await super()._aggregate_with_group(group_info, *args, **kwargs)
            finally:
                emit({"allreduce_s": time.perf_counter() - t0, "group": len(group_info.peer_ids)})

    dht = hivemind.DHT(
        start=True,
        initial_peers=initial_peers or None,
        host_maddrs=["/ip4/127.0.0.1/tcp/0"],
        nat_port_map=False,
        auto_nat=False,
        use_relay=False,
        use_auto_relay=False,
    )
    tensor = torch.from_numpy(update_for(index, d))
    averager = TimedAverager(
        [tensor],
        dht,
        start=True,
        prefix="bench",
        target_group_size=PEERS,
        min_group_size=PEERS,
        min_matchmaking_time=1.0,
        request_timeout=5.0,
    )
    emit({"maddrs": [str(m) for m in dht.get_visible_maddrs()]})
    try:
        for line in sys.stdin:
            msg = json.loads(line)
            if msg["cmd"] == "exit":
                break
            t0 = time.perf_counter()
            ok = averager.step(timeout=120) is not None
            with averager.get_tensors() as (t,):
                head = [float(x) for x in t[:4]]
            emit({"step_done": time.perf_counter() - t0, "ok": ok, "head": head})
    finally:
        averager.shutdown()
        dht.shutdown()


# --------------------------------------------------------------------------- coordinator


class Worker:
    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=ROOT,
            start_new_session=True,  # its own process group: p2pd children end with it
            env={**os.environ, **ALLOCATOR_ENV, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        )
        self.pid = self.proc.pid

    def send(self, obj: dict[str, Any]) -> None:
        stdin: IO[str] | None = self.proc.stdin
        assert stdin is not None
        stdin.write(json.dumps(obj) + "\n")
        stdin.flush()

    def recv(self, timeout_s: float = 600.0) -> dict[str, Any]:
        stdout = self.proc.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = stdout.readline()
            if not line:
                raise RuntimeError(f"worker {self.pid} ended; see {self.log.name}")
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue  # a library printing to stdout
            if isinstance(obj, dict):
                return obj
        raise TimeoutError(f"worker {self.pid}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"cmd": "exit"})
                self.proc.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                pass
        if self.proc.poll() is None:
            os.killpg(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait()
        else:  # the leader exited; end what it left in its group (hivemind's p2pd)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
        self.log.close()


class HivemindGroup:
    """Four hivemind averagers; :meth:`round` runs one all-reduce."""

    def __init__(self, d: int, logdir: Path) -> None:
        if not HIVEMIND_PY.exists():
            subprocess.run([str(HERE / "setup_hivemind.sh")], check=True)
        self.workers: list[Worker] = []
        try:
            first: list[str] = []
            for i in range(PEERS):
                argv = [str(HIVEMIND_PY), __file__, "--hivemind-worker", str(i), "--params", str(d)]
                self.workers.append(Worker([*argv, "--peers", ",".join(first)], logdir / f"hivemind-{i}.log"))
                ready = self.workers[-1].recv(120)
                if not first:
                    first = [m for m in ready["maddrs"] if "127.0.0.1" in m][:1]
        except BaseException:
            self.close()
            raise
        self.allreduce_s: list[float] = []
        self.step_s: list[float] = []
        self.head: list[float] = []

    def round(self, record: bool = True) -> None:
        for w in self.workers:
            w.send({"cmd": "step"})
        times: list[float] = []
        for w in self.workers:
            while True:
                msg = w.recv(300)
                if "allreduce_s" in msg:
                    times.append(msg["allreduce_s"])
                if "step_done" in msg:
                    if not msg["ok"]:
                        raise RuntimeError("a hivemind step failed")
                    if record:
                        self.step_s.append(msg["step_done"])
                    self.head = msg["head"]
                    break
        if record:
            self.allreduce_s.append(max(times))

    def close(self) -> None:
        for w in self.workers:
            w.stop()


class P2pshardGroup:
    """Four p2pshard nodes; :meth:`round` runs one averaging of one case."""

    def __init__(self, d: int, logdir: Path) -> None:
        self.workers: list[Worker] = []
        self.ids: list[str] = []
        try:
            addrs: list[str] = []
            for i in range(PEERS):
                argv = [sys.executable, __file__, "--p2pshard-worker", str(i), "--peers", ",".join(addrs)]
                self.workers.append(Worker(argv, logdir / f"p2pshard-{i}.log"))
                hello = self.workers[-1].recv(120)
                addrs.append(hello["addr"])
                self.ids.append(hello["peer_id"])
            for w in self.workers:
                w.send({"cmd": "prepare", "d": d, "peers": self.ids})
            for w in self.workers:
                w.recv(300)
        except BaseException:
            self.close()
            raise
        self.results: dict[str, dict[str, Any]] = {}

    def round(self, mode: str, layout: str, record: bool = True) -> None:
        res = self.results.setdefault(f"{mode}/{layout}", {"s": [], "announced_s": [], "peers": []})
        for w in self.workers:
            w.send({"cmd": "average", "mode": mode, "layout": layout})
        while True:
            msgs = [w.recv(300) for w in self.workers]
            if all("done" in m for m in msgs):
                # Each peer's own clock from "go" to holding the result, slowest peer (as for
                # hivemind, whose time is also taken inside each peer); the coordinator's round
                # trip also holds the result hashing that follows.
                if record:
                    res["s"].append(max(m["done"] for m in msgs))
                    # From the moment the last peer announced its encoded payload (the engine encodes
                    # when it finishes training, before it announces) to the slowest peer's result.
                    announced = max(m["marks"][0][1] for m in msgs)
                    res["announced_s"].append(max(m["done"] for m in msgs) - announced)
                if len({m["sha256"] for m in msgs}) != 1:
                    raise RuntimeError(f"{mode}/{layout}: the peers ended on different results")
                res["peers"] = msgs
                return
            table = {self.ids[i]: m["digests"] for i, m in enumerate(msgs)}
            for w in self.workers:
                w.send({"table": table})

    def close(self) -> None:
        for w in self.workers:
            w.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="d = 2M parameters, under 60 s")
    parser.add_argument("--params", type=int, default=None, help="parameters (default 50M; 2M with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per case (3; 2 quick)")
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed rounds of the same case before each timed one (1)"
    )
    parser.add_argument("--skip-hivemind", action="store_true")
    parser.add_argument("--no-gather", action="store_true", help="skip the plain dense gather")
    parser.add_argument("--dense-only", action="store_true", help="only the dense reduce-scatter case")
    parser.add_argument("--no-lowrank", action="store_true", help="skip the rank-6 low-rank case")
    parser.add_argument("--compressed-only", action="store_true", help="only the compressed cases")
    parser.add_argument("--timeline", action="store_true", help="print when each peer passed each barrier")
    parser.add_argument("--p2pshard-worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--hivemind-worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--peers", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    peers = [p for p in args.peers.split(",") if p]
    d = args.params or (2_000_000 if args.quick else 50_000_000)
    if args.p2pshard_worker is not None:
        return p2pshard_worker(args.p2pshard_worker, peers)
    if args.hivemind_worker is not None:
        return hivemind_worker(args.hivemind_worker, peers, d)

    repeats = args.repeats or (2 if args.quick else 3)
    logdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"p2pshard-bench-averaging-{os.getpid()}"
    logdir.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    print(
        f"{PEERS} peers average {d:,} fp32 parameters ({4 * d / 1e6:.0f} MB each); {repeats} timed "
        f"repeats, each after {args.warmup} untimed round(s) of its case; "
        f"load {load:.2f} on {os.cpu_count()} cores; logs in {logdir}",
        flush=True,
    )
    default = compression_for("default")
    cases = [] if args.compressed_only else [("dense", "reduce_scatter")]
    if not args.no_gather and not args.compressed_only:
        cases.append(("dense", "gather"))
    # Dense-elementwise encodings reduce-scatter like dense; factors and top-k are gathered (small,
    # and a reduced slice of top-k rows would have to be sparsified again).
    if not args.dense_only:
        per_peer = default.per_tensor or default.sparse
        cases.append(("default", "gather" if per_peer else "reduce_scatter"))
    if default != compression_for("lowrank") and not args.dense_only and not args.no_lowrank:
        cases.append(("lowrank", "gather"))
    # Both groups stay up and their rounds alternate, so a change in the machine's load during the
    # run touches both sides alike.
    ours_group = P2pshardGroup(d, logdir)
    hm: HivemindGroup | None = None
    try:
        hm = None if args.skip_hivemind else HivemindGroup(d, logdir)
        for _ in range(repeats):
            if hm is not None:
                for _ in range(args.warmup):
                    hm.round(record=False)
                hm.round()
            for mode, layout in cases:
                for _ in range(args.warmup):
                    ours_group.round(mode, layout, record=False)
                ours_group.round(mode, layout)
    finally:
        ours_group.close()
        if hm is not None:
            hm.close()
    ours = ours_group.results

    expected = np.mean([update_for(i, 4) for i in range(PEERS)], axis=0)
    print(f"\n  {'system / case':<44}{'median s':>10}{'runs':>26}{'vs hivemind':>13}")
    ref = statistics.median(hm.allreduce_s) if hm else None
    if hm:
        print(
            f"  {'hivemind 1.1.12 all-reduce (fp32)':<44}{ref:>10.3f}"
            f"{' '.join(f'{t:.2f}' for t in hm.allreduce_s):>26}{1.0:>12.2f}x"
        )
        print(f"  {'  (its step incl. matchmaking)':<44}{statistics.median(hm.step_s):>10.3f}")
    for key, res in ours.items():
        med = statistics.median(res["s"])
        mode, layout = key.split("/")
        c = compression_for(mode)
        kind = f"{c.kind} rank {c.rank}" if c.kind == "lowrank" else c.kind
        what = "dense fp32" if mode == "dense" else f"{mode} ({kind})"
        label = f"p2pshard {what}, {layout.replace('_', '-')}"
        ratio = f"{med / ref:>12.2f}x" if ref else ""
        print(f"  {label:<44}{med:>10.3f}  {' '.join(f'{t:.2f}' for t in res['s']):>24}{ratio}")
        p = max(res["peers"], key=lambda m: m["done"])

        def total(field: str, peers: list[dict[str, Any]] = res["peers"]) -> float:
            return float(sum(m[field] for m in peers))

        if mode != "dense":
            after = statistics.median(res["announced_s"])
            ratio = f"{after / ref:>12.2f}x" if ref else ""
            runs = " ".join(f"{t:.2f}" for t in res["announced_s"])
            print(f"  {'  after the last payload was announced':<44}{after:>10.3f}  {runs:>24}{ratio}")
        print(
            f"  {'':<6}slowest peer: encode {p['encode_s']:.2f}s fetch {p['fetch_s']:.2f}s "
            f"decode+reduce {p['decode_reduce_s']:.2f}s, {p['bytes_in'] / 1e6:.1f} MB in; "
            f"CPU of all peers {total('cpu_s'):.2f}s ({total('sys_s'):.2f}s in the kernel, "
            f"{total('main_s'):.2f}s in the trio event loops)"
        )
        if args.timeline:
            for m in res["peers"]:
                steps = " ".join(f"{name} {t:.2f}" for name, t in m["marks"])
                print(f"  {'':<6}timeline: {steps} done {m['done']:.2f}")
        if key.startswith("dense"):
            head = np.array(p["head"], dtype=np.float32)
            assert np.allclose(head, expected, atol=1e-6), (head, expected)
    if hm:
        assert np.allclose(np.array(hm.head), expected, atol=1e-5)
        default_key = next((k for k in ours if k.startswith("default/")), None)
        goals = []
        if "dense/reduce_scatter" in ours:
            dense = statistics.median(ours["dense/reduce_scatter"]["s"])
            dense_ok = "met" if dense <= ref else "NOT met"
            goals.append(f"dense <= 1.0x hivemind: {dense / ref:.2f}x ({dense_ok})")
        if default_key is not None:
            whole = ref / statistics.median(ours[default_key]["s"])
            after = ref / statistics.median(ours[default_key]["announced_s"])
            goals.append(
                f"default compression >= 10x faster: whole round (encoding included) {whole:.1f}x "
                f"({'met' if whole >= 10 else 'NOT met'}), after the payloads were announced "
                f"{after:.1f}x ({'met' if after >= 10 else 'NOT met'})"
            )
        print("\n  goals: " + ";\n         ".join(goals))
        if d != 50_000_000:
            print(f"  (the goals are set for 50M parameters; this run has {d:,})")
    print(f"  load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
