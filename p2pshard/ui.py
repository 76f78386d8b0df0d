"""Terminal rendering shared by the CLI commands (rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape


def print_status(status: dict[str, Any], console: Console | None = None) -> None:
    """A peer's status answer. Every string in it is the peer's, so it is escaped before rich reads
    it: a peer naming itself ``[/]`` must not be able to break (or restyle) our output.

    Lines are never wrapped (``soft_wrap``): an address split across lines at 80 columns (rich's
    width when piped) cannot be copied; peers are listed one line each rather than in a table."""
    console = console or Console(soft_wrap=True)
    console.soft_wrap = True
    e = escape
    console.print(
        f"[bold]{e(status['peer_id'])}[/bold]  {e(status.get('agent', ''))}  "
        f"up {float(status.get('uptime_s', 0)):.0f}s  network {e(status.get('network_id', ''))}"
    )
    for addr in status.get("listen_addrs", []):
        console.print(f"  listening {e(addr)}")
    console.print(f"peers ({len(status.get('peers', []))}):")
    for peer in status.get("peers", []):
        console.print(f"  {e(peer['peer_id'])}  {e(' '.join(peer.get('addrs', [])))}")
    console.print("protocols: " + e(", ".join(status.get("protocols", []))))
    training = status.get("training") or {}
    if training.get("model_hash"):
        console.print(
            f"training: round {training.get('round', 0)}  loss {float(training.get('loss', 0)):.4f}  "
            f"model {e(training['model_hash'][:16])}  tokens {training.get('tokens', 0)}"
        )
    for mesh in status.get("mesh", []):
        console.print(f"mesh {e(mesh['topic'])}: {mesh['mesh_peers']} peers")
    if status.get("scores"):
        console.print(
            "peer scores: "
            + ", ".join(f"{e(s['peer_id'][-8:])}={float(s.get('score', 0)):.1f}" for s in status["scores"])
        )
    counters = status.get("counters", {})
    rejected = {k: v for k, v in counters.items() if ".rejected" in k}
    if rejected:
        console.print("rejected: " + e(", ".join(f"{k}={v}" for k, v in rejected.items())))
