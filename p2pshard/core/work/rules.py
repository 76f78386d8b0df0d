"""Proof of Neural Work: whether a node accepts a ``WorkProof`` (specs/work.md, "Work proofs").

:func:`check_proof` applies rules 1 to 19 in order: the proof's structure and signature
(:func:`~p2pshard.core.work.proof.decode_proof`), then the clock window, the genesis assignment
of data shards, the plausibility of the claimed tokens against the worker's announced capacity,
and the seen state (replay, one proof per worker and round, the hourly rate, room). On ACCEPT
the proof is recorded in the seen state; on anything else nothing changes.

REJECT: the proof is wrong under any state (penalises the forwarder, gossip P4, and, once
settled, the worker). IGNORE: it does not fit what this node knows now (its clock, the capacity
it has heard, the proofs it has seen) and might fit another node's view.

Sans-IO: the time is ``now_ms``; the assignment and the capacities are lookups the caller
provides (the engine's genesis assignment and the ``capacity`` topic's latest announcements).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from p2pshard.core.gossip import ACCEPT, Verdict, ignore, reject
from p2pshard.core.topics import CLOCK_WINDOW_MS
from p2pshard.core.work.proof import WorkProof, decode_proof
from p2pshard.core.work.seen import MAX_PROOFS_PER_WINDOW, SeenEntry, SeenProofs

PLAUSIBILITY_SLACK: Final = 1.25
"""A proof may claim up to this multiple of what its worker's announced capacity allows."""

Assignment = Callable[[bytes, int], tuple[bytes, ...] | None]
"""(worker, round) -> the data shards (SHA-256 digests) genesis assigns, None if not known."""
CapacityOf = Callable[[bytes], float | None]
"""worker -> its latest announced ``tokens_per_s``, None if it announced none."""


@dataclass(frozen=True, slots=True)
class WorkContext:
    """What the rules need besides the proof and the seen state."""

    round_ms: int
    """The round period: the time a worker had to process its claimed tokens."""
    assignment: Assignment
    capacity: CapacityOf


def max_plausible_tokens(tokens_per_s: float, round_ms: int) -> float:
    """The most tokens a proof of a worker announcing ``tokens_per_s`` may claim for one round."""
    return max(tokens_per_s, 0.0) * round_ms / 1000.0 * PLAUSIBILITY_SLACK


def judge_proof(proof: WorkProof, ctx: WorkContext, seen: SeenProofs, now_ms: int) -> Verdict:
    """Rules 11 to 19 for a decoded proof; records it in ``seen`` when it is accepted."""
    if abs(proof.timestamp_ms - now_ms) > CLOCK_WINDOW_MS:
        return ignore("outside_clock_window")
    assigned = ctx.assignment(proof.worker, proof.round)
    if assigned is None:
        return ignore("unknown_assignment")
    if sorted(proof.data_shards) != sorted(assigned):
        return reject("wrong_shards")
    capacity = ctx.capacity(proof.worker)
    if capacity is None:
        return ignore("unknown_capacity")
    if proof.tokens > max_plausible_tokens(capacity, ctx.round_ms):
        return reject("implausible_tokens")
    seen.prune(now_ms)
    if seen.seen(proof.proof_id):
        return ignore("replayed")
    if seen.has_round(proof.worker, proof.round):
        return ignore("duplicate_round")
    if seen.count(proof.worker) >= MAX_PROOFS_PER_WINDOW:
        return ignore("rate_limited")
    if seen.full:
        return ignore("seen_full")
    seen.add(SeenEntry(now_ms, proof.proof_id, proof.worker, proof.round))
    return ACCEPT


def check_proof(
    data: bytes, ctx: WorkContext, seen: SeenProofs, now_ms: int
) -> tuple[Verdict, WorkProof | None]:
    """All the rules for one received proof: its verdict, and the decoded proof when it decoded."""
    proof = decode_proof(data)
    if isinstance(proof, Verdict):
        return proof, None
    return judge_proof(proof, ctx, seen, now_ms), proof
