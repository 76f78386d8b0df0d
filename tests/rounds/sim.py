"""N round protocols on a virtual clock, with a fake engine and a hostile network (no trio, no torch).

Everything is an event ``(time, seq, node, incarnation, handler, args)`` in one heap; the clock
jumps from event to event. A node is a :class:`RoundProtocol` plus what a real driver and engine
would hold around it: the model (a 32-byte hash chain: applying round ``r`` with contributions
``C`` gives ``sha256(prev || r || sorted content hashes of C)``), a blob store (its own payloads and
the ones it fetched, which it serves to others as the real blob layer does), a checkpoint cache,
and a snapshot store that survives a kill. The driver logic mirrors ``protocols/training.py``:

=================  =================================================================================
command            what the simulated driver does
=================  =================================================================================
AskCheckpoints     every reachable, live, started peer answers after a delay (a paused peer costs
                   the ask timeout); a peer without a schedule is ``undecided_elders`` if its id is
                   smaller
Train              ``trained`` after the node's training time (per node and round, overridable)
Announce           gossip: each reachable peer gets it after a delay (or loses it), then ``tick``
Fetch              per contribution: ``fetched`` after a delay if a reachable live node holds the
                   payload, else ``fetch_failed``; the fetcher then holds (and serves) it
Aggregate          the engine applies the round (hash chain), then ``aggregated``
LoadCheckpoint     ``loaded`` if a reachable provider still holds that (round, hash), else
                   ``load_failed``
Snapshot           the engine's (round, hash) goes to the node's snapshot store
=================  =================================================================================

``tick(now)`` runs after every event and at ``wakeup()`` (plus a tiny epsilon). Faults: kill,
pause (SIGSTOP-like: events wait, then arrive at once), restart from the last snapshot, late join,
partition and heal, loss and delay of announcements and payloads. Invariants are checked as the
run goes (see :meth:`Sim.report`); ``python -m tests.rounds.sim --nodes 16 --rounds 1000 --churn``
runs the benchmark.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from p2pshard.core.rounds import (
    Aggregate,
    Announce,
    Announcement,
    AskCheckpoints,
    Command,
    Commit,
    Fetch,
    Finished,
    LoadCheckpoint,
    PeerCheckpoint,
    Penalise,
    RoundProtocol,
    ScheduleOffer,
    Skipped,
    Snapshot,
    Stage,
    Timing,
    Train,
    Trained,
)

GENESIS = hashlib.sha256(b"genesis model").digest()
EPS = 1e-6
INF = math.inf


def sha(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.digest()


def apply_round(prev: bytes, r: int, content_hashes: list[bytes]) -> bytes:
    """The fake engine's outer step: the model is a hash chain over rounds and contributions."""
    return sha(prev, r.to_bytes(8, "big"), *sorted(content_hashes))


def checkpoint_digest(r: int, model_hash: bytes) -> bytes:
    return sha(b"checkpoint", r.to_bytes(8, "big"), model_hash)


Span = tuple[float, float]


@dataclass
class SimConfig:
    nodes: int = 16
    rounds: int = 20
    """The network's last round count (every node stops after it)."""
    seed: int = 1
    timing: Timing = field(default_factory=lambda: Timing(snapshot_interval_s=30.0))
    start_spread_s: float = 1.0
    train_s: tuple[float, float] = (2.0, 5.0)
    gossip_delay_s: tuple[float, float] = (0.02, 0.3)
    gossip_loss: float = 0.0
    gossip_spike: float = 0.0
    """Probability that one announcement delivery is delayed by ``spike_s`` (reordering)."""
    spike_s: tuple[float, float] = (0.5, 4.0)
    fetch_delay_s: tuple[float, float] = (0.05, 0.8)
    fetch_loss: float = 0.0
    ask_delay_s: tuple[float, float] = (0.02, 0.2)
    ask_timeout_s: float = 1.0
    load_delay_s: tuple[float, float] = (0.2, 1.5)
    aggregate_s: tuple[float, float] = (0.01, 0.2)
    churn: bool = False
    """Random faults every round: kills (at phase boundaries and random moments) and restarts,
    pauses, late joiners, partitions; with loss and delay spikes set by the fields above."""
    kill_p: float = 0.3
    pause_p: float = 0.15
    join_p: float = 0.02
    partition_p: float = 0.01
    max_joiners: int = 4


