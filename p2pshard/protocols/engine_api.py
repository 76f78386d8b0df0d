"""The interface the protocol layer calls to train: one synchronous object per node.

Every method is a plain blocking call. A Trio program runs the expensive ones in a worker thread
(``await trio.to_thread.run_sync(engine.train_round, r, shard)``) and must not call two of them at
once on the same engine (the engine owns its model; the caller serialises access, e.g. with a
``trio.Lock``). Nothing here imports torch: tests may plug in a tiny fake engine.

A round, seen from the caller::

    shard_id = engine.assigned_shard(my_peer_id, r)          # which data the network expects
    update = engine.train_round(r, shard_bytes)               # H local steps -> compressed payload
    ... announce update.content_hash / size / tokens / loss; fetch the others' payloads ...
    outcome = engine.apply_round(r, {contributor: payload})   # robust aggregate + outer step
    ... state outcome.model_hash; if the majority differs: engine.load_checkpoint_bytes(...)

Model hashes are 32-byte SHA-256 digests of a canonical serialisation of the parameters; two
engines that applied the same payloads in the same rounds hold the same hash, bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = ["Engine", "LocalUpdate", "RoundOutcome", "UpdateRejected"]


class UpdateRejected(ValueError):
    """A contribution that must not be aggregated; ``reason`` is short and stable (a metric label).

    Reasons include ``decode_<codec reason>``, ``missing_tensor``,
    ``unexpected_tensor``, ``wrong_shape``, ``non_finite`` and ``norm_too_large``.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class LocalUpdate:
    """What one node produced in one round: the payload and the facts it announces about it."""

    round: int
    payload: bytes  # the encoded pseudo-gradient, exactly the bytes to serve
    content_hash: bytes  # SHA-256 of payload
    base_model_hash: bytes  # the model the update was trained from
    shard: str  # SHA-256 hex of the training shard used
    tokens: int  # tokens trained on this round
    loss: float  # mean training loss over the inner steps
    inner_steps: int
    dense_bytes: int  # what the same update costs as raw fp32 (for the byte counter)

    @property
    def size(self) -> int:
        return len(self.payload)


@dataclass(frozen=True)
class RoundOutcome:
    """The result of :meth:`Engine.apply_round`."""

    round: int
    model_hash: bytes
    accepted: tuple[str, ...]  # contributors whose payloads passed screening, sorted
    rejected: Mapping[str, str] = field(default_factory=dict)  # contributor -> reason
    selected: tuple[str, ...] = ()  # contributors the aggregation rule kept (all, except Krum)
    update_norm: float = 0.0  # L2 norm of the aggregated pseudo-gradient


@runtime_checkable
class Engine(Protocol):
    @property
    def network_id(self) -> str:
        """Short digest of the genesis manifest this engine trains on."""
        ...

    @property
    def round(self) -> int:
        """The next round to train (all earlier rounds are applied)."""
        ...

    def model_hash(self) -> bytes: ...

    def assigned_shard(self, peer_id: str, round_index: int) -> str:
        """SHA-256 hex of the shard ``peer_id`` must train on in ``round_index``."""
        ...

    def train_round(self, round_index: int, shard: bytes) -> LocalUpdate:
        """Train H inner steps from the current model on ``shard`` (verified by hash)."""
        ...

    def apply_round(self, round_index: int, payloads: Mapping[str, bytes]) -> RoundOutcome:
        """Screen, robustly aggregate (in contributor order) and apply the outer step."""
        ...

    def checkpoint_bytes(self) -> bytes: ...

    def load_checkpoint_bytes(self, data: bytes) -> None:
        """Replace all state from a checkpoint; raises ValueError if it does not verify."""
        ...
