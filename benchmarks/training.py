"""Training benchmark: DiLoCo, compression and Byzantine robustness, side by side in one run.

All nodes are SIMULATED IN THIS ONE PROCESS: each simulated node is a full ``TorchEngine`` with its
own model copy, inner optimizer, error-feedback residual and data shards, and the nodes exchange
the real encoded payload bytes (the same codec, screening and aggregation code a networked node
runs). There is no networking here; averaging over libp2p is benchmarked in averaging.py.

It prints three tables:

(a) 4-node DiLoCo against a single-process baseline trained on the same number of tokens (plain
    AdamW on a 4x larger batch for as many steps as one node takes, same learning rate) -- final
    held-out loss and the ratio; goal: within 5%. The preset's default outer step
    (``DiLoCoConfig.for_preset``); --quick also shows plain parameter averaging.
(b) Bytes each node sends per round (the real encoded payloads: values, scales, offsets, headers)
    against fp32 (4 bytes x parameters), and the final loss of each against dense DiLoCo (the
    preset's default outer step); goal: >= 100x fewer bytes with loss within 2%. Rows: the default
    compression, SparseLoCo (2-bit top-k of a decaying residual, with its own outer step: lr 1 on the
    *sum* of the contributions, no momentum -- the residual is the momentum;
    ``engine.diloco_for``), low rank at rank 32 (the ``lowrank`` kind) and rank 6 (~100x), and, in
    --quick, int8 top-k; all with error feedback.
(c) 1 of 5 nodes attacking (sign-flipped, x100-scaled or NaN updates): final loss with a plain mean
    and with each robust rule, relative to the clean 4-node run; goal: robust rules within 5%. Once
    with fp32 updates and once with the default compression (SparseLoCo).
    The attacker is omniscient: it transforms an honest node's update of the same round.
    A run whose attacker is rejected by screening in every round is exactly the clean run of that
    rule with the attacker's payload dropped; such runs are computed once per rule (each round's
    attacker payload is still built and screened) -- marked "*".

Independent runs go to ``--jobs`` worker processes (default 2, one thread each).

Usage::

    python benchmarks/training.py --quick    # micro model, < 60 s on 2 idle CPU cores
    python benchmarks/training.py            # tiny for (a) and (b), micro for (c); ~8 min (load 5)
    python benchmarks/training.py --preset tiny --inner-steps 30 --rounds 20   # devnet-like (slow)
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from p2pshard.core.wire.tensor import EncodeOptions, decode_tensors, encode_tensors
from p2pshard.engine.aggregation import AggregationConfig
from p2pshard.engine.compression import DEFAULT, SPARSELOCO, SPARSELOCO_12BIT, CompressionConfig, named
from p2pshard.engine.diloco import SPARSE_OUTER, DiLoCoConfig
from p2pshard.engine.engine import EngineConfig, TorchEngine
from p2pshard.engine.genesis import Genesis, default_genesis
from p2pshard.engine.model import PRESETS
from p2pshard.protocols.engine_api import UpdateRejected

RULES = ["mean", "trimmed_mean", "median", "krum", "multi_krum", "centered_clip"]
ATTACKS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sign_flip": lambda u: -u,
    "scaled_x100": lambda u: 100.0 * u,
    "nan": lambda u: np.full_like(u, np.nan),
}


@dataclass(frozen=True)
class Setup:
    preset: str
    inner_steps: int
    rounds: int
    batch: int
    inner_lr: float = 1e-3
    nodes: int = 4
    outer_lr: float | None = None  # None: the preset's default (DiLoCoConfig.for_preset)
    outer_momentum: float | None = None
    device: str = "cpu"
    sparse: bool = False  # the outer step for SparseLoCo (DiLoCoConfig.for_preset(sparse=True))

    def diloco(self) -> DiLoCoConfig:
        over = {"outer_lr": self.outer_lr, "outer_momentum": self.outer_momentum}
        return DiLoCoConfig.for_preset(
            self.preset,
            sparse=self.sparse,
            inner_steps=self.inner_steps,
            batch_size=self.batch,
            inner_lr=self.inner_lr,
            **{k: v for k, v in over.items() if v is not None},
        )


QUICK = Setup("micro", inner_steps=8, rounds=8, batch=8)
# The devnet's preset and round length (H=20; it runs H=30 at batch 16, which costs 3x more here).
# 30 rounds: DiLoCo's gap to the large-batch baseline shrinks as training goes on (measured on tiny,
# outer lr 1 / Nesterov 0.5: 1.28x after 10 rounds, 1.08x after 20, 1.013x after 30).
FULL = Setup("tiny", inner_steps=20, rounds=30, batch=8)
ROBUST_FULL = QUICK  # (c) on micro in the full run: 13 more runs on tiny would take ~15 minutes
DENSE = CompressionConfig(kind="none")
LOWRANK32 = named("lowrank")
LOWRANK = CompressionConfig(kind="lowrank", rank=6)  # >= 100x on tiny
TOPK = CompressionConfig(kind="topk", chunk_size=2048, topk=16, packed_indices=False)
SPARSE = SPARSELOCO


def label_of(c: CompressionConfig) -> str:
    lz4 = " (lz4)" if c.lz4 else ""
    if c.kind == "lowrank":
        return f"rank-{c.rank} int{c.factor_bits} factors + EF{lz4}"
    if c.sparse:
        ef = f"EF {c.error_feedback_decay:g}" if c.error_feedback_decay < 1 else "EF"
        bits = c.encode_options().index_bits
        where = "Elias-Fano" if c.elias_fano else f"{bits}-bit" if bits else "u16"
        return f"top-{c.topk}/{c.chunk_size} int{c.value_bits}, {where} offsets + {ef}{lz4}"
    return f"{c.kind} dense + EF{lz4}"


@dataclass(frozen=True)
class Run:
    final_loss: float
    bytes_per_round: float  # payload bytes one node sends per round
    tokens: int  # tokens trained, all nodes together
    seconds: float
    rejected: dict[str, int] = field(default_factory=dict)  # screening reason -> rounds


def engine_config(s: Setup, compression: CompressionConfig, rule: str, salt: str) -> EngineConfig:
    return EngineConfig(
        model=PRESETS[s.preset],
        seed=0,
        diloco=s.diloco(),
        compression=compression,
        aggregation=AggregationConfig(rule=rule, f=1),
        device=s.device,
        node_salt=salt.encode(),
    )


def simulate(
    s: Setup,
    genesis: Genesis,
    compression: CompressionConfig = DENSE,
    rule: str = "mean",
    attack: str | None = None,
    screened_attacks: tuple[str, ...] = (),
) -> tuple[Run, dict[str, bool]]:
    """``s.nodes`` honest nodes (plus one attacker if ``attack``) train ``s.rounds`` DiLoCo rounds.

    For each of ``screened_attacks`` the attacker's payload is also built every round and screened;
    the returned map says whether screening rejected it in every round (then this run *is* that
    attacked run).
    """
    t0 = time.perf_counter()
    peers = [f"peer-{i}" for i in range(s.nodes)]
    engines = {p: TorchEngine(engine_config(s, compression, rule, p), genesis) for p in peers}
    sent = 0
    tokens = 0
    rejected: dict[str, int] = {}
    always_rejected = dict.fromkeys(screened_attacks, True)
    for r in range(s.rounds):
        payloads: dict[str, bytes] = {}
        for p, e in engines.items():
            u = e.train_round(r, genesis.shard_bytes(e.assigned_shard(p, r)))
            payloads[p] = u.payload
            sent += u.size
            tokens += u.tokens
        if attack is not None or screened_attacks:
            victim = decode_tensors(payloads[peers[0]], engines[peers[0]].limits)
        if attack is not None:
            payloads["peer-x-attacker"] = attacker_payload(victim, attack)
        for other in screened_attacks:
            try:
                engines[peers[0]].check_update(attacker_payload(victim, other))
                always_rejected[other] = False
            except UpdateRejected as exc:
                rejected[exc.reason] = rejected.get(exc.reason, 0) + 1
        outcomes = [e.apply_round(r, payloads) for e in engines.values()]
        assert len({o.model_hash for o in outcomes}) == 1, "simulated nodes disagree"
        for reason in outcomes[0].rejected.values():
            rejected[reason] = rejected.get(reason, 0) + 1
    final = engines[peers[0]].evaluate()
    elapsed = time.perf_counter() - t0
    return Run(final, sent / (s.rounds * s.nodes), tokens, elapsed, rejected), always_rejected


def attacker_payload(victim: dict[str, np.ndarray], attack: str) -> bytes:
    return encode_tensors({n: ATTACKS[attack](v) for n, v in victim.items()}, EncodeOptions())


def baseline(s: Setup, genesis: Genesis) -> Run:
    """One process, the same tokens: AdamW on an ``s.nodes``-times larger batch, same lr.

    A single-node DiLoCo with outer lr 1 and no momentum applies its own pseudo-gradient exactly,
    i.e. it is plain continued AdamW (the inner optimizer state persists across rounds).
    """
    t0 = time.perf_counter()
    single = replace(s, batch=s.batch * s.nodes, outer_lr=1.0, outer_momentum=0.0)
    cfg = engine_config(single, DENSE, "mean", "baseline")
    e = TorchEngine(cfg, genesis)
    tokens = 0
    for r in range(s.rounds):
        u = e.train_round(r, genesis.shard_bytes(e.assigned_shard("baseline", r)))
        tokens += u.tokens
        e.apply_round(r, {"baseline": u.payload})
    return Run(e.evaluate(), 0.0, tokens, time.perf_counter() - t0)


def n_params(s: Setup, genesis: Genesis) -> int:
    return TorchEngine(engine_config(s, DENSE, "mean", "x"), genesis).n_params


def describe(s: Setup, genesis: Genesis) -> str:
    d = s.diloco()
    return (
        f"preset={s.preset} ({n_params(s, genesis):,} params)  nodes={s.nodes}  rounds={s.rounds}  "
        f"H={s.inner_steps}  "
        f"batch={s.batch}x{PRESETS[s.preset].context}  inner lr={s.inner_lr:g}  "
        f"outer lr={d.outer_lr:g} momentum={d.outer_momentum:g}  device={s.device}"
    )


_GENESIS: Genesis | None = None


def _init_worker(genesis: Genesis) -> None:
    global _GENESIS
    torch.set_num_threads(1)
    _GENESIS = genesis


def _job(name: str, *args: Any, **kwargs: Any) -> Any:
    """One independent run in a worker process (``name``: simulate or baseline)."""
    assert _GENESIS is not None
    if name == "baseline":
        return baseline(*args, genesis=_GENESIS)
    return simulate(*args, genesis=_GENESIS, **kwargs)


class Jobs:
    """Independent runs spread over ``n`` processes (each single-threaded); n = 1 runs inline."""

    def __init__(self, n: int, genesis: Genesis) -> None:
        self.genesis = genesis
        self.pool = (
            ProcessPoolExecutor(
                n, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=(genesis,)
            )
            if n > 1
            else None
        )
        if self.pool is None:
            _init_worker(genesis)

    def submit(self, name: str, *args: Any, **kwargs: Any) -> Callable[[], Any]:
        if self.pool is None:
            return lambda: _job(name, *args, **kwargs)
        fut = self.pool.submit(_job, name, *args, **kwargs)
        return fut.result

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def table_a_b(s: Setup, genesis: Genesis, jobs: Jobs, quick: bool) -> tuple[float, float]:
    """Prints (a) and (b); returns the default compression's (reduction, loss / dense loss)."""
    print(describe(s, genesis) + "  (nodes simulated in-process)", flush=True)
    d = s.diloco()
    plain_needed = quick and not (d.outer_momentum == 0 and d.outer_lr == 1)
    sparse = replace(s, sparse=True)
    lr, mu = SPARSE_OUTER
    kinds = [(f"SparseLoCo {label_of(SPARSE)}; outer: sum x {lr:g}, mom. {mu:g}", SPARSE, sparse)]
    if DEFAULT == SPARSE:
        kinds[0] = ("default: " + kinds[0][0], SPARSE, sparse)
    kinds.append((f"SparseLoCo as before: {label_of(SPARSELOCO_12BIT)}", SPARSELOCO_12BIT, sparse))
    kinds += [(label_of(LOWRANK32), LOWRANK32, s), (label_of(LOWRANK), LOWRANK, s)]
    if quick:
        kinds.append((label_of(TOPK), TOPK, s))
    base_f = jobs.submit("baseline", s)
    dense_f = jobs.submit("simulate", s)
    plain_f = jobs.submit("simulate", replace(s, outer_lr=1.0, outer_momentum=0.0)) if plain_needed else None
    comp_f = [(label, jobs.submit("simulate", setup, compression=c)) for label, c, setup in kinds]
    base = base_f()
    dense, _ = dense_f()
    print("\n(a) DiLoCo vs single-process baseline, same tokens         goal: ratio <= 1.05")
    print(f"  {'run':<46}{'tokens':>10}{'final loss':>12}{'ratio':>8}{'time':>8}")
    rows = [
        (f"baseline: AdamW, {s.nodes}x batch", base),
        (f"DiLoCo {s.nodes} nodes, outer lr {d.outer_lr:g} Nesterov {d.outer_momentum:g}", dense),
    ]
    if plain_f is not None:
        rows.append((f"DiLoCo {s.nodes} nodes, outer lr 1, no momentum", plain_f()[0]))
    for label, run in rows:
        print(
            f"  {label:<46}{run.tokens:>10}{run.final_loss:>12.4f}"
            f"{run.final_loss / base.final_loss:>8.3f}{run.seconds:>7.1f}s",
            flush=True,
        )

    fp32 = 4 * n_params(s, genesis)
    print(
        f"\n(b) bytes/node/round vs fp32 (4 x params = {fp32:,}), loss vs dense DiLoCo"
        "     goal: >= 150x, loss <= dense"
    )
    print(f"  {'compression':<72}{'bytes/round':>12}{'reduction':>11}{'final loss':>12}{'vs dense':>9}")
    print(
        f"  {'dense DiLoCo: fp32 (lz4)':<72}{dense.bytes_per_round:>12,.0f}"
        f"{fp32 / dense.bytes_per_round:>10.1f}x{dense.final_loss:>12.4f}{1.0:>9.3f}",
        flush=True,
    )
    summary = (0.0, 0.0)
    for label, fut in comp_f:
        run, _ = fut()
        if label == kinds[0][0]:
            summary = (fp32 / run.bytes_per_round, run.final_loss / dense.final_loss)
        print(
            f"  {label:<72}{run.bytes_per_round:>12,.0f}"
            f"{fp32 / run.bytes_per_round:>10.1f}x"
            f"{run.final_loss:>12.4f}{run.final_loss / dense.final_loss:>9.3f}",
            flush=True,
        )
    return summary


