"""Gossip: p2pshard's gossipsub router against py-libp2p 0.8.1's stock GossipSub, side by side.

For each implementation, 8 nodes run as separate processes on 127.0.0.1 (``_gossip_worker.py``),
dialled into a full mesh (node i dials nodes 0..i-1) over the same host stack (secp256k1, Noise,
yamux), all subscribed to ``/bench/gossip`` (outside ``/p2pshard/``: no structural validator).
Node 0 publishes; nodes 1..7 are the subscribers measured. The parent starts the workers, waits
for the mesh, drives the phases over the workers' stdin/stdout (JSON lines), collects, and ends
every worker by its PID. Every wait is bounded.

Phases (same for both):

1. delivered fraction, 1 KiB messages at 100, 200, 500 and 1000 msg/s (a fixed count per rate);
   after publishing, a phase drains until every subscriber has everything or nothing new arrived
   for ``--idle`` seconds (so IHAVE/IWANT recoveries count);
2. latency to all subscribers (publish timestamp in the payload, ``time.time()`` on both sides):
   per message, the time until the *last* of the 7 subscribers has it; p50/p99 over the messages
   that reached all 7. 1 KiB at 20 msg/s, 1 MiB at 2 msg/s (spaced so that the figure is
   latency, not queueing: one 1 MiB message costs the 8 nodes ~0.2 CPU-s here);
3. receptions per message per node (every copy a subscriber received, duplicates included);
4. RSS of each subscriber sampled while ``--rss-count`` 1 MiB messages go by, and peak RSS
   (``ru_maxrss``) per node at the end.

    python benchmarks/gossip.py            # full: 1,000 msgs per rate, 1,000 x 1 MiB for RSS
    python benchmarks/gossip.py --quick    # short phases, both sides, under 60 s
    python benchmarks/gossip.py --only ours --json out.json

Goals (issue 3): 100% delivered at 500 msg/s; 1 MiB to all subscribers p99 <= 100 ms; <= 2
receptions per node for 1 MiB messages; RSS flat over 1,000 1 MiB messages.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _gossip_worker  # type: ignore[import-not-found]  # benchmarks/ is sys.path[0]

NODES = 8
KIB = 1024
MIB = 1 << 20
STOCK_BASELINE = {  # FACTS.md, measured earlier on this machine with the stock router
    "delivered_100": 0.63,
    "delivered_200": 0.22,
    "delivered_500": 0.03,
    "lat_1m_p50": 0.155,
    "lat_1m_p99": 0.341,
    "receptions": 4.8,
}


class WorkerError(Exception):
    pass


class Worker:
    """A node process, forked from this one after the heavy imports (so 8 start in ~1 s, not ~10 s
    of 8 interpreters importing py-libp2p on 2 cores), ended by its PID."""

    def __init__(self, impl: str, index: int, log_dir: Path, extra: list[str]) -> None:
        self.index = index
        self.log_path = log_dir / f"{impl}-{index}.log"
        cmd_r, self.cmd_w = os.pipe()
        self.rep_r, rep_w = os.pipe()
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            try:
                os.dup2(cmd_r, 0)
                os.dup2(rep_w, 1)
                os.dup2(log_fd, 2)
                os.closerange(3, 4096)  # other workers' pipes: their EOFs must not depend on us
                _gossip_worker.main(["--impl", impl, *extra])
            finally:
                os._exit(0)
        os.close(cmd_r)
        os.close(rep_w)
        os.close(log_fd)
        self.pid = pid
        self.buf = b""
        self.info: dict[str, Any] = {}
        self.exit_status: int | None = None

    def send(self, cmd: dict[str, Any]) -> None:
        data = json.dumps(cmd).encode() + b"\n"
        while data:
            data = data[os.write(self.cmd_w, data) :]

    def read(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerError(f"worker {self.index} did not answer within {timeout:.0f}s")
            ready, _, _ = select.select([self.rep_r], [], [], left)
            if ready:
                chunk = os.read(self.rep_r, 1 << 20)
                if not chunk:
                    raise WorkerError(f"worker {self.index} exited; see {self.log_path}")
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return dict(json.loads(line))

    def call(self, cmd: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.send(cmd)
        return self.read(timeout)

    def alive(self) -> bool:
        if self.exit_status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.exit_status = status
        return self.exit_status is None

    def rss(self) -> int:
        try:
            with open(f"/proc/{self.pid}/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return 0

    def kill(self) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)

    def stop(self) -> None:
        if self.alive():
            with contextlib.suppress(WorkerError, OSError):
                self.call({"cmd": "quit"}, timeout=3)
        deadline = time.monotonic() + 3
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.exit_status = -9
        for fd in (self.cmd_w, self.rep_r):
            with contextlib.suppress(OSError):
                os.close(fd)


def call_all(workers: list[Worker], cmd: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
    for w in workers:
        w.send(cmd)
    deadline = time.monotonic() + timeout
    return [w.read(max(0.1, deadline - time.monotonic())) for w in workers]


@dataclass
class Phase:
    name: str
    count: int
    rate: float
    size: int
    sample_rss: bool = False


@dataclass
class PhaseResult:
    phase: Phase
    published: int = 0
    publish_s: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    delivered: float = 0.0
    lat_all: list[float] = field(default_factory=list)
    receptions: float = 0.0
    receptions_max_node: float = 0.0
    rss_series: list[list[list[float]]] = field(default_factory=list)
    drain_s: float = 0.0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    lat_first: list[float] = field(default_factory=list)
    aborted: str = ""


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def run_impl(impl: str, phases: list[Phase], args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    extra = ["--stock-spam-limit-off"] if impl == "stock" and not args.stock_defaults else []
    if impl == "stock" and not args.stock_defaults:
        extra.append("--stock-adaptive-off")
    if impl == "ours" and args.with_discovery:
        extra.append("--with-discovery")
    if impl == "ours" and args.ours_config:
        extra += ["--ours-config", args.ours_config]
    workers = [Worker(impl, i, log_dir, extra) for i in range(NODES)]
    out: dict[str, Any] = {"impl": impl, "phases": {}}
    t_start = time.monotonic()
    try:
        for w in workers:
            w.info = w.read(timeout=60)
        out["settings"] = workers[0].info["settings"]
        addrs = [w.info["addr"] for w in workers]
        for i, w in enumerate(workers):
            w.send({"cmd": "connect", "peers": addrs[:i]})
        for w in workers:
            reply = w.read(timeout=60)
            if reply.get("failed"):
                print(f"  [{impl}] worker {w.index}: {reply['failed']} dials failed: {reply.get('error')}")
        call_all(workers, {"cmd": "subscribe"}, timeout=30)
        out["mesh_wait_s"], out["mesh"] = wait_for_mesh(workers, args.mesh_timeout)
        out["startup_s"] = time.monotonic() - t_start
        print(f"  [{impl}] up in {out['startup_s']:.1f}s; mesh sizes {out['mesh']}", flush=True)
        aborted = False
        for number, phase in enumerate(phases, start=1):
            t_phase = time.monotonic()
            result = run_phase(workers, number, phase, args)
            result.wall_s = time.monotonic() - t_phase
            out["phases"][phase.name] = result
            print(f"  [{impl}] {summary_line(result)}", flush=True)
            if result.aborted:
                aborted = True  # its workers were killed: nothing more to ask them
                break
        if not aborted:
            final = call_all(workers, {"cmd": "counters"}, timeout=30)
            out["peak_rss"] = [r["peak_rss"] for r in final]
            out["counters"] = final[1]["counters"]
    except WorkerError as exc:  # keep the phases measured before it, and say so
        out["failed"] = str(exc)
        print(f"  [{impl}] FAILED: {exc}")
        for log in sorted(log_dir.glob(f"{impl}-*.log")):
            tail = log.read_text(errors="replace")[-1500:]
            if tail.strip():
                print(f"  --- {log.name}:\n{tail}")
    finally:
        for w in workers:
            try:
                w.stop()
            except Exception as exc:  # keep stopping the others
                print(f"  [{impl}] stopping worker {w.index}: {exc!r}")
                w.kill()
    return out


def wait_for_mesh(workers: list[Worker], timeout: float) -> tuple[float, list[int]]:
    t0 = time.monotonic()
    status: list[dict[str, Any]] = []
    while time.monotonic() - t0 < timeout:
        status = call_all(workers, {"cmd": "status"}, timeout=10)
        if all(s["peers"] == NODES - 1 and s["topic_peers"] == NODES - 1 and s["mesh"] >= 5 for s in status):
            break
        time.sleep(0.2)
    else:
        print(f"  mesh incomplete after {timeout:.0f}s: {status}")
    return time.monotonic() - t0, [s["mesh"] for s in status]


def run_phase(workers: list[Worker], number: int, phase: Phase, args: argparse.Namespace) -> PhaseResult:
    result = PhaseResult(phase)
    publisher, subscribers = workers[0], workers[1:]
    call_all(
        workers,
        {"cmd": "phase_start", "phase": number, "sample_rss": phase.sample_rss, "quiesce": number == 1},
        timeout=10,
    )
    publisher.send(
        {"cmd": "publish", "phase": number, "count": phase.count, "rate": phase.rate, "size": phase.size}
    )
    deadline = time.monotonic() + phase.count / phase.rate * 3 + 60
    reply: dict[str, Any] | None = None
    while reply is None:
        try:
            reply = publisher.read(timeout=0.5)
        except WorkerError as exc:
            if "exited" in str(exc):
                raise
        total_rss = sum(w.rss() for w in workers)
        if total_rss > args.mem_limit_mib * MIB:
            result.aborted = f"the 8 nodes together passed --mem-limit-mib {args.mem_limit_mib}"
            raise_abort(workers, result)
            return result
        if reply is None and time.monotonic() > deadline:
            raise WorkerError("publisher did not finish in time")
    result.published = reply["published"]
    result.publish_s = reply["elapsed"]
    result.errors = reply["errors"]
    t_drain = time.monotonic()
    last_total, last_change = -1, time.monotonic()
    while time.monotonic() - t_drain < args.drain_cap:
        counts = [r["received"] for r in call_all(subscribers, {"cmd": "progress"}, timeout=10)]
        total = sum(counts)
        if all(c >= result.published for c in counts):
            break
        if total != last_total:
            last_total, last_change = total, time.monotonic()
        elif time.monotonic() - last_change > args.idle:
            break
        time.sleep(0.05)
    result.drain_s = time.monotonic() - t_drain
    ends = call_all(subscribers, {"cmd": "phase_end"}, timeout=30)
    pub_end = publisher.call({"cmd": "phase_end"}, timeout=30)
    result.cpu_s = pub_end["cpu_s"] + sum(e["cpu_s"] for e in ends)
    result.lat_first = [min(v) for v in per_seq_all(ends).values()]
    received = sum(len(e["seqs"]) for e in ends)
    result.delivered = received / max(1, result.published * len(subscribers))
    per_seq: dict[int, list[float]] = {}
    for e in ends:
        for seq, lat in zip(e["seqs"], e["latency"], strict=True):
            per_seq.setdefault(seq, []).append(lat)
    result.lat_all = [max(v) for v in per_seq.values() if len(v) == len(subscribers)]
    result.receptions = sum(e["receptions"] for e in ends) / max(1, received)
    result.receptions_max_node = max(e["receptions"] / max(1, len(e["seqs"])) for e in ends)
    result.rss_series = [e["rss_series"] for e in ends]
    return result


def per_seq_all(ends: list[dict[str, Any]]) -> dict[int, list[float]]:
    per_seq: dict[int, list[float]] = {}
    for e in ends:
        for seq, lat in zip(e["seqs"], e["latency"], strict=True):
            per_seq.setdefault(seq, []).append(lat)
    return per_seq


def raise_abort(workers: list[Worker], result: PhaseResult) -> None:
    print(f"  aborting phase {result.phase.name}: {result.aborted}", flush=True)
    for w in workers:
        w.kill()


def summary_line(r: PhaseResult) -> str:
    lat = f"all-subs p50 {quantile(r.lat_all, 0.5) * 1e3:.0f} ms p99 {quantile(r.lat_all, 0.99) * 1e3:.0f} ms"
    return (
        f"{r.phase.name}: published {r.published}/{r.phase.count} in {r.publish_s:.2f}s "
        f"({r.published / max(r.publish_s, 1e-9):.0f}/s), delivered {r.delivered:.1%}, {lat}, "
        f"first sub p50 {quantile(r.lat_first, 0.5) * 1e3:.0f} ms, "
        f"receptions {r.receptions:.2f}/node, drain {r.drain_s:.1f}s, "
        f"CPU {r.cpu_s * 1e3 / max(1, r.published):.1f} ms/msg (8 nodes), phase {r.wall_s:.1f}s"
        + (f", errors {r.errors}" if r.errors else "")
        + (f", ABORTED: {r.aborted}" if r.aborted else "")
    )


def rss_profile(r: PhaseResult) -> dict[str, float] | None:
    """Per subscriber: RSS at 25/50/100% of the messages received, and the trend over the second
    half (least-squares slope x the messages of that half: what RSS kept growing by, with the ups
    and downs of queues and caches averaged out). The worst node's."""
    worst: dict[str, float] | None = None
    for series in r.rss_series:
        total = max((s[1] for s in series), default=0)
        if total < 4:
            continue

        def at(frac: float, series: list[list[float]] = series, total: float = total) -> float:
            return next((s[2] for s in series if s[1] >= frac * total), series[-1][2])

        half = [(s[1], s[2] / MIB) for s in series if s[1] >= 0.5 * total]
        trend = 0.0
        if len(half) >= 2:
            mx = sum(x for x, _ in half) / len(half)
            my = sum(y for _, y in half) / len(half)
            var = sum((x - mx) ** 2 for x, _ in half)
            slope = sum((x - mx) * (y - my) for x, y in half) / var if var else 0.0
            trend = slope * (total - 0.5 * total)
        profile = {
            "start": series[0][2] / MIB,
            "q25": at(0.25) / MIB,
            "q50": at(0.5) / MIB,
            "end": series[-1][2] / MIB,
            "growth_2nd_half": trend,
        }
        if worst is None or profile["growth_2nd_half"] > worst["growth_2nd_half"]:
            worst = profile
    return worst


