"""RoundProtocol driven by hand: events in, commands out, ``now`` a number (no clock, no network).

The schedule used throughout: genesis 100, period 12, announce deadline 7.2, fetch timeout 3.6,
so round r opens at 100 + 12r, stops taking announcements at 107.2 + 12r (peers accept until
+0.9 of clock skew) and stops fetching at 110.8 + 12r.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeVar

import pytest

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
    RoundProtocol,
    ScheduleOffer,
    Skipped,
    Stage,
    Timing,
    Train,
    Trained,
)

T = Timing(period_s=12.0, announce_deadline_s=7.2, fetch_timeout_s=3.6, start_delay_s=8.0)
OFFER = ScheduleOffer(100.0, 12.0, 7.2, 3.6)
SKEW = 0.9  # min(1, fetch timeout / 4, deadline / 4)
H0 = hashlib.sha256(b"model 0").digest()
C = TypeVar("C")


def h(s: str) -> bytes:
    return hashlib.sha256(s.encode()).digest()


def opens(r: int) -> float:
    return 100.0 + 12.0 * r


def deadline(r: int) -> float:
    return opens(r) + 7.2


def fetch_deadline(r: int) -> float:
    return deadline(r) + 3.6


def of(out: Sequence[Command], cls: type[C]) -> list[C]:
    return [c for c in out if isinstance(c, cls)]


def one(out: Sequence[Command], cls: type[C]) -> C:
    found = of(out, cls)
    assert len(found) == 1, (cls.__name__, out)
    return found[0]


def peer(name: str, r: int = 0, model: bytes = H0, offer: ScheduleOffer | None = OFFER) -> PeerCheckpoint:
    return PeerCheckpoint(name, True, r, model, h(f"ckpt {r} {model.hex()}"), 1000, offer)


def ann(who: str, r: int, model: bytes = H0) -> Announcement:
    return Announcement(r, who, model, h(f"{who} {r}"), 1000, 4096, 2.0)


def trained(p: RoundProtocol, r: int, seconds: float = 3.0) -> Trained:
    return Trained(r, p.model_hash, h(f"{p.me} {r}"), 1000, 4096, 2.0, seconds)


def joined(me: str = "b", now: float = 50.0, r: int = 0, model: bytes = H0, **kw: object) -> tuple[
    RoundProtocol, list[Command]
]:  # fmt: skip
    p = RoundProtocol(me, timing=T, **kw)  # type: ignore[arg-type]
    ask = one(p.start(now, r, model), AskCheckpoints)
    return p, p.checkpoints(now + 0.1, ask.ask, [peer("a", r, model)])


def commit_round(
    p: RoundProtocol,
    r: int,
    peers: Sequence[str] = ("a", "c"),
    model: bytes | None = None,
    at: float | None = None,
) -> list[Command]:
    """Peers announce, collection closes, the peers fetch our update (if we announced one), every
    payload arrives, the engine applies the round."""
    for who in peers:
        assert p.announcement(ann(who, r, model or p.model_hash), opens(r) + 1).accepted
    out = p.tick(deadline(r) + SKEW + 0.01)
    for who in peers:
        out += p.taken(deadline(r) + 1.5, r, who)
    fetch = one(out, Fetch)
    for a in fetch.contributions:
        out += p.fetched(deadline(r) + 2, r, a.contributor, a.content_hash)
    agg = one(out, Aggregate)
    return p.aggregated(at or deadline(r) + 2.1, r, h(f"model {r + 1} {agg.contributors}"))


# -- joining ---------------------------------------------------------------------------------


def test_joining_adopts_a_peers_schedule_and_round_count() -> None:
    p = RoundProtocol("b", timing=T)
    ask = one(p.start(50.0, 0, H0), AskCheckpoints)
    assert p.stage is Stage.JOINING
    offer = ScheduleOffer(100.0, 12.0, 7.2, 3.6, last_round=30)
    out = p.checkpoints(50.1, ask.ask, [peer("a", offer=offer)])
    assert p.schedule is not None and p.schedule.genesis_time == 100.0
    assert p.rounds == 30
    assert p.stage is Stage.ROUND and one(out, Train).round == 0


def test_alone_a_node_makes_the_schedule() -> None:
    p = RoundProtocol("a", timing=T)
    ask = one(p.start(50.0, 0, H0), AskCheckpoints)
    out = p.checkpoints(50.2, ask.ask, [])
    assert p.schedule is not None and p.schedule.genesis_time == 50.2 + T.start_delay_s
    assert one(out, Train).round == 0


def test_an_undecided_elder_is_waited_for_but_not_forever() -> None:
    p = RoundProtocol("b", timing=T)
    ask = one(p.start(50.0, 0, H0), AskCheckpoints)
    assert p.checkpoints(50.1, ask.ask, [], undecided_elders=True) == []
    assert p.schedule is None and p.wakeup() == 50.1 + T.ask_retry_s
    now, asks = 50.1, 1
    while p.schedule is None:  # the elder never decides
        now = p.wakeup() or now
        ask = one(p.tick(now), AskCheckpoints)
        asks += 1
        p.checkpoints(now + 0.1, ask.ask, [], undecided_elders=True)
        assert asks < 100
    assert now - 50.0 <= T.schedule_wait_s + T.ask_retry_s + 0.2
    # and when the elder decides in time, its schedule is adopted
    q = RoundProtocol("b", timing=T)
    first = one(q.start(50.0, 0, H0), AskCheckpoints)
    q.checkpoints(50.1, first.ask, [], undecided_elders=True)
    again = one(q.tick(50.6), AskCheckpoints)
    q.checkpoints(50.7, again.ask, [peer("a")])
    assert q.schedule is not None and q.schedule.genesis_time == 100.0


def test_an_answer_to_an_earlier_question_is_ignored() -> None:
    p = RoundProtocol("b", timing=T)
    ask = one(p.start(50.0, 0, H0), AskCheckpoints)
    assert p.checkpoints(50.1, ask.ask - 1, [peer("a")]) == []
    assert p.stage is Stage.JOINING


# -- training and announcing -------------------------------------------------------------------


def test_trains_at_once_and_announces_when_the_round_opens() -> None:
    p, out = joined()
    assert one(out, Train).round == 0
    update = trained(p, 0)
    assert p.trained(53.0, update) == []  # round 0 is not open yet
    assert p.wakeup() == opens(0)
    assert p.tick(opens(0) - 0.01) == []
    assert one(p.tick(opens(0)), Announce) == Announce(0, update.content_hash)


def test_no_time_to_train_skips_one_round_then_tries_again() -> None:
    p, _ = joined()
    p.trained(60.0, trained(p, 0, seconds=12.0))  # a slow machine
    p.tick(opens(0))
    out = commit_round(p, 0)
    skipped = one(out, Skipped)
    assert (skipped.round, skipped.reason) == (1, "no_time") and not of(out, Train)
    out = commit_round(p, 1)
    assert one(out, Train).round == 2  # a skipped round costs that round only


def test_own_update_too_late_costs_that_round_only() -> None:
    p, _ = joined()
    out = p.trained(deadline(0) + 0.1, trained(p, 0, seconds=9.0))  # started late, or slowed
    skipped = one(out, Skipped)
    assert (skipped.round, skipped.reason) == (0, "own_too_late")
    assert not of(out, Announce)
    out = commit_round(p, 0)
    assert not one(out, Commit).contributed
    assert one(out, Train).round == 1  # the next round trains...
    p.trained(opens(1) - 1, trained(p, 1))
    assert one(p.tick(opens(1)), Announce).round == 1
    assert one(commit_round(p, 1), Commit).contributed  # ...and contributes


@pytest.mark.parametrize("took", [(), ("a",), ("a", "c")])
def test_our_update_counts_only_if_most_contributors_took_it(took: tuple[str, ...]) -> None:
    """Our announcement or payload reached the others late (they left our update out): leaving it
    out too keeps us on the network's model, so the next round trains from it (issue 12)."""
    p, _ = joined()
    p.trained(60.0, trained(p, 0))
    assert one(p.tick(opens(0)), Announce).round == 0
    for who in ("a", "c"):
        p.announcement(ann(who, 0), opens(0) + 1)
    out = p.tick(deadline(0) + SKEW + 0.01)
    for who in took:
        out += p.taken(deadline(0) + 1.0, 0, who)
    p.taken(fetch_deadline(0) + SKEW + 0.1, 0, "c")  # after the deadline: it does not count
    for a in one(out, Fetch).contributions:
        out += p.fetched(deadline(0) + 2, 0, a.contributor, a.content_hash)
    counted = len(took) >= 1  # with us, 2 of the 3 contributors hold our update
    if not counted:
        assert not of(out, Aggregate)  # they may still fetch it: wait, until the fetch deadline
        out = p.tick(fetch_deadline(0) + 0.01)
        skipped = one(out, Skipped)
        assert (skipped.round, skipped.reason) == (0, "own_not_taken")
        assert "0 of the 2 other contributors took our update" in skipped.detail
    assert ("b" in one(out, Aggregate).contributors) is counted
    out = p.aggregated(fetch_deadline(0) + 0.5, 0, h("model 1"))
    assert one(out, Commit).contributed is counted
    assert one(out, Train).round == 1  # the next round trains, from the network's model


