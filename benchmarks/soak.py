"""Soak: one node under a steady honest load for the whole run, and an attacker mix in phases.

The node under test is a separate process, ``p2pshard start --no-train --listen
/ip4/127.0.0.1/tcp/0 --json`` (run through ``_soak_worker.py node``, which only puts one pinned
1 MiB blob in its store as it opens: the CLI has no way to add one). Its stdout and stderr go to
``node.log`` in the log folder, which is kept; its resident memory (``VmRSS``) and open files
(``/proc/PID/fd``) are sampled every second. Every process started here is ended by its PID.

Honest load, beside every phase (``_soak_worker.py``):

* short inbound connections at a steady rate (``--connections`` over the run), each a fresh
  identity that connects, asks ``/p2pshard/status/1.0.0`` once and disconnects, from its own
  loopback address; its latency is connect + answer, as a ``p2pshard status`` user sees it;
* gossip: a peer publishes ``capacity`` messages at ``--gossip-rate``; a second peer, joined only
  to the node under test, receives them through it (delivered fraction, latency);
* blob fetches: the second peer fetches the node's 1 MiB blob at ``--blob-rate`` (verified);
* the second peer asks the node's status over its kept connection every 2 s (the counters).

Phases, each ``--phase-seconds`` long, back to back: ``baseline`` (quiet), then the attacks, each
from 127.0.0.1 (``_soak_attacks.py``), then ``recovery`` (quiet again):

* ``half_open``: 1,000 TCP connections that never speak, held for the phase;
* ``slow_streams``: one peer opens 32 status streams a second, sends one byte and stalls;
* ``sybil``: 300 fresh identities from one IP connect and hold their connections;
* ``window_overflow``: one peer writes 512 MiB of yamux DATA past a stream's receive window;
* ``syn_flood``: one peer writes 10,000 yamux SYN frames (fresh stream ids) on its connection.

``--cycles N`` repeats the attack phases N times (hours of soak). At the end of each phase the
node's counters are read with ``p2pshard status --json`` (a fresh connection; when it fails, the
kept connection's latest snapshot is used and marked ``*``).

    python benchmarks/soak.py --quick     # 2,500 connections, 7 phases of 28 s (under 5 minutes)
    python benchmarks/soak.py --smoke     # every phase with tiny counts (under 30 s)
    python benchmarks/soak.py             # 20,000 connections, 7 phases of 300 s (~37 minutes)
    python benchmarks/soak.py --cycles 6 --phase-seconds 600 --connections 200000   # hours

Goals (issue 16): honest success 100% after 20,000 connections, honest p99 <= 2x baseline under
every attack, memory bounded (<= +64 MiB over the run), open files back to baseline, 0 tracebacks.
The last line sums it up:
``soak: connections C; honest success S%; worst p99 Px baseline; rss +M MiB; fds +F; tracebacks T``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORKER = str(HERE / "_soak_worker.py")
MIB = 1 << 20
GOAL_P99_RATIO = 2.0
GOAL_RSS_MIB = 64
REFUSAL_WORDS = (
    "refus",
    "reject",
    "exhaust",
    "limit",
    "reset",
    "timeout",
    "drop",
    "error",
    "fail",
    "violat",
    "trim",
)


@dataclass
class Phase:
    name: str
    attack: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    start: float = 0.0
    end: float = 0.0
    result: dict[str, Any] | None = None
    counters: dict[str, int] | None = None
    counters_at: float = 0.0


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    deadline: float
    out: Path | None = None
    files: list[Any] = field(default_factory=list)

    def running(self) -> bool:
        return self.popen.poll() is None


class Deadline(Exception):
    pass


class Soak:
    def __init__(self, args: argparse.Namespace, log_dir: Path) -> None:
        self.args = args
        self.log_dir = log_dir
        self.procs: list[Proc] = []
        self.node: Proc | None = None
        self.samples: list[tuple[float, int, int, float]] = []  # (time, rss bytes, open fds, cpu s)
        self.events: list[str] = []
        self.hard_deadline = time.time() + args.deadline
        """Set to t0 + phases + the teardown allowance once every worker is ready."""
        self.next_sample = 0.0
        self.addr = ""
        self.network_id = "devnet"
        self.start_counters: dict[str, int] | None = None
        self.node_exit_seen = False
        self.final: tuple[float, int, int, float] | None = None

    # -- processes ------------------------------------------------------------------------------

    def spawn(
        self, name: str, cmd: list[str], deadline: float, *, stdin: bool = False, out: Path | None = None
    ) -> Proc:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115  # closed in stop()
        stdout = open(out, "wb") if out is not None else log  # noqa: SIM115
        popen = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=stdout,
            stderr=log,
            cwd=HERE.parent,
        )
        proc = Proc(name, popen, deadline, out, [log] + ([stdout] if out is not None else []))
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; by PID only."""
        if proc.running():
            with contextlib.suppress(ProcessLookupError):
                proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(5)
        if proc.popen.stdin is not None:
            with contextlib.suppress(Exception):
                proc.popen.stdin.close()
        for f in proc.files:
            f.close()
        proc.files = []

    def stop_all(self) -> None:
        for proc in self.procs:
            self.stop(proc, grace=3.0 if proc is not self.node else 10.0)

    # -- sampling and waiting -------------------------------------------------------------------

    def sample(self) -> None:
        if self.node is None or not self.node.running():
            return
        pid = self.node.popen.pid
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            rss = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]
            fds = len(os.listdir(f"/proc/{pid}/fd"))
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        except (OSError, AttributeError, IndexError, ValueError):
            return
        self.samples.append((time.time(), rss, fds, cpu))

    def wait_until(self, t: float) -> None:
        """Sleep until wall time ``t``, sampling the node every second and reaping overdue workers."""
        while True:
            now = time.time()
            if now >= self.hard_deadline:
                raise Deadline("the run passed its deadline")
            if now >= self.next_sample:
                self.sample()
                self.next_sample = now + 1.0
            if self.node is not None and not self.node.running() and not self.node_exit_seen:
                self.node_exit_seen = True
                _, kinds = tracebacks(self.log_dir / "node.log")
                last = list(kinds)[-1] if kinds else "no exception in its log"
                msg = f"node exited (rc {self.node.popen.returncode}) at {self.clock(now)}: {last}"
                self.events.append(msg)
                print(f"  !! {msg}", flush=True)
            for proc in self.procs:
                if proc is not self.node and proc.running() and now > proc.deadline:
                    self.events.append(f"{proc.name} overran its time and was ended")
                    self.stop(proc, grace=2.0)
            if now >= t:
                return
            time.sleep(min(0.25, t - now))

    def clock(self, t: float) -> str:
        return f"t+{t - self.t0:.0f}s" if hasattr(self, "t0") else f"{t:.0f}"

    # -- the node -------------------------------------------------------------------------------

    def start_node(self) -> None:
        cmd = [sys.executable, WORKER, "node", "--blob-mib", "1", "--"]
        cmd += ["start", "--no-train", "--listen", "/ip4/127.0.0.1/tcp/0", "--json"]
        self.node = self.spawn("node", cmd, deadline=float("inf"))
        log = self.log_dir / "node.log"
        until = time.time() + 90
        while time.time() < until:
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith("{") and '"listening"' in line:
                    event = json.loads(line)
                    self.addr = event["addrs"][0]
                    self.network_id = event.get("network_id", "devnet")
                    return
            if not self.node.running():
                raise RuntimeError(f"the node exited at start (rc {self.node.popen.returncode})")
            time.sleep(0.2)
        raise RuntimeError("the node printed no listening address in 90 s")

    def status_cli(self, name: str) -> Proc:
        out = self.log_dir / f"{name}.json"
        cmd = [sys.executable, "-m", "p2pshard", "status", "--json", "--timeout", "5", self.addr]
        return self.spawn(name, cmd, deadline=time.time() + 30, out=out)

    @staticmethod
    def read_counters(proc: Proc) -> dict[str, int] | None:
        if proc.running() or proc.out is None:  # a CLI ended for overrunning may have answered first
            return None
        try:
            data = json.loads(proc.out.read_text())
        except (OSError, ValueError):
            return None
        return {k: int(v) for k, v in (data.get("counters") or {}).items()}

    # -- the run --------------------------------------------------------------------------------

    def run(self, phases: list[Phase]) -> None:
        args = self.args
        t_setup = time.time()
        print(f"  starting the node (log: {self.log_dir / 'node.log'})", flush=True)
        self.start_node()
        assert self.node is not None
        print(
            f"  node {self.addr} (pid {self.node.popen.pid}, up in {time.time() - t_setup:.1f}s)", flush=True
        )
        # Every worker starts now and says when its imports are done; the clock (t0) starts
        # when all are ready, so slow starts on a busy machine take no phase time.
        first = self.status_cli("status-start")
        gcmd = [
            sys.executable,
            WORKER,
            "gossip",
            "--addr",
            self.addr,
            "--out",
            str(self.log_dir / "gossip.jsonl"),
        ]
        gcmd += ["--network-id", self.network_id, "--rate", str(args.gossip_rate), "--worker", "250"]
        gcmd += ["--blob-rate", str(args.blob_rate), "--timeout", str(args.timeout)]
        gossip = self.spawn("gossip", gcmd, deadline=float("inf"), stdin=True)
        waiting: list[tuple[Proc, Phase | None]] = [(gossip, None)]
        for w in range(args.workers):
            cmd = [sys.executable, WORKER, "honest", "--addr", self.addr, "--worker", str(w)]
            cmd += ["--out", str(self.log_dir / f"honest{w}.jsonl"), "--timeout", str(args.timeout)]
            cmd += ["--rate", f"{args.connections / (len(phases) * args.phase_seconds) / args.workers:.4f}"]
            waiting.append((self.spawn(f"honest{w}", cmd, deadline=float("inf"), stdin=True), None))
        pending: list[tuple[Phase, Proc]] = []
        seen: set[str] = set()
        for phase in phases:  # the first cycle's attackers now; later ones a minute before their phase
            if phase.attack and phase.attack not in seen:
                seen.add(phase.attack)
                proc = self.spawn_attack(phase, window=False)
                waiting.append((proc, phase))
                pending.append((phase, proc))
        ready = self.wait_workers([p for p, _ in waiting], args.ready_timeout)
        total = len(phases) * args.phase_seconds
        self.t0 = time.time() + 1.0
        t_end = self.t0 + total
        self.hard_deadline = min(self.hard_deadline, t_end + args.teardown_seconds)
        for k, phase in enumerate(phases):
            phase.start = self.t0 + k * args.phase_seconds
            phase.end = phase.start + args.phase_seconds
        for proc, owner in waiting:
            window = {"start_at": self.t0, "stop_at": t_end}
            if owner is not None:
                window = {"start_at": owner.start, "stop_at": owner.end}
            proc.deadline = window["stop_at"] + args.timeout + 60
            if proc.running() and proc.popen.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.popen.stdin.write(json.dumps(window).encode() + b"\n")
                    proc.popen.stdin.flush()
        launches = [(p.start - 60, p) for p in phases if p.attack and all(p is not q for q, _ in pending)]

        def launch_due(now: float) -> None:
            while launches and launches[0][0] <= now:
                _, phase = launches.pop(0)
                pending.append((phase, self.spawn_attack(phase, window=True)))

        print(
            f"  workers ready in {time.time() - t_setup:.1f}s from the start; gossip peers: {ready}",
            flush=True,
        )
        print(
            f"  {len(phases)} phases x {args.phase_seconds:g}s; honest: {args.connections:,} connections "
            f"({args.connections / total:.1f}/s), gossip {args.gossip_rate:g} msg/s, "
            f"blob {args.blob_rate:g}/s",
            flush=True,
        )
        self.wait_until(self.t0)
        self.start_counters = self.read_counters(first)
        for phase in phases:
            while time.time() < phase.end:
                self.wait_until(min(phase.end, launches[0][0] if launches else phase.end))
                launch_due(time.time())
            pending.append((phase, self.status_cli(f"status-{phase.name}")))
            self.collect(pending, block=False)
            rss = f"{self.samples[-1][1] / MIB:.0f} MiB, {self.samples[-1][2]} fds" if self.samples else "n/a"
            print(f"  phase {phase.name} done at {self.clock(phase.end)} (node: {rss})", flush=True)
        # after the last phase: let the workers finish, then the final sample with everything closed
        for proc in self.procs:
            if proc is not self.node:
                while proc.running() and time.time() < min(proc.deadline, self.hard_deadline - 15):
                    self.wait_until(time.time() + 0.5)
        self.collect(pending, block=True)
        if self.start_counters is None:  # it answered after t0: still before the baseline's end
            self.start_counters = self.read_counters(first)
        self.wait_until(time.time() + args.settle_seconds)
        self.sample()
        alive = self.node is not None and self.node.running()
        self.final = self.samples[-1] if self.samples and alive else None  # none once the node died

    def spawn_attack(self, phase: Phase, window: bool) -> Proc:
        assert phase.attack is not None
        cmd = [sys.executable, WORKER, "attack", phase.attack, "--addr", self.addr]
        cmd += ["--params", json.dumps(phase.params)]
        if window:
            cmd += ["--start-at", f"{phase.start:.3f}", "--stop-at", f"{phase.end:.3f}"]
        out = self.log_dir / f"attack-{phase.name}.json"
        deadline = phase.end + 60 if window else float("inf")
        return self.spawn(f"attack-{phase.name}", cmd, deadline=deadline, out=out, stdin=not window)

    def wait_workers(self, procs: list[Proc], timeout: float) -> str:
        """Wait until every worker has said it is ready (bounded); returns the gossip peers' line."""
        until = time.time() + timeout
        gossip_line = "not ready (see gossip.log)"
        while time.time() < until:
            missing = 0
            for proc in procs:
                text = (self.log_dir / f"{proc.name}.log").read_text(errors="replace")
                if proc.name == "gossip":
                    lines = [ln for ln in text.splitlines() if ln.startswith('{"ready"')]
                    if lines:
                        gossip_line = lines[0]
                    missing += not lines and proc.running()
                else:
                    missing += "soak-worker ready" not in text and proc.running()
            if not missing:
                break
            self.wait_until(time.time() + 0.2)
        for proc in procs:
            if not proc.running():
                self.events.append(f"{proc.name} exited before the phases (rc {proc.popen.returncode})")
        return gossip_line

    def collect(self, pending: list[tuple[Phase, Proc]], block: bool) -> None:
        for phase, proc in list(pending):
            if block:
                while proc.running() and time.time() < min(proc.deadline, self.hard_deadline - 10):
                    self.wait_until(time.time() + 0.2)
            if proc.running():
                continue
            pending.remove((phase, proc))
            if proc.name.startswith("attack-"):
                phase.result = read_last_json(proc.out) or {
                    "ran": False,
                    "error": f"no result (rc {proc.popen.returncode}; see {proc.name}.log)",
                }
            else:
                phase.counters = self.read_counters(proc)
                if phase.counters is not None and proc.out is not None:
                    phase.counters_at = proc.out.stat().st_mtime
        if block:
            for phase, proc in pending:
                self.stop(proc, grace=1.0)
                if proc.name.startswith("attack-"):
                    phase.result = {"ran": False, "error": "attack process did not finish in time"}


