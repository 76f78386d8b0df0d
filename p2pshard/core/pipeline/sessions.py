"""KV-cache sessions of one served stage: who holds what, for how long, and how much memory.

A session is named by (peer, session id): a peer cannot reach another peer's cache. It holds a
batch size and a length (tokens cached); its memory is ``batch x length x kv_bytes_per_token``,
counted against the table's total and the peer's share before the stage computes anything.
Sessions idle for ``idle_ttl_s`` are evicted (:meth:`SessionTable.expire`); an evicted id is
remembered for a while (bounded) so that its owner hears ``session_expired`` (and replays its
prefix) rather than ``unknown_session``.

The table is sans-IO: time is the ``now`` each call is given. :meth:`check` only reads; a request
that passes it is run between :meth:`begin` (which reserves) and :meth:`commit` or :meth:`abort`.
The stage's tensors live elsewhere (the engine); the table tells its owner which sessions to
drop (``expire`` and ``begin`` return them).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from p2pshard.core.pipeline.rules import ForwardRejected, Reason

__all__ = ["Session", "SessionKey", "SessionLimits", "SessionTable"]

SessionKey = tuple[bytes, bytes]
"""(peer id bytes, session id)."""


@dataclass(frozen=True)
class SessionLimits:
    max_sessions: int = 64
    max_sessions_per_peer: int = 16
    max_bytes: int = 256 << 20
    """All sessions' caches together."""
    max_bytes_per_peer: int = 64 << 20
    idle_ttl_s: float = 60.0
    """A session unused this long is evicted."""
    max_tombstones: int = 4096
    """Evicted ids remembered (oldest forgotten first) to answer ``session_expired``."""
    tombstone_ttl_s: float = 600.0

    def __post_init__(self) -> None:
        if min(self.max_sessions, self.max_sessions_per_peer, self.max_bytes, self.max_bytes_per_peer) < 1:
            raise ValueError("session limits must be positive")
        if self.idle_ttl_s <= 0 or self.tombstone_ttl_s < 0 or self.max_tombstones < 0:
            raise ValueError("bad session times")


@dataclass
class Session:
    batch: int
    length: int
    last_used: float
    busy: bool = False


