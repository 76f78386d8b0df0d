"""What the round protocol asks its driver to do, and what the driver reports back.

Commands are frozen dataclasses; a driver matches on them and carries each out (train in a worker
thread, publish on gossip, fetch over the blob protocol, load a checkpoint...). The facts a driver
feeds back that are more than a number or two are dataclasses here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from p2pshard.core.rounds.machine import Aggregate, Fetch

__all__ = [
    "Aggregate",
    "Announce",
    "AskCheckpoints",
    "Command",
    "Commit",
    "Fetch",
    "Finished",
    "LoadCheckpoint",
    "PeerCheckpoint",
    "Penalise",
    "ScheduleOffer",
    "Skipped",
    "Snapshot",
    "Train",
    "Trained",
]


# ------------------------------------------------------------------------------------ facts in


@dataclass(frozen=True)
class ScheduleOffer:
    """A round schedule as nodes exchange it (checked by :meth:`RoundSchedule.offered`)."""

    genesis_time: float
    period: float
    announce_deadline: float
    fetch_timeout: float
    last_round: int = 0  # 0 = the network trains until stopped


@dataclass(frozen=True)
class PeerCheckpoint:
    """One peer's answer to "which checkpoint do you hold?" (the checkpoint protocol's info)."""

    peer: str
    same_network: bool
    round: int  # the next round the peer trains: its model has rounds < round applied
    model_hash: bytes
    digest: bytes  # SHA-256 of the checkpoint bytes, served over the blob protocol
    size: int
    schedule: ScheduleOffer | None


@dataclass(frozen=True)
class Trained:
    """The engine finished a round's inner steps (``seconds`` of training, measured by the driver)."""

    round: int
    base_model_hash: bytes
    content_hash: bytes
    size: int
    tokens: int
    loss: float
    seconds: float


# ------------------------------------------------------------------------------------ commands


@dataclass(frozen=True)
class AskCheckpoints:
    """Ask every connected peer for its checkpoint info; answer with ``checkpoints(ask, ...)``."""

    ask: int  # echoed in the answer, so a late answer to an earlier question is recognised
    want: bytes | None  # only peers holding this model hash are of use (None: any)


@dataclass(frozen=True)
class Train:
    """Train round ``round``'s inner steps on the model as it is now; answer with ``trained``."""

    round: int


@dataclass(frozen=True)
class Announce:
    """Sign and publish our update for ``round`` (the payload ``trained`` reported)."""

    round: int
    content_hash: bytes


@dataclass(frozen=True)
class Commit:
    """Round ``round`` is applied: the model is now ``model_hash``. For reports and logs."""

    round: int
    model_hash: bytes
    contributors: tuple[str, ...]  # whose payloads went into the aggregate (screening passed)
    rejected: Mapping[str, str] = field(default_factory=dict)  # contributor -> reason
    contributed: bool = False  # our own update was among the contributors


@dataclass(frozen=True)
class LoadCheckpoint:
    """Fetch the checkpoint ``digest`` from ``providers``, check that it is what they said
    (``round``, ``model_hash``) and load it; answer with ``loaded`` or ``load_failed``."""

    round: int
    model_hash: bytes
    digest: bytes
    size: int
    providers: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Snapshot:
    """Write a hot snapshot of the model (round ``round`` is the next to train)."""

    round: int


@dataclass(frozen=True)
class Penalise:
    """``peer`` sent something provably bad (a payload that failed screening...)."""

    peer: str
    reason: str


@dataclass(frozen=True)
class Skipped:
    """We do not contribute to ``round``: ``reason`` is a stable label, ``detail`` says why in words."""

    round: int
    reason: str
    detail: str


@dataclass(frozen=True)
class Finished:
    """The last round is done and we hold the network's model: the driver may stop."""

    round: int
    model_hash: bytes


Command = (
    AskCheckpoints
    | Train
    | Announce
    | Fetch
    | Aggregate
    | Commit
    | LoadCheckpoint
    | Snapshot
    | Penalise
    | Skipped
    | Finished
)
