"""A node's recent past, for the dashboard and the metrics: round reports and the network's
model hashes, kept bounded."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from p2pshard.protocols.status import fetch_status
from p2pshard.protocols.training import RoundReport

if TYPE_CHECKING:
    from p2pshard.node import Node

KEEP_ROUNDS = 500
PEER_POLL_S = 2.0
PEER_POLL_MAX = 32
"""The model hash majority asks at most this many peers' status, every PEER_POLL_S."""


@dataclass
class RoundRow:
    round: int
    at: float
    loss: float | None
    contributors: int
    contributed: bool
    tokens: int
    tokens_per_s: float
    bytes_sent: int
    bytes_received: int
    sent_in_round: int
    received_in_round: int
    seconds: float | None
    """Time since the previous round's commit (None for the first one seen)."""
    model_hash: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class History:
    rows: deque[RoundRow] = field(default_factory=lambda: deque(maxlen=KEEP_ROUNDS))
    rounds_seen: int = 0
    peer_hashes: dict[str, tuple[int, str]] = field(default_factory=dict)
    """peer id -> (round, model hash hex) from its status, refreshed every PEER_POLL_S."""
    own_hash: tuple[int, str] | None = None
    """Our own (round, model hash) when the peers were last asked: views of one moment."""

    def on_round(self, report: RoundReport) -> None:
        prev = self.rows[-1] if self.rows else None
        now = trio.current_time()
        self.rows.append(
            RoundRow(
                round=report.round,
                at=now,
                loss=report.loss,
                contributors=report.contributors,
                contributed=report.contributed,
                tokens=report.tokens,
                tokens_per_s=report.tokens_per_s,
                bytes_sent=report.bytes_sent,
                bytes_received=report.bytes_received,
                sent_in_round=report.bytes_sent - (prev.bytes_sent if prev else 0),
                received_in_round=report.bytes_received - (prev.bytes_received if prev else 0),
                seconds=None if prev is None else now - prev.at,
                model_hash=report.model_hash.hex(),
            )
        )
        self.rounds_seen += 1

    def majority(self) -> dict[str, Any]:
        """The (round, model hash) most nodes hold, among the peers asked and us, at one moment."""
        views = dict(self.peer_hashes)
        own = self.own_hash
        if own is not None:
            views["self"] = own
        if not views:
            return {"round": None, "hash": None, "agree": 0, "of": 0, "ours": None}
        (r, best), agree = Counter(views.values()).most_common(1)[0]
        return {
            "round": r,
            "hash": best,
            "agree": agree,
            "of": len(views),
            "ours": own[1] if own is not None else None,
            "ours_agrees": own == (r, best),
        }


async def poll_peer_hashes(node: Node, history: History) -> None:
    """Ask connected peers' status (bounded in count and time) for their model hash."""
    while True:
        peers = node.peers()[:PEER_POLL_MAX]
        seen: dict[str, tuple[int, str]] = {}

        async def ask(peer: Any, seen: dict[str, tuple[int, str]]) -> None:
            try:
                status = await fetch_status(node.client, peer, timeout_s=2.0)
            except Exception:  # a peer gone or busy: no view of it this time
                return
            if status.HasField("training") and status.training.model_hash:
                seen[peer.to_base58()] = (status.training.round, status.training.model_hash.hex())

        with trio.move_on_after(PEER_POLL_S):
            async with trio.open_nursery() as nursery:
                for peer in peers:
                    nursery.start_soon(ask, peer, seen)
        history.peer_hashes = seen
        trainer = node.trainer
        if trainer is not None:
            history.own_hash = (trainer.engine.round, trainer.engine.model_hash().hex())
        await trio.sleep(PEER_POLL_S)