def test_own_update_is_announced_only_while_every_peer_still_takes_it() -> None:
    """Peers accept until deadline + skew by their clocks, after gossip delay: a node that sent
    at deadline + skew/2 would be taken by some and refused by others, splitting the round."""
    p, _ = joined()
    out = p.trained(deadline(0) + SKEW / 2, trained(p, 0, seconds=50.0))
    assert one(out, Skipped).reason == "own_too_late"
    q, _ = joined()
    assert one(q.trained(deadline(0) - 0.01, trained(q, 0)), Announce).round == 0


def test_training_that_outlasts_its_round_lets_the_next_round_train() -> None:
    """Regression: a training that ran past its round's commit left the next round untrained
    (nothing started it once the stale result came back), so one slow round cost two."""
    p, _ = joined()
    p.trained(60.0, trained(p, 0))
    p.tick(opens(0))
    out = commit_round(p, 0)
    slow = trained(p, 1, seconds=14.0)
    assert one(out, Train).round == 1
    out = commit_round(p, 1)  # round 1 goes on without us; its training still runs
    assert not of(out, Train)
    out = p.trained(opens(2) - 1.0, slow)
    assert one(out, Skipped).reason == "model_changed"
    assert one(out, Train).round == 2  # 3 s is the fastest recent training: there is time


