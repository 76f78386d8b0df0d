"""The Gauntlet on the micro preset: an honest update scores clearly positive; free-riders,
copiers and poisoners score at most 0 or are flagged; a liar's proof is refused by the
plausibility rule.

Scenario: 4 honest nodes train 4 rounds together (16 inner steps of batch 8, no compression);
in round 4 a validator scores updates against the round's model, with the mean of the other
nodes' updates as the control. Scores measured when this test was written (own-window gain,
random-window gain in parentheses): honest +0.103, +0.110, +0.111, +0.152 (gains 0.13-0.15 and
0.11-0.13); zero 0.0; random (honest norm) -0.187; stale (the node's round-3 update) -0.124 (it
makes the loss worse); copy of another node's update -0.011, scaled x1.5 -0.020, +10% noise
-0.010 (gains equal on own and random windows), and each flagged by the copy detector (plain
cosine 1.0, 1.0, 0.995; honest pairs 0.88-0.91 plain, -0.43 to -0.16 centred); sign-flipped
-1.64; x100 -33.1 (and refused by the engine's norm screen). With 8 inner steps, or fewer
rounds, the honest margin is smaller (specs/work.md, "The Gauntlet score").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pytest

from p2pshard.core.gossip.signing import Secp256k1Signer
from p2pshard.core.work import SeenProofs, WorkContext, check_proof, make_proof
from p2pshard.engine.aggregation import RULES, AggregationConfig, aggregate
from p2pshard.engine.compression import CompressionConfig
from p2pshard.engine.diloco import DiLoCoConfig
from p2pshard.engine.engine import TorchEngine
from p2pshard.engine.gauntlet import (
    CopyDetector,
    Gauntlet,
    GauntletConfig,
    GauntletScore,
    aggregation_weights,
    verdict,
)
from p2pshard.engine.genesis import Genesis
from p2pshard.protocols.engine_api import UpdateRejected

PEERS = ["peer-a", "peer-b", "peer-c", "peer-d"]
ROUND = 4
DILOCO = DiLoCoConfig(inner_steps=16, batch_size=8)
F32 = np.ndarray


@dataclass
class Scene:
    validator: TorchEngine
    updates: dict[str, F32]
    stale: F32
    payloads: dict[str, bytes]
    tokens: int


def _engine(genesis: Genesis, peer: str) -> TorchEngine:
    return TorchEngine.create(
        "micro",
        genesis,
        device="cpu",
        diloco=DILOCO,
        compression=CompressionConfig(kind="none"),
        node_salt=peer.encode(),
        eval_batches=2,
    )


@pytest.fixture(scope="module")
def scene(genesis: Genesis) -> Scene:
    engines = {p: _engine(genesis, p) for p in PEERS}
    validator = _engine(genesis, "validator")
    stale = b""
    for r in range(ROUND + 1):
        local = {p: e.train_round(r, genesis.shard_bytes(e.assigned_shard(p, r))) for p, e in engines.items()}
        payloads = {p: u.payload for p, u in local.items()}
        if r == ROUND:
            break
        stale = payloads[PEERS[0]]
        for e in (*engines.values(), validator):
            e.apply_round(r, payloads)
    assert len({e.model_hash() for e in (*engines.values(), validator)}) == 1
    updates = {p: validator.decoded_update(b) for p, b in payloads.items()}
    return Scene(validator, updates, validator.decoded_update(stale), payloads, local[PEERS[0]].tokens)


def _control(scene: Scene, claimed_by: str) -> F32:
    return np.mean([u for p, u in scene.updates.items() if p != claimed_by], axis=0).astype(np.float32)


def _score(scene: Scene, peer: str, update: F32) -> GauntletScore:
    return Gauntlet(scene.validator, seed=1).score(peer, ROUND, update, _control(scene, peer))


def test_honest_updates_score_clearly_positive(scene: Scene) -> None:
    for peer in PEERS:
        s = _score(scene, peer, scene.updates[peer])
        assert s.own_gain > 0 and s.random_gain > 0
        assert s.score > 0.05, (peer, s)
        assert verdict(s, None, GauntletConfig()) == (True, "ok")


def test_the_gauntlet_recomputes_the_windows_a_node_trained_on(scene: Scene) -> None:
    """An honest update scored as another round's (other windows) loses its advantage."""
    honest = _score(scene, PEERS[1], scene.updates[PEERS[1]])
    g = Gauntlet(scene.validator, seed=1)
    elsewhere = g.score(PEERS[1], ROUND + 7, scene.updates[PEERS[1]], _control(scene, PEERS[1]))
    assert elsewhere.score < honest.score / 2


