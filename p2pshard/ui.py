"""Terminal rendering shared by the CLI commands (rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def print_status(status: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    console.print(
        f"[bold]{status['peer_id']}[/bold]  {status.get('agent', '')}  "
        f"up {float(status.get('uptime_s', 0)):.0f}s  network {status.get('network_id', '')}"
    )
    for addr in status.get("listen_addrs", []):
        console.print(f"  listening {addr}")
    peers = Table(title=f"peers ({len(status.get('peers', []))})", show_edge=False)
    peers.add_column("peer id")
    peers.add_column("addresses")
    for peer in status.get("peers", []):
        peers.add_row(peer["peer_id"], ", ".join(peer.get("addrs", [])))
    console.print(peers)
    console.print("protocols: " + ", ".join(status.get("protocols", [])))
    training = status.get("training") or {}
    if training.get("round"):
        console.print(
            f"training: round {training['round']}  loss {training.get('loss', 0):.4f}  "
            f"model {training.get('model_hash', '')[:16]}"
        )
    for mesh in status.get("mesh", []):
        console.print(f"mesh {mesh['topic']}: {mesh['mesh_peers']} peers")
    counters = status.get("counters", {})
    rejected = {k: v for k, v in counters.items() if ".rejected" in k}
    if rejected:
        console.print("rejected: " + ", ".join(f"{k}={v}" for k, v in rejected.items()))
