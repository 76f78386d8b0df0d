"""Which connections to close when a node holds too many: the connection manager's decisions.

Anchor: go-libp2p's ``connmgr`` (high and low watermarks, protected peers, a grace period for new
connections). Sans-IO: the driver (:mod:`p2pshard.net.connmgr`) describes each connected peer as a
:class:`PeerView` and passes the time in; :func:`decide` says whom to close and why.

Rules, in order:

1. **Per IP**: at most ``max_per_ip`` peers from one IP address; the lowest ranked of the excess
   are closed (reason ``per_ip``), so one machine's Sybil identities cannot fill the table. This
   applies at any count, below the high watermark too.
2. **Watermarks**: above ``high_water`` peers, close the lowest ranked until ``low_water`` remain
   (reason ``trim``).

Never closed: peers in one of our gossip meshes, peers in an active transfer, peers a protocol
protected, bootstrap peers during ``bootstrap_grace_s`` after the node started, and connections
younger than ``grace_s``. Rank (lowest is closed first): gossip score, then usefulness (what the
driver counts a peer has done for us), then age (the newest connection first: an old one has proved
itself).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ConnMgrConfig:
    low_water: int
    high_water: int
    grace_s: float = 30.0
    bootstrap_grace_s: float = 300.0
    max_per_ip: int = 8

    def __post_init__(self) -> None:
        if not 0 <= self.low_water <= self.high_water:
            raise ValueError("connmgr: need 0 <= low_water <= high_water")
        if self.max_per_ip < 1 or self.grace_s < 0 or self.bootstrap_grace_s < 0:
            raise ValueError("connmgr: max_per_ip >= 1 and non-negative grace periods")


@dataclass(frozen=True)
class PeerView:
    peer: str
    ip: str | None
    connected_at: float
    score: float = 0.0
    usefulness: float = 0.0
    in_mesh: bool = False
    in_transfer: bool = False
    bootstrap: bool = False
    protected: bool = False


Reason = Literal["per_ip", "trim"]


@dataclass(frozen=True)
class Close:
    peer: str
    reason: Reason


def is_protected(view: PeerView, now: float, started_at: float, config: ConnMgrConfig) -> bool:
    return (
        view.in_mesh
        or view.in_transfer
        or view.protected
        or (view.bootstrap and now - started_at < config.bootstrap_grace_s)
        or now - view.connected_at < config.grace_s
    )


def rank(view: PeerView) -> tuple[float, float, float]:
    """Sort key: the peer to close first sorts first."""
    return (view.score, view.usefulness, -view.connected_at)


def decide(peers: Sequence[PeerView], now: float, started_at: float, config: ConnMgrConfig) -> list[Close]:
    """The connections to close now, lowest ranked first."""
    closing: list[Close] = []
    gone: set[str] = set()
    by_ip: dict[str, list[PeerView]] = defaultdict(list)
    for view in peers:
        if view.ip is not None:
            by_ip[view.ip].append(view)
    for views in by_ip.values():
        excess = len(views) - config.max_per_ip
        if excess <= 0:
            continue
        for view in sorted(views, key=rank):
            if excess <= 0:
                break
            if not is_protected(view, now, started_at, config):
                closing.append(Close(view.peer, "per_ip"))
                gone.add(view.peer)
                excess -= 1
    remaining = [v for v in peers if v.peer not in gone]
    if len(remaining) > config.high_water:
        excess = len(remaining) - config.low_water
        for view in sorted(remaining, key=rank):
            if excess <= 0:
                break
            if not is_protected(view, now, started_at, config):
                closing.append(Close(view.peer, "trim"))
                excess -= 1
    return closing