def test_free_riders_score_at_most_zero(scene: Scene) -> None:
    honest = scene.updates[PEERS[0]]
    rng = np.random.default_rng(3)
    scale = float(np.linalg.norm(honest)) / np.sqrt(honest.size)
    cases = {
        "zero": np.zeros_like(honest),
        "random": (rng.standard_normal(honest.size) * scale).astype(np.float32),
        "stale": scene.stale,
    }
    for name, update in cases.items():
        s = _score(scene, PEERS[0], update)
        assert s.score <= 0.0, (name, s)
        assert not verdict(s, None, GauntletConfig())[0], name


def test_poisoners_make_the_loss_worse(scene: Scene) -> None:
    honest = scene.updates[PEERS[0]]
    for name, update in {"sign_flipped": -honest, "times_100": honest * np.float32(100)}.items():
        s = _score(scene, PEERS[0], update)
        assert s.own_gain < 0 and s.score < 0, (name, s)
        assert verdict(s, None, GauntletConfig()) == (False, "no_improvement")
    with pytest.raises(UpdateRejected):  # and the engine's screen refuses the x100 payload outright
        scene.validator.check_update(_payload(scene, honest * np.float32(100)))


def _payload(scene: Scene, vector: F32) -> bytes:
    from p2pshard.core.wire.tensor import EncodeOptions, encode_tensors

    return encode_tensors({"update": vector.astype(np.float32)}, EncodeOptions())


def test_copiers_are_flagged_and_gain_nothing_on_their_own_windows(scene: Scene) -> None:
    original = scene.updates[PEERS[0]]
    rng = np.random.default_rng(4)
    noise = rng.standard_normal(original.size).astype(np.float32)
    noise *= np.float32(0.1 * np.linalg.norm(original) / np.linalg.norm(noise))
    copies = {
        "identical": original.copy(),
        "scaled": original * np.float32(1.5),
        "noised": original + noise,
    }
    for name, copy in copies.items():
        # the copier announces after the original, under its own key
        order = [(p, scene.updates[p]) for p in PEERS] + [("copier", copy)]
        flags = CopyDetector().judge_round(ROUND, order)
        assert set(flags) == {"copier"}, (name, flags)
        assert flags["copier"].original == PEERS[0] and flags["copier"].kind == "copy"
        # scored as the copier's own work (its windows: those of peer-b, say), it shows no advantage
        s = _score(scene, PEERS[1], copy)
        assert s.score < 0.01, (name, s)
        assert verdict(s, flags["copier"], GauntletConfig()) == (False, "copy")


def test_honest_updates_are_not_flagged_and_a_stale_one_is() -> None:
    rng = np.random.default_rng(5)
    common = rng.standard_normal(4096).astype(np.float32)
    honest = {p: common + rng.standard_normal(4096).astype(np.float32) * 0.2 for p in PEERS}
    detector = CopyDetector()
    assert detector.judge_round(0, list(honest.items())) == {}  # plain cosines ~0.96, centred ~0
    fresh = {p: common + rng.standard_normal(4096).astype(np.float32) * 0.2 for p in PEERS}
    fresh[PEERS[2]] = honest[PEERS[2]]  # re-announced from the round before
    flags = detector.judge_round(1, list(fresh.items()))
    assert set(flags) == {PEERS[2]} and flags[PEERS[2]].kind == "stale"
    assert flags[PEERS[2]].round == 0


def test_zero_and_negated_updates_in_the_round_do_not_make_honest_ones_look_alike() -> None:
    rng = np.random.default_rng(6)
    common = rng.standard_normal(4096).astype(np.float32)
    honest = [(p, common + rng.standard_normal(4096).astype(np.float32) * 0.3) for p in PEERS]
    noise = rng.standard_normal(4096).astype(np.float32) * 0.05
    round_ = [
        *honest,
        ("freerider", np.zeros(4096, np.float32)),
        ("poisoner", -honest[2][1]),
        ("copier", honest[0][1] * np.float32(1.3) + noise),
    ]
    flags = CopyDetector().judge_round(0, round_)
    assert not set(flags) & set(PEERS)
    assert flags["copier"].original == PEERS[0]
    # (the negated update, centred, resembles the zero one: flagged too, which refuses it anyway)


