"""A joining node talks at once: its own address first (about 1 s after launch on an idle machine,
the time Python takes to import py-libp2p), then each step of joining as it happens, in words and
as a JSON event stream (real processes on 127.0.0.1)."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time

import pytest

from tests.util import CLI, Proc

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("training_processes")]  # one at a time

TRAIN = ["--preset", "micro", "--round-seconds", "3", "--inner-steps", "2"]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
"""As devnet runs its nodes: the first node's training leaves a core to the joiner's start."""


class Lines:
    """A process's stdout lines, read by a thread, each with the time it arrived."""

    def __init__(self, args: list[str]) -> None:
        self.began = time.monotonic()
        self.p = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **ONE_THREAD}
        )
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.put((time.monotonic() - self.began, line.rstrip("\n")))

    def until(self, text: str, timeout: float) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        while True:
            at, line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            if text in line:
                return at, line

    def stop(self) -> int:
        if self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGINT)
        try:
            return self.p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(self.p.pid, signal.SIGKILL)
            return self.p.wait()


def test_join_prints_its_address_at_once_then_each_step(procs: list[Proc]) -> None:
    first = Proc("start", "--json", *TRAIN, env=ONE_THREAD)
    procs.append(first)
    boot = first.wait_for(lambda e: e["event"] == "ready", 60)["addrs"][0]
    first.wait_for(lambda e: e["event"] == "first_round", 60)  # a network under way

    # two joiners at once, one in words and one as JSON events (one after the other took 20 s more)
    text = Lines([*CLI, "join", boot, *TRAIN])
    stream = Proc("join", boot, "--json", *TRAIN, env=ONE_THREAD)
    procs.append(stream)
    try:
        # The address comes first, before any joining step (the time it takes, ~1 s on an idle
        # machine, is Python importing py-libp2p: a figure for the README, not a timed test,
        # since CI runs this beside another worker; 10 s only bounds a hang).
        at, _ = text.until("listening on", timeout=10)
        addr_at, addr = text.until("/p2p/", timeout=2)
        assert addr.strip().startswith("/ip4/127.0.0.1/tcp/"), addr
        connected_at, _ = text.until("connected to", timeout=30)
        assert at <= addr_at <= connected_at, (at, addr_at, connected_at)
        text.until("model ready", timeout=60)
        text.until("first round done", timeout=90)
    finally:
        assert text.stop() == 130  # Ctrl-C

    listening = stream.event(timeout=10)
    assert listening["event"] == "listening" and listening["addrs"][0].endswith(listening["peer_id"])
    order = ["bootstrap_dial", "bootstrap_connected", "engine_ready", "ready", "schedule", "first_round"]
    steps: dict[str, dict[str, object]] = {}
    while "first_round" not in steps:
        event = stream.event(timeout=90)
        steps.setdefault(str(event["event"]), event)
    assert [k for k in steps if k in order] == order, list(steps)
    assert steps["bootstrap_connected"]["peer_id"] == boot.split("/p2p/")[1]
    assert steps["network"]["agreed"] is True
    assert steps["network"]["network_id"] == steps["engine_ready"]["network_id"]
    peers = [e for e in stream.seen if e["event"] == "peers"]
    assert peers and max(int(e["count"]) for e in peers) >= 1
    assert isinstance(steps["first_round"]["round"], int)
    assert steps["schedule"]["period_s"] == 3.0
    if "checkpoint" in steps:  # joined a network past its first round: it loaded the checkpoint
        done = [e for e in stream.seen if e["event"] == "checkpoint" and e["state"] == "done"]
        assert done and any(int(e["bytes"]) > 0 and float(e["bytes_per_s"]) > 0 for e in done), done
