"""The training-round state machine: windows, announcements, choice, fetch, aggregate, commit."""

from p2pshard.core.rounds.machine import (
    ANNOUNCEMENT_RULES,
    Aggregate,
    Announcement,
    Command,
    Commit,
    Fetch,
    Phase,
    Resync,
    RoundConfig,
    RoundMachine,
    RoundStateError,
    Verdict,
    VerdictKind,
)
from p2pshard.core.rounds.majority import MajorityTracker
from p2pshard.core.rounds.schedule import RoundSchedule

__all__ = [
    "ANNOUNCEMENT_RULES",
    "Aggregate",
    "Announcement",
    "Command",
    "Commit",
    "Fetch",
    "MajorityTracker",
    "Phase",
    "Resync",
    "RoundConfig",
    "RoundMachine",
    "RoundSchedule",
    "RoundStateError",
    "Verdict",
    "VerdictKind",
]
