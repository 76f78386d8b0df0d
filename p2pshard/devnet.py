"""``p2pshard devnet``: a whole network on this machine, one process per node, shown live.

The first node is started with ``p2pshard start``, the others with ``p2pshard join <first>``, all
with ``--json`` so this supervisor can follow their events and show them (round, loss, tokens/s,
bytes sent and received per node). With ``--rounds N`` the network trains N rounds and the
devnet ends with a summary and a PNG plot of loss against tokens per node. Ctrl-C (or SIGTERM, or
``--duration``) sends SIGTERM to every node by PID, waits for each to exit cleanly, and kills any
that do not.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import trio
from rich import box
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
    rounds: list[dict[str, Any]] = field(default_factory=list)
    trained: bool = False
    dashboard: str = ""


def _command(index: int, port: int, bootstrap: str | None, node_args: list[str]) -> list[str]:
    listen = f"/ip4/127.0.0.1/tcp/{port + index if port else 0}"
    cmd = [sys.executable, "-m", "p2pshard", "-v", "start" if bootstrap is None else "join"]
    if bootstrap is not None:
        cmd.append(bootstrap)
    # each node serves its metrics and dashboard on a free 127.0.0.1 port (printed at start)
    return [*cmd, "--listen", listen, "--json", "--metrics", "127.0.0.1:0", *node_args]


def _table(views: list[NodeView]) -> Table:
    """One row a node; narrow enough for an 80-column terminal."""
    table = Table(
        title="p2pshard devnet (Ctrl-C to stop); sent/recv in MB", box=box.SIMPLE_HEAD, padding=(0, 1)
    )
    for col in ("node", "peer", "peers", "round", "loss", "tok/s", "sent", "recv", "state"):
        table.add_column(col, justify="left" if col in ("peer", "state") else "right", no_wrap=True)
    for v in views:
        r = v.rounds[-1] if v.rounds else {}
        table.add_row(
            str(v.index),
            v.peer_id[-6:] if v.peer_id else "…",
            str(v.peers),
            str(r.get("round", "…")),
            f"{r['loss']:.3f}" if r.get("loss") is not None else "…",
            f"{r['tokens_per_s']:,.0f}" if r else "…",
            f"{r['bytes_sent'] / 1e6:.2f}" if r else "…",
            f"{r['bytes_received'] / 1e6:.2f}" if r else "…",
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
                view.peer_id, view.addrs, view.state = event["peer_id"], event["addrs"], "joining"
            elif kind == "ready":  # its model built and its protocols served: others may join
                view.state = "running"
                ready.set()
            elif kind == "metrics":
                view.dashboard = str(event["url"])
            elif kind == "peers":
                view.peers = int(event["count"])
            elif kind == "round":
                view.rounds.append(event)
                view.state = "training"
            elif kind == "trained":
                view.trained = True
                view.state = "trained"
            elif kind in ("stopping", "stopped"):
                view.state = kind


def _log_file(out: Path, index: int) -> BinaryIO:
    return open(out / f"node-{index}.log", "wb")


def _node_env(nodes: int) -> dict[str, str]:
    """One torch thread per node (several nodes share this machine's cores), and room for every
    other node's connection from this one IP (a node admits 16 from one IP by default)."""
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["P2PSHARD_MAX_CONNECTIONS_PER_IP"] = os.environ.get(
        "P2PSHARD_MAX_CONNECTIONS_PER_IP", str(max(16, 2 * nodes))
    )
    return env


async def _start(
    view: NodeView, cmd: list[str], nursery: trio.Nursery, as_json: bool, out: Path, nodes: int
) -> None:
    env = {**os.environ, **_node_env(nodes)}
    with _log_file(out, view.index) as log:  # the child keeps its own copy of the fd
        proc = await trio.lowlevel.open_process(
            cmd, stdout=subprocess.PIPE, stderr=log, start_new_session=True, env=env
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


async def _until_trained(views: list[NodeView], scope: trio.CancelScope) -> None:
    """Every node has finished its rounds (or exited)."""

    def finished(v: NodeView) -> bool:
        return v.trained or (v.process is not None and v.process.returncode is not None)

    while not all(finished(v) for v in views):  # noqa: ASYNC110 - polls child processes' state
        await trio.sleep(0.5)
    await trio.sleep(2.0)  # let the last payloads be served
    scope.cancel()


async def _devnet(
    nodes: int,
    base_port: int,
    as_json: bool,
    duration: float | None,
    rounds: int,
    node_args: list[str],
    out: Path,
) -> int:
    console = Console(stderr=as_json)
    views = [NodeView(i) for i in range(nodes)]
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            live = None if as_json else Live(_table(views), console=console, refresh_per_second=4)
            if live is not None:
                live.start()
                nursery.start_soon(_refresh, live, views)
            try:
                await _start(views[0], _command(0, base_port, None, node_args), nursery, as_json, out, nodes)
                first = views[0].addrs[0]
                async with trio.open_nursery() as starters:
                    for v in views[1:]:
                        cmd = _command(v.index, base_port, first, node_args)
                        starters.start_soon(_start, v, cmd, nursery, as_json, out, nodes)
                if not as_json:  # printed above the live table
                    for v in views:
                        console.print(f"node {v.index}: {v.addrs[0]}  {v.dashboard}", soft_wrap=True)
                    console.print(
                        f"dashboard: {views[0].dashboard} (metrics: {views[0].dashboard}metrics)",
                        soft_wrap=True,
                    )
                with trio.move_on_after(duration if duration is not None else float("inf")):
                    async with trio.open_nursery() as waiters:
                        if rounds:
                            waiters.start_soon(_until_trained, views, waiters.cancel_scope)
                        async for _ in signals:
                            break
                        waiters.cancel_scope.cancel()
            finally:
                with trio.CancelScope(shield=True):
                    await _stop_all(views)
                if live is not None:
                    live.update(_table(views))
                    live.stop()
                nursery.cancel_scope.cancel()
    clean = all(v.exit_code == 0 for v in views if v.process is not None)
    if any(v.rounds for v in views):
        _summary(views, out, console, as_json)
    if not as_json:
        console.print("all nodes stopped cleanly" if clean else "some nodes did not stop cleanly")
    return 0 if clean else 1


def _contributions(v: NodeView) -> int:
    """Rounds whose aggregate held this node's own update."""
    return sum(1 for r in v.rounds if r.get("contributed"))


def lagging(views: list[NodeView]) -> list[NodeView]:
    """Nodes that contributed in fewer rounds than the best node did (they say why in their log)."""
    best = max((_contributions(v) for v in views), default=0)
    return [v for v in views if _contributions(v) < best]


def _summary(views: list[NodeView], out: Path, console: Console, as_json: bool) -> None:
    hashes = {v.rounds[-1]["model_hash"] for v in views if v.rounds}
    behind = lagging(views)
    table = Table(title="training summary")
    for col in ("node", "rounds", "contributed", "first loss", "last loss", "tokens", "model hash"):
        table.add_column(col)
    for v in views:
        if not v.rounds:
            table.add_row(f"{v.index} !", "0", "0", "-", "-", "-", "-", style="bold red")
            continue
        losses = [r["loss"] for r in v.rounds if r.get("loss") is not None]
        table.add_row(
            f"{v.index} !" if v in behind else str(v.index),
            str(len(v.rounds)),
            str(_contributions(v)),
            f"{losses[0]:.4f}" if losses else "-",
            f"{losses[-1]:.4f}" if losses else "-",
            f"{v.rounds[-1]['tokens']:,}",
            v.rounds[-1]["model_hash"][:16],
            style="bold red" if v in behind else None,
        )
    plot = _plot(views, out, behind)
    summary = {
        "event": "summary",
        "same_model_hash": len(hashes) == 1,
        "contributed_less": [v.index for v in behind],
        "model_hashes": sorted(hashes),
        "plot": str(plot),
        "nodes": [{"node": v.index, "peer_id": v.peer_id, "rounds": v.rounds} for v in views],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    if as_json:
        print(json.dumps({k: v for k, v in summary.items() if k != "nodes"}), flush=True)
        return
    console.print(table)
    same = len(hashes) == 1
    console.print("all nodes hold the same model" if same else f"nodes disagree: {len(hashes)} model hashes")
    best = max(_contributions(v) for v in views)
    for v in behind:
        console.print(
            f"[bold red]warning:[/] node {v.index} contributed in {_contributions(v)} rounds, "
            f"others in up to {best}; its log ({out / f'node-{v.index}.log'}) says why "
            "at each 'not contributing' line"
        )
    console.print(f"loss plot: {plot}")


def _plot(views: list[NodeView], out: Path, behind: list[NodeView]) -> Path:
    """Loss against tokens trained, one line per node (matplotlib, no display needed). Each node
    has its own marker; nodes that contributed less are drawn last and larger, so that their
    points are never hidden under the others'."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    markers = "os^vD<>pP*"
    for v in sorted(views, key=lambda v: v in behind):
        points = [(r["tokens"], r["loss"]) for r in v.rounds if r.get("loss") is not None]
        if points:
            xs, ys = zip(*points, strict=True)
            flagged = v in behind
            ax.plot(
                xs,
                ys,
                marker=markers[v.index % len(markers)],
                markersize=7 if flagged else 3,
                linewidth=2 if flagged else 1,
                label=f"node {v.index}" + (" (contributed less)" if flagged else ""),
                zorder=3 if flagged else 2,
            )
    ax.set_xlabel("tokens trained by the node")
    ax.set_ylabel("training loss (mean over inner steps)")
    ax.set_title("p2pshard devnet: DiLoCo rounds")
    ax.grid(alpha=0.3)
    ax.legend()
    path = out / "loss.png"
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def run_devnet(
    nodes: int,
    base_port: int = 0,
    as_json: bool = False,
    duration: float | None = None,
    rounds: int = 0,
    node_args: list[str] | None = None,
    out: Path | None = None,
) -> int:
    out = out or Path("devnet-out")
    out.mkdir(parents=True, exist_ok=True)
    return trio.run(_devnet, nodes, base_port, as_json, duration, rounds, node_args or [], out)
