"""Which model hash the network holds: a weighted vote over the hashes peers state.

Every peer states the model hash its update was trained from (in its announcement or proof). A
node whose own hash differs from a strict majority of the stated weight has diverged and must
resync from a checkpoint. Each peer counts once (its latest statement); weights are stakes, or 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["MajorityTracker"]


@dataclass
class MajorityTracker:
    votes: dict[str, tuple[bytes, float]] = field(default_factory=dict)

    def record(self, peer: str, model_hash: bytes, weight: float = 1.0) -> None:
        if weight > 0:
            self.votes[peer] = (model_hash, weight)

    def tally(self) -> dict[bytes, float]:
        out: dict[bytes, float] = {}
        for h, w in self.votes.values():
            out[h] = out.get(h, 0.0) + w
        return out

    def majority(self) -> bytes | None:
        """The hash with more than half of all weight, or None when no hash has that."""
        tally = self.tally()
        total = sum(tally.values())
        for h, w in tally.items():
            if w * 2 > total:
                return h
        return None

    def must_resync(self, local_hash: bytes) -> bytes | None:
        """The majority hash if it differs from ``local_hash``, else None."""
        m = self.majority()
        return m if m is not None and m != local_hash else None
