"""The seen state of work proofs survives a restart through the ledger store: a proof accepted
before the node stopped is still refused as a replay after it reopens."""

from __future__ import annotations

from pathlib import Path

from p2pshard.core.gossip import Verdict
from p2pshard.core.ledger import encode_round
from p2pshard.core.work import SeenProofs, check_proof
from p2pshard.ledger.store import LedgerStore
from tests.ledger.helpers import fresh

from .helpers import CTX, NOW, proof


def test_seen_state_kept_with_a_settled_round_refuses_replays_after_reopening(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    seen = SeenProofs()
    first, second = proof(round_=1), proof(round_=2)
    with LedgerStore.open(db, fresh()) as store:
        assert store.work_seen() is None
        assert check_proof(first, CTX, seen, NOW)[0].accepted
        store.append(encode_round(0, []), work_seen=seen.encode())
        assert check_proof(second, CTX, seen, NOW)[0].accepted
        store.save_work_seen(seen.encode())
    with LedgerStore.open(db) as store:  # a restart
        saved = store.work_seen()
        assert saved is not None and store.round == 1
        restored = SeenProofs.decode(saved)
    for data in (first, second):
        verdict, _ = check_proof(data, CTX, restored, NOW + 60_000)
        assert (verdict.result.name, verdict.reason) == ("IGNORE", "replayed")
    assert check_proof(proof(round_=3), CTX, restored, NOW + 60_000)[0].accepted


def test_a_refused_round_keeps_the_previous_seen_state(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    with LedgerStore.open(db, fresh()) as store:
        store.save_work_seen(b"before")
        refused = store.append(encode_round(5, []), work_seen=b"after")  # wrong round: not settled
        assert isinstance(refused, Verdict) and refused.reason == "wrong_round"
        assert store.work_seen() == b"before"