class SessionTable:
    def __init__(self, limits: SessionLimits, kv_bytes_per_token: int) -> None:
        self.limits = limits
        self.kv_bytes_per_token = kv_bytes_per_token
        self._sessions: OrderedDict[SessionKey, Session] = OrderedDict()  # least recently used first
        self._tombstones: OrderedDict[SessionKey, float] = OrderedDict()  # key -> evicted at
        self._by_peer: dict[bytes, tuple[int, int]] = {}  # peer -> (sessions, bytes)
        self.used_bytes = 0
        self.evicted = 0

    # -- reading ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, key: object) -> bool:
        return key in self._sessions

    def get(self, key: SessionKey) -> Session | None:
        return self._sessions.get(key)

    def peer_usage(self, peer: bytes) -> tuple[int, int]:
        """(sessions, bytes) the peer holds."""
        return self._by_peer.get(peer, (0, 0))

    def free_sessions(self) -> int:
        return self.limits.max_sessions - len(self._sessions)

    def bytes_for(self, batch: int, length: int) -> int:
        return batch * length * self.kv_bytes_per_token

    def check(self, key: SessionKey, start: int, batch: int, tokens: int, now: float) -> None:
        """Raise :class:`ForwardRejected` unless a cached forward of ``tokens`` new tokens at
        ``start`` may run now; changes nothing. ``start == 0`` opens the session (or starts it
        over: a client replaying its prefix), any other ``start`` continues it."""
        peer = key[0]
        session = self._sessions.get(key)
        if session is not None and session.busy:
            raise ForwardRejected(Reason.SESSION_BUSY, "a forward of this session is running")
        if start > 0:
            if session is None:
                if self._tombstoned(key, now):
                    raise ForwardRejected(Reason.SESSION_EXPIRED, "evicted; replay the prefix from 0")
                raise ForwardRejected(Reason.UNKNOWN_SESSION, "no such session; start it at position 0")
            if start != session.length:
                raise ForwardRejected(
                    Reason.WRONG_POSITION, f"the session holds {session.length} tokens, not {start}"
                )
            if batch != session.batch:
                raise ForwardRejected(Reason.WRONG_SHAPE, f"the session's batch is {session.batch}")
        freed = self.bytes_for(session.batch, session.length) if session is not None and start == 0 else 0
        new_bytes = self.bytes_for(batch, tokens)
        if session is None:
            peer_sessions = self.peer_usage(peer)[0]
            if len(self._sessions) >= self.limits.max_sessions:
                raise ForwardRejected(Reason.TOO_MANY_SESSIONS, f"{len(self._sessions)} sessions open")
            if peer_sessions >= self.limits.max_sessions_per_peer:
                raise ForwardRejected(Reason.TOO_MANY_SESSIONS, f"this peer has {peer_sessions} sessions")
        if self.used_bytes - freed + new_bytes > self.limits.max_bytes:
            raise ForwardRejected(Reason.OUT_OF_MEMORY, "the server's cache memory is full")
        if self.peer_usage(peer)[1] - freed + new_bytes > self.limits.max_bytes_per_peer:
            raise ForwardRejected(Reason.OUT_OF_MEMORY, "this peer's share of cache memory is full")

    def _tombstoned(self, key: SessionKey, now: float) -> bool:
        at = self._tombstones.get(key)
        return at is not None and now - at <= self.limits.tombstone_ttl_s

    # -- changing -----------------------------------------------------------------------------

    def expire(self, now: float) -> list[SessionKey]:
        """Evict every idle session past its TTL (not one being run); returns their keys."""
        gone = [
            key
            for key, s in self._sessions.items()
            if not s.busy and now - s.last_used >= self.limits.idle_ttl_s
        ]
        for key in gone:
            self._evict(key, now)
        while self._tombstones:
            key, at = next(iter(self._tombstones.items()))
            if now - at <= self.limits.tombstone_ttl_s:
                break
            del self._tombstones[key]
        return gone

    def begin(self, key: SessionKey, start: int, batch: int, tokens: int, now: float) -> bool:
        """Reserve the session's memory for a forward that passed :meth:`check` and mark it busy.
        Returns True when the session starts from nothing (the engine drops any old cache)."""
        self.check(key, start, batch, tokens, now)
        session = self._sessions.get(key)
        if session is not None and start == 0:
            self._remove(key)
            session = None
        if session is None:
            session = Session(batch=batch, length=0, last_used=now)
            self._sessions[key] = session
            self._tombstones.pop(key, None)
            sessions, used = self.peer_usage(key[0])
            self._by_peer[key[0]] = (sessions + 1, used)
        self._account(key, self.bytes_for(batch, tokens))
        session.length = start + tokens
        session.busy = True
        session.last_used = now
        self._sessions.move_to_end(key)
        return start == 0

    def commit(self, key: SessionKey, now: float) -> None:
        session = self._sessions.get(key)
        if session is not None:
            session.busy = False
            session.last_used = now

    def abort(self, key: SessionKey, now: float) -> None:
        """The forward failed: the cache is in doubt, so the session goes (as if evicted)."""
        if key in self._sessions:
            self._evict(key, now)

    def close(self, key: SessionKey) -> None:
        if key in self._sessions:
            self._remove(key)

    def _evict(self, key: SessionKey, now: float) -> None:
        self._remove(key)
        self.evicted += 1
        self._tombstones[key] = now
        self._tombstones.move_to_end(key)
        while len(self._tombstones) > self.limits.max_tombstones:
            self._tombstones.popitem(last=False)

    def _remove(self, key: SessionKey) -> None:
        session = self._sessions.pop(key)
        self._account(key, -self.bytes_for(session.batch, session.length))
        sessions, used = self.peer_usage(key[0])
        if sessions <= 1:
            self._by_peer.pop(key[0], None)
        else:
            self._by_peer[key[0]] = (sessions - 1, used)

    def _account(self, key: SessionKey, delta: int) -> None:
        self.used_bytes += delta
        sessions, used = self.peer_usage(key[0])
        self._by_peer[key[0]] = (sessions, used + delta)