def table_c(
    s: Setup, genesis: Genesis, jobs: Jobs, compression: CompressionConfig = DENSE
) -> tuple[str, float]:
    """Prints (c); returns the worst robust rule (not the mean) and its worst loss / clean loss."""
    nodes = s.nodes
    shared = tuple(a for a in ATTACKS if a != "sign_flip")
    c = {"compression": compression}
    clean_f = jobs.submit("simulate", s, **c)
    per_rule = {
        rule: (
            jobs.submit("simulate", s, rule=rule, screened_attacks=shared, **c),
            jobs.submit("simulate", s, rule=rule, attack="sign_flip", **c),
        )
        for rule in RULES
    }
    clean, _ = clean_f()
    what = "fp32 updates" if compression == DENSE else f"{compression.kind} updates (the default)"
    print(
        f"\n(c) 1 attacker among {nodes + 1} nodes, {what}: final loss / clean {nodes}-node loss with "
        f"the mean ({clean.final_loss:.4f})      goal: robust <= 1.05"
    )
    print("  " + describe(s, genesis))
    print(f"  {'rule':<16}" + "".join(f"{a:>22}" for a in ATTACKS))
    screened: set[str] = set()
    worst = ("", 0.0)
    for rule in RULES:
        results: dict[str, tuple[Run, bool]] = {}
        base_run, always = per_rule[rule][0]()
        flip_run, _ = per_rule[rule][1]()
        results["sign_flip"] = (flip_run, bool(flip_run.rejected))
        for attack in shared:
            if always.get(attack):
                results[attack] = (base_run, True)
            else:  # screening let it through at least once: run it for real
                run, _ = jobs.submit("simulate", s, rule=rule, attack=attack, **c)()
                results[attack] = (run, False)
        cells = []
        for attack in ATTACKS:
            run, was_screened = results[attack]
            ratio = run.final_loss / clean.final_loss
            if rule != "mean" and not ratio <= worst[1]:  # (NaN is the worst)
                worst = (rule, ratio)
            screened.update(run.rejected)
            cells.append(f"{run.final_loss:>12.4f} ({ratio:5.3f}){'*' if was_screened else ' '}")
        print(f"  {rule:<16}" + "".join(f"{c:>22}" for c in cells), flush=True)
    print(f"  * the attacker's updates were rejected before aggregation in every round: {sorted(screened)}")
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="micro model, under 60 s")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--preset", help="model preset for (a) and (b)")
    parser.add_argument("--inner-steps", type=int, help="H for (a) and (b)")
    parser.add_argument("--rounds", type=int, help="rounds for (a) and (b)")
    parser.add_argument("--skip-c", action="store_true", help="skip the Byzantine table")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel processes (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    s = replace(QUICK if args.quick else FULL, device=args.device)
    if args.preset:
        s = replace(s, preset=args.preset)
    if args.inner_steps:
        s = replace(s, inner_steps=args.inner_steps)
    if args.rounds:
        s = replace(s, rounds=args.rounds)
    robust = replace(QUICK if args.quick else ROBUST_FULL, device=args.device)
    genesis = default_genesis()
    start = time.perf_counter()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores at start")
    jobs = Jobs(max(1, args.jobs), genesis)
    worst = ("not run (--skip-c)", math.nan)
    try:
        reduction, vs_dense = table_a_b(s, genesis, jobs, quick=args.quick)
        if not args.skip_c:
            table_c(robust, genesis, jobs)
            # The stated rule for sparse updates (coordinates a node did not send are zeros) makes
            # coordinate-wise rules conservative and Krum apply one node's few coordinates.
            worst = table_c(replace(robust, sparse=True), genesis, jobs, compression=SPARSE)
    finally:
        jobs.close()
    print(f"\ntotal {time.perf_counter() - start:.1f}s (load average {os.getloadavg()[0]:.2f} at the end)")
    # Issue 15's summary; overlapped rounds and growth are not built yet, and say so.
    print(
        f"frontier: {reduction:.0f}x fewer bytes, loss vs dense {vs_dense:.3f}; "
        f"worst robust rule {worst[0]} {worst[1]:.2f}x; utilisation not measured (no overlap yet); "
        "growth not built"
    )


if __name__ == "__main__":
    main()
