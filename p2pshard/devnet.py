"""``p2pshard devnet``: a whole network on this machine, one process per node, shown live.

The first node is started with ``p2pshard start``, the others with ``p2pshard join <first>``, all
with ``--json`` so this supervisor can follow their events. Ctrl-C (or SIGTERM, or ``--duration``)
sends SIGTERM to every node by PID, waits for each to exit cleanly, and kills any that do not.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import trio
from rich.console import Console
from rich.live import Live
from rich.table import Table

STOP_GRACE_S = 10.0
START_TIMEOUT_S = 60.0


@dataclass
class NodeView:
    index: int
    process: trio.Process | None = None
    peer_id: str = ""
    addrs: list[str] = field(default_factory=list)
    peers: int = 0
    state: str = "starting"
    last: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None


def _command(index: int, port: int, bootstrap: str | None) -> list[str]:
    listen = f"/ip4/127.0.0.1/tcp/{port + index if port else 0}"
    cmd = [sys.executable, "-m", "p2pshard", "start" if bootstrap is None else "join"]
    if bootstrap is not None:
        cmd.append(bootstrap)
    return [*cmd, "--listen", listen, "--json"]


def _table(views: list[NodeView]) -> Table:
    table = Table(title="p2pshard devnet (Ctrl-C to stop)")
    for col in ("node", "peer id", "address", "peers", "state"):
        table.add_column(col)
    for v in views:
        table.add_row(
            str(v.index),
            v.peer_id[-12:] if v.peer_id else "…",
            v.addrs[0].split("/p2p/")[0] if v.addrs else "…",
            str(v.peers),
            v.state,
        )
    return table


async def _follow(view: NodeView, stdout: trio.abc.ReceiveStream, ready: trio.Event, as_json: bool) -> None:
    buf = b""
    async for chunk in stdout:
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if as_json:
                print(json.dumps({"node": view.index, **event}), flush=True)
            kind = event.get("event")
            view.last = event
            if kind == "listening":
                view.peer_id, view.addrs, view.state = event["peer_id"], event["addrs"], "running"
                ready.set()
            elif kind == "peers":
                view.peers = int(event["count"])
            elif kind in ("stopping", "stopped"):
                view.state = kind


async def _start(view: NodeView, cmd: list[str], nursery: trio.Nursery, as_json: bool) -> None:
    proc = await trio.lowlevel.open_process(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True
    )
    view.process = proc
    ready = trio.Event()
    assert proc.stdout is not None
    nursery.start_soon(_follow, view, proc.stdout, ready, as_json)
    with trio.fail_after(START_TIMEOUT_S):
        await ready.wait()


async def _stop_all(views: list[NodeView]) -> None:
    for v in views:
        if v.process is not None and v.process.returncode is None:
            v.process.send_signal(signal.SIGTERM)
    with trio.move_on_after(STOP_GRACE_S):
        for v in views:
            if v.process is not None:
                v.exit_code = await v.process.wait()
    for v in views:
        if v.process is not None and v.process.returncode is None:
            os.kill(v.process.pid, signal.SIGKILL)
            v.exit_code = await v.process.wait()
            v.state = "killed"
        elif v.process is not None:
            v.state = "stopped" if v.process.returncode == 0 else f"exit {v.process.returncode}"


async def _refresh(live: Live, views: list[NodeView]) -> None:
    while True:
        live.update(_table(views))
        await trio.sleep(0.25)


async def _devnet(nodes: int, base_port: int, as_json: bool, duration: float | None) -> int:
    console = Console(stderr=as_json)
    views = [NodeView(i) for i in range(nodes)]
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            live = None if as_json else Live(_table(views), console=console, refresh_per_second=4)
            if live is not None:
                live.start()
                nursery.start_soon(_refresh, live, views)
            try:
                await _start(views[0], _command(0, base_port, None), nursery, as_json)
                first = views[0].addrs[0]
                async with trio.open_nursery() as starters:
                    for v in views[1:]:
                        starters.start_soon(_start, v, _command(v.index, base_port, first), nursery, as_json)
                with trio.move_on_after(duration if duration is not None else float("inf")):
                    async for _ in signals:
                        break
            finally:
                with trio.CancelScope(shield=True):
                    await _stop_all(views)
                if live is not None:
                    live.update(_table(views))
                    live.stop()
                nursery.cancel_scope.cancel()
    clean = all(v.exit_code == 0 for v in views if v.process is not None)
    if not as_json:
        console.print("all nodes stopped cleanly" if clean else "some nodes did not stop cleanly")
    return 0 if clean else 1


def run_devnet(nodes: int, base_port: int = 0, as_json: bool = False, duration: float | None = None) -> int:
    return trio.run(_devnet, nodes, base_port, as_json, duration)
