"""The ledger's store (SQLite): what :mod:`p2pshard.core.ledger` settled, kept across restarts."""

from p2pshard.ledger.store import LedgerStore, RoundRecord, StoreError

__all__ = ["LedgerStore", "RoundRecord", "StoreError"]