def test_a_stale_training_result_does_not_start_a_second_training() -> None:
    p, _ = joined()
    stale = trained(p, 0)
    out = p.loaded(60.0, 0, h("loaded"))  # a checkpoint load while round 0's training ran
    assert one(out, Train).round == 0
    assert p.trained(62.0, trained(p, 0)) == []  # the new one, waiting for the round to open
    out = p.trained(63.0, stale)
    assert one(out, Skipped).reason == "model_changed" and not of(out, Train)


# -- catching up --------------------------------------------------------------------------------


def test_behind_the_network_loads_the_newest_checkpoint() -> None:
    p = RoundProtocol("z", timing=T)
    ask = one(p.start(opens(5) + 2, 0, H0), AskCheckpoints)
    out = p.checkpoints(opens(5) + 2.1, ask.ask, [peer("a", 5, h("m5"))])
    assert one(out, Skipped).reason == "behind" and p.stage is Stage.CATCHING_UP
    ask = one(out, AskCheckpoints)
    answers = [peer("a", 5, h("m5")), peer("c", 5, h("m5")), peer("d", 4, h("m4"))]
    load = one(p.checkpoints(opens(5) + 2.2, ask.ask, answers), LoadCheckpoint)
    assert (load.round, load.model_hash, set(load.providers)) == (5, h("m5"), {"a", "c"})
    out = p.loaded(opens(5) + 3, 5, h("m5"))
    assert p.stage is Stage.ROUND and p.model_round == 5
    assert one(out, Train).round == 5


def test_behind_with_peers_still_on_our_round_asks_again_a_bounded_number_of_times() -> None:
    p, _ = joined()
    out = p.loaded(fetch_deadline(0) + 0.5, 0, H0)  # round 0 is over and we hold its start
    ask = one(out, AskCheckpoints)
    now, asks = fetch_deadline(0) + 0.5, 0
    while True:
        out = p.checkpoints(now + 0.1, ask.ask, [peer("a", 0, H0)])  # nobody has committed yet
        asks += 1
        if out:
            break
        now = p.wakeup() or now
        ask = one(p.tick(now), AskCheckpoints)
    assert asks == T.catch_up_tries
    assert one(out, Skipped).reason == "alone" and one(out, Aggregate) == Aggregate(0, ())


