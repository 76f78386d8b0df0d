"""Averaging benchmark: 4 nodes run real training rounds on a d-parameter model -- against hivemind 1.1.12.

What p2pshard runs here is what a node runs in a round, nothing in its place: each of 4 processes
opens a node (``p2pshard.open_node`` on 127.0.0.1: noise + yamux, gossip, blob protocol) and runs a
``p2pshard.protocols.training.Trainer`` driving the sans-IO round protocol
(``p2pshard.core.rounds``): train, announce on the ``gradients`` topic, collect announcements until
the round's deadline, fetch the chosen payloads over ``/p2pshard/blob/1.0.0`` (verified by hash),
``engine.apply_round``, commit. Only the engine is a stand-in for training: :class:`BenchEngine`
is a ``TorchEngine`` whose model is one flat float32 vector of ``--params`` and whose
``train_round`` draws a pseudo-gradient instead of running inner steps, then encodes it with the
engine's own ``Compressor`` (SparseLoCo, error feedback included) exactly as
``TorchEngine.train_round`` does. ``apply_round`` is ``TorchEngine.apply_round`` itself: screen each
payload (``decode_sparse`` + ``screen_update``: shape, finiteness, norm bound), sum the rows in
contributor order (``sum_rows``, SparseLoCo's outer step on the sum), outer step, model hash, copy
into the torch parameters.

Timed, per round and per node (wall clock; the nodes share this machine's clock):

- ``encode``: the ``Compressor.encode`` call inside ``train_round`` (drawing the pseudo-gradient,
  which stands in for the inner steps, is not timed).
- ``close -> commit``: from the round's collection close (its announce deadline + clock skew, the
  moment the round protocol starts fetching) to the node's commit: fetch (``fetch``: until
  ``apply_round`` starts), decode + screen, sum, outer step + model hash + copy into the model.
- ``critical path`` = encode + close -> commit. Waiting for the round to open and for the
  announcement window to close is a schedule, not work, and is left out; the gossip announcement
  itself happens in that window.

A round's figure is its slowest node's; the table shows the median over the timed rounds (round 0
warms up and is not timed). Every node must commit every round with all 4 contributions and the
same model hash, or the run says so.

hivemind: ``hivemind.averaging.DecentralizedAverager`` (group of 4, fp32, no compression) in 4
processes of its own environment ``benchmarks/.venv-hivemind`` (``benchmarks/setup_hivemind.sh``;
never the project venv); NAT port mapping, AutoNAT and relays are off; it listens on 127.0.0.1 only.
Its time is the all-reduce proper (``_aggregate_with_group``, after matchmaking), slowest peer;
its whole step (matchmaking included) is shown too. Interleaved in the same run: its steps run
inside p2pshard's rounds, after all 4 nodes have encoded and before the round's collection closes,
so neither system's timed work overlaps the other's (a step that ran past the close is reported,
and that p2pshard round is left out). Both systems run with the same glibc allocator settings
(``ALLOCATOR_ENV``) and one torch/OpenMP thread per process; each system warms up with one untimed
round (a first round pays for page faults and first-use costs).

Each case runs in fresh node processes (so a dense round's memory never precedes a sparse one in a
process). ``--dense`` adds dense fp32 payloads through the same path, for reference (on by default
up to 10M parameters; at 50M each node fetches 600 MB a round).

Usage::

    python benchmarks/averaging.py --quick         # d = 2M, about 2 minutes
    python benchmarks/averaging.py                 # d = 50M (200 MB of fp32 per peer)
    python benchmarks/averaging.py --params 10000000 --rounds 4 --skip-hivemind
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
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
SHARD = b"p2pshard averaging benchmark shard"


def update_for(seed: int, d: int) -> np.ndarray:
    """hivemind peer ``seed``'s tensor: standard normal fp32."""
    return np.random.default_rng(seed).standard_normal(d, dtype=np.float32)


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------- p2pshard node


