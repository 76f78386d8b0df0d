"""TorchEngine end to end, without a network: rounds, determinism, screening, checkpoints."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from p2pshard.core.wire.tensor import EncodeOptions, Encoding, decode_tensors, encode_tensors
from p2pshard.engine.aggregation import AggregationConfig
from p2pshard.engine.checkpoint import CheckpointError, CheckpointState, HotSnapshots
from p2pshard.engine.compression import SPARSELOCO, CompressionConfig
from p2pshard.engine.diloco import DiLoCoConfig
from p2pshard.engine.engine import TorchEngine
from p2pshard.engine.genesis import Genesis
from p2pshard.protocols.engine_api import Engine, UpdateRejected

from .conftest import EngineFactory

# SparseLoCo with its outer step, on the micro model with the fixture's short rounds.
SPARSE_MICRO = {
    "compression": SPARSELOCO,
    "diloco": DiLoCoConfig.for_preset("micro", sparse=True, inner_steps=4, batch_size=8),
}


def run_round(engines: dict[str, TorchEngine], genesis: Genesis, r: int) -> set[bytes]:
    updates = {
        peer: e.train_round(r, genesis.shard_bytes(e.assigned_shard(peer, r))) for peer, e in engines.items()
    }
    payloads = {peer: u.payload for peer, u in updates.items()}
    return {e.apply_round(r, payloads).model_hash for e in engines.values()}


def test_engine_satisfies_the_protocol(make_engine: EngineFactory) -> None:
    assert isinstance(make_engine(), Engine)


def test_independent_engines_agree_bit_for_bit(make_engine: EngineFactory, genesis: Genesis) -> None:
    engines = {
        "peer-a": make_engine(node_salt=b"a", compression=CompressionConfig(kind="topk")),
        "peer-b": make_engine(node_salt=b"b", compression=CompressionConfig(kind="topk")),
    }
    assert len({e.model_hash() for e in engines.values()}) == 1
    start = engines["peer-a"].model_hash()
    for r in range(2):
        hashes = run_round(engines, genesis, r)
        assert len(hashes) == 1
    assert hashes != {start}
    assert all(e.round == 2 for e in engines.values())


def test_diloco_loss_falls(make_engine: EngineFactory, genesis: Genesis) -> None:
    diloco = DiLoCoConfig(inner_steps=12, batch_size=8, inner_lr=3e-3)
    engines = {p: make_engine(node_salt=p.encode(), diloco=diloco) for p in ("a", "b")}
    before = engines["a"].evaluate()
    for r in range(4):
        run_round(engines, genesis, r)
    after = engines["a"].evaluate()
    assert after < before - 0.8, (before, after)


def test_bad_updates_are_rejected_and_the_round_goes_on(make_engine: EngineFactory, genesis: Genesis) -> None:
    e = make_engine(aggregation=AggregationConfig(rule="median"))
    good = e.train_round(0, genesis.shard_bytes(e.assigned_shard("me", 0)))
    n = e.n_params
    bad = {
        "nan": encode_tensors({"update": np.full(n, np.nan, np.float32)}, EncodeOptions()),
        "huge": encode_tensors({"update": np.full(n, 1e3, np.float32)}, EncodeOptions()),
        "wrong": encode_tensors({"update": np.zeros(n - 1, np.float32)}, EncodeOptions()),
        "named": encode_tensors({"weights": np.zeros(n, np.float32)}, EncodeOptions()),
        "junk": b"P2T1\x01\x10\x00\x00\x00rubbish",
    }
    reasons = {}
    for who, payload in bad.items():
        with pytest.raises(UpdateRejected) as info:
            e.check_update(payload)
        reasons[who] = info.value.reason
    assert reasons == {
        "nan": "non_finite",
        "huge": "norm_too_large",
        "wrong": "wrong_shape",
        "named": "missing_tensor",
        "junk": "decode_bad_lz4",
    }
    e.check_update(good.payload)
    outcome = e.apply_round(0, {"me": good.payload, **bad})
    assert outcome.accepted == ("me",)
    assert outcome.rejected == reasons
    assert outcome.model_hash != good.base_model_hash


def test_sparse_updates_are_screened_on_their_kept_values_and_summed(
    make_engine: EngineFactory, genesis: Genesis
) -> None:
    e = make_engine(**SPARSE_MICRO)
    n = e.n_params
    opts = SPARSELOCO.encode_options()
    rng = np.random.default_rng(1)
    noise = rng.standard_normal(n).astype(np.float32) * np.float32(1e-3)
    inf = noise.copy()
    inf[7] = np.inf  # the largest magnitude: kept, and sent as it is in float32 values
    bad = {
        "inf": encode_tensors({"update": inf}, replace(opts, encoding=Encoding.FLOAT32)),
        "huge": encode_tensors({"update": noise * np.float32(1e6)}, opts),
        "wrong": encode_tensors({"update": noise[:-1]}, opts),
    }
    reasons = {}
    for who, payload in bad.items():
        with pytest.raises(UpdateRejected) as info:
            e.check_update(payload)
        reasons[who] = info.value.reason
    assert reasons == {"inf": "non_finite", "huge": "norm_too_large", "wrong": "wrong_shape"}
    # The sum of two sparse contributions and a dense one, as a float32 sum from zero in contributor
    # order: what the outer step (lr 1, no momentum) subtracts from the weights.
    payloads = {
        "a": encode_tensors({"update": noise}, opts),
        "b": encode_tensors({"update": -2 * noise}, opts),
        "c": encode_tensors({"update": noise / 4}, EncodeOptions()),
    }
    rows = [decode_tensors(payloads[p])["update"] for p in sorted(payloads)]
    expected = np.zeros(n, np.float32)
    for row in rows:
        expected += row
    before = np.concatenate([e.master[k].reshape(-1) for k in e.names])
    outcome = e.apply_round(0, {**payloads, **bad})
    assert outcome.accepted == ("a", "b", "c") and outcome.rejected == reasons
    after = np.concatenate([e.master[k].reshape(-1) for k in e.names])
    np.testing.assert_array_equal(after, before - expected)


def test_train_round_refuses_foreign_shards_and_old_rounds(
    make_engine: EngineFactory, genesis: Genesis
) -> None:
    e = make_engine()
    with pytest.raises(ValueError, match="not a training shard"):
        e.train_round(0, b"some text that is not in the manifest" * 10)
    with pytest.raises(ValueError, match="not a training shard"):
        e.train_round(0, genesis.shard_bytes(genesis.manifest.eval_shards[0]))
    e.apply_round(4, {})
    assert e.round == 5
    with pytest.raises(ValueError, match="already applied"):
        e.train_round(3, genesis.shard_bytes(genesis.manifest.train_shards[0]))


def test_checkpoint_restores_everything(make_engine: EngineFactory, genesis: Genesis, tmp_path: Path) -> None:
    cfg = {"compression": CompressionConfig(kind="topk"), "node_salt": b"x"}
    a = make_engine(**cfg)
    run_round({"a": a}, genesis, 0)
    path = tmp_path / "ckpt.safetensors"
    a.save_checkpoint(path)
    b = make_engine(**cfg)
    b.load_checkpoint(path)
    assert (b.round, b.model_hash()) == (a.round, a.model_hash())
    # Same state, same data: the next round is identical too (inner AdamW, momentum, residual).
    assert run_round({"a": a}, genesis, 1) == run_round({"a": b}, genesis, 1)
    c = TorchEngine.from_checkpoint_bytes(a.checkpoint_bytes(), genesis, a.cfg)
    assert c.model_hash() == a.model_hash() and c.round == 2


def test_checkpoint_verification(make_engine: EngineFactory) -> None:
    e = make_engine()
    state = CheckpointState.from_bytes(e.checkpoint_bytes())
    model = {n: a.copy() for n, a in state.groups["model"].items()}
    model[e.names[0]].flat[0] += 1.0  # one weight changed, the stated hash kept
    tampered = CheckpointState({**state.groups, "model": model}, state.meta).to_bytes()
    with pytest.raises(CheckpointError, match="model_hash_mismatch"):
        e.load_checkpoint_bytes(tampered)
    wrong_net = CheckpointState(state.groups, {**state.meta, "manifest_digest": "00" * 32})
    with pytest.raises(CheckpointError, match="manifest_mismatch"):
        e.load_checkpoint_bytes(wrong_net.to_bytes())
    for junk in (b"", b"\xff" * 8 + b"{}", b"\x02\x00\x00\x00\x00\x00\x00\x00{}"):
        with pytest.raises(CheckpointError):
            e.load_checkpoint_bytes(junk)
    other = make_engine(seed=1)
    e.load_checkpoint_bytes(other.checkpoint_bytes())  # a valid checkpoint replaces the state
    assert e.model_hash() == other.model_hash()


def test_a_checkpoint_with_a_bad_model_config_is_a_checkpoint_error(
    make_engine: EngineFactory, genesis: Genesis
) -> None:
    """Found by the fuzzers: unknown model_config keys or a missing seed escaped as TypeError or
    KeyError from from_checkpoint_bytes."""
    e = make_engine()
    state = CheckpointState.from_bytes(e.checkpoint_bytes())
    for meta in (
        {**state.meta, "model_config": {"x": 1}},
        {k: v for k, v in state.meta.items() if k != "seed"},
    ):
        with pytest.raises(CheckpointError, match="bad_model_config"):
            TorchEngine.from_checkpoint_bytes(CheckpointState(state.groups, meta).to_bytes(), genesis, e.cfg)


def test_hot_snapshots_keep_the_newest(make_engine: EngineFactory, tmp_path: Path) -> None:
    e = make_engine()
    snaps = HotSnapshots(tmp_path / "snaps", keep=2)
    for r in (1, 2, 3):
        snaps.write(r, e.checkpoint_bytes())
    assert [p.name for p in snaps.all()] == [
        "snapshot-00000002.safetensors",
        "snapshot-00000003.safetensors",
    ]
    latest = snaps.latest()
    assert latest is not None
    e.load_checkpoint(latest)
    assert not list((tmp_path / "snaps").glob(".*tmp*"))


def test_compression_kinds_cut_bytes(make_engine: EngineFactory, genesis: Genesis) -> None:
    sizes = {}
    for kind in ("none", "fp16", "bf16", "int8", "int4", "topk", "lowrank"):
        e = make_engine(compression=CompressionConfig(kind=kind, rank=4))  # micro: 48-wide matrices
        u = e.train_round(0, genesis.shard_bytes(genesis.manifest.train_shards[0]))
        e.check_update(u.payload)
        sizes[kind] = u.size
        assert e.stats().bytes_sent == u.size and e.stats().dense_bytes_equivalent == u.dense_bytes
    assert sizes["none"] > 0.95 * e.n_params * 4
    assert sizes["fp16"] < 0.55 * sizes["none"] and sizes["bf16"] < 0.55 * sizes["none"]
    assert sizes["int8"] < 0.3 * sizes["none"]
    assert sizes["int4"] < 0.17 * sizes["none"]
    assert sizes["topk"] < sizes["none"] / 50
    assert sizes["lowrank"] < sizes["none"] / 10  # micro's matrices are only 48 wide


def test_low_rank_engines_agree_and_restore_exactly(
    make_engine: EngineFactory, genesis: Genesis, tmp_path: Path
) -> None:
    lowrank = CompressionConfig(kind="lowrank", rank=2)
    engines = {p: make_engine(node_salt=p.encode(), compression=lowrank) for p in ("a", "b")}
    hashes = run_round(engines, genesis, 0)
    assert len(hashes) == 1
    a = engines["a"]
    assert a.compressor.subspace and a.compressor.residual
    restored = make_engine(node_salt=b"a", compression=lowrank)
    restored.load_checkpoint_bytes(a.checkpoint_bytes())
    # Residual and warm-start subspaces came back: the next round is bit-identical.
    assert run_round({"a": a}, genesis, 1) == run_round({"a": restored}, genesis, 1)


def test_flat_and_per_tensor_payloads_are_both_accepted(make_engine: EngineFactory, genesis: Genesis) -> None:
    flat = make_engine(node_salt=b"f", compression=CompressionConfig(kind="int8"))
    per_tensor = make_engine(node_salt=b"p", compression=CompressionConfig(kind="lowrank", rank=2))
    engines = {"f": flat, "p": per_tensor}
    assert len(run_round(engines, genesis, 0)) == 1
    out = flat.apply_round(
        1, {"p": per_tensor.train_round(1, genesis.shard_bytes(per_tensor.assigned_shard("p", 1))).payload}
    )
    assert out.accepted == ("p",)
    # A per-tensor payload with a wrong shape is screened out like a flat one.
    bad = {
        n: np.zeros(2, np.float32) if i == 0 else np.zeros(s, np.float32)
        for i, (n, s) in enumerate(sorted(flat.shapes.items()))
    }
    with pytest.raises(UpdateRejected, match="wrong_shape"):
        flat.check_update(encode_tensors(bad, EncodeOptions()))


def test_restore_norm_lengthens_cancelling_averages_within_sqrt_n() -> None:
    from p2pshard.engine.diloco import restore_norm

    rows = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    mean = rows.mean(axis=0)
    out, factor = restore_norm(mean, rows)
    assert 1.0 <= factor <= 2.0
    np.testing.assert_allclose(
        np.linalg.norm(out), min(np.median(np.linalg.norm(rows, axis=1)), 2 * np.linalg.norm(mean)), rtol=1e-6
    )
    same = np.ones((3, 4), np.float32)
    _, f = restore_norm(same.mean(axis=0), same)
    assert f == 1.0  # agreeing rows: no change


def test_sparseloco_engines_agree_send_a_hundredth_and_restore_their_residual(
    make_engine: EngineFactory, genesis: Genesis
) -> None:
    engines = {p: make_engine(node_salt=p.encode(), **SPARSE_MICRO) for p in ("a", "b")}
    assert len(run_round(engines, genesis, 0)) == 1
    a = engines["a"]
    stats = a.stats()
    assert stats.dense_bytes_equivalent == 4 * a.n_params
    assert stats.dense_bytes_equivalent / stats.bytes_sent > 90  # micro: the short last chunk keeps 88 of 832
    restored = make_engine(node_salt=b"a", **SPARSE_MICRO)
    restored.load_checkpoint_bytes(a.checkpoint_bytes())
    np.testing.assert_array_equal(restored.compressor.residual["update"], a.compressor.residual["update"])
    assert run_round({"a": a}, genesis, 1) == run_round({"a": restored}, genesis, 1)


def test_outer_sum_steps_on_n_times_the_aggregate(make_engine: EngineFactory, genesis: Genesis) -> None:
    # Two contributors: lr 1 on the sum is lr 2 on the mean, bit for bit (x2 is exact in float32).
    summed = DiLoCoConfig(inner_steps=4, batch_size=8, outer_lr=1.0, outer_momentum=0.0, outer_sum=True)
    doubled = DiLoCoConfig(inner_steps=4, batch_size=8, outer_lr=2.0, outer_momentum=0.0)
    hashes = []
    for d in (summed, doubled):
        engines = {p: make_engine(node_salt=p.encode(), diloco=d, compression=SPARSELOCO) for p in ("a", "b")}
        hashes.append(run_round(engines, genesis, 0))
    assert hashes[0] == hashes[1] and len(hashes[0]) == 1
    mean = replace(doubled, outer_lr=1.0)  # the mean halves what one node alone sent
    plain = {p: make_engine(node_salt=p.encode(), diloco=mean, compression=SPARSELOCO) for p in ("a", "b")}
    assert run_round(plain, genesis, 0) != hashes[0]


def test_network_id_covers_the_manifest_and_every_training_rule(genesis: Genesis, tmp_path: Path) -> None:
    from p2pshard.engine.engine import EngineConfig, network_id
    from p2pshard.engine.genesis import build_genesis

    base = EngineConfig()
    assert network_id(genesis.manifest, base) == network_id(genesis.manifest, EngineConfig())
    # Rules that change the model every node computes give a different network ...
    changed = [
        replace(base, compression=CompressionConfig(kind="int8")),
        replace(base, aggregation=AggregationConfig(rule="median")),
        replace(base, diloco=replace(base.diloco, outer_lr=0.5)),
        replace(base, seed=1),
        replace(base, norm_bound_factor=4.0),
    ]
    ids = {network_id(genesis.manifest, c) for c in changed}
    assert len(ids) == len(changed) and network_id(genesis.manifest, base) not in ids
    # ... node-local choices do not.
    local = replace(base, device="meta", node_salt=b"other", eval_batches=1)
    assert network_id(genesis.manifest, local) == network_id(genesis.manifest, base)
    (tmp_path / "corpus.txt").write_text("other words " * 2000)
    other = build_genesis([tmp_path / "corpus.txt"], name="other", shard_size=1024).manifest
    assert network_id(other, base) != network_id(genesis.manifest, base)


def test_default_engine_is_sparseloco_with_its_outer_step() -> None:
    from p2pshard.engine.diloco import SPARSE_OUTER

    e = TorchEngine.create("micro", device="cpu")
    assert e.cfg.compression == SPARSELOCO
    d = e.cfg.diloco
    assert (d.outer_lr, d.outer_momentum, d.outer_sum) == (*SPARSE_OUTER, True)
    # Another kind keeps the preset's own outer step.
    dense = TorchEngine.create("micro", device="cpu", compression=CompressionConfig(kind="none"))
    assert not dense.cfg.diloco.outer_sum and dense.network_id != e.network_id


def test_the_outer_step_in_place_gives_the_formulas_bits_and_the_norm_is_blockwise() -> None:
    """OuterNesterov.step writes into kept buffers; it must give exactly the bits of the formula
    m <- mu m + g; p <- p - lr (g + mu m) computed one float32 operation at a time."""
    from p2pshard.engine.diloco import OuterNesterov
    from p2pshard.engine.engine import l2_norm

    rng = np.random.default_rng(3)
    n = 3 * (1 << 20) + 17  # several norm blocks and a short tail
    for mu in (0.0, 0.9):
        outer = OuterNesterov(0.7, mu, {"w": (n,)})
        params = {"w": rng.standard_normal(n).astype(np.float32)}
        want, m = params["w"].copy(), np.zeros(n, np.float32)
        for _ in range(3):
            g = rng.standard_normal(n).astype(np.float32)
            outer.step(params, {"w": g})
            m = np.add(np.multiply(np.float32(mu), m), g, dtype=np.float32)
            d = np.add(g, np.multiply(np.float32(mu), m), dtype=np.float32)
            want = np.subtract(want, np.multiply(np.float32(0.7), d), dtype=np.float32)
        assert np.array_equal(params["w"].view(np.uint32), want.view(np.uint32))
    v = rng.standard_normal(n).astype(np.float32)
    assert abs(l2_norm(v) - float(np.linalg.norm(v.astype(np.float64)))) < 1e-9 * l2_norm(v)