def test_failed_load_asks_again() -> None:
    p = RoundProtocol("z", timing=T)
    ask = one(p.start(opens(5) + 2, 0, H0), AskCheckpoints)
    ask = one(p.checkpoints(opens(5) + 2.1, ask.ask, [peer("a", 5, h("m5"))]), AskCheckpoints)
    one(p.checkpoints(opens(5) + 2.2, ask.ask, [peer("a", 5, h("m5"))]), LoadCheckpoint)
    assert p.load_failed(opens(5) + 3, "provider gone") == []
    assert one(p.tick(p.wakeup() or 0.0), AskCheckpoints)


# -- majority ----------------------------------------------------------------------------------


def test_off_the_majority_resyncs_and_aggregates_with_the_announcements_already_heard() -> None:
    """Regression: after loading the majority's model mid-round, the round used to restart on a
    fresh machine that had heard nothing, apply the round empty, and stay off the majority for
    the rest of the run (one divergent commit every round)."""
    p, _ = joined()
    p.trained(60.0, trained(p, 0))
    p.tick(opens(0))
    other = h("the majority's model")
    for who in ("a", "c", "d"):
        p.announcement(ann(who, 0, other), opens(0) + 1)
    out = p.tick(deadline(0) + SKEW + 0.01)
    ask = one(out, AskCheckpoints)
    assert ask.want == other and p.stage is Stage.CATCHING_UP and not of(out, Fetch)
    load = one(p.checkpoints(deadline(0) + 1.2, ask.ask, [peer(w, 0, other) for w in "acd"]), LoadCheckpoint)
    out = p.loaded(deadline(0) + 1.8, load.round, load.model_hash)
    fetch = one(out, Fetch)
    assert [a.contributor for a in fetch.contributions] == ["a", "c", "d"]
    for a in fetch.contributions:
        out = p.fetched(deadline(0) + 2.5, 0, a.contributor, a.content_hash)
    assert one(out, Aggregate) == Aggregate(0, ("a", "c", "d"))


def test_an_announced_update_from_a_model_off_the_majority_is_said_to_not_count() -> None:
    """Regression (found by tests/training/test_late_round.py): a node whose update was late in
    one round committed that round on its own (a different model), announced the next round's
    update from it, resynced at that round's close and committed it with ``contributed: false``
    without a ``not contributing`` line: a skipped round that did not say why."""
    p, _ = joined()
    p.trained(60.0, trained(p, 0))
    assert one(p.tick(opens(0)), Announce).round == 0  # trained from H0, which we hold
    other = h("the majority's model")
    for who in ("a", "c", "d"):
        p.announcement(ann(who, 0, other), opens(0) + 1)
    out = p.tick(deadline(0) + SKEW + 0.01)
    skipped = one(out, Skipped)
    assert (skipped.round, skipped.reason) == (0, "behind")
    assert one(out, AskCheckpoints).want == other
    load = one(
        p.checkpoints(deadline(0) + 1.2, one(out, AskCheckpoints).ask, [peer("a", 0, other)]), LoadCheckpoint
    )
    out = p.loaded(deadline(0) + 1.8, load.round, load.model_hash)
    for a in one(out, Fetch).contributions:
        out = p.fetched(deadline(0) + 2.5, 0, a.contributor, a.content_hash)
    out = p.aggregated(deadline(0) + 2.6, 0, h("model 1"))
    assert not one(out, Commit).contributed and not of(out, Skipped)  # said once, at the resync
    # not announced (nothing trained yet): nothing of ours is lost, nothing to say
    q, _ = joined()
    for who in ("a", "c", "d"):
        q.announcement(ann(who, 0, other), opens(0) + 1)
    assert not of(q.tick(deadline(0) + SKEW + 0.01), Skipped)


