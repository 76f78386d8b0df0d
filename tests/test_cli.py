"""The command line as a user runs it: real processes on 127.0.0.1, each ended by its PID."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.util import CLI, Proc

pytestmark = pytest.mark.slow


def _status(addr: str) -> dict[str, object]:
    out = subprocess.run(
        [*CLI, "status", addr, "--json"], capture_output=True, text=True, timeout=30, check=True
    )
    return dict(json.loads(out.stdout))


def test_start_join_and_discover_through_dht(procs: list[Proc]) -> None:
    first = Proc("start", "--json", "--no-train")
    procs.append(first)
    boot = first.event()["addrs"][0]  # type: ignore[index]
    joiners = [Proc("join", boot, "--json", "--no-train") for _ in range(2)]
    procs.extend(joiners)
    addrs = [boot] + [j.event()["addrs"][0] for j in joiners]  # type: ignore[index]
    ids = [a.split("/p2p/")[1] for a in addrs]
    deadline = time.monotonic() + 10
    while True:
        views = {
            pid: {p["peer_id"] for p in _status(a)["peers"]}  # type: ignore[attr-defined]
            for pid, a in zip(ids, addrs, strict=True)
        }
        if all(views[pid] >= set(ids) - {pid} for pid in ids):
            break
        assert time.monotonic() < deadline, f"nodes did not find each other within 10 s: {views}"
        time.sleep(0.5)
    # the two joiners only knew the first node: finding each other went through the DHT
    assert ids[2] in views[ids[1]] and ids[1] in views[ids[2]]
    for p in procs:
        code, err = p.stop()  # Ctrl-C
        assert code == 130 and "Traceback" not in err, err


def test_devnet_starts_four_nodes_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    p = subprocess.Popen(
        [*CLI, "devnet", "--nodes", "4", "--json", "--no-train", "--out", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout is not None
        counts: dict[int, int] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (len(counts) == 4 and min(counts.values()) >= 3):
            line = p.stdout.readline()
            if not line:
                break
            event = json.loads(line)
            if event["event"] == "peers":
                counts[event["node"]] = event["count"]
        assert len(counts) == 4 and min(counts.values()) == 3, counts
        os.kill(p.pid, signal.SIGINT)
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == 0
    assert "Traceback" not in err, err


def test_keygen_writes_private_key(tmp_path: Path) -> None:
    key = tmp_path / "node.key"
    out = subprocess.run([*CLI, "keygen", str(key)], capture_output=True, text=True, check=True)
    assert out.stdout.strip().startswith("16Uiu2")
    assert key.stat().st_mode & 0o777 == 0o600
    again = subprocess.run([*CLI, "keygen", str(key)], capture_output=True, text=True)
    assert again.returncode != 0 and "refusing to overwrite" in again.stderr


def test_join_with_bad_address_is_a_clear_error() -> None:
    out = subprocess.run([*CLI, "join", "/ip4/127.0.0.1/tcp/1"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "no /p2p/<peer id> part" in out.stderr
    assert "Traceback" not in out.stderr


def test_join_unreachable_peer_says_it_waits_then_exits_with_error() -> None:
    addr = "/ip4/127.0.0.1/tcp/1/p2p/16Uiu2HAmLV3MyXNosmHTUWZMnVZHjnSKhV5YLDLZxSkLQ7QH6Mjw"
    env = {**os.environ, "P2PSHARD_BOOTSTRAP_TIMEOUT_S": "12"}
    out = subprocess.run(
        [*CLI, "join", addr, "--no-train"], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 1
    assert "no bootstrap peer answered in 10 s, still trying; is the address right?" in out.stdout
    error = out.stderr.strip().splitlines()[-1]
    assert "could not reach any bootstrap peer in 12 s" in error
    assert "127.0.0.1:1: connection refused" in error and "(with exceptions)" not in error
    assert error.count("16Uiu2HAmLV3MyXNosmHTUWZMnVZHjnSKhV5YLDLZxSkLQ7QH6Mjw") == 1, error
    assert "Traceback" not in out.stderr


def test_start_on_a_port_in_use_fails_clearly() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [*CLI, "start", "--no-train", "--listen", f"/ip4/127.0.0.1/tcp/{port}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert out.returncode == 1
    assert f"cannot listen on /ip4/127.0.0.1/tcp/{port}: the port is already in use" in out.stderr
    assert "listening on" not in out.stdout and "Traceback" not in out.stderr


def test_ctrl_c_exits_130_and_sigterm_exits_0() -> None:
    for signum, expected in ((signal.SIGINT, 130), (signal.SIGTERM, 0)):
        p = Proc("start", "--json", "--no-train")
        try:
            assert p.event()["event"] == "listening"
            p.wait_for(lambda e: e["event"] == "ready", 30)
            os.kill(p.p.pid, signum)
            assert p.p.wait(timeout=15) == expected
        finally:
            _, err = p.stop()
        assert "Traceback" not in err, err


def test_status_numbers_are_numbers_and_addresses_are_not_wrapped(procs: list[Proc]) -> None:
    first = Proc("start", "--json", "--no-train")
    procs.append(first)
    boot = first.event()["addrs"][0]  # type: ignore[index]
    first.wait_for(lambda e: e["event"] == "ready", 30)
    data = _status(boot)
    assert isinstance(data["uptime_s"], float)
    assert all(isinstance(v, int) for v in data["counters"].values())  # type: ignore[attr-defined]
    assert all(isinstance(r["limit"], int) for r in data["resources"])  # type: ignore[attr-defined]
    plain = subprocess.run(
        [*CLI, "status", boot], capture_output=True, text=True, timeout=30, check=True, env=_columns(80)
    )
    assert any(boot in line for line in plain.stdout.splitlines()), plain.stdout


def _columns(n: int) -> dict[str, str]:
    return {**os.environ, "COLUMNS": str(n)}


def test_cli_offers_every_compression_the_engine_has() -> None:
    from p2pshard.cli import COMPRESSIONS
    from p2pshard.engine.compression import KINDS

    assert set(COMPRESSIONS) == set(KINDS)


def test_devnet_summary_flags_a_node_that_contributed_less(tmp_path: Path) -> None:
    """The summary must show a node that trained in fewer rounds than the others: its row marked,
    a warning line naming it, and its points drawn on top in the plot."""
    from rich.console import Console

    from p2pshard.devnet import NodeView, _summary, lagging

    def rounds(contributed: list[bool]) -> list[dict[str, object]]:
        return [
            {
                "round": i,
                "loss": 1.0 / (i + 1),
                "tokens": 100 * (i + 1),
                "model_hash": "ab" * 32,
                "contributed": c,
            }
            for i, c in enumerate(contributed)
        ]

    views = [NodeView(0, rounds=rounds([True] * 4)), NodeView(1, rounds=rounds([True, False, False, True]))]
    assert lagging(views) == [views[1]]
    console = Console(record=True, width=140)
    _summary(views, tmp_path, console, as_json=False)
    text = console.export_text()
    assert "node 1 contributed in 2 rounds, others in up to 4" in text
    assert "1 !" in text and "0 !" not in text
    assert json.loads((tmp_path / "summary.json").read_text())["contributed_less"] == [1]
    assert (tmp_path / "loss.png").stat().st_size > 0