def fmt_frac(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def fmt_ms(x: float | None) -> str:
    return "-" if x is None or x != x else f"{x * 1e3:.0f} ms"


def report(results: dict[str, dict[str, Any]], phases: list[Phase], args: argparse.Namespace) -> None:
    def get(impl: str, name: str) -> PhaseResult | None:
        res = results.get(impl)
        return None if res is None else res["phases"].get(name)

    def measured(impl: str, name: str) -> PhaseResult | None:
        """The phase if it ran to its end (an aborted one measured nothing to compare)."""
        r = get(impl, name)
        return None if r is None or r.aborted else r

    rows: list[tuple[str, str, str, str, str]] = []

    def ratio(a: float | None, b: float | None, higher_better: bool) -> str:
        if a is None or b is None or a != a or b != b or (b == 0 if higher_better else a == 0):
            return "-"
        return f"{a / b:.1f}x" if higher_better else f"{b / a:.1f}x"

    for phase in phases:
        if phase.name.startswith("rate"):
            o, s = measured("ours", phase.name), measured("stock", phase.name)
            ov = o.delivered if o else None
            sv = s.delivered if s else None
            goal = "100%" if phase.rate == 500 else ""
            base = STOCK_BASELINE.get(f"delivered_{int(phase.rate)}")
            goal += f" (stock then {base:.0%})" if base is not None else ""
            pubrate = f" [pub {o.published / max(o.publish_s, 1e-9):.0f}/s]" if o and o.publish_s else ""
            rows.append(
                (
                    f"delivered, 1 KiB @ {int(phase.rate)}/s x {phase.count}",
                    fmt_frac(ov) + pubrate,
                    fmt_frac(sv),
                    ratio(ov, sv, True),
                    goal,
                )
            )
    for name, label, goal in (
        ("lat_1k", "1 KiB", ""),
        ("lat_1m", "1 MiB", "p99 <= 100 ms (stock then 155/341 ms)"),
    ):
        o, s = measured("ours", name), measured("stock", name)
        for q in (0.5, 0.99):
            ov = quantile(o.lat_all, q) if o else None
            sv = quantile(s.lat_all, q) if s else None
            n_o = f" (n={len(o.lat_all)})" if o else ""
            n_s = f" (n={len(s.lat_all)})" if s else ""
            rows.append(
                (
                    f"to all subscribers {label} p{int(q * 100)}",
                    fmt_ms(ov) + n_o,
                    fmt_ms(sv) + n_s,
                    ratio(ov, sv, False),
                    goal if q == 0.99 else "",
                )
            )
    for name, label, goal in (
        ("lat_1k", "1 KiB", ""),
        ("lat_1m", "1 MiB", "<= 2 (stock then 4.8)"),
        ("rss_1m", "1 MiB, RSS phase", ""),
    ):
        o, s = measured("ours", name), measured("stock", name)
        ov = o.receptions if o else None
        sv = s.receptions if s else None
        fo = "-" if ov is None else f"{ov:.2f} (max node {o.receptions_max_node:.2f})"  # type: ignore[union-attr]
        fs = "-" if sv is None else f"{sv:.2f} (max node {s.receptions_max_node:.2f})"  # type: ignore[union-attr]
        rows.append((f"receptions/msg/node, {label}", fo, fs, ratio(ov, sv, False), goal))
    o, s = get("ours", "rss_1m"), get("stock", "rss_1m")
    for label, r, impl in (("ours", o, "ours"), ("stock", s, "stock")):
        if r is None:
            continue
        prof = rss_profile(r)
        text = (
            "-"
            if prof is None
            else f"{prof['q25']:.0f}/{prof['q50']:.0f}/{prof['end']:.0f} MiB, {prof['growth_2nd_half']:+.0f}"
        )
        rows.append(
            (
                f"RSS worst node at 25/50/100% of {r.published} x 1 MiB, 2nd-half trend",
                text if impl == "ours" else "",
                text if impl == "stock" else "",
                "",
                "flat" if impl == "ours" else "",
            )
        )
        if r.aborted:
            rows.append((f"  ({label}) RSS phase aborted", r.aborted, "", "", ""))
        rows.append(
            (
                f"delivered, 1 MiB @ {int(r.phase.rate)}/s x {r.phase.count}",
                fmt_frac(r.delivered) if impl == "ours" else "",
                fmt_frac(r.delivered) if impl == "stock" else "",
                "",
                "",
            )
        )
    peak = {impl: res.get("peak_rss") for impl, res in results.items()}
    po = peak.get("ours")
    ps = peak.get("stock")
    rows.append(
        (
            "peak RSS per node (ru_maxrss) max / median",
            "-" if not po else f"{max(po) / MIB:.0f} / {statistics.median(po) / MIB:.0f} MiB",
            "-" if not ps else f"{max(ps) / MIB:.0f} / {statistics.median(ps) / MIB:.0f} MiB",
            ratio(max(po) if po else None, max(ps) if ps else None, False),
            "",
        )
    )
    widths = [
        max(len(r[i]) for r in [*rows, ("metric", "ours", "stock", "stock/ours", "goal")]) for i in range(5)
    ]
    header = ("metric", "ours", "stock", "better by", "goal")
    print()
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    print()
    goals = check_goals(results)
    for goal, verdict in goals:
        print(f"goal: {goal}: {verdict}")
    for impl, res in results.items():
        if res.get("failed"):
            print(f"\n{impl} FAILED after the phases shown: {res['failed']}")
        print(f"\n{impl} settings:")
        for k, v in res.get("settings", {}).items():
            print(f"  {k}: {v}")
        print(f"  mesh sizes at start: {res.get('mesh')} (waited {res.get('mesh_wait_s', 0):.1f}s)")
        if res.get("counters"):
            interesting = {k: v for k, v in res["counters"].items() if v}
            print(f"  node 1 counters: {interesting}")


def check_goals(results: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    ours = results.get("ours")
    if ours is None:
        return []
    out = []
    r500 = ours["phases"].get("rate500")
    if r500:
        out.append(
            (
                "100% delivered at 500 msg/s",
                "MET" if r500.delivered >= 1.0 else f"missed ({r500.delivered:.1%})",
            )
        )
    lat = ours["phases"].get("lat_1m")
    if lat:
        p99 = quantile(lat.lat_all, 0.99)
        ok = p99 <= 0.100 and len(lat.lat_all) == lat.published
        out.append(
            ("1 MiB to all subscribers p99 <= 100 ms", ("MET" if ok else "missed") + f" ({p99 * 1e3:.0f} ms)")
        )
        out.append(
            (
                "<= 2 receptions per node, 1 MiB",
                ("MET" if lat.receptions <= 2 else "missed") + f" ({lat.receptions:.2f})",
            )
        )
    rss = ours["phases"].get("rss_1m")
    if rss:
        prof = rss_profile(rss)
        if prof is not None:
            flat = prof["growth_2nd_half"] <= max(32.0, 0.1 * prof["q50"])
            out.append(
                (
                    f"RSS flat over {rss.published} x 1 MiB",
                    ("MET" if flat else "missed")
                    + f" (worst node trend {prof['growth_2nd_half']:+.0f} MiB over the 2nd half,"
                    f" at {prof['q50']:.0f} MiB)",
                )
            )
    return out


def load() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def build_phases(args: argparse.Namespace) -> list[Phase]:
    rates = [100, 200, 500, 1000]
    if args.quick:
        phases = [Phase(f"rate{r}", r // 2, r, KIB) for r in rates]  # half a second's worth each
        phases += [Phase("lat_1k", 20, 20, KIB), Phase("lat_1m", 8, 2, MIB)]
        phases.append(Phase("rss_1m", args.rss_count or 12, args.rss_rate, MIB, sample_rss=True))
    else:
        phases = [Phase(f"rate{r}", 1000, r, KIB) for r in rates]
        phases += [Phase("lat_1k", 200, 20, KIB), Phase("lat_1m", 100, 2, MIB)]
        phases.append(Phase("rss_1m", args.rss_count or 1000, args.rss_rate, MIB, sample_rss=True))
    if args.phases:
        wanted = set(args.phases.split(","))
        phases = [p for p in phases if p.name in wanted]
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short phases (under 60 s in all)")
    parser.add_argument("--only", choices=["ours", "stock"], help="run one side only")
    parser.add_argument("--rss-count", type=int, default=0, help="1 MiB messages in the RSS phase")
    parser.add_argument("--rss-rate", type=float, default=5.0, help="1 MiB msg/s in the RSS phase")
    parser.add_argument("--idle", type=float, help="drain ends after this long idle (1.5 s; quick 0.8)")
    parser.add_argument("--drain-cap", type=float, help="longest drain after publishing (10 s; quick 4)")
    parser.add_argument("--mesh-timeout", type=float, help="longest wait for the mesh (15 s; quick 5)")
    parser.add_argument("--mem-limit-mib", type=int, default=8192, help="abort a phase above this (all 8)")
    parser.add_argument(
        "--stock-defaults",
        action="store_true",
        help="keep stock's 10 msg/s spam limit and adaptive gossip on",
    )
    parser.add_argument(
        "--with-discovery",
        action="store_true",
        help="keep our node's DHT discovery lookups running (the stock side has no DHT)",
    )
    parser.add_argument(
        "--ours-config",
        default="",
        help="experiment: JSON overrides for our router's GossipConfig, e.g. '{\"flood_publish\": false}'",
    )
    parser.add_argument("--phases", help="comma-separated subset: rate100,...,lat_1k,lat_1m,rss_1m")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    args = parser.parse_args()
    if args.idle is None:
        args.idle = 0.8 if args.quick else 1.5
    if args.mesh_timeout is None:
        args.mesh_timeout = 5.0 if args.quick else 15.0
    if args.drain_cap is None:
        args.drain_cap = 4.0 if args.quick else 10.0
    phases = build_phases(args)
    t0 = time.monotonic()
    _gossip_worker.preload()
    print(
        f"gossip benchmark ({'quick' if args.quick else 'full'}), {NODES} processes on 127.0.0.1; "
        f"load: {load()}",
        flush=True,
    )
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="gossip-bench-") as tmp:
        for impl in ("ours", "stock"):
            if args.only and impl != args.only:
                continue
            print(f"{impl}:", flush=True)
            results[impl] = run_impl(impl, phases, args, Path(tmp))
    report(results, phases, args)
    print(f"\ntotal {time.monotonic() - t0:.1f}s; load at end: {load()}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    impl: {
                        **res,
                        "phases": {
                            k: v.__dict__ | {"phase": v.phase.__dict__} for k, v in res["phases"].items()
                        },
                    }
                    for impl, res in results.items()
                },
                indent=1,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