def load() -> str:
    """The machine's load average (other work on it skews latencies)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def read_last_json(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.startswith("{")]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None


def read_records(paths: list[Path]) -> list[dict[str, Any]]:
    out = []
    for path in paths:
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
    return out


# -- report ------------------------------------------------------------------------------------


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


INF = float("inf")


def latencies(requests: list[dict[str, Any]]) -> list[float]:
    return [r["ms"] if r["ok"] else INF for r in requests]


def fmt(x: float | None, spec: str = ".0f") -> str:
    if x is not None and math.isinf(x):
        return "fail"
    return "-" if x is None else format(x, spec)


def table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def in_phase(records: list[dict[str, Any]], phase: Phase, kind: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("k") == kind and phase.start <= r["t"] < phase.end]


EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Cancelled))(?::|$)")


def tracebacks(log: Path) -> tuple[int, Counter[str]]:
    """How many tracebacks the log holds, and the exceptions named in them (groups unwrapped)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return 0, Counter()
    count = sum(
        1
        for line in lines
        if line.lstrip(" |+-").startswith(("Traceback (most", "Exception Group Traceback"))
    )
    kinds = Counter[str]()
    for line in lines:
        bare = line.lstrip(" |+-").rstrip()
        m = EXCEPTION_LINE.match(bare)
        if m and not m.group(1).endswith("ExceptionGroup"):
            kinds[bare[:140]] += 1
    return count, kinds