def test_a_split_without_a_strict_majority_heals_on_the_most_stated_model() -> None:
    """Regression: 8 peers on one model, 7 on another and one alone: no hash holds more than
    half, and the network used to stay split for the rest of the run."""
    p, _ = joined("q")
    big, small = h("big side"), h("small side")
    p.loaded(60.0, 0, small)
    for i in range(8):
        p.announcement(ann(f"big{i}", 0, big), opens(0) + 1)
    for i in range(6):
        p.announcement(ann(f"small{i}", 0, small), opens(0) + 1)
    p.announcement(ann("loner", 0, h("alone")), opens(0) + 1)
    p.trained(61.0, Trained(0, small, h("q 0"), 1000, 4096, 2.0, 3.0))
    p.tick(opens(0))
    out = p.tick(deadline(0) + SKEW + 0.01)  # 8 big, 7 small (with ours), 1 alone
    assert one(out, AskCheckpoints).want == big


def test_on_the_majority_no_resync() -> None:
    p, _ = joined()
    p.announcement(ann("a", 0), opens(0) + 1)
    p.announcement(ann("c", 0, h("other")), opens(0) + 1)
    p.announcement(ann("d", 0), opens(0) + 1)
    out = p.tick(deadline(0) + SKEW + 0.01)
    assert not of(out, AskCheckpoints)
    assert [a.contributor for a in one(out, Fetch).contributions] == ["a", "d"]


# -- the end -------------------------------------------------------------------------------------


def test_final_agreement_loads_the_majoritys_last_model() -> None:
    p, _ = joined(rounds=1)
    out = commit_round(p, 0)
    assert p.stage is Stage.FINISHING and not of(out, Finished)
    t = p.wakeup()
    assert t is not None and t >= fetch_deadline(0)
    ask = one(p.tick(t), AskCheckpoints)
    final = h("their final model")
    load = one(p.checkpoints(t + 0.1, ask.ask, [peer(w, 1, final) for w in "acd"]), LoadCheckpoint)
    assert (load.round, load.model_hash) == (1, final)
    assert one(p.loaded(t + 1, 1, final), Finished) == Finished(1, final)
    assert p.stage is Stage.DONE


def test_final_agreement_on_the_majority_finishes_at_once() -> None:
    p, _ = joined(rounds=1)
    commit_round(p, 0)
    t = p.wakeup() or 0.0
    ask = one(p.tick(t), AskCheckpoints)
    done = one(p.checkpoints(t + 0.1, ask.ask, [peer("a", 1, p.model_hash)]), Finished)
    assert done == Finished(1, p.model_hash)


# -- stale events ---------------------------------------------------------------------------------


def test_stale_events_are_ignored() -> None:
    p, _ = joined()
    commit_round(p, 0)
    assert p.model_round == 1
    assert p.fetched(130.0, 0, "a", h("a 0")) == []
    assert p.fetch_failed(130.0, 0, "a", "gone") == []
    assert p.aggregated(130.0, 0, h("late")) == []
    assert p.aggregated(130.0, 1, h("not yet")) == []  # round 1 is not aggregating
    assert p.checkpoints(130.0, 1, [peer("a", 9, h("m9"))]) == []
    v = p.announcement(ann("a", 0), opens(1) + 1)
    assert (v.result.value, v.reason) == ("ignore", "stale_round")
    assert p.model_round == 1 and p.stage is Stage.ROUND


def test_announcements_ahead_are_kept_and_bounded() -> None:
    p, _ = joined()
    model1 = h(f"model 1 {('c',)}")  # what commit_round below makes of round 0
    for r in range(1, 10):
        p.announcement(ann("a", r, model1), opens(r))
    assert len(p.ahead) <= T.rounds_ahead + 1
    v = p.announcement(ann("c", 2, model1), opens(2))
    assert v.accepted
    out = commit_round(p, 0, peers=("c",))
    assert one(out, Commit).round == 0
    assert p.current is not None and "a" in p.current.announced  # heard before round 1 was ours


