"""The whole training lifecycle of one node as a sans-IO protocol: events in, commands out.

No clock, no network, no torch: every method takes ``now`` (seconds on the network's shared clock)
and returns the :mod:`commands <p2pshard.core.rounds.commands>` the driver must carry out. The
driver feeds results back as events. Stages::

    start ─► JOINING ──(schedule adopted or made)──► ROUND r ◄──────────────┐
                                                      │  │                   │
          (behind the network, or off the majority)   │  └─(committed r)─────┘ r+1
                                                      ▼
                                                CATCHING_UP ──(checkpoint loaded, or none)──► ROUND
    ROUND r == last round ─► FINISHING ──(on the majority model)──► DONE

In ROUND r the node trains (:class:`Train`, once the model of r is ready, if it can finish in
time), announces when r opens, judges every announcement by one table
(:data:`~p2pshard.core.rounds.machine.ANNOUNCEMENT_RULES`), chooses, fetches and aggregates
(:class:`~p2pshard.core.rounds.machine.RoundMachine`), commits, and snapshots when due.

Every wait is bounded and named in :class:`Timing`; :meth:`RoundProtocol.wakeup` says when the
driver must call :meth:`tick` next. A node that does not contribute to a round says why
(:class:`Skipped`), every time. A late or skipped round costs that round only: whether a node
trains is decided afresh each round, from its fastest recent training time, and a node that
skipped one round for time always tries the next.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from p2pshard.core.gossip.message import Verdict, ignore
from p2pshard.core.rounds.commands import (
    Aggregate,
    Announce,
    AskCheckpoints,
    Command,
    Commit,
    Fetch,
    Finished,
    LoadCheckpoint,
    PeerCheckpoint,
    Penalise,
    ScheduleOffer,
    Skipped,
    Snapshot,
    Train,
    Trained,
)
from p2pshard.core.rounds.machine import Announcement, Phase, Resync, RoundConfig, RoundMachine
from p2pshard.core.rounds.schedule import MAX_PERIOD_S, MIN_PERIOD_S, RoundSchedule

__all__ = ["RoundProtocol", "Stage", "Timing", "choose_checkpoint"]


class Stage(Enum):
    IDLE = "idle"
    JOINING = "joining"
    ROUND = "round"
    CATCHING_UP = "catching_up"
    FINISHING = "finishing"
    DONE = "done"


@dataclass(frozen=True)
class Timing:
    """The schedule a first node proposes, and every bound on waiting (seconds)."""

    period_s: float = 12.0
    announce_deadline_s: float = 7.2
    fetch_timeout_s: float = 3.6
    start_delay_s: float = 8.0
    """How long after the first node starts round 0 opens (time for others to join)."""
    schedule_wait_s: float = 10.0
    """How long a starting node waits for a peer with a smaller id that has no schedule yet."""
    ask_retry_s: float = 0.5
    """Pause between two questions to the peers while joining or catching up."""
    catch_up_tries: int = 8
    """Questions asked while behind before skipping the missed round alone."""
    snapshot_interval_s: float | None = None
    """Write a hot snapshot at a commit when this long has passed since the last (None: never)."""
    rounds_ahead: int = 2
    """Announcements for rounds up to this far ahead of ours are judged and kept."""
    recent_trainings: int = 3
    """Training times remembered; the fastest decides whether the next round can be made."""
    stall_s: float = 1.0
    """A tick this long after the wakeup the protocol asked for means the node was stalled (its
    process suspended, or starved of CPU): announcements of that time reached it late."""

    def __post_init__(self) -> None:
        """Values a schedule could not be made from are refused here, with what is wrong, and not
        when the first node makes its schedule (where they would stop the node)."""
        if not MIN_PERIOD_S <= self.period_s <= MAX_PERIOD_S:
            raise ValueError(f"period_s {self.period_s} is outside [{MIN_PERIOD_S}, {MAX_PERIOD_S}]")
        if not (self.announce_deadline_s > 0 and self.fetch_timeout_s > 0):
            raise ValueError("announce_deadline_s and fetch_timeout_s must be positive")
        if self.announce_deadline_s + self.fetch_timeout_s > self.period_s:
            raise ValueError(
                f"announce_deadline_s + fetch_timeout_s ({self.announce_deadline_s} + "
                f"{self.fetch_timeout_s}) must fit in period_s ({self.period_s})"
            )
        if self.start_delay_s < 0 or self.schedule_wait_s < 0 or self.ask_retry_s <= 0:
            raise ValueError("start_delay_s and schedule_wait_s must be >= 0, ask_retry_s > 0")
        if self.catch_up_tries < 1 or self.rounds_ahead < 0 or self.recent_trainings < 1:
            raise ValueError("catch_up_tries and recent_trainings must be >= 1, rounds_ahead >= 0")
        if self.stall_s <= 0:
            raise ValueError("stall_s must be positive")
        if self.snapshot_interval_s is not None and self.snapshot_interval_s <= 0:
            raise ValueError("snapshot_interval_s must be positive (or None: no snapshots)")


@dataclass
class RoundProtocol:
    me: str
    timing: Timing = field(default_factory=Timing)
    rounds: int = 0
    """Stop after this round count (0 = train until stopped); a joiner takes the network's."""
    round_config: RoundConfig = field(default_factory=RoundConfig)
    train: bool = True

    stage: Stage = Stage.IDLE
    schedule: RoundSchedule | None = None
    model_round: int = 0  # the next round to train: rounds before it are applied
    model_hash: bytes = b""
    current: RoundMachine | None = None
    ahead: dict[int, RoundMachine] = field(default_factory=dict)
    _ask: int = 0
    _retry_at: float | None = None
    _joining_since: float = 0.0
    _deaf: tuple[float, float] = (-math.inf, -math.inf)  # the last time we were not listening
    _due: float | None = None  # the wakeup we last asked for
    _last_tick: float = -math.inf
    _strangers: set[str] = field(default_factory=set)  # peers announcing rounds far from ours
    _realigning: bool = False
    _want: bytes | None = None
    _tries: int = 0
    _resume: list[Command] = field(default_factory=list)  # a round's commands held while we resync
    _training: tuple[int, bytes] | None = None  # (round, base model) of the Train in flight
    _ready: Trained | None = None  # trained, waiting for its round to open
    _announced: set[int] = field(default_factory=set)
    _train_times: deque[float] = field(default_factory=deque)
    _skipped_for_time: bool = False
    _last_snapshot: float | None = None
    _finish_at: float | None = None
    _reason: str = ""

    # -- events ------------------------------------------------------------------------------

    def start(self, now: float, model_round: int, model_hash: bytes) -> list[Command]:
        """Begin with the model the engine holds: ask the peers for the schedule."""
        self.model_round, self.model_hash = model_round, model_hash
        self.stage = Stage.JOINING
        self._joining_since = now
        self._deaf = (-math.inf, now)
        return [self._ask_checkpoints(now, None)]

    def checkpoints(
        self, now: float, ask: int, answers: Sequence[PeerCheckpoint], undecided_elders: bool = False
    ) -> list[Command]:
        """Answers to :class:`AskCheckpoints` number ``ask``; ``undecided_elders``: a peer with a
        smaller id answered that it has no schedule yet (it will decide, so we wait for it)."""
        if ask != self._ask or self._retry_at is not None:
            return []  # an answer to an earlier question
        if self.stage is Stage.JOINING:
            return self._join(now, answers, undecided_elders)
        if self.stage is Stage.CATCHING_UP:
            return self._catch_up_answer(now, answers)
        if self.stage is Stage.FINISHING:
            return self._finish_answer(now, answers)
        if self._realigning:
            return self._realign_answer(now, answers)
        return []

    def tick(self, now: float) -> list[Command]:
        if self._due is not None and now > self._due + self.timing.stall_s:
            # Stalled since some time after our last tick: what peers said meanwhile reached us late.
            self._deaf = (self._last_tick, now)
        self._due = None
        self._last_tick = now
        out: list[Command] = []
        if self._retry_at is not None and now >= self._retry_at:
            self._retry_at = None
            out.append(self._ask_checkpoints(now, self._want))
        if self.stage is Stage.FINISHING and self._finish_at is not None and now >= self._finish_at:
            self._finish_at = None
            out.append(self._ask_checkpoints(now, None))
        if self.stage is Stage.ROUND and self._strangers and not self._realigning:
            self._realigning = True
            out.append(self._ask_checkpoints(now, None))
        if self.stage is Stage.ROUND and self.current is not None:
            out.extend(self._announce_ready(now))
            out.extend(self._run_machine(now, self.current.tick(now)))
        return out

    def announcement(self, a: Announcement, now: float) -> Verdict:
        """Judge a peer's announcement (the gossip validation hook); call :meth:`tick` after."""
        machine = self._machine_for(a.round, now)
        if machine is None:
            return ignore("no_schedule")
        verdict = machine.announce(a, now)
        far = self.current is not None and abs(a.round - self.current.round) > self.timing.rounds_ahead + 1
        if far and verdict.reason in ("stale_round", "future_round"):
            self._strangers.add(a.contributor)  # far from any round of ours: another schedule?
        return verdict

    def trained(self, now: float, update: Trained) -> list[Command]:
        if self._training == (update.round, update.base_model_hash):
            self._training = None  # (a Train from before a checkpoint load may still run: not it)
        self._remember_training(update.seconds)
        r = update.round
        stale = r != self.model_round or update.base_model_hash != self.model_hash
        if self.stage is not Stage.ROUND or stale:
            skipped = Skipped(r, "model_changed", "the model changed while we trained; the update is stale")
            # Training outlasted its round, so the round we are in now was not trained: train it
            # now if there is time, or a late round would cost the next one too.
            return [skipped, *(self._maybe_train(now) if self.stage is Stage.ROUND else [])]
        self._ready = update
        return self._announce_ready(now)

    def train_failed(self, now: float, round_: int, reason: str) -> list[Command]:
        self._training = None
        return [Skipped(round_, "train_failed", reason)]

    def fetched(self, now: float, round_: int, contributor: str, content_hash: bytes) -> list[Command]:
        machine = self._live_machine(round_)
        return [] if machine is None else self._run_machine(now, machine.fetched(contributor, content_hash))

    def taken(self, now: float, round_: int, peer: str) -> list[Command]:
        """``peer`` received our own payload of round ``round_`` (the driver saw it sent)."""
        machine = self.current
        if machine is None or machine.round != round_ or machine.phase is Phase.COMMITTED:
            return []
        return self._run_machine(now, machine.taken(peer, now))

    def fetch_failed(self, now: float, round_: int, contributor: str, reason: str) -> list[Command]:
        machine = self._live_machine(round_)
        return [] if machine is None else self._run_machine(now, machine.fetch_failed(contributor, reason))

    def aggregated(
        self, now: float, round_: int, model_hash: bytes, rejected: Mapping[str, str] | None = None
    ) -> list[Command]:
        """The engine applied round ``round_`` (``rejected``: contributors that failed screening)."""
        machine = self.current
        if machine is None or machine.round != round_ or machine.phase is not Phase.AGGREGATING:
            return []
        rejected = dict(rejected or {})
        machine.aggregated(model_hash)
        contributors = tuple(
            c for c in (a.contributor for a in machine.chosen) if c in machine.arrived and c not in rejected
        )
        out: list[Command] = [Penalise(peer, reason) for peer, reason in sorted(rejected.items())]
        out.extend(
            Penalise(peer, reason)
            for peer, reason in sorted(machine.failed.items())
            if reason == "content_hash_mismatch"
        )
        out.append(Commit(round_, model_hash, contributors, rejected, contributed=self.me in contributors))
        self.model_round, self.model_hash = round_ + 1, model_hash
        if self.timing.snapshot_interval_s is not None and (
            self._last_snapshot is None or now - self._last_snapshot >= self.timing.snapshot_interval_s
        ):
            self._last_snapshot = now
            out.append(Snapshot(self.model_round))
        out.extend(self._next_round(now))
        return out

    def loaded(self, now: float, round_: int, model_hash: bytes) -> list[Command]:
        """A checkpoint was loaded: the model is ``model_hash`` and ``round_`` is next to train."""
        self.model_round, self.model_hash = round_, model_hash
        self._resume.clear()
        self._training = None
        self._ready = None
        if self.stage is Stage.FINISHING:
            return self._finish(now)
        return self._next_round(now)

    def load_failed(self, now: float, reason: str) -> list[Command]:
        if self.stage is Stage.FINISHING:
            return self._finish(now)
        if self._resume:  # off the majority and no checkpoint to be had: go on with our own model
            out, self._resume = self._resume, []
            self.stage = Stage.ROUND
            return [*out, *self.tick(now)]
        return self._retry_or_skip(now)

    # -- what the driver asks ----------------------------------------------------------------

    def wakeup(self) -> float | None:
        """When the driver must call :meth:`tick` next (None: only an event can move us now).
        A tick much later than this (``Timing.stall_s``) tells the protocol it was stalled."""
        times = [self._retry_at, self._finish_at]
        if self.stage is Stage.ROUND and self.current is not None:
            times.append(self.current.next_change())
            if self._ready is not None:
                times.append(self._open_time(self.current))
        self._due = min((t for t in times if t is not None), default=None)
        return self._due

    @property
    def skew(self) -> float:
        return self.schedule.clock_skew if self.schedule is not None else 0.0

    # -- joining -----------------------------------------------------------------------------

    def _join(self, now: float, answers: Sequence[PeerCheckpoint], undecided_elders: bool) -> list[Command]:
        adopted = self._network_schedule(answers, now)
        if adopted is not None:
            return self._adopt(now, adopted)
        # Nobody told us a schedule. Wait (bounded) for an elder that is deciding one, or, when we
        # hold a model of a network already under way (restored from a snapshot), for its peers.
        waiting = undecided_elders or self.model_round > 0
        if waiting and now - self._joining_since < self.timing.schedule_wait_s:
            self._retry_at = now + self.timing.ask_retry_s
            return []
        # Start one; its numbering continues from our model, so our round opens after the delay.
        t = self.timing
        genesis = now + t.start_delay_s - self.model_round * t.period_s
        self.schedule = RoundSchedule.offered(
            genesis, t.period_s, t.announce_deadline_s, t.fetch_timeout_s, now
        )
        return self._next_round(now)

    def _network_schedule(self, answers: Sequence[PeerCheckpoint], now: float) -> ScheduleOffer | None:
        """The schedule most of our network's answering peers state (None: none states a valid one)."""
        counts: dict[ScheduleOffer, int] = {}
        for answer in answers:
            s = answer.schedule
            if not answer.same_network or s is None:
                continue
            try:
                RoundSchedule.offered(s.genesis_time, s.period, s.announce_deadline, s.fetch_timeout, now)
            except ValueError:
                continue
            counts[s] = counts.get(s, 0) + 1
        if not counts:
            return None
        return max(counts, key=lambda s: (counts[s], -s.genesis_time))

    def _adopt(self, now: float, s: ScheduleOffer) -> list[Command]:
        self.schedule = RoundSchedule.offered(
            s.genesis_time, s.period, s.announce_deadline, s.fetch_timeout, now
        )
        if s.last_round:
            self.rounds = s.last_round
        self.ahead.clear()
        self.current = None
        self._strangers.clear()
        return self._next_round(now)

    def _realign_answer(self, now: float, answers: Sequence[PeerCheckpoint]) -> list[Command]:
        """Peers announced rounds far from ours: if most of those who answer keep another schedule
        (we started one while cut off from them), take theirs and catch up; else they are the odd
        ones and we go on."""
        self._realigning = False
        self._strangers.clear()
        ours = self.schedule
        theirs = self._network_schedule(answers, now)
        if (
            theirs is None
            or ours is None
            or ((theirs.genesis_time, theirs.period) == (ours.genesis_time, ours.period))
        ):
            return []
        stating = sum(1 for a in answers if a.same_network and a.schedule == theirs)
        if stating * 2 <= sum(1 for a in answers if a.same_network and a.schedule is not None):
            return []
        out: list[Command] = [
            Skipped(self.model_round, "other_schedule", "most peers keep another round schedule: adopting it")
        ]
        return out + self._adopt(now, theirs)

    # -- rounds ------------------------------------------------------------------------------

    def _next_round(self, now: float) -> list[Command]:
        """Make round ``model_round`` ours: catch up if it is over, else run it."""
        assert self.schedule is not None
        r = self.model_round
        self._resume.clear()
        if self.rounds and r >= self.rounds:
            return self._finish_after(r - 1)
        if now > self.schedule.fetch_deadline(r):
            network = self.schedule.round_at(now)
            return self._catch_up(now, None, f"round {r} is over (the network is at round {network})")
        self.stage = Stage.ROUND
        current = self.current
        if current is not None and current.round == r and current.phase is not Phase.COMMITTED:
            machine = current  # resynced mid-round: keep the announcements heard so far
            machine.rebase(self.model_hash)
        else:
            machine = self.ahead.pop(r) if r in self.ahead else self._new_machine(r)
            machine.begin(self.model_hash)
        for old in [k for k in self.ahead if k <= r]:
            del self.ahead[old]
        self.current = machine
        out = self._maybe_train(now)
        return out + self.tick(now)

    def _maybe_train(self, now: float) -> list[Command]:
        assert self.schedule is not None
        r = self.model_round
        if not self.train or r in self._announced or self._training is not None or self._ready is not None:
            return []
        left = self.schedule.deadline(r) - now
        fastest = min(self._train_times, default=0.0)
        if fastest > left and not self._skipped_for_time:
            self._skipped_for_time = True
            return [
                Skipped(
                    r, "no_time", f"training takes {fastest:.1f}s; {left:.1f}s are left before the deadline"
                )
            ]
        self._skipped_for_time = False
        self._training = (r, self.model_hash)
        return [Train(r)]

    def _announce_ready(self, now: float) -> list[Command]:
        update, machine = self._ready, self.current
        if update is None or machine is None or now < self._open_time(machine):
            return []
        self._ready = None
        self._announced.add(update.round)
        for old in [k for k in self._announced if k < update.round - self.timing.rounds_ahead]:
            self._announced.discard(old)
        own = Announcement(
            update.round, self.me, update.base_model_hash, update.content_hash, update.size,
            update.tokens, update.loss,
        )  # fmt: skip
        # Judged as the last peer will judge it (up to one skew later: its clock, gossip delay):
        # sent later, some peers would take it and some refuse it, splitting the round's model.
        verdict = machine.announce(own, now + self.skew)
        if not verdict.accepted:
            deadline = machine.window[1]
            return [
                Skipped(
                    update.round,
                    f"own_{verdict.reason}",
                    f"trained in {update.seconds:.1f}s; our update was {verdict.reason} "
                    f"({now - deadline:+.1f}s against the announce deadline)",
                )
            ]
        return [Announce(update.round, update.content_hash)]

    def _open_time(self, machine: RoundMachine) -> float:
        return machine.window[0] + self.skew  # the round's opening, not the skew-widened edge

    def _run_machine(self, now: float, commands: Sequence[Fetch | Aggregate | Resync]) -> list[Command]:
        machine = self.current
        fetching = any(isinstance(cmd, Fetch) for cmd in commands)
        deaf_from, deaf_until = self._deaf
        if (
            machine is not None
            and fetching
            and deaf_from <= machine.window[1]
            and deaf_until > machine.window[0]
        ):
            # We were not listening during this round's announce window (we joined after it
            # opened, or the process was stalled): announcements we never heard, or heard late,
            # would make our aggregate differ from everyone's. Our own update, if announced, is
            # used by the others; take the round's result from them instead.
            why = (
                f"not listening from {deaf_from:.1f} to {deaf_until:.1f} (joined, or stalled) during "
                f"round {machine.round}'s announcements; taking its result from peers"
            )
            return self._catch_up(now, None, why, say_skipped=False)
        out: list[Command] = []
        for i, cmd in enumerate(commands):
            if isinstance(cmd, Resync):
                rest = [c for c in commands[i + 1 :] if not isinstance(c, Resync)]
                if machine is not None and machine.round in self._announced:
                    # Our update was trained from the model we are leaving: nobody aggregates it.
                    why = (
                        f"the majority holds model {cmd.model_hash.hex()[:12]}, we trained from "
                        f"{self.model_hash.hex()[:12]}; loading the majority's model"
                    )
                    out.append(Skipped(machine.round, "behind", why))
                out.extend(self._catch_up(now, cmd.model_hash, "the majority holds another model"))
                self._resume = list(rest)
                return out
            if (
                isinstance(cmd, Aggregate)
                and machine is not None
                and machine.failed.get(self.me) == "not_taken"
            ):
                took, others = machine.own_taken()
                why = (
                    f"{took} of the {others} other contributors took our update by the fetch deadline "
                    f"(its announcement or payload reached them late); leaving it out as they did"
                )
                out.append(Skipped(cmd.round, "own_not_taken", why))
            out.append(cmd)
        return out

    def _new_machine(self, r: int) -> RoundMachine:
        assert self.schedule is not None
        return RoundMachine(r, self.schedule, None, self.round_config, me=self.me)

    def _machine_for(self, r: int, now: float) -> RoundMachine | None:
        """The machine that judges an announcement for round ``r``: ours, or one for a round
        ahead of it; for a round outside that range, a throwaway machine at the nearer edge, so
        that one table judges them all (stale_round below, future_round above)."""
        if self.schedule is None:
            return None
        current = self.current if self.stage is Stage.ROUND else None
        if current is not None:
            if r <= current.round:
                return current
            low = current.round + 1
        else:
            low = max(self.model_round, self.schedule.round_at(now))
        high = low + self.timing.rounds_ahead
        if r < low:
            return self._new_machine(low)
        if r > high:
            return self._new_machine(high)
        for old in [k for k in self.ahead if k < low]:
            del self.ahead[old]
        if r not in self.ahead:
            self.ahead[r] = self._new_machine(r)
        return self.ahead[r]

    def _live_machine(self, r: int) -> RoundMachine | None:
        machine = self.current
        return machine if machine is not None and machine.round == r and self.stage is Stage.ROUND else None

    def _remember_training(self, seconds: float) -> None:
        self._train_times.append(seconds)
        while len(self._train_times) > self.timing.recent_trainings:
            self._train_times.popleft()

    # -- catching up -------------------------------------------------------------------------

    def _ask_checkpoints(self, now: float, want: bytes | None) -> AskCheckpoints:
        self._ask += 1
        return AskCheckpoints(self._ask, want)

    def _catch_up(
        self, now: float, want: bytes | None, reason: str, say_skipped: bool = True
    ) -> list[Command]:
        self.stage = Stage.CATCHING_UP
        self._want = want
        self._tries = 0
        self._reason = reason
        skipped = [Skipped(self.model_round, "behind", reason)] if want is None and say_skipped else []
        return [*skipped, self._ask_checkpoints(now, want)]

    def _catch_up_answer(self, now: float, answers: Sequence[PeerCheckpoint]) -> list[Command]:
        best = choose_checkpoint(answers, self._want, self.model_round, self.model_hash)
        if best is not None:
            info, providers = best
            return [
                LoadCheckpoint(info.round, info.model_hash, info.digest, info.size, providers, self._reason)
            ]
        if self._want is not None:
            return self.load_failed(now, "no peer holds the majority's model")
        return self._retry_or_skip(now, peers_same_round=any(
            a.same_network and a.round == self.model_round for a in answers
        ))  # fmt: skip

    def _retry_or_skip(self, now: float, peers_same_round: bool = True) -> list[Command]:
        """Behind, and no peer had a newer checkpoint: peers still committing our round will have
        one shortly, so ask again (a bounded number of times, and until the round's fetch
        deadline has passed); alone, skip the round."""
        assert self.schedule is not None
        self._tries += 1
        committing = now <= self.schedule.fetch_deadline(self.model_round) + self.schedule.clock_skew
        if peers_same_round and (self._tries < self.timing.catch_up_tries or committing):
            self._retry_at = now + self.timing.ask_retry_s
            return []
        machine = self._new_machine(self.model_round)
        machine.begin(self.model_hash)
        self.current = machine
        self.stage = Stage.ROUND
        return [
            Skipped(self.model_round, "alone", "no peer holds a newer model: applying the round empty"),
            machine.abandon(),
        ]

    # -- finishing ---------------------------------------------------------------------------

    def _finish_after(self, last: int) -> list[Command]:
        """After the last round nobody announces again, so a node that ended on a minority model
        (it missed a payload near a deadline) would never hear of it: ask the peers instead."""
        assert self.schedule is not None
        self.stage = Stage.FINISHING
        self.current = None
        self._finish_at = self.schedule.fetch_deadline(last) + self.schedule.clock_skew
        return []

    def _finish_answer(self, now: float, answers: Sequence[PeerCheckpoint]) -> list[Command]:
        same = [a for a in answers if a.same_network and a.round == self.model_round]
        votes: dict[bytes, int] = {self.model_hash: 1}
        for a in same:
            votes[a.model_hash] = votes.get(a.model_hash, 0) + 1
        winner, count = max(votes.items(), key=lambda kv: (kv[1], kv[0]))
        if winner != self.model_hash and count * 2 > sum(votes.values()):
            providers = tuple(a.peer for a in same if a.model_hash == winner)
            info = next(a for a in same if a.model_hash == winner)
            return [
                LoadCheckpoint(
                    info.round, winner, info.digest, info.size, providers, "ended on a minority model"
                )
            ]
        return self._finish(now)

    def _finish(self, now: float) -> list[Command]:
        self.stage = Stage.DONE
        return [Finished(self.model_round, self.model_hash)]


def choose_checkpoint(
    answers: Sequence[PeerCheckpoint], want: bytes | None, model_round: int, model_hash: bytes
) -> tuple[PeerCheckpoint, tuple[str, ...]] | None:
    """The newest checkpoint of our network (with hash ``want`` when given), the most-stated hash
    breaking ties, and every peer that serves it; None when nobody holds a model newer than ours."""
    usable = [a for a in answers if a.same_network and (want is None or a.model_hash == want)]
    if not usable:
        return None

    def votes(h: bytes) -> int:
        return sum(1 for a in usable if a.model_hash == h)

    best = max(usable, key=lambda a: (a.round, votes(a.model_hash), a.model_hash))
    if best.round < model_round or (best.round == model_round and best.model_hash == model_hash):
        return None
    return best, tuple(a.peer for a in usable if a.digest == best.digest)
