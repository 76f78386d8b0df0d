"""Proof of Neural Work as sans-IO rules (specs/work.md): work proofs and their acceptance
(signature, clock window, genesis shard assignment, plausibility, replay, rate), the seen state
that survives a restart, and the validators' votes with their 2/3-of-stake tally. No I/O, no
clock (``now_ms`` is an argument), no torch; the Gauntlet score a validator votes with is
computed by the engine (:mod:`p2pshard.engine.gauntlet`)."""

from p2pshard.core.work.proof import WorkProof, decode_proof, make_proof, proof_id_of
from p2pshard.core.work.rules import WorkContext, check_proof, judge_proof, max_plausible_tokens
from p2pshard.core.work.seen import SeenDecodeError, SeenEntry, SeenProofs
from p2pshard.core.work.settle import WorkRewards, reward_for, settlement_ops
from p2pshard.core.work.votes import (
    Outcome,
    ProofOutcome,
    Settlement,
    Tally,
    Vote,
    decode_vote,
    make_vote,
    tally_votes,
)

__all__ = [
    "Outcome",
    "ProofOutcome",
    "SeenDecodeError",
    "SeenEntry",
    "SeenProofs",
    "Settlement",
    "Tally",
    "Vote",
    "WorkContext",
    "WorkProof",
    "WorkRewards",
    "check_proof",
    "decode_proof",
    "decode_vote",
    "judge_proof",
    "make_proof",
    "make_vote",
    "max_plausible_tokens",
    "proof_id_of",
    "reward_for",
    "settlement_ops",
    "tally_votes",
]
