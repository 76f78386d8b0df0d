"""Churn: a 5-node devnet of real processes where one node is SIGKILLed at a random moment of every
round and restarted from its hot snapshot (issue 12, "no bad time to kill a peer").

Five ``p2pshard`` processes on 127.0.0.1 (``start`` + 4 x ``join``; micro preset, ``--inner-steps
4``, ``OMP_NUM_THREADS=1``, a snapshot at every commit). After a warm-up in which every node has
contributed to a round, each of ``--rounds`` rounds k gets one kill: at a random offset u in
[0, period) after round k opens, a random *healthy* node (alive, caught up, holding a snapshot) is
SIGKILLed, and restarted ``--restart-max`` periods later at most (a random delay, 0 = at once)
with ``p2pshard join <every live node>``, the same key and the same ``--snapshot-dir`` (it resumes
from its newest snapshot). A kill is skipped when it would leave fewer than 3 healthy nodes (a
majority of 5). The RNG is seeded (``--seed``). After the last kill the network runs
``--settle`` more rounds, then every process is ended by its PID.

Definitions (computed after the run from every ``round`` event each process printed):

- Round k *opens* at ``genesis + k * period``. Nodes do not print the genesis time; it is
  estimated as ``min over commits (t_commit(r) - r * period) - 0.6 * period - skew`` (rounds with
  contributors only: a commit comes at the earliest just after the announce deadline at 0.6
  period plus the clock-skew allowance), so kill offsets are estimates (a few tenths of a
  second late at most). Phases named in the table: ``announce`` (0-0.6 period: the announce
  window), ``fetch`` (0.6-0.9), ``commit/train`` (0.9-1: committing, training the next round).
- A node is *restarting* from the round of its kill k until its *catch-up round* m (k .. m-1):
  m is the first round for which its restarted process printed a ``round`` event whose model hash
  equals the hash the other nodes reported for m (the majority of theirs); from m on it is a
  survivor again. A node that never catches up is restarting until the end.
- *Survivors* of round r: the nodes not restarting in r.
- A *round lost by the survivors*: a round r (of the kill rounds and the settle rounds) in which at
  least one survivor printed no ``round`` event for r with ``contributed: true``. Node-rounds lost
  (survivor x round pairs) are counted too, each with the reason the node logged
  (``round r: not contributing (<reason>)``). A lost round r is attributed to the kill of round r.
- *Catch-up* of a restart, in rounds: ``m - r_restart``, where ``r_restart`` is the round under
  way at the restart (1 + the newest round any other node had committed by then); 0 = the
  restarted node committed the very round under way on the survivors' model. Also in seconds, from
  the restart to that ``round`` event (start-up of the process included).
- *Identical*: for every round, every survivor that committed it reports the same model hash.

Goals (issue 12): no round lost by the survivors, catch-up <= 2 rounds, identical hashes throughout.

    python benchmarks/churn.py                 # 30 kill rounds of 10 s (about 7 minutes)
    python benchmarks/churn.py --quick         # under 5 minutes on 2 cores (at most 16 kill rounds)
    python benchmarks/churn.py --rounds 50 --seed 3 --log-dir churn-logs

Traffic goes to 127.0.0.1 only; every wait is bounded and the whole run has a deadline
(``--deadline``); every process is ended by its PID in a ``finally`` (SIGTERM, a bounded wait,
SIGKILL). Node logs (stderr, ``-v``) go to a temp dir whose path is printed; they are scanned for
``Traceback``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NODES = 5
MAJORITY = NODES // 2 + 1
START_TIMEOUT_S = 90.0
QUICK_BUDGET_S = 295.0
STOP_GRACE_S = 10.0
SKIP_RE = re.compile(r"round (\d+): not contributing \((\w+)\)")


class Deadline(Exception):
    pass


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f}/{five:.2f} (1/5 min, {os.cpu_count()} cores)"


@dataclass
class Node:
    index: int
    key: Path
    snaps: Path
    log: Path
    proc: subprocess.Popen[str] | None = None
    incarnation: int = 0
    addrs: list[str] = field(default_factory=list)
    healthy: bool = False  # alive and on the network's model (a victim may be chosen)
    started_at: float = 0.0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Kill:
    round: int
    victim: int
    offset: float  # seconds after the (estimated) opening of the round
    at: float
    restart_delay: float
    restart_at: float | None = None
    r_restart: int | None = None
    listening_at: float | None = None
    r_listening: int | None = None  # the round under way when the restarted process listened
    caught_up_round: int | None = None
    caught_up_at: float | None = None
    lost: list[tuple[int, str]] = field(default_factory=list)  # (survivor, reason) in this round


@dataclass
class Commit:
    t: float
    node: int
    incarnation: int
    round: int
    model_hash: str
    contributed: bool
    contributors: int


class Churn:
    def __init__(self, args: argparse.Namespace, out: Path) -> None:
        self.args, self.out = args, out
        self.rng = random.Random(args.seed)
        self.period: float = args.period
        self.nodes = [
            Node(i, out / f"node{i}.key", out / f"snap{i}", out / f"node{i}.log") for i in range(NODES)
        ]
        self.events: queue.Queue[tuple[float, int, int, dict[str, Any]]] = queue.Queue()
        self.commits: list[Commit] = []
        self.kills: list[Kill] = []
        self.skipped_kills = 0
        self.deadline = time.monotonic() + args.deadline
        self.genesis: float | None = None
        self.first_round: int | None = None
        self.last_round: int | None = None

    # -- processes ---------------------------------------------------------------------------

    def _spawn(self, node: Node, bootstrap: list[str]) -> None:
        node.incarnation += 1
        cmd = [sys.executable, "-m", "p2pshard", "-v", "join" if bootstrap else "start", *bootstrap]
        cmd += ["--listen", "/ip4/127.0.0.1/tcp/0", "--json", "--preset", "micro"]
        cmd += ["--round-seconds", str(self.period), "--inner-steps", "4"]
        cmd += ["--key", str(node.key), "--snapshot-dir", str(node.snaps)]
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "P2PSHARD_SNAPSHOT_INTERVAL_S": "1",
        }
        with open(node.log, "ab") as log:  # the child keeps its own copy of the fd
            log.write(f"\n==== churn: incarnation {node.incarnation} ====\n".encode())
            log.flush()
            node.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        node.addrs, node.healthy, node.started_at = [], False, time.monotonic()
        threading.Thread(
            target=self._read, args=(node.index, node.incarnation, node.proc), daemon=True
        ).start()

    def _read(self, index: int, incarnation: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        with contextlib.suppress(ValueError, OSError):
            for line in proc.stdout:
                with contextlib.suppress(json.JSONDecodeError):
                    ev = json.loads(line)
                    if isinstance(ev, dict):
                        self.events.put((time.monotonic(), index, incarnation, ev))

    def stop_all(self) -> None:
        """SIGTERM every node by PID, wait (bounded), SIGKILL the ones still running."""
        running = [n for n in self.nodes if n.alive()]
        for n in running:
            with contextlib.suppress(ProcessLookupError):
                n.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        end = time.monotonic() + STOP_GRACE_S
        for n in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                n.proc.wait(timeout=max(0.1, end - time.monotonic()))  # type: ignore[union-attr]
        for n in self.nodes:
            if n.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(n.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
                with contextlib.suppress(subprocess.TimeoutExpired):
                    n.proc.wait(timeout=5)  # type: ignore[union-attr]

    # -- events ------------------------------------------------------------------------------

    def record(self, t: float, node: int, **fields: Any) -> None:
        """Every event and every kill/restart, one JSON line each, in ``events.jsonl``."""
        with open(self.out / "events.jsonl", "a") as f:
            f.write(json.dumps({"t": round(t, 3), "node": node, **fields}) + "\n")

    def pump(self, until: float) -> None:
        """Handle events until ``until`` (monotonic); raises Deadline past the global deadline."""
        while True:
            now = time.monotonic()
            if now >= self.deadline:
                raise Deadline(f"global deadline ({self.args.deadline:.0f}s) reached")
            if now >= until:
                return
            try:
                t, i, inc, ev = self.events.get(timeout=min(until, self.deadline) - now)
            except queue.Empty:
                continue
            self._handle(t, i, inc, ev)
            self.record(t, i, incarnation=inc, **ev)

    def _handle(self, t: float, i: int, inc: int, ev: dict[str, Any]) -> None:
        node = self.nodes[i]
        kind = ev.get("event")
        if kind == "listening" and inc == node.incarnation:
            node.addrs = list(ev.get("addrs", []))
            for k in self.kills:
                if k.victim == i and k.listening_at is None and k.restart_at is not None:
                    k.listening_at = t
                    k.r_listening = self.newest_round(exclude=i) + 1
        elif kind == "round":
            r = int(ev["round"])
            commit = Commit(
                t,
                i,
                inc,
                r,
                str(ev["model_hash"]),
                bool(ev.get("contributed")),
                int(ev.get("contributors", 0)),
            )
            self.commits.append(commit)
            if self.genesis is not None and commit.contributors:
                self.genesis = min(self.genesis, self._genesis_from(t, r))
            self._check_caught_up()

    def _genesis_from(self, t: float, r: int) -> float:
        skew = min(1.0, 0.3 * self.period / 4, 0.6 * self.period / 4)
        return t - r * self.period - 0.6 * self.period - skew

    def majority_hash(self, r: int, exclude: int | None = None) -> str | None:
        votes = Counter(c.model_hash for c in self.commits if c.round == r and c.node != exclude)
        return votes.most_common(1)[0][0] if votes else None

    def newest_round(self, exclude: int | None = None) -> int:
        return max((c.round for c in self.commits if c.node != exclude), default=-1)

    def _check_caught_up(self) -> None:
        for k in self.kills:
            if k.restart_at is None or k.caught_up_round is not None:
                continue
            node = self.nodes[k.victim]
            mine = [c for c in self.commits if c.node == k.victim and c.t >= k.restart_at]
            for c in sorted(mine, key=lambda c: c.round):
                if self.majority_hash(c.round, exclude=k.victim) == c.model_hash:
                    k.caught_up_round, k.caught_up_at = c.round, c.t
                    if node.alive() and k is self._last_kill_of(k.victim):
                        node.healthy = True
                    break

    def _last_kill_of(self, victim: int) -> Kill | None:
        return next((k for k in reversed(self.kills) if k.victim == victim), None)

    # -- phases ------------------------------------------------------------------------------

    def start(self) -> None:
        first = self.nodes[0]
        self._spawn(first, [])
        end = time.monotonic() + START_TIMEOUT_S
        while not first.addrs:
            if time.monotonic() > end or not first.alive():
                raise RuntimeError("the first node did not start listening")
            self.pump(time.monotonic() + 0.2)
        for n in self.nodes[1:]:
            self._spawn(n, first.addrs[:1])

    def warm_up(self) -> None:
        """Until every node has contributed to a round and holds a snapshot."""
        end = time.monotonic() + self.args.warmup_timeout
        while True:
            contributed = {c.node for c in self.commits if c.contributed}
            snapped = {n.index for n in self.nodes if any(n.snaps.glob("snapshot-*"))}
            if len(contributed) == NODES and len(snapped) == NODES:
                break
            if time.monotonic() > end:
                raise RuntimeError(
                    f"warm-up: {len(contributed)}/{NODES} nodes contributed, {len(snapped)} hold a "
                    f"snapshot after {self.args.warmup_timeout:.0f}s"
                )
            for n in self.nodes:
                if not n.alive():
                    raise RuntimeError(f"node {n.index} exited during warm-up (log {n.log})")
            self.pump(time.monotonic() + 0.5)
        for n in self.nodes:
            n.healthy = True
        # an empty round (no contributor) may be applied at any moment: not a clock for the schedule
        self.genesis = min(self._genesis_from(c.t, c.round) for c in self.commits if c.contributors)

    def opens(self, r: int) -> float:
        assert self.genesis is not None
        return self.genesis + r * self.period

    def churn(self) -> None:
        assert self.genesis is not None
        now = time.monotonic()
        k0 = max(self.newest_round() + 2, int((now - self.genesis) / self.period) + 1)
        self.first_round = k0
        self.last_round = k0 + self.args.rounds - 1 + self.args.settle
        pending: list[Kill] = []  # killed, not yet restarted
        for k in range(k0, k0 + self.args.rounds):
            offset = self.rng.uniform(0, self.period)
            delay = self.rng.uniform(0, self.args.restart_max * self.period)
            self._run_until(self.opens(k) + offset, pending)
            candidates = [
                n for n in self.nodes if n.healthy and n.alive() and any(n.snaps.glob("snapshot-*"))
            ]
            healthy = sum(1 for n in self.nodes if n.healthy and n.alive())
            if not candidates or healthy - 1 < MAJORITY:
                self.skipped_kills += 1
                print(f"  round {k}: kill skipped ({healthy} healthy nodes; a kill would leave no majority)")
                continue
            victim = self.rng.choice(candidates)
            assert victim.proc is not None
            os.kill(victim.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                victim.proc.wait(timeout=5)
            at = time.monotonic()
            victim.healthy = False
            kill = Kill(k, victim.index, at - self.opens(k), at, delay)
            self.kills.append(kill)
            pending.append(kill)
            self.record(at, victim.index, event="churn_kill", round=k)
        self._run_until(self.opens(self.last_round + 1) + 0.2 * self.period, pending)
        # the last restarted nodes get ``tail`` more periods to catch up
        end = self.opens(self.last_round + 1) + self.args.tail * self.period
        while any(k.restart_at is not None and k.caught_up_round is None for k in self.kills[-2:]):
            if time.monotonic() > end:
                break
            self.pump(min(end, time.monotonic() + 0.5))

    def _run_until(self, t: float, pending: list[Kill]) -> None:
        """Pump events until ``t``, restarting killed nodes when their delay is over."""
        while True:
            now = time.monotonic()
            for kill in [k for k in pending if now >= k.at + k.restart_delay]:
                pending.remove(kill)
                self._restart(kill)
            nxt = min([t, *(k.at + k.restart_delay for k in pending)])
            if now >= t:
                return
            self.pump(max(now + 0.01, nxt))

    def _restart(self, kill: Kill) -> None:
        live = [a for n in self.nodes if n.alive() and n.addrs for a in n.addrs[:1]]
        self._spawn(self.nodes[kill.victim], live)
        kill.restart_at = time.monotonic()
        kill.r_restart = self.newest_round(exclude=kill.victim) + 1
        self.record(kill.restart_at, kill.victim, event="churn_restart", r=kill.r_restart)


# -- the report ------------------------------------------------------------------------------


def skip_reasons(log: Path) -> dict[int, str]:
    reasons: dict[int, str] = {}
    with contextlib.suppress(OSError):
        for m in SKIP_RE.finditer(log.read_text(errors="replace")):
            reasons.setdefault(int(m.group(1)), m.group(2))
    return reasons


def phase_name(offset: float, period: float) -> str:
    f = offset / period
    if f < 0.6:
        return "announce"
    if f < 0.9:
        return "fetch"
    return "commit/train"


def report(ch: Churn) -> str:
    P = ch.period
    first, last = ch.first_round, ch.last_round
    assert first is not None and last is not None
    newest = ch.newest_round()
    last = min(last, newest)
    window = range(first, last + 1)

    def restarting(node: int, r: int) -> bool:
        for k in ch.kills:
            if k.victim == node and k.round <= r and (k.caught_up_round is None or r < k.caught_up_round):
                return True
        return False

    reasons = {n.index: skip_reasons(n.log) for n in ch.nodes}
    by_round: dict[int, list[Commit]] = {}
    for c in ch.commits:
        by_round.setdefault(c.round, []).append(c)
    lost_rounds: set[int] = set()
    lost_pairs: list[tuple[int, int, str]] = []
    diverged: list[tuple[int, set[str]]] = []
    completed = 0
    for r in window:
        commits = by_round.get(r, [])
        survivors = [i for i in range(NODES) if not restarting(i, r)]
        hashes = {c.model_hash for c in commits if c.node in survivors}
        if len(hashes) > 1:
            diverged.append((r, hashes))
        if sum(1 for c in commits if c.node in survivors) >= MAJORITY and len(hashes) == 1:
            completed += 1
        for i in survivors:
            if not any(c.node == i and c.contributed for c in commits):
                reason = reasons[i].get(r, "no round event" if not any(c.node == i for c in commits) else "?")
                lost_pairs.append((i, r, reason))
                lost_rounds.add(r)
    by_kill_round = {k.round: k for k in ch.kills}
    for i, r, reason in lost_pairs:
        if r in by_kill_round:
            by_kill_round[r].lost.append((i, reason))

    lines = []
    lines.append(
        f"\n{'round':>5} {'victim':>6} {'offset s':>8} {'phase':>12} {'restart s':>9} "
        f"{'lost':>4} {'catch-up':>8} {'catch-up s':>10} {'start s':>7} {'from up':>7}  survivors' losses"
    )
    catch_ups: list[int] = []
    from_up: list[int] = []
    never = 0
    for k in ch.kills:
        up_txt = "-"
        if k.caught_up_round is not None and k.r_restart is not None:
            cu = k.caught_up_round - k.r_restart
            catch_ups.append(cu)
            cu_s = f"{k.caught_up_at - k.restart_at:.1f}" if k.restart_at and k.caught_up_at else "-"
            cu_txt = str(cu)
            if k.r_listening is not None:
                from_up.append(max(0, k.caught_up_round - k.r_listening))
                up_txt = str(from_up[-1])
        else:
            never += 1
            cu_txt, cu_s = "never", "-"
        start_s = f"{k.listening_at - k.restart_at:.1f}" if k.listening_at and k.restart_at else "-"
        losses = ", ".join(f"n{i}:{why}" for i, why in k.lost) or "-"
        lines.append(
            f"{k.round:>5} {k.victim:>6} {k.offset:>8.1f} {phase_name(k.offset, P):>12} "
            f"{k.restart_delay:>9.1f} {len({k.round} & lost_rounds):>4} {cu_txt:>8} {cu_s:>10} "
            f"{start_s:>7} {up_txt:>7}  {losses}"
        )
    unattributed = sorted(r for r in lost_rounds if r not in by_kill_round)
    kills = len(ch.kills)
    L = len(lost_rounds)
    p50 = statistics.median(catch_ups) if catch_ups else float("nan")
    mx = max(catch_ups) if catch_ups else float("nan")
    if never:
        mx = float("inf")
    identical = not diverged
    lines.append("")
    lines.append(
        f"rounds {first}..{last}: {len(window)} rounds ({ch.args.rounds} with a kill, {ch.args.settle} to "
        f"settle); completed (a majority of survivors committed one model) {completed}"
    )
    lines.append(
        f"kills {kills} (skipped {ch.skipped_kills}: a kill would have left fewer than {MAJORITY} "
        "caught-up nodes alive)"
    )
    lines.append(
        f"rounds lost by survivors {L} ({L / max(1, kills):.2f} per kill); survivor-rounds without a "
        f"contributed round event: {len(lost_pairs)}"
        + (f"; lost rounds after the last kill: {unattributed}" if unattributed else "")
    )
    if lost_pairs:
        why = Counter(reason for _, _, reason in lost_pairs)
        lines.append("  reasons (from the survivors' 'not contributing' lines): " + ", ".join(
            f"{k} {v}" for k, v in why.most_common()
        ))  # fmt: skip
    lines.append(
        f"catch-up: p50 {p50:g} max {mx:g} rounds over {len(catch_ups)} restarts"
        + (f"; {never} never caught up" if never else "")
    )
    if from_up:
        starts = [k.listening_at - k.restart_at for k in ch.kills if k.listening_at and k.restart_at]
        lines.append(
            f"  of which process start-up (restart to 'listening'): p50 {statistics.median(starts):.1f}s "
            f"max {max(starts):.1f}s; catch-up counted from 'listening' instead: p50 "
            f"{statistics.median(from_up):g} max {max(from_up):g} rounds"
        )
    lines.append(f"survivors bit-identical: {'yes' if identical else 'no'}")
    for r, hashes in diverged[:10]:
        per = {c.node: c.model_hash[:12] for c in by_round.get(r, []) if not restarting(c.node, r)}
        lines.append(f"  round {r}: {len(hashes)} hashes among survivors: {per}")
    tracebacks = 0
    for n in ch.nodes:
        with contextlib.suppress(OSError):
            tracebacks += n.log.read_text(errors="replace").count("Traceback")
    lines.append(f"tracebacks in node logs: {tracebacks}")
    goals = [
        ("no round lost by the survivors", L == 0),
        ("catch-up <= 2 rounds", bool(catch_ups) and mx <= 2),
        ("identical hashes throughout", identical),
    ]
    for name, ok in goals:
        lines.append(f"goal: {name}: {'met' if ok else 'NOT met'}")
    lines.append(
        f"churn: rounds {completed}; kills {kills}; rounds lost by survivors {L}; "
        f"catch-up p50 {p50:g} max {mx:g} rounds; identical {'yes' if identical else 'no'}"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds with a kill (30; --quick: as many as fit, <= 16)"
    )
    parser.add_argument("--period", type=float, default=10.0, help="round length in seconds (10)")
    parser.add_argument("--settle", type=int, default=2, help="rounds without a kill at the end (2)")
    parser.add_argument(
        "--restart-max", type=float, default=0.5, help="restart delay drawn from [0, this x period] (0.5)"
    )
    parser.add_argument("--seed", type=int, default=1, help="RNG seed for victims, moments, delays (1)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"as many kill rounds as fit in {QUICK_BUDGET_S:.0f}s after the warm-up (at most 16)",
    )
    parser.add_argument("--warmup-timeout", type=float, default=150.0, help="start-up limit, seconds (150)")
    parser.add_argument("--deadline", type=float, help="the whole run's limit in seconds")
    parser.add_argument("--log-dir", type=Path, help="where node logs, keys and snapshots go")
    args = parser.parse_args()
    args.rounds = args.rounds if args.rounds is not None else 16 if args.quick else 30
    args.tail = 2.0  # periods after the last round for the last restarted node to catch up
    if args.deadline is None:
        args.deadline = (
            QUICK_BUDGET_S - STOP_GRACE_S
            if args.quick
            else args.warmup_timeout + (args.rounds + args.settle + args.tail + 3) * args.period
        )
    out = args.log_dir or Path(tempfile.mkdtemp(prefix="p2pshard-churn-"))
    out.mkdir(parents=True, exist_ok=True)
    rounds = (
        f"--quick: as many kill rounds as fit in {QUICK_BUDGET_S:.0f}s after the warm-up (at most "
        f"{args.rounds})"
        if args.quick
        else f"{args.rounds} kill rounds"
    )
    print(
        f"churn benchmark: {NODES} nodes on 127.0.0.1, micro preset; {rounds} + {args.settle} settle "
        f"rounds of {args.period:g}s; restart after 0-{args.restart_max:g} periods; seed {args.seed}; "
        f"deadline {args.deadline:.0f}s; load {load()}; logs in {out}",
        flush=True,
    )
    t0 = time.monotonic()
    ch = Churn(args, out)
    failed = None
    try:
        ch.start()
        ch.warm_up()
        spent = time.monotonic() - t0
        if args.quick:  # what fits in the budget: kill + settle rounds, the tail, the stop
            fit = int((QUICK_BUDGET_S - spent - STOP_GRACE_S - 5) / args.period - args.settle - args.tail - 1)
            args.rounds = max(3, min(args.rounds, fit))
        print(f"  warm-up done in {spent:.0f}s; {args.rounds} kill rounds begin", flush=True)
        ch.churn()
    except (Deadline, RuntimeError, OSError) as exc:
        failed = str(exc)
        print(f"  !! run stopped early: {exc}", flush=True)
    finally:
        ch.stop_all()
    with contextlib.suppress(Deadline):
        ch.deadline = time.monotonic() + 5
        ch.pump(time.monotonic() + 0.5)  # events printed before the processes ended
    if ch.first_round is None:
        print(f"\nno kills: {failed}; logs in {out}")
        print(
            "churn: rounds 0; kills 0; rounds lost by survivors 0; "
            "catch-up p50 nan max nan rounds; identical no"
        )
        return 1
    text = report(ch)
    print(f"\ntotal {time.monotonic() - t0:.0f}s; load at end {load()}; logs kept in {out}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
