"""Faults with real node processes and the torch engine (micro preset, short rounds).

A node killed with SIGKILL mid-round: the others finish the round; the killed node restarts from
its hot snapshot and is back on the majority model hash within 30 s. A node that joins late
fetches the current checkpoint and trains within 60 s. Both tests use one four-node network.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.util import Proc

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("training_processes")]  # one at a time

ROUND_S = 6.0
TRAINING = ["--json", "--preset", "micro", "--round-seconds", str(ROUND_S), "--inner-steps", "4"]
ENV = {"P2PSHARD_SNAPSHOT_INTERVAL_S": "1", "OMP_NUM_THREADS": "1"}


def _is_round(ev: dict[str, Any], at_least: int = 0) -> bool:
    return ev.get("event") == "round" and int(ev["round"]) >= at_least


def _start(procs: list[Proc], tmp: Path, i: int, boot: str | None) -> Proc:
    args = ["start"] if boot is None else ["join", boot]
    args += [*TRAINING, "--key", str(tmp / f"node{i}.key"), "--snapshot-dir", str(tmp / f"snap{i}")]
    proc = Proc(*args, env=ENV, log=tmp / f"node{i}.log")
    procs.append(proc)
    return proc


def _hashes_at(nodes: list[Proc], round_: int) -> set[str]:
    """The model hashes ``nodes`` reported for ``round_`` (waiting until each has reported it)."""
    for n in nodes:
        while not any(_is_round(e) and e["round"] == round_ for e in n.seen):
            n.wait_for(lambda e: _is_round(e), 3 * ROUND_S + 10)
    return {e["model_hash"] for n in nodes for e in n.seen if _is_round(e) and e["round"] == round_}


@dataclass
class Network:
    """Four training nodes past round 3, shared by this module's tests (its warm-up is most of
    each test's time); ``procs`` also holds the nodes a test adds, all ended at module end."""

    tmp: Path
    boot: str
    nodes: list[Proc]
    procs: list[Proc]


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    tmp = tmp_path_factory.mktemp("faults")
    procs: list[Proc] = []
    try:
        first = _start(procs, tmp, 0, None)
        boot = first.wait_for(lambda e: e["event"] == "listening", 60)["addrs"][0]
        nodes = [first] + [_start(procs, tmp, i, boot) for i in (1, 2, 3)]
        for n in nodes:
            n.wait_for(lambda e: _is_round(e, 3), 120)  # everyone trains a few rounds
        yield Network(tmp, boot, nodes, procs)
    finally:
        for p in procs:
            p.interrupt()
        for p in procs:
            p.stop()


def test_sigkilled_node_restarts_from_snapshot_and_rejoins(network: Network) -> None:
    nodes, tmp = network.nodes, network.tmp
    victim = nodes[3]
    deadline = time.monotonic() + 2 * ROUND_S  # written at a commit, by the engine's own task
    while not list((tmp / "snap3").glob("snapshot-*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list((tmp / "snap3").glob("snapshot-*")), "no hot snapshot written"
    victim.kill()  # SIGKILL: no cleanup, mid-round
    killed_at = time.monotonic()
    under_way = 1 + max(int(e["round"]) for n in nodes for e in n.seen if _is_round(e))
    # the other three finish the round that was under way, on one model
    assert len(_hashes_at(nodes[:3], under_way)) == 1

    restarted = _start(network.procs, tmp, 3, network.boot)
    # the restarted node reports a round on the same model hash as the others' same round
    deadline = killed_at + 30 + 20  # 30 s budget from the restart, plus the process start-up here
    while True:
        ev = restarted.wait_for(lambda e: _is_round(e), max(1.0, deadline - time.monotonic()))
        if _hashes_at(nodes[:3], int(ev["round"])) == {ev["model_hash"]}:
            break
        assert time.monotonic() < deadline, f"restarted node still off the majority at round {ev['round']}"
    assert time.monotonic() - killed_at < 60


def test_late_joiner_trains_within_60_s(network: Network) -> None:
    assert all(any(_is_round(e, 3) for e in n.seen) for n in network.nodes[:3])  # a network under way
    joined_at = time.monotonic()
    late = _start(network.procs, network.tmp, 4, network.boot)
    trained = late.wait_for(lambda e: _is_round(e) and int(e["tokens"]) > 0, 60)
    assert time.monotonic() - joined_at < 60
    assert int(trained["round"]) >= 3  # it caught up instead of starting again from round 0