def bench_engine(d: int, case: str, seed: int) -> Any:
    """A ``TorchEngine`` on one flat ``d``-vector; see the module docstring."""
    import hashlib
    import math

    import torch

    from p2pshard.core.wire.tensor import DecodeLimits
    from p2pshard.engine.aggregation import AggregationConfig
    from p2pshard.engine.compression import DEFAULT, CompressionConfig, Compressor
    from p2pshard.engine.diloco import OuterNesterov, model_hash
    from p2pshard.engine.engine import UPDATE_TENSOR, EngineConfig, TorchEngine, diloco_for
    from p2pshard.protocols.engine_api import LocalUpdate, RoundOutcome

    compression = DEFAULT if case == "sparseloco" else CompressionConfig(kind="none")

    class _Genesis:
        shards = {hashlib.sha256(SHARD).hexdigest(): SHARD}

        def shard_bytes(self, shard_id: str) -> bytes:
            return self.shards[shard_id]

    class BenchEngine(TorchEngine):
        """``TorchEngine``'s aggregation path on one tensor named ``update``.

        Built without a transformer or a genesis: this sets the attributes that
        ``TorchEngine.apply_round`` (and ``_screen``, ``_aggregate``, ``_unflatten``,
        ``_load_master_into_model``) read, so that those run unchanged; a change there that
        needs more shows up here as an AttributeError, not as a silently different benchmark.
        """

        def __init__(self) -> None:  # no super().__init__(): see the class docstring
            self.cfg = EngineConfig(
                seed=seed,
                diloco=diloco_for("tiny", compression),
                compression=compression,
                aggregation=AggregationConfig(rule="mean"),
                device="cpu",
            )
            self.genesis = _Genesis()  # type: ignore[assignment]
            self.device = torch.device("cpu")
            self.names = [UPDATE_TENSOR]
            self.master = {UPDATE_TENSOR: np.zeros(d, dtype=np.float32)}
            self._params = {UPDATE_TENSOR: torch.nn.Parameter(torch.zeros(d), requires_grad=False)}
            self.shapes = {UPDATE_TENSOR: (d,)}
            self.n_params = d
            self.wire_shapes = dict(self.shapes)
            dl = self.cfg.diloco
            self.outer = OuterNesterov(dl.outer_lr, dl.outer_momentum, self.shapes)
            self._sum_out = None  # TorchEngine's kept sum buffer
            self.compressor = Compressor(compression)
            self.limits = DecodeLimits(
                max_bytes=8 * d + (1 << 20), max_tensors=1, max_elements=d, max_decode_work=64 * d
            )
            self.max_update_norm = self.cfg.norm_bound_factor * dl.inner_steps * dl.inner_lr * math.sqrt(d)
            self._network_id = f"bench-averaging-{case}"
            self._round = 0
            self._hash = model_hash(self.master)
            self._tokens = self._bytes_sent = self._dense_bytes = 0
            self._last_loss = None
            # A pseudo-gradient of a plausible size (a quarter of the screening bound), drawn once:
            # drawing 50M normals takes longer than encoding them, and stands in for training.
            rng = np.random.default_rng(seed)
            scale = np.float32(self.max_update_norm / self.cfg.norm_bound_factor / 4 / math.sqrt(d))
            self._pool = [rng.standard_normal(d, dtype=np.float32) * scale for _ in range(2)]
            self.timings: dict[int, dict[str, float]] = {}
            self.schedule_of: Any = None  # () -> RoundSchedule | None (the Trainer's)
            self._warm_up()

        def _warm_up(self) -> None:
            """Load the codec's compiled kernels (numba's disk cache) before the first round."""
            small = np.random.default_rng(0).standard_normal(1 << 14, dtype=np.float32) * np.float32(1e-4)
            enc = Compressor(compression).encode({UPDATE_TENSOR: small})
            from p2pshard.core.wire.tensor import decode_sparse, sum_rows

            rows = [decode_sparse(enc.payload)[UPDATE_TENSOR]]
            sum_rows(rows, small.size)

        def assigned_shard(self, peer_id: str, round_index: int) -> str:
            return next(iter(_Genesis.shards))

        def train_round(self, round_index: int, shard: bytes) -> LocalUpdate:
            t0 = time.perf_counter()
            pseudo = self._pool[round_index % len(self._pool)]
            # Every round's payload must be new: a node keeps the blobs it fetched (its store
            # serves them on), and a payload seen before would be "fetched" from there.
            pseudo[0] = np.float32(round_index) * pseudo[1]
            e0 = time.perf_counter()
            # As TorchEngine.train_round encodes a flat pseudo-gradient:
            encoded = self.compressor.encode({UPDATE_TENSOR: pseudo}, self.limits)
            e1 = time.perf_counter()
            self._bytes_sent += len(encoded.payload)
            self._dense_bytes += encoded.dense_bytes
            schedule = self.schedule_of() if self.schedule_of is not None else None
            close = schedule.deadline(round_index) + schedule.clock_skew if schedule else None
            emit(
                {
                    "event": "trained",
                    "round": round_index,
                    "t": time.time(),
                    "close": close,
                    "encode_s": e1 - e0,
                    "train_s": e1 - t0,
                    "bytes": len(encoded.payload),
                }
            )
            return LocalUpdate(
                round=round_index,
                payload=encoded.payload,
                content_hash=hashlib.sha256(encoded.payload).digest(),
                base_model_hash=self._hash,
                shard=self.assigned_shard("", round_index),
                tokens=1,  # (an announcement must state a positive count)
                loss=0.0,
                inner_steps=1,
                dense_bytes=encoded.dense_bytes,
            )

        def _screen(self, payload: bytes) -> Any:
            t0 = time.perf_counter()
            try:
                return super()._screen(payload)
            finally:
                self._timing["screen_s"] += time.perf_counter() - t0

        def _aggregate(self, rows: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return super()._aggregate(rows)
            finally:
                self._timing["sum_s"] += time.perf_counter() - t0

        def apply_round(self, round_index: int, payloads: Any) -> RoundOutcome:
            self._timing = {"apply_start": time.time(), "screen_s": 0.0, "sum_s": 0.0}
            t0 = time.perf_counter()
            outcome = super().apply_round(round_index, payloads)
            self._timing["apply_s"] = time.perf_counter() - t0
            self._timing["apply_end"] = time.time()
            self.timings[round_index] = self._timing
            return outcome

        def checkpoint_bytes(self) -> bytes:
            # What peers fetch when they ask for our checkpoint (joining, finishing): a stub, as
            # the nodes never need to resync here (a node that does is reported).
            return json.dumps({"round": self._round, "hash": self._hash.hex()}).encode()

        def load_checkpoint_bytes(self, data: bytes) -> None:
            raise ValueError("the benchmark engine does not load checkpoints")

    return BenchEngine()


def p2pshard_worker(index: int, bootstrap: list[str], d: int, case: str) -> None:
    import trio

    trio.run(_p2pshard_worker, index, bootstrap, d, case)


async def _p2pshard_worker(index: int, bootstrap: list[str], d: int, case: str) -> None:
    import trio

    from p2pshard import NodeConfig, open_node
    from p2pshard.core.rounds import Timing
    from p2pshard.protocols.training import RoundReport, Trainer, TrainingOptions

    engine = bench_engine(d, case, seed=index)
    stdin = trio.wrap_file(sys.stdin)
    cfg = NodeConfig(
        listen=["/ip4/127.0.0.1/tcp/0"],
        bootstrap=bootstrap,
        network_id=f"bench-averaging-{case}",
        gossip_heartbeat_s=0.2,
    )
    async with open_node(cfg) as node:
        emit({"event": "hello", "addr": node.addrs[0], "peer_id": node.peer_id.to_base58()})
        with trio.fail_after(60):
            while len(node.peers()) < PEERS - 1:  # noqa: ASYNC110 (no event to wait on)
                await trio.sleep(0.05)
        emit({"event": "connected"})
        msg = json.loads(await stdin.readline())
        if msg["cmd"] != "train":
            return
        trainer: Trainer

        def report(r: RoundReport) -> None:
            t = engine.timings.get(r.round, {})
            emit(
                {
                    "event": "commit",
                    "round": r.round,
                    "commit": time.time(),
                    "model_hash": r.model_hash.hex(),
                    "contributors": r.contributors,
                    "contributed": r.contributed,
                    "rejected": r.rejected,
                    "bytes_received": r.bytes_received,
                    **t,
                }
            )

        options = TrainingOptions(
            timing=Timing(**msg["timing"]), rounds=int(msg["rounds"]), max_payload_bytes=8 * d + (1 << 20)
        )
        trainer = Trainer(node, engine, options, report=report)
        engine.schedule_of = lambda: trainer.proto.schedule
        await node.nursery.start(trainer.run)

        async def finished() -> None:
            await trainer.done.wait()
            emit({"event": "done"})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(finished)
            with trio.move_on_after(float(msg["within_s"])):
                await stdin.readline()  # "exit" (the coordinator has every commit it waits for)
            nursery.cancel_scope.cancel()


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
    """A worker process in its own process group, ended by PID. With ``events``, a thread puts
    ``(tag, message)`` for each JSON line it prints there; without, :meth:`recv` reads them."""

    def __init__(
        self, argv: list[str], log: Path, events: queue.Queue[Any] | None = None, tag: int = 0
    ) -> None:
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
        if events is not None:
            threading.Thread(target=self._pump, args=(events, tag), daemon=True).start()

    def _pump(self, events: queue.Queue[Any], tag: int) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        for line in stdout:
            with contextlib.suppress(json.JSONDecodeError):
                obj = json.loads(line)
                if isinstance(obj, dict):
                    events.put((tag, obj))
        events.put((tag, {"event": "exited"}))

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
            subprocess.run(["bash", str(HERE / "setup_hivemind.sh")], check=True)
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

    def round(self, record: bool = True) -> tuple[float, float, float]:
        """One step of all four; returns (start, end, slowest step) in wall-clock seconds."""
        start = time.time()
        for w in self.workers:
            w.send({"cmd": "step"})
        times: list[float] = []
        steps: list[float] = []
        for w in self.workers:
            while True:
                msg = w.recv(300)
                if "allreduce_s" in msg:
                    times.append(msg["allreduce_s"])
                if "step_done" in msg:
                    if not msg["ok"]:
                        raise RuntimeError("a hivemind step failed")
                    steps.append(msg["step_done"])
                    self.head = msg["head"]
                    break
        if record:
            self.allreduce_s.append(max(times))
            self.step_s.append(max(steps))
        return start, time.time(), max(steps)

    def close(self) -> None:
        for w in self.workers:
            w.stop()


def timing_for(d: int, case: str, hivemind_step_s: float) -> dict[str, float]:
    """A schedule with room for the work at ``d`` on a loaded 2-core machine, and for one hivemind
    step between the last node's encoding and the round's collection close."""
    fetch = (2.0 + 8e-8 * d) if case == "sparseloco" else (3.0 + 6e-7 * d)
    encode = 0.3 + (4e-8 * d if case == "sparseloco" else 2e-8 * d)
    gap = 1.3 * hivemind_step_s + 0.5 if hivemind_step_s else 0.0
    announce, fetch = round(max(1.5, gap + encode), 1), round(fetch, 1)
    return {
        "period_s": announce + fetch + 0.1,  # (the schedule refuses announce + fetch > period)
        "announce_deadline_s": announce,
        "fetch_timeout_s": fetch,
        "start_delay_s": 4.0,
        "schedule_wait_s": 5.0,
    }


class Session:
    """Four p2pshard nodes training ``rounds`` rounds of one case, hivemind steps in between."""

    def __init__(self, d: int, case: str, logdir: Path) -> None:
        self.d, self.case = d, case
        self.events: queue.Queue[Any] = queue.Queue()
        self.workers: list[Worker] = []
        self.trained: dict[int, dict[int, dict[str, Any]]] = {}  # round -> node -> event
        self.commits: dict[int, dict[int, dict[str, Any]]] = {}
        self.done: dict[int, dict[str, Any]] = {}
        self.hivemind_in: dict[int, tuple[float, float]] = {}  # round -> hivemind step (start, end)
        self.notes: list[str] = []
        try:
            addrs: list[str] = []
            for i in range(PEERS):
                argv = [
                    sys.executable, __file__, "--p2pshard-worker", str(i), "--params", str(d),
                    "--case", case, "--peers", ",".join(addrs[:1]),
                ]  # fmt: skip
                self.workers.append(Worker(argv, logdir / f"p2pshard-{case}-{i}.log", self.events, i))
                if i == 0:
                    addrs.append(self._wait("hello", 180, {0})[0]["addr"])
            self._wait("connected", 180, set(range(PEERS)))
        except BaseException:
            self.close()
            raise

    def _wait(self, event: str, timeout_s: float, who: set[int]) -> dict[int, dict[str, Any]]:
        got: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout_s
        while set(got) != who:
            tag, msg = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            if msg.get("event") == "exited":
                raise RuntimeError(f"p2pshard worker {tag} ended; see its log")
            if msg.get("event") == event and tag in who:
                got[tag] = msg
        return got

    def run(self, timing: dict[str, float], rounds: int, hm: HivemindGroup | None, hm_step_s: float) -> None:
        within = timing["start_delay_s"] + (rounds + 3) * timing["period_s"] + 30
        for w in self.workers:
            w.send({"cmd": "train", "timing": timing, "rounds": rounds, "within_s": within})
        deadline = time.monotonic() + within + 30
        while len(self.done) < PEERS and any(len(self.commits.get(r, {})) < PEERS for r in range(rounds)):
            try:
                tag, msg = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"{self.case}: the nodes did not finish in {within + 30:.0f}s") from None
            kind, r = msg.get("event"), msg.get("round")
            if kind == "exited":
                raise RuntimeError(f"p2pshard worker {tag} ended; see its log")
            if kind == "done":
                self.done[tag] = msg
            elif kind == "commit" and r is not None:
                self.commits.setdefault(r, {})[tag] = msg
            elif kind == "trained":
                self.trained.setdefault(r, {})[tag] = msg
                if len(self.trained[r]) == PEERS and r >= 1 and hm is not None:
                    self._hivemind_between(r, msg["close"], hm, hm_step_s)

    def _hivemind_between(self, r: int, close: float, hm: HivemindGroup, hm_step_s: float) -> None:
        """One hivemind step now, if it fits before round ``r`` closes (all nodes have encoded)."""
        left = close - time.time()
        expected = max(hm.step_s[-3:]) if hm.step_s else hm_step_s  # (a first step is slower)
        if left < 1.2 * expected:
            self.notes.append(f"round {r}: {left:.1f}s left before the close, no hivemind step")
            return
        start, end, _ = hm.round()
        self.hivemind_in[r] = (start, end)
        if end > close:
            self.notes.append(f"round {r}: the hivemind step ran {end - close:.2f}s past the close")

    def rows(self, rounds: range) -> tuple[list[dict[str, Any]], list[str]]:
        """Per timed round: the slowest node's figures; and what was wrong with rounds left out."""
        out: list[dict[str, Any]] = []
        problems: list[str] = []
        for r in rounds:
            commits, trained = self.commits.get(r, {}), self.trained.get(r, {})
            if len(commits) < PEERS or len(trained) < PEERS:
                problems.append(f"round {r}: {len(trained)} nodes trained, {len(commits)} committed")
                continue
            if len({c["model_hash"] for c in commits.values()}) != 1:
                problems.append(f"round {r}: the nodes committed DIFFERENT models")
                continue
            if any(c["contributors"] != PEERS or c["rejected"] for c in commits.values()):
                problems.append(f"round {r}: not all {PEERS} contributions in every node's aggregate")
                continue
            hm_end = self.hivemind_in.get(r, (0.0, 0.0))[1]
            close = trained[0]["close"]
            if hm_end > close:
                problems.append(f"round {r}: overlapped by the hivemind step; left out")
                continue
            per_node = []
            for n in range(PEERS):
                c, t = commits[n], trained[n]
                per_node.append(
                    {
                        "encode": t["encode_s"],
                        "close_commit": c["commit"] - close,
                        "fetch": c["apply_start"] - close,
                        "screen": c["screen_s"],
                        "sum": c["sum_s"],
                        "step": c["apply_s"] - c["screen_s"] - c["sum_s"],
                        "path": t["encode_s"] + c["commit"] - close,
                        "bytes": t["bytes"],
                        "bytes_in": c["bytes_received"],
                    }
                )
            slowest = max(per_node, key=lambda p: p["path"])
            out.append({**slowest, "round": r, "nodes": per_node})
        return out, problems

    def close(self) -> None:
        for w in self.workers:
            w.stop()