@pytest.mark.parametrize(
    "bad",
    [
        {"period_s": 3.96, "announce_deadline_s": 1.8, "fetch_timeout_s": 2.17},  # windows past the period
        {"period_s": 0.1, "announce_deadline_s": 0.05, "fetch_timeout_s": 0.02},
        {"fetch_timeout_s": 0.0},
        {"ask_retry_s": 0.0},
        {"snapshot_interval_s": -1.0},
    ],
)
def test_timing_that_no_schedule_could_be_made_from_is_refused_up_front(bad: dict[str, float]) -> None:
    """Found by the averaging benchmark: such a Timing was accepted and the first node's schedule
    then raised inside the protocol, stopping the node."""
    with pytest.raises(ValueError):
        Timing(**bad)  # type: ignore[arg-type]


def test_a_node_stalled_through_the_announce_window_takes_the_rounds_result_from_peers() -> None:
    """A suspended process hears the round's announcements only after their window (IGNOREd as
    too_late, so the honest senders are not penalised); aggregating what is left would fork it, so
    it asks its peers for the round's result instead. Woken on time, it aggregates as usual."""
    for stalled in (True, False):
        p = RoundProtocol("me", T)
        p.start(90.0, 0, H0)
        p.checkpoints(90.0, 1, [peer("peer")])
        p.tick(opens(0))
        p.trained(opens(0) + 0.5, trained(p, 0))
        p.tick(opens(0) + 0.5)
        due = p.wakeup()
        assert due is not None and deadline(0) + SKEW < due < deadline(0) + SKEW + 0.01
        woken = due + 5.0 if stalled else due  # suspended through the window's end, or on time
        p.announcement(ann("peer", 0), woken if stalled else opens(0) + 1.0)
        out = p.tick(woken)
        assert bool(of(out, AskCheckpoints)) == stalled
        assert bool(of(out, Fetch)) != stalled


def test_a_node_restored_from_a_snapshot_waits_for_the_networks_schedule_then_continues_its_numbering() -> (
    None
):
    """Found by the simulator: a node restarted while cut off from everyone started a schedule at
    round 0 and waited ~19 periods for its round 19 to open (and never met the network again)."""
    p = RoundProtocol("me", T)
    p.start(500.0, 19, H0)
    assert p.checkpoints(500.0, 1, []) == []  # nobody answered: ask again, for a while
    t = 500.0
    while p.schedule is None:
        t += T.ask_retry_s
        ask = one(p.tick(t), AskCheckpoints)
        p.checkpoints(t, ask.ask, [])
        assert t <= 500.0 + T.schedule_wait_s + T.ask_retry_s
    assert p.schedule.opens_at(19) == t + T.start_delay_s  # its round opens after the usual delay


def test_peers_on_another_schedule_make_a_node_adopt_the_one_most_of_them_keep() -> None:
    p = RoundProtocol("me", T)
    p.start(90.0, 0, H0)
    p.checkpoints(90.0, 1, [])  # alone: it starts its own schedule
    own = p.schedule
    assert own is not None and p.stage is Stage.ROUND
    theirs = ScheduleOffer(own.genesis_time - 40 * 12.0, 12.0, 7.2, 3.6)
    now = own.opens_at(0) + 1.0
    for who in ("a", "b"):  # they are at round 40 of their schedule
        assert p.announcement(ann(who, 40), now).reason == "future_round"
    ask = one(p.tick(now), AskCheckpoints)
    answers = [peer(who, 40, h("their model"), theirs) for who in ("a", "b")]
    out = p.checkpoints(now + 0.1, ask.ask, answers)
    assert [s.reason for s in of(out, Skipped)] == ["other_schedule", "behind"]
    assert p.schedule is not None and p.schedule.genesis_time == theirs.genesis_time
    assert p.stage is Stage.CATCHING_UP  # round 0 of theirs is long over: load their checkpoint


def test_a_lone_stranger_does_not_move_a_node_off_its_schedule() -> None:
    p = RoundProtocol("me", T)
    p.start(90.0, 0, H0)
    p.checkpoints(90.0, 1, [peer("a"), peer("b")])
    mine = p.schedule
    assert mine is not None
    now = mine.opens_at(0) + 1.0
    p.announcement(ann("x", 40), now)
    ask = one(p.tick(now), AskCheckpoints)
    other = ScheduleOffer(mine.genesis_time - 480.0, 12.0, 7.2, 3.6)
    answers = [peer("a"), peer("b"), peer("x", 40, h("x"), other)]
    assert p.checkpoints(now + 0.1, ask.ask, answers) == []
    assert p.schedule == mine
