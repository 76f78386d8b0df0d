"""Runner ``work``: Proof of Neural Work acceptance and the validators' vote tally (specs/work.md).

Handlers:

* ``proof``: a received ``WorkProof``, the receiver's clock, the round period, the worker's
  announced capacity and genesis assignment, and the proofs the receiver accepted lately → the
  verdict, its reason and the proof id;
* ``tally``: a round's validator set, its accepted proofs and a sequence of ``ValidationVote``s
  → each vote's verdict and the settlement (outcome and stakes per proof, dissenters,
  equivocators);
* ``settle``: a ledger state, the round's accepted proofs with their tokens and its votes → the
  ``SettledRound`` the settlement makes (rewards, fees, slashes) and the state root after it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from p2pshard.conformance.model import JSON, AnswerError, Case, Runner, exact, unhex
from p2pshard.core.gossip import Verdict
from p2pshard.core.gossip.signing import Secp256k1Signer
from p2pshard.core.ledger import (
    CREDIT,
    LedgerParams,
    LedgerState,
    StateDecodeError,
    decode_state,
    encode_round,
    encode_state,
    genesis,
    settle,
)
from p2pshard.core.topics import signing_bytes
from p2pshard.core.wire import topics_pb2
from p2pshard.core.wire.framing import encode_uvarint
from p2pshard.core.work import (
    SeenEntry,
    SeenProofs,
    Settlement,
    WorkContext,
    check_proof,
    make_proof,
    make_vote,
)
from p2pshard.core.work.proof import MAX_PROOF_SHARDS, MAX_PROOF_SIZE, proof_id_of
from p2pshard.core.work.seen import MAX_PROOFS_PER_WINDOW, RATE_WINDOW_MS
from p2pshard.core.work.settle import settlement_ops
from p2pshard.core.work.votes import Tally

NAME = "work"
FILES = {
    "proof": frozenset({"input.json", "proof.bin"}),
    "tally": frozenset({"input.json"}),
    "settle": frozenset({"input.json", "pre.bin"}),
}

KEYS = [Secp256k1Signer((70 + i).to_bytes(32, "big")) for i in range(5)]
KA, KB, KC, KD, KE = KEYS
A, B, C, D, E = (k.peer_id for k in KEYS)
NOW = 1_700_000_000_000
ROUND_MS = 60_000
TOKENS_PER_S = 128.0  # 60 s: 7,680 tokens, 9,600 with PLAUSIBILITY_SLACK
MODEL = hashlib.sha256(b"model").digest()
UPDATE = hashlib.sha256(b"update").digest()
S1, S2, S3 = (hashlib.sha256(b"shard %d" % i).digest() for i in range(3))


def _proof(key: Secp256k1Signer = KA, **overrides: Any) -> bytes:
    fields: dict[str, Any] = {
        "round_": 5,
        "model_hash": MODEL,
        "tokens": 6_144,
        "batches": 12,
        "layers": (0, 6),
        "data_shards": (S1,),
        "update_hash": UPDATE,
        "timestamp_ms": NOW - 2_000,
        "nonce": bytes(range(16)),
    }
    fields.update(overrides)
    return make_proof(key, **fields)


def _edit(data: bytes, resign: Secp256k1Signer | None = None, **changes: Any) -> bytes:
    msg = topics_pb2.WorkProof()
    msg.ParseFromString(data)
    for k, v in changes.items():
        setattr(msg, k, v)
    if resign is not None:
        msg.signature = resign.sign(signing_bytes("proofs", msg))
    return msg.SerializeToString()


def _pid(data: bytes) -> bytes:
    msg = topics_pb2.WorkProof()
    msg.ParseFromString(data)
    return proof_id_of(msg)


def _context(inp: Mapping[str, JSON]) -> tuple[WorkContext, SeenProofs, int]:
    try:
        now = int(inp["now_ms"])
        round_ms = int(inp["round_ms"])
        capacity = inp["tokens_per_s"]
        shards = inp["assigned_shards"]
        entries = inp["seen"]
    except (KeyError, TypeError, ValueError) as exc:
        raise AnswerError(f"bad input: {exc}") from None
    assigned = None if shards is None else tuple(unhex(s, "assigned_shards") for s in shards)
    cap = None if capacity is None else float(capacity)
    ctx = WorkContext(round_ms, lambda _w, _r: assigned, lambda _w: cap)
    seen = SeenProofs()
    for received, pid, worker, round_ in entries:
        seen.add(SeenEntry(int(received), unhex(pid, "seen"), unhex(worker, "seen"), int(round_)))
    return ctx, seen, now


def _proof_cases() -> list[Case]:
    cases: list[Case] = []

    def case(
        name: str,
        desc: str,
        data: bytes,
        *,
        now: int = NOW,
        capacity: float | None = TOKENS_PER_S,
        shards: Sequence[bytes] | None = (S1,),
        seen: Sequence[tuple[int, bytes, bytes, int]] = (),
    ) -> None:
        inp: dict[str, JSON] = {
            "now_ms": now,
            "round_ms": ROUND_MS,
            "tokens_per_s": capacity,
            "assigned_shards": None if shards is None else [s.hex() for s in shards],
            "seen": [[r, p.hex(), w.hex(), n] for r, p, w, n in seen],
        }
        out = answer("proof", {**inp, "proof": data.hex()})
        cases.append(Case(NAME, "proof", name, desc, out["result"] == "ACCEPT", inp, {"proof": data}, out))

    honest = _proof()
    case("honest", "a proof on the assigned shard, within capacity, first seen", honest)
    case(
        "clock_edge",
        "stamped exactly CLOCK_WINDOW_MS ahead of the receiver",
        _proof(timestamp_ms=NOW + 300_000),
    )
    case(
        "max_plausible", "tokens exactly capacity x round x PLAUSIBILITY_SLACK (9,600)", _proof(tokens=9_600)
    )
    case(
        "two_shards",
        "two assigned shards, claimed in another order",
        _proof(data_shards=(S2, S1)),
        shards=(S1, S2),
    )
    others = [(NOW - 10_000 - i, hashlib.sha256(b"%d" % i).digest(), A, i) for i in range(3)]
    case(
        "after_restart",
        "A's proofs of rounds 0-2 in the restored seen state; round 5 is new",
        honest,
        seen=others,
    )
    near = [(NOW - 3_000_000 + i, hashlib.sha256(b"r%d" % i).digest(), A, 100 + i) for i in range(119)]
    case("rate_119", "A has 119 proofs in the last hour: the 120th is accepted", honest, seen=near)
    expired = [(NOW - RATE_WINDOW_MS, _pid(honest), A, 5)]
    case(
        "expired_entry",
        "the same proof id received exactly RATE_WINDOW_MS ago has expired",
        honest,
        seen=expired,
    )
    # REJECT: wrong under any state
    case("undecodable", "bytes that are not a WorkProof", b"\x0a\xff\x01")
    case(
        "oversized",
        f"a proof over MAX_PROOF_SIZE ({MAX_PROOF_SIZE} bytes)",
        honest + b"\xfa\x07" + encode_uvarint(MAX_PROOF_SIZE) + b"\x00" * MAX_PROOF_SIZE,
    )
    case("bad_worker", "the worker is not a secp256k1 peer id", _edit(honest, worker=b"\x01" * 39))
    case("bad_model_hash", "a 31-byte model hash", _proof(model_hash=MODEL[:31]))
    case("bad_update_hash", "no update hash", _proof(update_hash=b""))
    case("bad_nonce", "an 8-byte nonce", _proof(nonce=b"\x00" * 8))
    case("bad_tokens", "0 tokens", _proof(tokens=0))
    case("bad_batches", "more batches than tokens", _proof(tokens=10, batches=11))
    case("bad_layers", "an empty layer range", _proof(layers=(4, 4)))
    case("duplicate_shards", "the same shard claimed twice", _proof(data_shards=(S1, S1)), shards=(S1,))
    case(
        "too_many_shards",
        f"MAX_PROOF_SHARDS + 1 ({MAX_PROOF_SHARDS + 1}) shards",
        _proof(data_shards=tuple(hashlib.sha256(b"%d" % i).digest() for i in range(MAX_PROOF_SHARDS + 1))),
    )
    case("tampered_tokens", "the token count changed after signing", _edit(honest, tokens=6_145))
    case("wrong_key", "signed by B's key in A's name", _edit(_proof(KB), worker=A))
    moved = topics_pb2.WorkProof()
    moved.ParseFromString(honest)
    moved.signature = KA.sign(signing_bytes("votes", moved))
    case("moved_signature", "signed over the votes topic's signing bytes", moved.SerializeToString())
    case("wrong_shards", "a shard genesis did not assign to A for round 5", _proof(data_shards=(S3,)))
    case("missing_shard", "one of two assigned shards claimed", honest, shards=(S1, S2))
    case("implausible_tokens", "9,601 tokens: one more than the capacity allows", _proof(tokens=9_601))
    case("liar_10x", "ten times the tokens the capacity allows", _proof(tokens=96_000))
    # IGNORE: does not fit what the receiver knows now
    case(
        "outside_clock_window",
        "stamped CLOCK_WINDOW_MS + 1 before the receiver's clock",
        _proof(timestamp_ms=NOW - 300_001),
    )
    case(
        "unknown_assignment",
        "the receiver cannot compute the assignment (a future round)",
        honest,
        shards=None,
    )
    case("unknown_capacity", "A announced no capacity", honest, capacity=None)
    case(
        "replayed", "the same proof id is in the seen state", honest, seen=[(NOW - 1_000, _pid(honest), A, 5)]
    )
    case(
        "duplicate_round",
        "another proof of A for round 5 was accepted",
        _proof(nonce=b"\x01" * 16),
        seen=[(NOW - 1_000, _pid(honest), A, 5)],
    )
    full = [
        (NOW - 3_000_000 + i, hashlib.sha256(b"r%d" % i).digest(), A, 100 + i)
        for i in range(MAX_PROOFS_PER_WINDOW)
    ]
    case(
        "rate_limited",
        f"A already has MAX_PROOFS_PER_WINDOW ({MAX_PROOFS_PER_WINDOW}) proofs in the hour",
        honest,
        seen=full,
    )
    return cases


def _settlement_json(s: Settlement) -> dict[str, JSON]:
    return {
        "outcomes": [
            [o.proof_id.hex(), o.outcome.value, o.stake_for, o.stake_against, o.eligible_stake]
            for o in s.outcomes
        ],
        "dissenters": [[v.hex(), p.hex()] for v, p in s.dissenters],
        "equivocators": [[v.hex(), p.hex()] for v, p in s.equivocators],
    }


P1, P2, P3 = (hashlib.sha256(b"proof %d" % i).digest() for i in range(3))
STAKES = [(A, 40), (B, 30), (C, 20), (D, 10)]
PROOFS = [(P1, E), (P2, E), (P3, A)]


def _vote(
    key: Secp256k1Signer, proof: bytes, valid: bool, round_: int = 5, ts: int = NOW, score: int = 250_000
) -> bytes:
    return make_vote(key, proof, valid, score=score, round_=round_, timestamp_ms=ts)


def _tally_cases() -> list[Case]:
    cases: list[Case] = []

    def case(name: str, desc: str, votes: list[bytes]) -> None:
        inp: dict[str, JSON] = {
            "round": 5,
            "now_ms": NOW,
            "validators": [[v.hex(), s] for v, s in STAKES],
            "proofs": [[p.hex(), w.hex()] for p, w in PROOFS],
            "votes": [v.hex() for v in votes],
        }
        out = answer("tally", inp)
        valid = all(r == "ACCEPT" for r, _ in out["verdicts"])
        cases.append(Case(NAME, "tally", name, desc, valid, inp, {}, out))

    case("no_votes", "no votes: every proof unsettled", [])
    case(
        "accepted",
        "A (40) and B (30) accept P1: 70 of 100 ≥ 2/3; D (10) rejects and is a dissenter",
        [_vote(KA, P1, True), _vote(KB, P1, True), _vote(KD, P1, False)],
    )
    case(
        "below_two_thirds",
        "A (40) and C (20) reject P2: 60 of 100 < 2/3, unsettled, no dissenter",
        [_vote(KA, P2, False), _vote(KC, P2, False), _vote(KB, P2, True)],
    )
    case(
        "exactly_two_thirds",
        "own stake left out: B (30) and D (10) reject A's P3, 40 of 60 eligible = 2/3",
        [_vote(KB, P3, False), _vote(KD, P3, False), _vote(KC, P3, True)],
    )
    case(
        "rejected_and_accepted",
        "P1 accepted by A, B, C; P2 rejected by A, B; C voted for P2 and dissents",
        [
            _vote(KA, P1, True),
            _vote(KB, P1, True),
            _vote(KC, P1, True),
            _vote(KA, P2, False),
            _vote(KB, P2, False),
            _vote(KC, P2, True),
        ],
    )
    case(
        "duplicate_vote",
        "B votes for P1 twice (another score): the second is ignored",
        [_vote(KB, P1, True), _vote(KB, P1, True, score=1)],
    )
    case(
        "equivocation",
        "A votes both ways on P1: counted for neither side, listed as an equivocator",
        [_vote(KA, P1, True), _vote(KB, P1, True), _vote(KA, P1, False), _vote(KC, P1, True)],
    )
    case("self_vote", "A votes on its own proof P3 (REJECT)", [_vote(KA, P3, True)])
    case("not_a_validator", "E has no stake", [_vote(KE, P1, True)])
    case("unknown_proof", "a vote on a proof that is not in the round", [_vote(KA, P1[::-1], True)])
    case("wrong_round", "a vote for round 6", [_vote(KA, P1, True, round_=6)])
    case(
        "outside_clock_window",
        "stamped CLOCK_WINDOW_MS + 1 after the receiver's clock",
        [_vote(KA, P1, True, ts=NOW + 300_001)],
    )
    bad_sig = topics_pb2.ValidationVote()
    bad_sig.ParseFromString(_vote(KB, P1, True))
    bad_sig.valid = False
    case(
        "malformed_votes",
        "undecodable, a short proof id, a flipped verdict (bad signature) beside one good vote",
        [b"\x0a\xff", _vote(KA, P1[:31], True), bad_sig.SerializeToString(), _vote(KC, P1, True)],
    )
    return cases


def _ledger_state() -> LedgerState:
    """A 600, B 300, C 100 staked (validators), D 50 staked (below the 100-credit minimum), E none."""
    return genesis(
        LedgerParams(min_validator_stake=100 * CREDIT),
        [(A, 0, 600 * CREDIT), (B, 0, 300 * CREDIT), (C, 0, 100 * CREDIT), (D, 0, 50 * CREDIT), (E, 0, 0)],
    )


def _settle_cases() -> list[Case]:
    cases: list[Case] = []
    pre = _ledger_state()

    def case(name: str, desc: str, proofs: list[tuple[bytes, bytes, int]], votes: list[bytes]) -> None:
        inp: dict[str, JSON] = {
            "now_ms": NOW,
            "proofs": [[p.hex(), w.hex(), t] for p, w, t in proofs],
            "votes": [v.hex() for v in votes],
            "pre_root": pre.root().hex(),
        }
        out = answer("settle", {**inp, "pre": encode_state(pre).hex()})
        valid = all(r == "ACCEPT" for r, _ in out["verdicts"])
        cases.append(Case(NAME, "settle", name, desc, valid, inp, {"pre": encode_state(pre)}, out))

    def v(key: Secp256k1Signer, proof: bytes, valid: bool) -> bytes:
        return _vote(key, proof, valid, round_=0)

    case(
        "nothing_settles",
        "one vote of 100 of 1,000: no operation, only the round advances",
        [(P1, E, 6_000)],
        [v(KC, P1, True)],
    )
    case(
        "reward_and_fees",
        "E's 6,000 tokens accepted by A and B: 6 credits, 10% of them paid to A and B by stake",
        [(P1, E, 6_000)],
        [v(KA, P1, True), v(KB, P1, True)],
    )
    case(
        "stake_bonus",
        "C's proof (100 staked: +5% bonus) accepted by A and B; D has too little stake to vote",
        [(P2, C, 8_000)],
        [v(KA, P2, True), v(KB, P2, True), v(KD, P2, True)],
    )
    case(
        "rejected_and_slashed",
        "B's proof rejected by A and C (700 of 700 eligible): 10% of B's stake burned",
        [(P3, B, 9_000)],
        [v(KA, P3, False), v(KC, P3, False)],
    )
    case(
        "dissent_and_equivocation",
        "P1 accepted by A and B with C against (reputation); P3 of B rejected by A with C for it "
        "(C slashed 5%); C votes both ways on D's P2 (C slashed 20%)",
        [(P1, E, 6_000), (P3, B, 1_000), (P2, D, 2_000)],
        [
            v(KA, P1, True),
            v(KB, P1, True),
            v(KC, P1, False),
            v(KA, P3, False),
            v(KC, P3, True),
            v(KC, P2, True),
            v(KC, P2, False),
        ],
    )
    return cases


def generate() -> list[Case]:
    return _proof_cases() + _tally_cases() + _settle_cases()


def answer(handler: str, inp: Mapping[str, JSON]) -> Mapping[str, JSON]:
    if handler == "proof":
        ctx, seen, now = _context(inp)
        verdict, proof = check_proof(unhex(inp.get("proof"), "proof"), ctx, seen, now)
        return {
            "result": verdict.result.name,
            "reason": verdict.reason,
            "proof_id": None if proof is None else proof.proof_id.hex(),
        }
    if handler == "tally":
        try:
            validators = {unhex(v, "validators"): int(s) for v, s in inp["validators"]}
            proofs = {unhex(p, "proofs"): unhex(w, "proofs") for p, w in inp["proofs"]}
            votes = [unhex(v, "votes") for v in inp["votes"]]
            round_, now = int(inp["round"]), int(inp["now_ms"])
            tally = Tally(round_, validators, proofs)
        except (KeyError, TypeError, ValueError) as exc:
            raise AnswerError(f"bad input: {exc}") from None
        verdicts = [tally.add(v, now) for v in votes]
        return {
            "verdicts": [[v.result.name, v.reason] for v in verdicts],
            **_settlement_json(tally.close()),
        }
    if handler == "settle":
        try:
            state = decode_state(unhex(inp.get("pre"), "pre"))
        except StateDecodeError as exc:
            raise AnswerError(f"pre is not a ledger state: {exc.reason}") from None
        try:
            claimed = [(unhex(p, "proofs"), unhex(w, "proofs"), int(t)) for p, w, t in inp["proofs"]]
            votes = [unhex(x, "votes") for x in inp["votes"]]
            now = int(inp["now_ms"])
        except (KeyError, TypeError, ValueError) as exc:
            raise AnswerError(f"bad input: {exc}") from None
        tally = Tally(state.round, dict(state.validators()), {p: w for p, w, _ in claimed})
        verdicts = [tally.add(x, now) for x in votes]
        ops = settlement_ops(tally.close(), {p: t for p, _, t in claimed}, tally.counted(), state)
        block = encode_round(state.round, ops)
        settled = settle(state, block)
        if isinstance(settled, Verdict):
            raise AnswerError(f"the settlement's round does not settle: {settled.reason}")
        return {
            "verdicts": [[x.result.name, x.reason] for x in verdicts],
            "round": block.hex(),
            "op_verdicts": [[x.result.name, x.reason] for x in settled.verdicts],
            "post_root": settled.state.root().hex(),
        }
    raise AnswerError(f"unknown handler {handler!r}")


RUNNER = Runner(NAME, FILES, generate, answer, exact)
