"""The proofs a node accepted lately: replay cache, per-worker rate and one proof per round
(specs/work.md, "The seen state").

One entry per accepted proof: ``(received_ms, proof_id, worker, round)``, kept for
``RATE_WINDOW_MS`` after it was received, in the order received. Every index (proof ids,
(worker, round) pairs, per-worker counts) is derived from the entries, so the encoding below
holds the whole state and a node that restores it after a restart refuses the same replays it
refused before. Bounded: at most ``capacity`` entries; a full cache refuses new proofs (it never
forgets an unexpired one, which would let that proof be replayed).

The encoding is this module's own (local storage, e.g. a SQLite blob), canonical and checked:
``SEEN_TAG uvarint(count) (uvarint(received_ms) proof_id[32] uvarint(len(worker)) worker
uvarint(round))*``, entries in non-decreasing ``received_ms``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

from p2pshard.core.wire.framing import MalformedVarint, decode_uvarint, encode_uvarint

SEEN_TAG: Final = b"p2pshard-work-seen:"
RATE_WINDOW_MS: Final = 60 * 60 * 1000
"""How long an accepted proof counts against its worker's rate, and stays in the replay cache."""
MAX_PROOFS_PER_WINDOW: Final = 120
"""Most proofs one worker may have accepted within ``RATE_WINDOW_MS``."""
DEFAULT_SEEN_CAPACITY: Final = 100_000
MAX_WORKER_ID: Final = 64
"""Longest worker id the encoding holds (an account id is 39 bytes)."""
PROOF_ID_SIZE: Final = 32

SEEN_ERRORS: Final = (
    "bad_seen_tag",
    "truncated",
    "malformed_varint",
    "too_many_entries",
    "bad_worker",
    "unsorted_entries",
    "duplicate_entry",
    "trailing_bytes",
)


class SeenDecodeError(ValueError):
    def __init__(self, reason: str, message: str = "") -> None:
        if reason not in SEEN_ERRORS:
            raise ValueError(f"unknown seen error reason {reason!r}")
        super().__init__(message or reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SeenEntry:
    received_ms: int
    proof_id: bytes
    worker: bytes
    round: int


class SeenProofs:
    """Replay cache and rate counter of accepted proofs (see the module doc)."""

    def __init__(self, capacity: int = DEFAULT_SEEN_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._entries: deque[SeenEntry] = deque()
        self._ids: set[bytes] = set()
        self._rounds: set[tuple[bytes, int]] = set()
        self._per_worker: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[SeenEntry]:
        return list(self._entries)

    def prune(self, now_ms: int) -> None:
        """Forget entries received ``RATE_WINDOW_MS`` or longer before ``now_ms``."""
        while self._entries and self._entries[0].received_ms <= now_ms - RATE_WINDOW_MS:
            e = self._entries.popleft()
            self._ids.discard(e.proof_id)
            self._rounds.discard((e.worker, e.round))
            left = self._per_worker[e.worker] - 1
            if left:
                self._per_worker[e.worker] = left
            else:
                del self._per_worker[e.worker]

    def seen(self, proof_id: bytes) -> bool:
        return proof_id in self._ids

    def has_round(self, worker: bytes, round_: int) -> bool:
        return (worker, round_) in self._rounds

    def count(self, worker: bytes) -> int:
        """Proofs of ``worker`` accepted within the window (after :meth:`prune`)."""
        return self._per_worker.get(worker, 0)

    @property
    def full(self) -> bool:
        return len(self._entries) >= self.capacity

    def add(self, entry: SeenEntry) -> None:
        """Record an accepted proof (the caller checked the rules; ``received_ms`` must not go
        back in time, so a node's clock stepping back is clamped to the last entry)."""
        if self.full:
            raise OverflowError("seen cache full")
        if entry.proof_id in self._ids:
            raise ValueError("proof already seen")
        if self._entries and entry.received_ms < self._entries[-1].received_ms:
            entry = SeenEntry(self._entries[-1].received_ms, entry.proof_id, entry.worker, entry.round)
        self._entries.append(entry)
        self._ids.add(entry.proof_id)
        self._rounds.add((entry.worker, entry.round))
        self._per_worker[entry.worker] = self._per_worker.get(entry.worker, 0) + 1

    def encode(self) -> bytes:
        parts = [SEEN_TAG, encode_uvarint(len(self._entries))]
        for e in self._entries:
            parts += [
                encode_uvarint(e.received_ms),
                e.proof_id,
                encode_uvarint(len(e.worker)),
                e.worker,
                encode_uvarint(e.round),
            ]
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes, capacity: int = DEFAULT_SEEN_CAPACITY) -> SeenProofs:
        """The state ``data`` encodes; raises :class:`SeenDecodeError` on anything else."""
        if not data.startswith(SEEN_TAG):
            raise SeenDecodeError("bad_seen_tag")
        pos = len(SEEN_TAG)

        def uint() -> int:
            nonlocal pos
            try:
                got = decode_uvarint(data, pos)
            except MalformedVarint as exc:
                raise SeenDecodeError("malformed_varint", str(exc)) from None
            if got is None:
                raise SeenDecodeError("truncated")
            value, pos = got
            return value

        def take(n: int) -> bytes:
            nonlocal pos
            if pos + n > len(data):
                raise SeenDecodeError("truncated")
            out = data[pos : pos + n]
            pos += n
            return out

        out = cls(capacity)
        count = uint()
        if count > capacity:
            raise SeenDecodeError("too_many_entries", f"{count} entries, capacity {capacity}")
        for _ in range(count):
            received, proof_id = uint(), take(PROOF_ID_SIZE)
            size = uint()
            if not 1 <= size <= MAX_WORKER_ID:
                raise SeenDecodeError("bad_worker")
            worker, round_ = take(size), uint()
            if out._entries and received < out._entries[-1].received_ms:
                raise SeenDecodeError("unsorted_entries")
            if proof_id in out._ids:
                raise SeenDecodeError("duplicate_entry")
            out.add(SeenEntry(received, proof_id, worker, round_))
        if pos != len(data):
            raise SeenDecodeError("trailing_bytes")
        return out
