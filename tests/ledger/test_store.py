"""The SQLite ledger store: one transaction per settled round, restart restores the last settled
state with its root checked, and a writer killed with SIGKILL at random moments never leaves a
half-applied round."""

from __future__ import annotations

import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from p2pshard.core.ledger import LedgerParams, LedgerState, Settled, genesis, settle
from p2pshard.ledger import LedgerStore, StoreError
from tests.ledger.helpers import A, block_for, fresh

ROOT = Path(__file__).resolve().parents[2]


def _replay(n: int, cache: list[LedgerState] | None = None) -> LedgerState:
    """The state after settling ``n`` rounds of :func:`block_for` from genesis (``cache`` keeps
    the states already computed, so a caller asking for more rounds pays only for the new ones)."""
    states = cache if cache is not None else []
    if not states:
        states.append(fresh())
    while len(states) <= n:
        out = settle(states[-1], block_for(states[-1]))
        assert isinstance(out, Settled)
        states.append(out.state)
    return states[n]


def test_append_commits_rounds_and_reopen_restores_them(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    with LedgerStore.open(db, fresh()) as store:
        assert store.round == 0 and store.root == fresh().root()
        for _ in range(5):
            assert isinstance(store.append(block_for(store.state)), Settled)
        root = store.root
        assert store.append(b"\xff").reason == "undecodable"  # type: ignore[union-attr]
        stale = next(store.rounds()).block
        assert store.append(stale).reason == "wrong_round"  # type: ignore[union-attr]
        assert store.root == root
    with LedgerStore.open(db) as store:
        assert store.round == 5 and store.root == root == _replay(5).root()
        assert store.replay().root() == root
        assert [r.round for r in store.rounds()] == [0, 1, 2, 3, 4]
        assert store.genesis.root() == fresh().root()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_opening_refuses_a_missing_genesis_another_genesis_or_edited_accounts(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    with pytest.raises(StoreError) as exc:
        LedgerStore.open(db)
    assert exc.value.reason == "no_genesis"
    with LedgerStore.open(db, fresh()) as store:
        store.append(block_for(store.state))
    with pytest.raises(StoreError) as exc:
        LedgerStore.open(db, genesis(LedgerParams(), [(A, 1, 0)]))
    assert exc.value.reason == "other_genesis"
    conn = sqlite3.connect(db)
    conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = ?", (A,))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError) as exc:
        LedgerStore.open(db)
    assert exc.value.reason == "root_mismatch"


def test_a_failed_write_rolls_the_round_back(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    store = LedgerStore.open(db, fresh())
    store.append(block_for(store.state))
    root, block = store.root, block_for(store.state)
    store._db.execute("CREATE TRIGGER boom BEFORE INSERT ON accounts BEGIN SELECT RAISE(ABORT, 'x'); END")
    with pytest.raises(sqlite3.IntegrityError):
        store.append(block)
    assert store.root == root
    store._db.execute("DROP TRIGGER boom")
    store.close()
    with LedgerStore.open(db) as again:
        assert again.root == root and again.round == 1
        assert isinstance(again.append(block), Settled)


class _Lines:
    """Lines from a child's stdout, each read with a deadline: a writer that does not die or a
    zygote that stops answering fails the test with what it was waiting for, never hangs it."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self._fd = proc.stdout.fileno()
        self._buf = b""

    def readline(self, within_s: float, waiting_for: str) -> str:
        deadline = time.monotonic() + within_s
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._fd], [], [], max(left, 0))
            if not ready:
                raise AssertionError(f"no line within {within_s} s while waiting for {waiting_for}")
            chunk = os.read(self._fd, 65536)
            if not chunk:
                raise AssertionError(f"the zygote's output ended while waiting for {waiting_for}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((ln.strip() for ln in f if ln.startswith("State:")), "State: ?")
    except OSError:
        return "gone"


@pytest.mark.slow
def test_sigkill_at_random_moments_never_leaves_a_half_applied_round(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    rng = random.Random(13)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    zygote = subprocess.Popen(
        [sys.executable, "-m", "tests.ledger.kill_writer", str(db)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert zygote.stdin is not None
    lines = _Lines(zygote)
    kills, rounds_seen, replayed = 0, [0], [fresh()]
    deadline = time.monotonic() + 120
    try:
        while kills < 25 and time.monotonic() < deadline:
            zygote.stdin.write(b"go\n")
            zygote.stdin.flush()
            head, _, number = lines.readline(60, "the writer's pid").partition(" ")
            assert head == "pid" and number.isdigit() and int(number) > 0, (head, number)
            pid = int(number)
            first = lines.readline(60, "the writer's first round")  # up and committing
            assert first.startswith("round"), first
            time.sleep(rng.uniform(0.0, 0.25))
            os.kill(pid, signal.SIGKILL)
            while (line := lines.readline(60, f"the killed writer to die ({_state(pid)})")) != "dead":
                assert line.startswith("round"), line
            kills += 1
            with LedgerStore.open(db) as store:  # verifies the accounts against the last root
                n = store.round
                assert n >= rounds_seen[-1]
                assert store.root == _replay(n, replayed).root(), f"after kill {kills}: not a replay"
                assert [r.round for r in store.rounds()] == list(range(n))
            conn = sqlite3.connect(db)
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            conn.close()
            rounds_seen.append(n)
    finally:
        zygote.stdin.close()
        try:
            zygote.wait(timeout=30)
        except subprocess.TimeoutExpired:
            zygote.kill()
            zygote.wait(timeout=30)
        assert zygote.stdout is not None
        zygote.stdout.close()
    print(f"{kills} kills, rounds settled after each: {rounds_seen[1:]}")
    assert kills >= 20, f"only {kills} kills in the time allowed"
    assert rounds_seen[-1] > kills, "the writer made too little progress between kills to test anything"
