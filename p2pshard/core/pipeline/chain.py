"""Choosing a chain of servers that covers a model's layers, in order (sans-IO).

Given what each candidate serves (from its ShardInfo), :func:`plan_chain` returns the servers
whose ranges tile ``[0, total_layers)`` end to end, fewest first; among equally short chains the
candidates given first win (the caller orders them by preference: latency, load). When no chain
exists, :class:`ChainError` says which layers nobody serves.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["ChainError", "Hop", "plan_chain"]

P = TypeVar("P")


class ChainError(Exception):
    """No chain of the candidates covers the model; the message names the uncovered layers."""


@dataclass(frozen=True)
class Hop(Generic[P]):
    peer: P
    model_id: str
    start: int
    end: int
    total: int


def plan_chain(candidates: Sequence[Hop[P]], model_id: str | None = None) -> list[Hop[P]]:
    """The shortest chain of ``candidates`` covering every layer of one model (``model_id``, or
    the first candidate's)."""
    if not candidates:
        raise ChainError("no server was found to serve any layer of the model")
    model = model_id if model_id is not None else candidates[0].model_id
    usable = [h for h in candidates if h.model_id == model]
    if not usable:
        raise ChainError(f"no server serves model {model}")
    total = usable[0].total
    usable = [h for h in usable if h.total == total and 0 <= h.start < h.end <= total]
    came: dict[int, Hop[P] | None] = {0: None}
    queue = deque([0])
    while queue:
        pos = queue.popleft()
        if pos == total:
            break
        for hop in usable:
            if hop.start == pos and hop.end not in came:
                came[hop.end] = hop
                queue.append(hop.end)
    if total not in came:
        covered = sorted(came)
        reach = covered[-1]
        raise ChainError(
            f"no chain covers the model's {total} layers: nobody serves a range starting at layer "
            f"{reach} (reachable ends: {covered}; ranges offered: "
            + ", ".join(f"[{h.start}, {h.end})" for h in usable)
            + ")"
        )
    chain: list[Hop[P]] = []
    pos = total
    while pos:
        step = came[pos]
        assert step is not None
        chain.append(step)
        pos = step.start
    return chain[::-1]