def test_a_liar_claiming_inflated_tokens_is_refused(scene: Scene) -> None:
    key = Secp256k1Signer(b"\x05" * 32)
    round_ms = 60_000
    capacity = 1.0 * scene.tokens / (round_ms / 1000)  # what the node announced: its honest rate
    shard = bytes.fromhex(scene.validator.assigned_shard(PEERS[0], ROUND))
    ctx = WorkContext(round_ms, lambda _w, _r: (shard,), lambda _w: capacity)
    now = 1_700_000_000_000

    def proof(tokens: int) -> bytes:
        return make_proof(
            key,
            round_=ROUND,
            model_hash=scene.validator.model_hash(),
            tokens=tokens,
            batches=DILOCO.inner_steps,
            layers=(0, 4),
            data_shards=(shard,),
            update_hash=hashlib.sha256(scene.payloads[PEERS[0]]).digest(),
            timestamp_ms=now,
            nonce=tokens.to_bytes(16, "big"),
        )

    honest, _ = check_proof(proof(scene.tokens), ctx, SeenProofs(), now)
    liar, _ = check_proof(proof(10 * scene.tokens), ctx, SeenProofs(), now)
    assert honest.accepted
    assert (liar.result.name, liar.reason) == ("REJECT", "implausible_tokens")


def test_the_parameter_table_of_the_spec_is_the_code_default() -> None:
    from dataclasses import asdict
    from pathlib import Path

    from p2pshard.conformance.spec_tables import all_tables, parameters

    specs = Path(__file__).resolve().parents[2] / "specs"
    from p2pshard.core.work import WorkRewards

    defaults = {k: v for k, v in asdict(GauntletConfig()).items() if k != "max_per_round"}
    defaults.update(asdict(WorkRewards()))
    assert parameters(all_tables(specs), "work.md") == defaults


# ---------------------------------------------------------------- aggregation weighted by verdicts


@pytest.mark.parametrize("rule", sorted(RULES))
def test_weights_of_one_give_the_unweighted_bits_and_zero_drops_a_row(rule: str) -> None:
    rng = np.random.default_rng(7)
    rows = rng.standard_normal((5, 64)).astype(np.float32)
    rows[2] *= 100  # a poisoner
    cfg = AggregationConfig(rule=rule, f=1)
    plain = aggregate(rows, cfg)
    ones = aggregate(rows, cfg, [1.0] * 5)
    assert ones.vector.tobytes() == plain.vector.tobytes() and ones.selected == plain.selected
    gated = aggregate(rows, cfg, [1.0, 1.0, 0.0, 1.0, 1.0])
    without = aggregate(np.delete(rows, 2, axis=0), cfg)
    assert gated.vector.tobytes() == without.vector.tobytes()
    assert 2 not in gated.selected
    with pytest.raises(ValueError):
        aggregate(rows, cfg, [0.0] * 5)


def test_the_mean_is_weighted() -> None:
    rows = np.array([[1.0, 2.0], [5.0, 10.0]], dtype=np.float32)
    out = aggregate(rows, AggregationConfig(rule="mean"), [1.0, 3.0])
    assert out.vector.tolist() == [4.0, 8.0]


@pytest.mark.parametrize("compression", ["none", "sparseloco"])
def test_a_zero_weighted_update_does_not_move_the_model(genesis: Genesis, compression: str) -> None:
    from p2pshard.engine.compression import SPARSELOCO

    comp = SPARSELOCO if compression == "sparseloco" else CompressionConfig(kind="none")
    diloco = DiLoCoConfig.for_preset("micro", sparse=comp.sparseloco, inner_steps=2, batch_size=4)

    def engine(peer: str) -> TorchEngine:
        return TorchEngine.create(
            "micro", genesis, device="cpu", diloco=diloco, compression=comp, node_salt=peer.encode()
        )

    workers = {p: engine(p) for p in PEERS[:3]}
    payloads = {
        p: e.train_round(0, genesis.shard_bytes(e.assigned_shard(p, 0))).payload for p, e in workers.items()
    }
    weights = aggregation_weights({PEERS[0]: True, PEERS[1]: False, PEERS[2]: None})
    gated, without, plain = engine("v1"), engine("v2"), engine("v3")
    out = gated.apply_round(0, payloads, weights)
    ref = without.apply_round(0, {p: b for p, b in payloads.items() if p != PEERS[1]})
    assert out.model_hash == ref.model_hash
    assert out.accepted == tuple(PEERS[:3]) and PEERS[1] not in out.selected and out.rejected == {}
    assert plain.apply_round(0, payloads).model_hash != ref.model_hash