def report(soak: Soak, phases: list[Phase], args: argparse.Namespace) -> str:
    logs = soak.log_dir
    records = read_records([logs / f"honest{w}.jsonl" for w in range(args.workers)] + [logs / "gossip.jsonl"])
    received = {r["seq"]: r for r in records if r.get("k") == "gr"}
    base = phases[0]
    # Latency quantiles count a failed request as never answered (infinite): a phase where more
    # than 1% of the honest requests fail has an infinite p99, whatever the others took.
    base_p99 = quantile(latencies(in_phase(records, base, "s")), 0.99)
    rows, grows = [], []
    worst_ratio: float | None = None
    for phase in phases:
        conns = in_phase(records, phase, "s")
        ok = [r["ms"] for r in conns if r["ok"]]
        connect = [r["cms"] for r in conns if r["ok"] and "cms" in r]
        p99 = quantile(latencies(conns), 0.99)
        ratio = None
        if p99 is not None and base_p99 is not None and math.isfinite(base_p99):
            ratio = p99 / base_p99 if math.isfinite(p99) else INF
        if phase is not base and conns:
            worst_ratio = max(worst_ratio or 0.0, INF if ratio is None else ratio)
        errs = Counter(r.get("err", "?") for r in conns if not r["ok"])
        if phase.attack is None:
            attack = "(quiet)"
        elif phase.result is None:
            attack = "NOT RUN: no result"
        elif not phase.result.get("ran"):
            attack = f"FAILED TO RUN: {phase.result.get('error')}"
        else:
            attack = phase.result.get("summary", "ran")
        rows.append(
            [
                phase.name,
                f"{len(ok)}/{len(conns)}",
                fmt(100 * len(ok) / len(conns), ".1f") if conns else "-",
                fmt(quantile(connect, 0.5)),
                fmt(quantile(latencies(conns), 0.5)),
                fmt(p99),
                "base"
                if phase is base
                else "-"
                if ratio is None
                else "fail"
                if ratio == INF
                else f"{ratio:.2f}x",
                ", ".join(f"{k} {v}" for k, v in errs.most_common(3)) or "-",
                attack,
            ]
        )
        pub = in_phase(records, phase, "gp")
        sent = [r for r in pub if "err" not in r]
        got = [received[r["seq"]]["ms"] for r in sent if r["seq"] in received]
        blobs = in_phase(records, phase, "b")
        blob_ok = [r["ms"] for r in blobs if r["ok"]]
        ps = in_phase(records, phase, "ps")
        grows.append(
            [
                phase.name,
                f"{len(got)}/{len(pub)}",
                fmt(quantile(got, 0.5)),
                fmt(quantile(got, 0.99)),
                f"{len(blob_ok)}/{len(blobs)}",
                fmt(quantile(blob_ok, 0.5)),
                fmt(quantile(blob_ok, 0.99)),
                f"{sum(r['ok'] for r in ps)}/{len(ps)}",
            ]
        )
    print(
        "\nhonest short connections (fresh identity: connect + status), per phase; ms "
        "(p50/p99 count a failure as never answered: 'fail'):"
    )
    table(["phase", "ok/total", "ok %", "connect p50", "p50", "p99", "p99/base", "failures", "attack"], rows)
    print(
        "\nhonest gossip (published -> received through the node), blob fetches (1 MiB), "
        "status on a kept connection:"
    )
    table(["phase", "gossip", "p50 ms", "p99 ms", "blob", "p50 ms", "p99 ms", "status kept"], grows)

    # memory and open files over time
    mrows = []
    for phase in phases:
        s = [x for x in soak.samples if phase.start <= x[0] < phase.end]
        if not s:
            mrows.append([phase.name, soak.clock(phase.start), "-", "-", "-", "-", "-", "-", "-"])
            continue
        span = s[-1][0] - s[0][0]
        mrows.append(
            [
                phase.name,
                soak.clock(phase.start),
                f"{100 * (s[-1][3] - s[0][3]) / span:.0f}" if span > 0 else "-",
                f"{s[0][1] / MIB:.0f}",
                f"{max(x[1] for x in s) / MIB:.0f}",
                f"{s[-1][1] / MIB:.0f}",
                str(s[0][2]),
                str(max(x[2] for x in s)),
                str(s[-1][2]),
            ]
        )
    final = soak.final
    if final is not None:
        mrows.append(
            [
                "end (settled)",
                soak.clock(final[0]),
                "",
                "",
                "",
                f"{final[1] / MIB:.0f}",
                "",
                "",
                str(final[2]),
            ]
        )
    print("\nnode CPU (% of one core), resident memory (MiB) and open files, per phase:")
    table(
        ["phase", "at", "cpu %", "rss start", "rss peak", "rss end", "fds start", "fds peak", "fds end"],
        mrows,
    )
    base_samples = [x for x in soak.samples if x[0] >= base.start] or soak.samples
    rss_base = base_samples[0][1] if base_samples else None
    rss_plus = (max(x[1] for x in base_samples) - rss_base) / MIB if rss_base is not None else None
    fds_plus = final[2] - base_samples[0][2] if final is not None and base_samples else None

    # refusals by reason: counter deltas per phase
    before = soak.start_counters
    latest_ps = [r for r in records if r.get("k") == "ps" and r.get("ok")]
    snaps: list[tuple[str, dict[str, int] | None]] = []
    for phase in phases:
        counters, mark = phase.counters, ""
        if counters is None:
            kept = [r for r in latest_ps if r["t"] < phase.end]
            counters, mark = (kept[-1]["counters"], "*") if kept else (None, "")
        snaps.append((phase.name + mark, counters))
    keys = sorted(
        {k for _, c in snaps if c for k in c if any(w in k for w in REFUSAL_WORDS)}
        | {k for k in (before or {}) if any(w in k for w in REFUSAL_WORDS)}
    )
    print(
        "\nrefusals and rejections by reason (node counters, increase per phase; "
        "* = read over the kept connection):"
    )
    if not keys:
        print("  (no refusal/rejection counters could be read)")
    else:
        rrows = []
        for key in keys:
            prev = (before or {}).get(key, 0)
            row = [key]
            for _, c in snaps:
                if c is None:
                    row.append("?")
                    continue
                row.append(str(c.get(key, 0) - prev) if c.get(key, 0) != prev else ".")
                prev = c.get(key, 0)
            rrows.append(row)
        table(["counter"] + [name for name, _ in snaps], rrows)

    tb_count, tb_kinds = tracebacks(logs / "node.log")
    print(f"\ntracebacks in the node's log: {tb_count}; the exceptions they name:")
    for kind, n in tb_kinds.most_common(6):
        print(f"  {n} x {kind}")
    if soak.events:
        print("\nevents:")
        for e in soak.events:
            print(f"  {e}")
    end = [r for r in records if r.get("k") == "end"]
    if end and end[-1].get("direct_links"):
        print(f"  note: the two gossip peers linked directly {end[-1]['direct_links']} times (cut each time)")

    conns = [r for r in records if r.get("k") == "s" and base.start <= r["t"] < phases[-1].end]
    c_ok = sum(r["ok"] for r in conns)
    success = 100 * c_ok / len(conns) if conns else 0.0
    others = [r for r in records if r.get("k") in ("b",) and base.start <= r["t"] < phases[-1].end]
    pubs = [r for r in records if r.get("k") == "gp" and base.start <= r["t"] < phases[-1].end]
    gossip_ok = sum(1 for r in pubs if "err" not in r and r["seq"] in received)
    attacks_ran = all(p.result and p.result.get("ran") for p in phases if p.attack)
    goals = [
        (
            f"honest success 100% after {args.connections:,} connections",
            bool(conns) and c_ok == len(conns) and len(conns) >= 0.98 * args.connections,
            f"{c_ok:,}/{len(conns):,} connections; gossip {gossip_ok}/{len(pubs)}; "
            f"blob {sum(r['ok'] for r in others)}/{len(others)}",
        ),
        (
            f"honest p99 <= {GOAL_P99_RATIO:g}x baseline under every attack",
            worst_ratio is not None and worst_ratio <= GOAL_P99_RATIO,
            f"worst {'inf' if worst_ratio == INF else fmt(worst_ratio, '.2f')}x "
            f"(baseline p99 {fmt(base_p99)} ms; a p99 that fails counts as inf)",
        ),
        (
            f"rss <= +{GOAL_RSS_MIB} MiB over the run",
            rss_plus is not None and rss_plus <= GOAL_RSS_MIB,
            f"+{fmt(rss_plus)} MiB (peak)",
        ),
        (
            "open files back to baseline",
            fds_plus is not None and fds_plus <= 0,
            f"{fds_plus:+d}" if fds_plus is not None else "not measured: the node was not running at the end",
        ),
        ("0 tracebacks", tb_count == 0, str(tb_count)),
        ("every attack phase ran", attacks_ran, "" if attacks_ran else "see the attack column"),
    ]
    print()
    for text, met, detail in goals:
        print(f"goal: {text}: {'met' if met else 'NOT met'} ({detail})")
    worst = "inf" if worst_ratio == INF else fmt(worst_ratio, ".2f")
    fds = f"{fds_plus:+d}" if fds_plus is not None else "+?"
    return (
        f"soak: connections {len(conns)}; honest success {success:.2f}%; worst p99 {worst}x baseline; "
        f"rss +{fmt(rss_plus)} MiB; fds {fds}; tracebacks {tb_count}"
    )