CASES = {"sparseloco": "SparseLoCo (top-88/4096, 2-bit)", "dense": "dense fp32 (kind none)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="d = 2M parameters, about 2 minutes")
    parser.add_argument("--params", type=int, default=None, help="parameters (default 50M; 2M with --quick)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per case (5; 4 quick)")
    parser.add_argument("--skip-hivemind", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="every node's figures in every round")
    dense = parser.add_mutually_exclusive_group()
    dense.add_argument("--dense", action="store_true", default=None, help="add the dense fp32 case")
    dense.add_argument("--no-dense", dest="dense", action="store_false", help="skip the dense fp32 case")
    parser.add_argument("--p2pshard-worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--hivemind-worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--case", default="sparseloco", help=argparse.SUPPRESS)
    parser.add_argument("--peers", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    peers = [p for p in args.peers.split(",") if p]
    d = args.params or (2_000_000 if args.quick else 50_000_000)
    if args.p2pshard_worker is not None:
        return p2pshard_worker(args.p2pshard_worker, peers, d, args.case)
    if args.hivemind_worker is not None:
        return hivemind_worker(args.hivemind_worker, peers, d)

    timed = args.rounds or (4 if args.quick else 5)
    with_dense = args.dense if args.dense is not None else d <= 10_000_000
    cases = ["sparseloco"] + (["dense"] if with_dense else [])
    logdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"p2pshard-bench-averaging-{os.getpid()}"
    logdir.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    print(
        f"{PEERS} nodes, {d:,} parameters ({4 * d / 1e6:.0f} MB fp32 each); round 0 warms up, then "
        f"{timed} timed rounds per case; load {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; "
        f"logs in {logdir}",
        flush=True,
    )
    hm: HivemindGroup | None = None
    sessions: dict[str, Session] = {}
    results: dict[str, tuple[list[dict[str, Any]], list[str], dict[str, float]]] = {}
    # Every process starts at once (start-up is not timed; serially it would take most of --quick)
    # and then waits, idle, for its turn; each case's nodes stop when their rounds are done.
    with concurrent.futures.ThreadPoolExecutor() as pool:
        starting = {case: pool.submit(Session, d, case, logdir) for case in cases}
        hm_future = None if args.skip_hivemind else pool.submit(HivemindGroup, d, logdir)
        try:
            hm = hm_future.result() if hm_future is not None else None
            for case in cases:
                sessions[case] = starting[case].result()
        except BaseException:
            for future in [*starting.values(), *([hm_future] if hm_future else [])]:
                with contextlib.suppress(BaseException):
                    future.result().close()
            raise
    try:
        print(f"  all processes up after {time.monotonic() - began:.0f}s", flush=True)
        hm_step = 0.0
        if hm is not None:
            _, _, hm_step = hm.round(record=False)  # warm-up, and how long a step takes here
        for case in cases:
            timing = timing_for(d, case, hm_step)
            t0 = time.monotonic()
            session = sessions.pop(case)
            try:
                session.run(timing, 1 + timed, hm, hm_step)
            finally:
                session.close()
            print(f"  {case}: rounds in {time.monotonic() - t0:.0f}s", flush=True)
            rows, problems = session.rows(range(1, 1 + timed))
            results[case] = (rows, problems + session.notes, timing)
            if hm is not None and hm.step_s:
                hm_step = max(hm_step, max(hm.step_s))
    finally:
        for session in sessions.values():
            session.close()
        if hm is not None:
            hm.close()

    verbose = args.verbose
    print(
        "\n  per round, slowest node (by critical path); median over the timed rounds, seconds"
        "\n  critical path = encode + (collection close -> commit); close -> commit = fetch + decode/screen"
        " + sum + outer step/hash"
    )
    header = f"  {'system / case':<50}{'path':>7}{'encode':>8}{'close>commit':>13}{'fetch':>7}"
    print(header + f"{'screen':>8}{'sum':>7}{'step':>7}{'MB out':>8}   runs (path)")
    ref = statistics.median(hm.allreduce_s) if hm and hm.allreduce_s else None
    if hm and hm.allreduce_s:
        runs = " ".join(f"{t:.2f}" for t in hm.allreduce_s)
        print(f"  {'hivemind 1.1.12 all-reduce, fp32':<50}{ref:>7.3f}{'':>58}   {runs}")
        print(f"  {'  (its whole step, matchmaking incl.)':<50}{statistics.median(hm.step_s):>7.3f}")
    for case, (rows, problems, timing) in results.items():
        label = f"p2pshard round, {CASES[case]}"
        if not rows:
            print(f"  {label:<50}   no timed round completed")
        else:

            def med(key: str, rows: list[dict[str, Any]] = rows) -> float:
                return float(statistics.median(r[key] for r in rows))

            runs = " ".join(f"{r['path']:.2f}" for r in rows)
            print(
                f"  {label:<50}{med('path'):>7.3f}{med('encode'):>8.3f}{med('close_commit'):>13.3f}"
                f"{med('fetch'):>7.3f}{med('screen'):>8.3f}{med('sum'):>7.3f}{med('step'):>7.3f}"
                f"{med('bytes') / 1e6:>8.2f}   {runs}"
            )
        if verbose:
            for row in rows:
                for n, p in enumerate(row["nodes"]):
                    figures = " ".join(
                        f"{k} {p[k]:.3f}"
                        for k in ("path", "encode", "close_commit", "fetch", "screen", "sum", "step")
                    )
                    print(
                        f"    round {row['round']} node {n} {figures}, {p['bytes_in'] / 1e6:.1f} MB in total"
                    )
        sched = ", ".join(
            f"{k.removesuffix('_s')} {v:g}s" for k, v in timing.items() if k != "schedule_wait_s"
        )
        print(f"  {'':<4}schedule: {sched}")
        for p in problems:
            print(f"  {'':<4}{p}")
    if hm and hm.allreduce_s:
        expected = np.mean([update_for(i, 4) for i in range(PEERS)], axis=0)
        assert np.allclose(np.array(hm.head), expected, atol=1e-5), "hivemind averaged wrongly"
    print(f"  load after: {os.getloadavg()[0]:.2f}; wall {time.monotonic() - began:.0f}s")
    sparse_rows = results.get("sparseloco", ([], [], {}))[0]
    if ref is not None and sparse_rows:
        ours = float(statistics.median(r["path"] for r in sparse_rows))
        print(f"averaging: sparseloco {ours:.3f} vs hivemind {ref:.3f} ({ref / ours:.1f}x)")


if __name__ == "__main__":
    main()
