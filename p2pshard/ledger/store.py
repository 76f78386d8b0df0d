"""The ledger's SQLite store: what the core ledger settled, one SQLite transaction per round.

The store decides nothing: :meth:`LedgerStore.append` hands a settled round's bytes to
:func:`p2pshard.core.ledger.settle` and writes what it returns. Each round is one
``BEGIN IMMEDIATE … COMMIT`` holding the round's bytes, the state root after it and every account
it changed, in a WAL database with ``synchronous=FULL``: a process killed at any moment (SIGKILL,
power loss) reopens with the last committed round and nothing of a later one. Opening verifies
that the accounts on disk encode to the root stored beside the last round, so a store edited or
damaged behind the ledger's back is refused rather than trusted.

Blocking calls (sqlite3 and fsync): a trio node runs them in a worker thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from p2pshard.core.gossip import Verdict
from p2pshard.core.ledger import LedgerState, Settled, StateDecodeError, decode_state, settle
from p2pshard.core.ledger.state import (
    STATE_TAG,
    Account,
    encode_account,
    encode_params,
    encode_state,
    state_root,
)
from p2pshard.core.wire.framing import decode_uvarint, encode_uvarint

SCHEMA_VERSION: Final = 1

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE rounds (round INTEGER PRIMARY KEY, block BLOB NOT NULL, root BLOB NOT NULL);
CREATE TABLE accounts (
    id BLOB PRIMARY KEY,
    balance INTEGER NOT NULL,
    stake INTEGER NOT NULL,
    reputation INTEGER NOT NULL,
    nonce INTEGER NOT NULL,
    unbonding BLOB NOT NULL
);
"""


_SAVE_SEEN = "INSERT OR REPLACE INTO meta VALUES ('work_seen', ?)"