# -- settings ----------------------------------------------------------------------------------


def build_phases(args: argparse.Namespace) -> list[Phase]:
    d = args.phase_seconds
    if args.smoke:
        sizes = {"half_open": 50, "slow_rate": 32, "sybil": 10, "overflow_mib": 16, "syns": 500}
    else:
        sizes = {"half_open": 1000, "slow_rate": 32, "sybil": 300, "overflow_mib": 512, "syns": 10_000}
    attacks = [
        Phase("half_open", "half_open", {"count": sizes["half_open"]}),
        Phase(
            "slow_streams",
            "slow_streams",
            {"rate": sizes["slow_rate"], "max_streams": int(sizes["slow_rate"] * d) + 1},
        ),
        Phase("sybil", "sybil", {"count": sizes["sybil"]}),
        Phase("window_overflow", "window_overflow", {"total_mib": sizes["overflow_mib"]}),
        Phase("syn_flood", "syn_flood", {"count": sizes["syns"]}),
    ]
    if args.only:
        wanted = set(args.only.split(","))
        attacks = [a for a in attacks if a.name in wanted]
    phases = [Phase("baseline")]
    for cycle in range(args.cycles):
        for a in attacks:
            name = a.name if args.cycles == 1 else f"{a.name}#{cycle + 1}"
            phases.append(Phase(name, a.attack, dict(a.params)))
    phases.append(Phase("recovery"))
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="2,500 connections, 28 s phases (under 5 minutes)")
    mode.add_argument(
        "--smoke", action="store_true", help="every phase, tiny counts, 2 s phases (about 30 s)"
    )
    parser.add_argument(
        "--connections", type=int, help="honest connections over the run (20,000; quick 2,500)"
    )
    parser.add_argument("--phase-seconds", type=float, help="length of each phase (300; quick 28; smoke 2)")
    parser.add_argument("--cycles", type=int, default=1, help="repeat the attack phases this many times")
    parser.add_argument("--only", help="comma-separated attacks to run: half_open,slow_streams,sybil,...")
    parser.add_argument("--workers", type=int, default=1, help="honest connection processes (1)")
    parser.add_argument("--gossip-rate", type=float, default=5.0, help="gossip messages per second (5)")
    parser.add_argument("--blob-rate", type=float, default=1.0, help="1 MiB blob fetches per second (1)")
    parser.add_argument("--timeout", type=float, default=10.0, help="an honest request's time limit (10 s)")
    parser.add_argument(
        "--deadline",
        type=float,
        help="the whole run's limit in seconds (default: 150 s to start, the phases, 60 s to end)",
    )
    parser.add_argument("--log-dir", type=Path, help="where the node's and workers' logs go (kept)")
    args = parser.parse_args()
    if args.phase_seconds is None:
        args.phase_seconds = 2.0 if args.smoke else 28.0 if args.quick else 300.0
    if args.connections is None:
        args.connections = 60 if args.smoke else 2500 if args.quick else 20_000
    args.ready_timeout = 60.0
    args.settle_seconds = 1.0 if args.smoke else 3.0
    args.teardown_seconds = 30.0 if args.smoke else 60.0
    phases = build_phases(args)
    if args.deadline is None:
        args.deadline = 90 + args.ready_timeout + len(phases) * args.phase_seconds + args.teardown_seconds
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="p2pshard-soak-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    mode_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    print(
        f"soak benchmark ({mode_name}): {len(phases)} phases x {args.phase_seconds:g}s, "
        f"{args.connections:,} honest connections; load {load()}; logs in {log_dir}",
        flush=True,
    )
    cores = os.cpu_count() or 1
    with contextlib.suppress(ValueError):
        if float(load().split()[0]) > cores:
            print(
                f"  note: the load average is above the {cores} cores: latencies include CPU queueing",
                flush=True,
            )
    t_start = time.time()
    soak = Soak(args, log_dir)
    summary = (
        "soak: connections 0; honest success 0.00%; worst p99 -x baseline; rss +- MiB; fds +?; tracebacks ?"
    )
    try:
        soak.run(phases)
    except (Deadline, RuntimeError, OSError) as exc:
        soak.events.append(f"run stopped early: {exc}")
        print(f"  !! run stopped early: {exc}", flush=True)
        if soak.node is not None and soak.node.running():
            soak.sample()
            soak.final = soak.samples[-1] if soak.samples else None
    finally:
        soak.stop_all()
    if hasattr(soak, "t0"):
        summary = report(soak, phases, args)
    else:
        log = (
            (log_dir / "node.log").read_text(errors="replace")[-2000:]
            if (log_dir / "node.log").exists()
            else ""
        )
        print(f"\nthe node did not start; its log ends:\n{log}")
    print(f"\ntotal {time.time() - t_start:.0f}s; load at end {load()}; logs kept in {log_dir}")
    print(summary)


if __name__ == "__main__":
    main()
