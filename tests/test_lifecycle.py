"""A node's life as an operator runs it: one --data-dir for key, settings and snapshots; SIGTERM
and Ctrl-C write a snapshot and stop within 10 s; a restart keeps its identity and resumes."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.util import Proc

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("training_processes")]  # one at a time

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _stop(node: Proc, signum: int) -> tuple[int, float]:
    """Send ``signum``; the exit status and the seconds the node took to exit."""
    began = time.monotonic()
    os.kill(node.p.pid, signum)
    code = node.p.wait(timeout=20)
    return code, time.monotonic() - began


def test_data_dir_holds_key_config_and_snapshots_and_signals_snapshot(tmp_path: Path) -> None:
    data = tmp_path / "node"
    data.mkdir(mode=0o700)
    (data / "config.toml").write_text('preset = "micro"\nround_s = 3.0\ninner_steps = 2\n')

    first = Proc("start", "--json", "--data-dir", str(data), env=ONE_THREAD, log=tmp_path / "1.log")
    try:
        listening = first.event(timeout=30)
        schedule = first.wait_for(lambda e: e["event"] == "schedule", 60)
        assert schedule["period_s"] == 3.0  # from the data dir's config.toml
        done = first.wait_for(lambda e: e["event"] == "round" and e["round"] >= 1, 60)
        code, seconds = _stop(first, signal.SIGTERM)
    finally:
        first.stop()
    assert code == 0 and seconds < 10.0, (code, seconds)
    seen = len(first.seen)
    first.wait_for(lambda e: e["event"] == "stopped", 5)  # the last line it printed
    snapshot = next(e for e in first.seen[seen:] if e["event"] == "snapshot")
    assert Path(str(snapshot["path"])).parent == data / "snapshots"
    assert Path(str(snapshot["path"])).exists()
    assert (data / "node.key").stat().st_mode & 0o777 == 0o600

    again = Proc("start", "--json", "--data-dir", str(data), env=ONE_THREAD, log=tmp_path / "2.log")
    try:
        assert again.event(timeout=30)["peer_id"] == listening["peer_id"]  # the same identity
        ready = again.wait_for(lambda e: e["event"] == "engine_ready", 60)
        assert int(ready["round"]) > int(done["round"])  # resumed from the snapshot written on SIGTERM
        code, seconds = _stop(again, signal.SIGINT)  # Ctrl-C
    finally:
        again.stop()
    assert code == 130 and seconds < 10.0, (code, seconds)
    assert "Traceback" not in (tmp_path / "2.log").read_text()