class StoreError(Exception):
    """The store cannot be opened as a ledger: ``reason`` says why (snake_case)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class RoundRecord:
    round: int
    block: bytes
    root: bytes


def _pack_unbonding(entries: tuple[tuple[int, int], ...]) -> bytes:
    return b"".join(encode_uvarint(r) + encode_uvarint(a) for r, a in entries)


def _unpack_unbonding(data: bytes) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    pos = 0
    while pos < len(data):
        first = decode_uvarint(data, pos)
        second = decode_uvarint(data, first[1]) if first is not None else None
        if first is None or second is None:
            raise StoreError("corrupt", "an unbonding column ends inside an entry")
        out.append((first[0], second[0]))
        pos = second[1]
    return tuple(out)


class LedgerStore:
    """The settled ledger on disk and its current state in memory. Not thread-safe: one owner."""

    def __init__(self, db: sqlite3.Connection, genesis_state: LedgerState, state: LedgerState) -> None:
        self._db = db
        self._genesis = genesis_state
        self._state = state

    # ------------------------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: Path | str, genesis_state: LedgerState | None = None) -> LedgerStore:
        """Open (or, given ``genesis_state``, create) the store at ``path``.

        An existing store must hold the same genesis when one is given; its accounts must encode to
        the root stored with its last round. Raises :class:`StoreError` otherwise."""
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                if genesis_state is None:
                    raise StoreError("no_genesis", f"{path} holds no ledger and no genesis was given")
                cls._create(db, genesis_state)
            elif version != SCHEMA_VERSION:
                raise StoreError("schema_version", f"{path}: schema version {version}, expected 1")
            stored_genesis = cls._genesis_of(db)
            if genesis_state is not None and encode_state(genesis_state) != encode_state(stored_genesis):
                raise StoreError("other_genesis", f"{path} holds the ledger of another genesis")
            state = cls._load(db, stored_genesis)
        except BaseException:
            db.close()
            raise
        return cls(db, stored_genesis, state)

    @staticmethod
    def _create(db: sqlite3.Connection, genesis_state: LedgerState) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute("INSERT INTO meta VALUES ('genesis', ?)", (encode_state(genesis_state),))
            LedgerStore._write_accounts(db, {}, genesis_state)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @staticmethod
    def _genesis_of(db: sqlite3.Connection) -> LedgerState:
        row = db.execute("SELECT value FROM meta WHERE key = 'genesis'").fetchone()
        if row is None:
            raise StoreError("corrupt", "the store has no genesis")
        try:
            return decode_state(bytes(row[0]))
        except StateDecodeError as exc:
            raise StoreError("corrupt", f"the stored genesis is not a ledger state: {exc.reason}") from None

    @staticmethod
    def _load(db: sqlite3.Connection, genesis_state: LedgerState) -> LedgerState:
        last = db.execute("SELECT round, root FROM rounds ORDER BY round DESC LIMIT 1").fetchone()
        round_ = genesis_state.round if last is None else last[0] + 1
        want = state_root(genesis_state) if last is None else bytes(last[1])
        rows = db.execute(
            "SELECT id, balance, stake, reputation, nonce, unbonding FROM accounts ORDER BY id"
        ).fetchall()
        parts = [
            STATE_TAG,
            encode_params(genesis_state.params),
            encode_uvarint(round_),
            encode_uvarint(len(rows)),
        ]
        for id_, balance, stake, reputation, nonce, unbonding in rows:
            account = Account(balance, stake, reputation, nonce, _unpack_unbonding(bytes(unbonding)))
            parts.append(encode_account(bytes(id_), account))
        try:
            state = decode_state(b"".join(parts))
        except (StateDecodeError, ValueError) as exc:
            raise StoreError("corrupt", f"the stored accounts are not a ledger state: {exc}") from None
        if state.root() != want:
            raise StoreError("root_mismatch", f"stored accounts do not match the root of round {round_ - 1}")
        return state

    # ------------------------------------------------------------------------------ writing

    @staticmethod
    def _write_accounts(db: sqlite3.Connection, before: dict[bytes, Account], after: LedgerState) -> None:
        changed = [(k, a) for k, a in after.accounts.items() if before.get(k) is not a]
        db.executemany(
            "INSERT OR REPLACE INTO accounts VALUES (?, ?, ?, ?, ?, ?)",
            [
                (k, a.balance, a.stake, a.reputation, a.nonce, _pack_unbonding(a.unbonding))
                for k, a in changed
            ],
        )

    def append(self, block: bytes, work_seen: bytes | None = None) -> Settled | Verdict:
        """Settle the round ``block`` encodes (a ``SettledRound``) and commit it, or say why not
        (the store is then unchanged). Returns the core's :class:`Settled`. ``work_seen``: the
        encoded seen state of work proofs (:class:`p2pshard.core.work.SeenProofs`) to keep in the
        same transaction, so a restarted node refuses the replays it refused before."""
        out = settle(self._state, block)
        if isinstance(out, Verdict):
            return out
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("INSERT INTO rounds VALUES (?, ?, ?)", (self._state.round, block, out.state.root()))
            self._write_accounts(db, self._state.accounts, out.state)
            if work_seen is not None:
                db.execute(_SAVE_SEEN, (work_seen,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._state = out.state
        return out

    def save_work_seen(self, work_seen: bytes) -> None:
        """Keep the encoded seen state of work proofs (one transaction; between rounds)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(_SAVE_SEEN, (work_seen,))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def work_seen(self) -> bytes | None:
        """The last seen state of work proofs kept, or None. The store does not judge it: the
        caller decodes it (``SeenProofs.decode``) and starts empty if it does not decode."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'work_seen'").fetchone()
        return None if row is None else bytes(row[0])

    # ------------------------------------------------------------------------------ reading

    @property
    def state(self) -> LedgerState:
        """A copy of the last settled state."""
        return self._state.copy()

    @property
    def genesis(self) -> LedgerState:
        return self._genesis.copy()

    @property
    def root(self) -> bytes:
        return self._state.root()

    @property
    def round(self) -> int:
        """The next round to settle."""
        return self._state.round

    def rounds(self, start: int = 0) -> Iterator[RoundRecord]:
        for r, block, root in self._db.execute(
            "SELECT round, block, root FROM rounds WHERE round >= ? ORDER BY round", (start,)
        ):
            yield RoundRecord(r, bytes(block), bytes(root))

    def replay(self) -> LedgerState:
        """The state got by settling every stored round again from genesis; each root must match."""
        state = self._genesis.copy()
        for rec in self.rounds():
            out = settle(state, rec.block)
            if isinstance(out, Verdict) or out.state.root() != rec.root:
                raise StoreError("root_mismatch", f"round {rec.round} does not replay to its stored root")
            state = out.state
        return state

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> LedgerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