@dataclass
class SimNode:
    index: int
    name: str
    proto: RoundProtocol
    incarnation: int = 0
    started: bool = False
    alive: bool = True
    paused_until: float = 0.0
    engine_round: int = 0
    engine_hash: bytes = GENESIS
    blobs: dict[bytes, int] = field(default_factory=dict)  # content hash -> round
    updates: dict[int, Trained] = field(default_factory=dict)
    fetching: dict[int, dict[str, bytes]] = field(default_factory=dict)  # round -> contributor -> hash
    served: tuple[int, bytes] | None = None  # the checkpoint cache (what an ask was answered with)
    timer_at: float | None = None
    pending: dict[int, tuple[str, float]] = field(default_factory=dict)  # token -> (what, since)
    stage_key: tuple[Stage, int] = (Stage.IDLE, 0)
    stage_since: float = 0.0
    catching_up: list[Span] = field(default_factory=list)
    finished: bytes | None = None
    contributed: int = 0
    commits: int = 0
    skips: Counter[str] = field(default_factory=Counter)

    @property
    def live(self) -> bool:
        return self.alive and self.started


class Sim:
    def __init__(self, cfg: SimConfig | None = None, **kw: Any) -> None:
        self.cfg = cfg = cfg or SimConfig(**kw)
        self.rng = random.Random(cfg.seed)
        self.now = 0.0
        self._q: list[tuple[float, int, int, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = 0
        self._token = 0
        self.nodes: list[SimNode] = []
        self.by_name: dict[str, SimNode] = {}
        self.snapshots: dict[str, tuple[int, bytes]] = {}
        self.groups: dict[str, int] | None = None
        self.partitions: list[Span] = []
        self.disturbed: dict[str, list[Span]] = {}
        self.counts: Counter[str] = Counter()
        self.checks: dict[str, list[int]] = {}
        self.violations: list[str] = []
        self.commits: dict[int, dict[str, tuple[bytes, float, bool]]] = {}
        self.verdicts: Counter[str] = Counter()
        self.waived: Counter[str] = Counter()
        self.loads: dict[str, list[tuple[int, bytes]]] = {}
        self._catchups: list[tuple[str, float]] = []
        self._finalized = -1
        self.train_override: dict[tuple[str, int], float] = {}
        self.announce_delay: dict[tuple[str, int], float] = {}
        self.fetch_delay: dict[tuple[str, int], float] = {}  # (contributor, round) -> extra seconds
        self.hooks: list[Callable[[SimNode, Command], None]] = []
        self.wall_s = 0.0
        t = cfg.timing
        self.stage_bound_s = 2 * t.period_s + t.schedule_wait_s
        self.catch_up_bound_s = (
            t.catch_up_tries * (t.ask_retry_s + cfg.ask_delay_s[1] + cfg.ask_timeout_s)
            + cfg.load_delay_s[1]
            + cfg.aggregate_s[1]
            + t.period_s
        )
        for _ in range(cfg.nodes):
            self.add_node(self.rng.uniform(0.0, cfg.start_spread_s))
        if cfg.churn:
            self._push(cfg.timing.start_delay_s, -1, 0, self._churn_round, (0,))
        self._push(t.period_s, -1, 0, self._audit, ())

    # ------------------------------------------------------------------------------- events

    def _push(self, t: float, idx: int, inc: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self._seq += 1
        heapq.heappush(self._q, (t, self._seq, idx, inc, fn, args))

    def at(self, t: float, fn: Callable[[], Any]) -> None:
        """Run ``fn()`` at virtual time ``t`` (a test's action)."""
        self._push(t, -1, 0, lambda now: fn(), ())

    def _to(self, node: SimNode, t: float, fn: Callable[..., Any], *args: Any) -> None:
        self._push(t, node.index, node.incarnation, fn, args)

    def run(self, until: float = INF) -> None:
        began = time.perf_counter()
        q = self._q
        nodes = self.nodes
        end = self.end_time()
        until = min(until, end)
        while q and q[0][0] <= until:
            t, _, idx, inc, fn, args = heapq.heappop(q)
            self.now = t
            if idx < 0:
                fn(t, *args)
                continue
            node = nodes[idx]
            if not node.alive or inc != node.incarnation:
                continue  # sent to a process that is gone: lost with it
            if node.paused_until > t:
                self._push(node.paused_until, idx, inc, fn, args)  # waits in the socket buffer
                continue
            self.counts["events"] += 1
            out = fn(node, t, *args)
            if out:
                self._carry(node, out, t)
            self._after(node, t)
            if self._all_done():
                break
        if until < INF and not self._all_done():
            self.now = max(self.now, until)
        self.wall_s += time.perf_counter() - began

    def end_time(self) -> float:
        t = self.cfg.timing
        return self.cfg.start_spread_s + t.start_delay_s + (self.cfg.rounds + 6) * t.period_s + 60.0

    def _all_done(self) -> bool:
        return all(n.finished is not None or not n.alive for n in self.nodes if n.started)

    def _after(self, node: SimNode, now: float) -> None:
        if not node.alive:
            return  # killed while handling the event (a test's hook)
        p = node.proto
        if p.stage is not Stage.IDLE:
            self._carry(node, p.tick(now), now)
            if not node.alive:
                return
        key = (p.stage, p.model_round)
        if key != node.stage_key:
            self._left_stage(node, now)
            node.stage_key, node.stage_since = key, now
            if p.stage is Stage.CATCHING_UP:
                node.catching_up.append((now, INF))
        self._check_memory(node)
        w = p.wakeup()
        if w is None:
            return
        t = max(w, now) + EPS
        if node.timer_at is None or t < node.timer_at:
            node.timer_at = t
            self._to(node, t, self._timer, t)

    def _timer(self, node: SimNode, now: float, t: float) -> list[Command]:
        if node.timer_at != t:
            return []
        node.timer_at = None
        return []  # _after ticks

    # ----------------------------------------------------------------------- the driver

    def _ask(self, node: SimNode, what: str) -> int:
        self._token += 1
        node.pending[self._token] = (what, self.now)
        return self._token

    def _answered(self, node: SimNode, token: int) -> None:
        node.pending.pop(token, None)

    def _carry(self, node: SimNode, commands: list[Command], now: float) -> None:
        cfg, rng = self.cfg, self.rng
        for cmd in commands:
            for hook in self.hooks:
                hook(node, cmd)
            if not node.alive:
                return  # a hook killed it
            match cmd:
                case AskCheckpoints(ask=ask):
                    d = rng.uniform(*cfg.ask_delay_s)
                    tok = self._ask(node, "checkpoints")
                    self._to(node, now + d / 2, self._answer_ask, ask, tok, now + d)
                case Train(round=r):
                    self._check("train_on_current_model", node.engine_round == r, f"{node.name} trains {r}")
                    secs = self.train_override.get((node.name, r)) or rng.uniform(*cfg.train_s)
                    tok = self._ask(node, "train")
                    self._to(node, now + secs, self._trained, r, node.engine_hash, secs, tok)
                case Announce(round=r):
                    self._gossip(node, node.updates[r], now)
                case Fetch(round=r, contributions=chosen):
                    node.fetching[r] = {a.contributor: a.content_hash for a in chosen}
                    for old in [k for k in node.fetching if k < r - 2]:
                        del node.fetching[old]
                    for a in chosen:
                        tok = self._ask(node, "fetch")
                        if a.contributor == node.name and a.content_hash in node.blobs:
                            self._to(node, now + EPS, self._fetched, r, a, tok, True)
                            continue
                        d = rng.uniform(*cfg.fetch_delay_s) + self.fetch_delay.get((a.contributor, r), 0.0)
                        ok = not (cfg.fetch_loss and rng.random() < cfg.fetch_loss)
                        self._to(node, now + d, self._fetched, r, a, tok, ok)
                case Aggregate(round=r, contributors=ready):
                    tok = self._ask(node, "aggregate")
                    self._to(node, now + rng.uniform(*cfg.aggregate_s), self._aggregated, r, ready, tok)
                case LoadCheckpoint():
                    d = rng.uniform(*cfg.load_delay_s)
                    tok = self._ask(node, "load")
                    self._to(node, now + d / 2, self._serve_checkpoint, cmd, tok, now + d)
                case Snapshot(round=r):
                    self.snapshots[node.name] = (node.engine_round, node.engine_hash)
                    self._check("snapshot_of_engine", node.engine_round == r, f"{node.name} snap {r}")
                    self.counts["snapshots"] += 1
                case Commit():
                    self._commit(node, cmd, now)
                case Skipped(reason=reason):
                    node.skips[reason] += 1
                    self.counts[f"skipped_{reason}"] += 1
                case Penalise():
                    self.counts["penalties"] += 1
                case Finished(model_hash=mh):
                    node.finished = mh
                    self._left_stage(node, now)

    def _reachable(self, a: SimNode, b: SimNode) -> bool:
        g = self.groups
        return g is None or g.get(a.name, 0) == g.get(b.name, 0)

    def _answer_ask(self, node: SimNode, now: float, ask: int, tok: int, deliver: float) -> None:
        answers: list[PeerCheckpoint] = []
        elders = False
        slow = False
        for peer in self.nodes:
            if peer is node or not peer.live or not self._reachable(node, peer):
                continue
            if peer.paused_until > now:
                slow = True  # it never answers: the driver waits for its timeout
                continue
            s = peer.proto.schedule
            if s is None:
                elders |= peer.name < node.name
                continue
            peer.served = (peer.engine_round, peer.engine_hash)
            offer = ScheduleOffer(
                s.genesis_time, s.period, s.announce_deadline, s.fetch_timeout, peer.proto.rounds
            )
            answers.append(
                PeerCheckpoint(
                    peer.name, True, peer.engine_round, peer.engine_hash,
                    checkpoint_digest(peer.engine_round, peer.engine_hash), 1000, offer,
                )
            )  # fmt: skip
        t = deliver + (self.cfg.ask_timeout_s if slow else 0.0)
        self._to(node, t, self._checkpoints, ask, tok, answers, elders)

    def _checkpoints(
        self, node: SimNode, now: float, ask: int, tok: int, answers: list[PeerCheckpoint], elders: bool
    ) -> list[Command]:
        self._answered(node, tok)
        return node.proto.checkpoints(now, ask, answers, elders)

    def _trained(
        self, node: SimNode, now: float, r: int, base: bytes, secs: float, tok: int
    ) -> list[Command]:
        self._answered(node, tok)
        content = sha(
            b"update", node.name.encode(), node.incarnation.to_bytes(4, "big"), r.to_bytes(8, "big"), base
        )
        update = Trained(r, base, content, 1000, 4096, 2.0, secs)
        node.updates[r] = update
        for old in [k for k in node.updates if k < r - 3]:
            del node.updates[old]
        node.blobs[content] = r
        return node.proto.trained(now, update)

    def _gossip(self, node: SimNode, update: Trained, now: float) -> None:
        cfg, rng = self.cfg, self.rng
        a = Announcement(
            update.round, node.name, update.base_model_hash, update.content_hash, update.size,
            update.tokens, update.loss,
        )  # fmt: skip
        extra = self.announce_delay.get((node.name, update.round), 0.0)
        self.counts["announcements"] += 1
        for peer in self.nodes:
            if peer is node or not peer.live or not self._reachable(node, peer):
                continue
            if cfg.gossip_loss and rng.random() < cfg.gossip_loss:
                self.counts["announcements_lost"] += 1
                continue
            d = rng.uniform(*cfg.gossip_delay_s) + extra
            if cfg.gossip_spike and rng.random() < cfg.gossip_spike:
                d += rng.uniform(*cfg.spike_s)
            self._to(peer, now + d, self._deliver, a, node)

    def _deliver(self, node: SimNode, now: float, a: Announcement, src: SimNode) -> list[Command]:
        if not self._reachable(node, src):
            return []  # the partition began while it travelled
        v = node.proto.announcement(a, now)
        self.verdicts[f"{v.result.value}:{v.reason}"] += 1
        return []

    def _fetched(
        self, node: SimNode, now: float, r: int, a: Announcement, tok: int, ok: bool
    ) -> list[Command]:
        self._answered(node, tok)
        if ok and a.content_hash not in node.blobs:
            ok = any(self._serves(p, node, a.content_hash, now) for p in self.nodes if p is not node)
        if not ok:
            self.counts["fetches_failed"] += 1
            return node.proto.fetch_failed(now, r, a.contributor, "fetch_failed")
        node.blobs[a.content_hash] = r
        self.counts["fetches"] += 1
        author = self.by_name.get(a.contributor)
        if author is not None and author is not node and self._serves(author, node, a.content_hash, now):
            self._to(author, now, self._taken, r, node.name)  # the author saw its payload sent
        return node.proto.fetched(now, r, a.contributor, a.content_hash)

    def _serves(self, p: SimNode, to: SimNode, content_hash: bytes, now: float) -> bool:
        return content_hash in p.blobs and p.live and p.paused_until <= now and self._reachable(to, p)

    def _taken(self, node: SimNode, now: float, r: int, peer: str) -> list[Command]:
        return node.proto.taken(now, r, peer)

    def _aggregated(
        self, node: SimNode, now: float, r: int, ready: tuple[str, ...], tok: int
    ) -> list[Command]:
        self._answered(node, tok)
        ok = node.engine_round == r
        self._check("aggregate_on_current_model", ok, f"{node.name} aggregates {r} at {node.engine_round}")
        if not ok:
            return []
        hashes = node.fetching.get(r, {})
        node.engine_hash = apply_round(node.engine_hash, r, [hashes[c] for c in ready])
        node.engine_round = r + 1
        for old in [h for h, k in node.blobs.items() if k < r - 2]:
            del node.blobs[old]
        return node.proto.aggregated(now, r, node.engine_hash)

    def _serve_checkpoint(
        self, node: SimNode, now: float, cmd: LoadCheckpoint, tok: int, deliver: float
    ) -> None:
        want = (cmd.round, cmd.model_hash)
        ok = any(
            p.live and p.paused_until <= now and self._reachable(node, p)
            and (p.served == want or (p.engine_round, p.engine_hash) == want)
            for p in (self.by_name[name] for name in cmd.providers if name in self.by_name)
        )  # fmt: skip
        self._to(node, deliver, self._loaded, cmd, tok, ok)

    def _loaded(self, node: SimNode, now: float, cmd: LoadCheckpoint, tok: int, ok: bool) -> list[Command]:
        self._answered(node, tok)
        if not ok:
            self.counts["loads_failed"] += 1
            return node.proto.load_failed(now, "no provider holds it any more")
        node.engine_round, node.engine_hash = cmd.round, cmd.model_hash
        self.counts["loads"] += 1
        self.loads.setdefault(node.name, []).append((cmd.round, cmd.model_hash))
        return node.proto.loaded(now, cmd.round, cmd.model_hash)

    # ----------------------------------------------------------------------- node actions

    def add_node(self, start_at: float | None = None) -> SimNode:
        """A node that starts (``start``) at ``start_at`` (default: now) with the genesis model;
        after round 0 this is a late joiner."""
        i = len(self.nodes)
        node = SimNode(i, f"n{i:03d}", self._proto(f"n{i:03d}"), started=False)
        self.nodes.append(node)
        self.by_name[node.name] = node
        t = self.now if start_at is None else start_at
        if i >= self.cfg.nodes:
            self.counts["joins"] += 1
            self._catchups.append((node.name, t))
            self._disturb(node.name, t, t)
        self._to(node, t, self._start, 0, GENESIS)
        return node

    def _proto(self, name: str) -> RoundProtocol:
        return RoundProtocol(name, timing=self.cfg.timing, rounds=self.cfg.rounds)

    def _start(self, node: SimNode, now: float, r: int, h: bytes) -> list[Command]:
        node.started = True
        node.engine_round, node.engine_hash = r, h
        return node.proto.start(now, r, h)

    def kill(self, name: str, restart_after: float | None = None) -> None:
        node = self.by_name[name]
        if not node.alive:
            return
        node.alive = False
        node.pending.clear()
        node.timer_at = None
        self.counts["kills"] += 1
        self._disturb(name, self.now, INF)
        self._left_stage(node, self.now)
        if restart_after is not None:
            self.at(self.now + restart_after, lambda: self.restart(name))

    def restart(self, name: str) -> None:
        """A fresh process from the node's last snapshot (or the genesis model)."""
        node = self.by_name[name]
        if node.alive and node.started:
            self.kill(name)
        r, h = self.snapshots.get(name, (0, GENESIS))
        node.incarnation += 1
        node.alive, node.started, node.paused_until = True, False, 0.0
        node.proto = self._proto(name)
        node.blobs, node.updates, node.fetching, node.served = {}, {}, {}, None
        node.finished, node.timer_at, node.pending = None, None, {}
        node.stage_key, node.stage_since = (Stage.IDLE, 0), self.now
        spans = self.disturbed[name]
        spans[-1] = (spans[-1][0], self.now)
        self.counts["restarts"] += 1
        self._catchups.append((name, self.now))
        self._to(node, self.now, self._start, r, h)

    def pause(self, name: str, seconds: float) -> None:
        node = self.by_name[name]
        if not node.live or node.paused_until > self.now:
            return
        node.paused_until = self.now + seconds
        self.counts["pauses"] += 1
        self._disturb(name, self.now, self.now + seconds)

    def partition(self, side: list[str], seconds: float | None = None) -> None:
        """Split the network: ``side`` on one side, every other node on the other."""
        self.groups = {n: 1 for n in side}
        self.partitions.append((self.now, INF))
        self.counts["partitions"] += 1
        if seconds is not None:
            self.at(self.now + seconds, self.heal)

    def heal(self) -> None:
        if self.groups is None:
            return
        self.groups = None
        self.partitions[-1] = (self.partitions[-1][0], self.now)

    def _disturb(self, name: str, t0: float, t1: float) -> None:
        self.disturbed.setdefault(name, []).append((t0, t1))

    def _was_disturbed(self, name: str, t0: float, t1: float) -> bool:
        spans = self.disturbed.get(name, ())
        return any(a <= t1 and b >= t0 for a, b in spans) or self._partitioned(t0, t1)

    def _partitioned(self, t0: float, t1: float) -> bool:
        return any(a <= t1 and b >= t0 for a, b in self.partitions)

    # ----------------------------------------------------------------------- churn

    def _churn_round(self, now: float, r: int) -> None:
        cfg, rng = self.cfg, self.rng
        s = self.schedule
        if s is None or r >= cfg.rounds - 3:
            return
        self._push(s.opens_at(r + 1) - 0.5, -1, 0, self._churn_round, (r + 1,))
        live = [n for n in self.nodes if n.live and n.paused_until <= now]
        dead = sum(1 for n in self.nodes if not n.alive)
        # a moment in round r: a phase boundary (either side of it) or a random one
        bounds = [s.opens_at(r), s.deadline(r) + s.clock_skew, s.fetch_deadline(r), s.opens_at(r + 1)]

        def moment() -> float:
            if rng.random() < 0.5:
                return rng.choice(bounds) + rng.choice((-1e-3, 1e-3))
            return s.opens_at(r) + rng.uniform(0, s.period)

        if rng.random() < cfg.kill_p and live and dead < len(self.nodes) // 4:
            victim = rng.choice(live).name
            back = rng.uniform(0.2, 2.5) * s.period
            self.at(moment(), lambda: self.kill(victim, restart_after=back))
        if rng.random() < cfg.pause_p and live:
            victim = rng.choice(live).name
            secs = rng.uniform(0.1, 1.5) * s.period
            self.at(moment(), lambda: self.pause(victim, secs))
        joined = len(self.nodes) - cfg.nodes
        if rng.random() < cfg.join_p and joined < cfg.max_joiners:
            self.add_node(moment())
        recent = self.partitions and self.partitions[-1][1] > now - 6 * s.period
        if rng.random() < cfg.partition_p and self.groups is None and not recent:
            names = [n.name for n in self.nodes]
            side = rng.sample(names, rng.randint(1, (len(names) - 1) // 2 - 1 or 1))
            secs = rng.uniform(0.5, 3.0) * s.period
            self.at(moment(), lambda: self.partition(side, secs))

    # ----------------------------------------------------------------------- invariants

    @property
    def schedule(self) -> Any:
        for n in self.nodes:
            if n.proto.schedule is not None:
                return n.proto.schedule
        return None

    def _check(self, name: str, ok: bool, detail: str = "") -> None:
        c = self.checks.setdefault(name, [0, 0])
        c[0 if ok else 1] += 1
        if not ok and len(self.violations) < 200:
            self.violations.append(f"t={self.now:.3f} {name}: {detail}")

    def _check_memory(self, node: SimNode) -> None:
        p = node.proto
        t = p.timing
        ok = len(p.ahead) <= t.rounds_ahead + 1
        cap = p.round_config.max_announcements
        machines = [*p.ahead.values(), *([p.current] if p.current is not None else [])]
        ok = ok and all(len(m.announced) + len(m.other_model) <= cap for m in machines)
        ok = ok and len(p._announced) <= t.rounds_ahead + 2 and len(p._train_times) <= t.recent_trainings
        ok = ok and len(node.pending) <= 4 * (p.round_config.max_contributions + 4)
        self._check("memory_bounded", ok, f"{node.name} ahead={sorted(p.ahead)} pending={len(node.pending)}")

    def _left_stage(self, node: SimNode, now: float) -> None:
        stage, r = node.stage_key
        since = max(node.stage_since, self._resumed_at(node))
        if stage is Stage.CATCHING_UP and node.catching_up and node.catching_up[-1][1] == INF:
            node.catching_up[-1] = (node.catching_up[-1][0], now)
            self._check(
                "catch_up_bounded",
                now - since <= self.catch_up_bound_s,
                f"{node.name} r{r} {now - since:.1f}s",
            )
        elif stage in (Stage.ROUND, Stage.JOINING):
            self._check(
                "stage_bounded",
                now - since <= self.stage_bound_s,
                f"{node.name} {stage.value} r{r} {now - since:.1f}s",
            )

    def _resumed_at(self, node: SimNode) -> float:
        spans = self.disturbed.get(node.name)
        return spans[-1][1] if spans and spans[-1][1] != INF and spans[-1][1] <= self.now else 0.0

    def _commit(self, node: SimNode, c: Commit, now: float) -> None:
        s = node.proto.schedule
        node.commits += 1
        node.contributed += c.contributed
        self.counts["commits"] += 1
        self._check("engine_matches_protocol", node.engine_hash == c.model_hash, f"{node.name} r{c.round}")
        catching = any(a <= now and b >= s.opens_at(c.round) - s.period for a, b in node.catching_up)
        catching = catching or self._was_disturbed(node.name, s.opens_at(c.round) - s.period, now)
        self.commits.setdefault(c.round, {})[node.name] = (c.model_hash, now, catching)
        if not catching:
            bound = s.fetch_deadline(c.round) + self.cfg.aggregate_s[1] + 1e-3
            self._check(
                "commit_by_bound", now <= bound and bound < s.opens_at(c.round + 1) + self.cfg.aggregate_s[1],
                f"{node.name} commits r{c.round} at {now:.2f} > {bound:.2f}",
            )  # fmt: skip

    def _audit(self, now: float) -> None:
        s = self.schedule
        period = self.cfg.timing.period_s
        self._push(now + period, -1, 0, self._audit, ())
        for node in self.nodes:
            if not node.live or node.finished is not None or node.paused_until > now:
                continue
            since = max(node.stage_since, self._resumed_at(node))
            stage = node.stage_key[0]
            bound = self.catch_up_bound_s if stage is Stage.CATCHING_UP else self.stage_bound_s
            if stage is not Stage.FINISHING:
                self._check(
                    "stage_bounded", now - since <= bound, f"{node.name} {stage.value} {now - since:.1f}s"
                )
            old = [
                (k, v) for k, v in node.pending.items() if now - v[1] > 2 * period + self.cfg.ask_timeout_s
            ]
            self._check("commands_answered", not old, f"{node.name} unanswered {old[:3]}")
        if s is not None:
            while self._finalized + 1 < self.cfg.rounds and now > s.fetch_deadline(self._finalized + 3) + 1.0:
                self._finalize(self._finalized + 1)
            self._check_catchups(now, final=False)

    def majority(self, r: int) -> bytes | None:
        """The hash most committers of round ``r`` hold (ties: the larger hash, the protocol's
        rule); None when nobody committed ``r``."""
        hashes = Counter(h for h, _, _ in self.commits.get(r, {}).values())
        return max(hashes.items(), key=lambda kv: (kv[1], kv[0]))[0] if hashes else None

    def _finalize(self, r: int) -> None:
        """Round r and the two after it are over: agreement of r, and repair of r-2's minority."""
        self._finalized = r
        s = self.schedule
        commits = self.commits.get(r, {})
        if len({h for h, _, _ in commits.values()}) <= 1:
            self.counts["rounds_agreed"] += 1
        else:
            self.counts["rounds_diverged"] += 1
        self.counts["rounds_run"] += 1
        q = r - 2
        if q < 0:
            return
        maj = self.majority(q)
        hashes = Counter(h for h, _, _ in self.commits.get(q, {}).values())
        if hashes and hashes[maj] * 2 <= sum(hashes.values()):
            self.counts["rounds_without_strict_majority"] += 1
        for name, (h, _, _) in self.commits.get(q, {}).items():
            if h == maj:
                continue
            if q + 2 >= self.cfg.rounds - 1:
                self.waived["agreement"] += 1  # the final agreement (checked at the end) repairs it
                continue
            if self._was_disturbed(name, s.opens_at(q) - 2 * s.period, s.fetch_deadline(q + 2) + 2.0):
                self.waived["agreement"] += 1
                continue
            # repaired: it loaded the majority's model (a resync) or committed on it within 2
            # rounds (a new loss may make it diverge again: that is a new divergence, checked anew)
            later = [self.commits.get(k, {}).get(name) for k in (q + 1, q + 2)]
            ok = any(
                c is not None and c[0] == self.majority(k) for k, c in zip((q + 1, q + 2), later, strict=True)
            )
            ok = ok or any(
                k in (q + 1, q + 2) and h == self.majority(k - 1) for k, h in self.loads.get(name, ())
            )
            self._check("diverged_node_repaired_in_2_rounds", ok, f"{name} off the majority at r{q}")

    def _check_catchups(self, now: float, final: bool) -> None:
        s = self.schedule
        keep: list[tuple[str, float]] = []
        for name, t in self._catchups:
            r0 = max(0, s.round_at(t))
            due = s.fetch_deadline(r0 + 2) + self.cfg.aggregate_s[1] + 1.0
            if now <= due + 2 * s.period and not final:
                keep.append((name, t))
                continue
            node = self.by_name[name]
            if r0 + 2 >= self.cfg.rounds or not node.alive or self._was_disturbed(name, t + EPS, due):
                self.waived["catch_up"] += 1
                continue
            # caught up: committed a round on the majority's model, or loaded it from peers
            ok = any(
                (c := self.commits.get(k, {}).get(name)) is not None
                and c[1] >= t
                and c[0] == self.majority(k)
                for k in range(r0, r0 + 3)
            )
            ok = ok or any(
                r0 < k <= r0 + 3 and h == self.majority(k - 1) for k, h in self.loads.get(name, ())[-8:]
            )
            self._check("caught_up_in_2_rounds", ok, f"{name} (re)started at {t:.1f} (round {r0})")
        self._catchups = keep

    def finish(self) -> dict[str, Any]:
        """Run to the end and check the end-of-run invariants; returns :meth:`report`."""
        self.run()
        s = self.schedule
        while self._finalized + 1 < self.cfg.rounds:
            self._finalize(self._finalized + 1)
        self._check_catchups(self.now, final=True)
        live = [n for n in self.nodes if n.alive and n.started]
        final = {n.finished for n in live}
        healed = not self._partitioned(s.opens_at(self.cfg.rounds - 3), INF)
        for n in live:
            self._check("every_live_node_finished", n.finished is not None, f"{n.name} at {n.stage_key}")
            # after Finished the driver stops and cancels what runs (a last, late training)
            pend = [v for v in n.pending.values() if n.finished is None or v[0] != "train"]
            self._check("commands_answered", not pend, f"{n.name} unanswered at end: {pend[:3]}")
        if healed:
            self._check("final_agreement", len(final) == 1, f"{len(final)} final models")
            self._check(
                "final_is_last_rounds_majority", final == {self.majority(self.cfg.rounds - 1)},
                "the final model is not the last round's majority",
            )  # fmt: skip
        return self.report()

    # ----------------------------------------------------------------------- report

    def report(self) -> dict[str, Any]:
        c = self.counts
        return {
            "nodes": len(self.nodes),
            "rounds": self.cfg.rounds,
            "rounds_run": c["rounds_run"],
            "rounds_agreed": c["rounds_agreed"],
            "rounds_diverged": c["rounds_diverged"],
            "virtual_s": round(self.now, 1),
            "wall_s": round(self.wall_s, 2),
            "events": c["events"],
            "commits": c["commits"],
            "kills": c["kills"],
            "restarts": c["restarts"],
            "pauses": c["pauses"],
            "joins": c["joins"],
            "partitions": c["partitions"],
            "loads": c["loads"],
            "loads_failed": c["loads_failed"],
            "announcements_lost": c["announcements_lost"],
            "fetches_failed": c["fetches_failed"],
            "rounds_without_strict_majority": c["rounds_without_strict_majority"],
            "contributions": sum(n.contributed for n in self.nodes),
            "skipped": {k[8:]: v for k, v in sorted(c.items()) if k.startswith("skipped_")},
            "checks": {k: {"passed": v[0], "failed": v[1]} for k, v in sorted(self.checks.items())},
            "waived": dict(self.waived),
            "violations": list(self.violations),
        }


def format_report(rep: dict[str, Any]) -> str:
    lines = [
        f"rounds {rep['rounds_run']}/{rep['rounds']} · nodes {rep['nodes']} · virtual {rep['virtual_s']}s · "
        f"wall {rep['wall_s']}s · events {rep['events']} · commits {rep['commits']}",
        f"kills {rep['kills']} · restarts {rep['restarts']} · pauses {rep['pauses']} · "
        f"joins {rep['joins']} · partitions {rep['partitions']} · "
        f"checkpoint loads {rep['loads']} (failed {rep['loads_failed']})",
        f"rounds agreed by every committer {rep['rounds_agreed']} · diverged {rep['rounds_diverged']} · "
        f"announcements lost {rep['announcements_lost']} · fetches failed {rep['fetches_failed']} · "
        f"no strict majority {rep['rounds_without_strict_majority']} · own updates aggregated "
        f"{rep['contributions']}/{rep['commits']} commits",
        "skipped: " + (", ".join(f"{k} {v}" for k, v in rep["skipped"].items()) or "none"),
        f"{'invariant':<38}{'passed':>10}{'failed':>8}",
    ]
    for name, c in rep["checks"].items():
        lines.append(f"{name:<38}{c['passed']:>10}{c['failed']:>8}")
    lines.append("waived (node disturbed again or run ended): " + str(rep["waived"]))
    lines.extend(rep["violations"][:20])
    ok = not any(c["failed"] for c in rep["checks"].values())
    lines.append(f"invariants: {'all held' if ok else 'VIOLATED'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--nodes", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--churn", action="store_true", help="kills, restarts, pauses, joins, partitions, loss")
    args = ap.parse_args(argv)
    cfg = SimConfig(nodes=args.nodes, rounds=args.rounds, seed=args.seed, churn=args.churn)
    if args.churn:
        cfg.gossip_loss, cfg.gossip_spike, cfg.fetch_loss = 0.002, 0.01, 0.002
    began = time.perf_counter()
    rep = Sim(cfg).finish()
    print(format_report(rep))
    print(f"wall time {time.perf_counter() - began:.1f}s")
    return 0 if not rep["violations"] else 1


if __name__ == "__main__":
    sys.exit(main())
