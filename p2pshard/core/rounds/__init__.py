"""The training round as sans-IO state machines: one round (:mod:`.machine`), the whole lifecycle
of a node (:mod:`.protocol`), what it asks a driver to do (:mod:`.commands`), the schedule and the
majority vote. No trio, no clock, no torch: time is the ``now`` argument."""

from p2pshard.core.rounds.commands import (
    Announce,
    AskCheckpoints,
    Command,
    Commit,
    Finished,
    LoadCheckpoint,
    PeerCheckpoint,
    Penalise,
    ScheduleOffer,
    Skipped,
    Snapshot,
    Train,
    Trained,
)
from p2pshard.core.rounds.machine import (
    ANNOUNCEMENT_RULES,
    Aggregate,
    Announcement,
    Fetch,
    Phase,
    Resync,
    RoundConfig,
    RoundMachine,
    RoundStateError,
)
from p2pshard.core.rounds.majority import MajorityTracker
from p2pshard.core.rounds.protocol import RoundProtocol, Stage, Timing, choose_checkpoint
from p2pshard.core.rounds.schedule import RoundSchedule

__all__ = [
    "ANNOUNCEMENT_RULES",
    "Aggregate",
    "Announce",
    "Announcement",
    "AskCheckpoints",
    "Command",
    "Commit",
    "Fetch",
    "Finished",
    "LoadCheckpoint",
    "MajorityTracker",
    "PeerCheckpoint",
    "Penalise",
    "Phase",
    "Resync",
    "RoundConfig",
    "RoundMachine",
    "RoundProtocol",
    "RoundSchedule",
    "RoundStateError",
    "ScheduleOffer",
    "Skipped",
    "Snapshot",
    "Stage",
    "Timing",
    "Train",
    "Trained",
    "choose_checkpoint",
]
