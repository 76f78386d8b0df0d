"""Training benchmark: DiLoCo, compression and Byzantine robustness, side by side in one run.

All nodes are SIMULATED IN THIS ONE PROCESS: each simulated node is a full ``TorchEngine`` with its
own model copy, inner optimizer, error-feedback residual and data shards, and the nodes exchange
the real encoded payload bytes (the same codec, screening and aggregation code a networked node
runs). There is no networking here; round latency over libp2p is benchmarked elsewhere.

It prints three tables:

(a) 4-node DiLoCo against a single-process baseline trained on the same number of tokens (plain
    AdamW on a 4x larger batch for as many steps as one node takes) -- final held-out loss and the
    ratio; goal: within 5%.
(b) Bytes each node sends per round, chunked top-k + int8 (with error feedback) against dense fp32,
    and the final loss of both; goal: >= 100x fewer bytes, loss within 2% of dense DiLoCo.
(c) 1 of 5 nodes attacking (sign-flipped, x100-scaled or NaN updates): final loss with a plain mean
    and with each robust rule, relative to the clean 4-node run; goal: robust rules within 5%.
    The attacker is omniscient: it transforms an honest node's update of the same round.

Usage::

    python benchmarks/training.py --quick    # micro model, < 60 s on 2 CPU cores
    python benchmarks/training.py            # tiny model, ~12 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from p2pshard.core.wire.tensor import EncodeOptions, decode_tensors, encode_tensors
from p2pshard.engine.aggregation import AggregationConfig
from p2pshard.engine.compression import CompressionConfig
from p2pshard.engine.diloco import DiLoCoConfig
from p2pshard.engine.engine import EngineConfig, TorchEngine
from p2pshard.engine.genesis import Genesis, default_genesis
from p2pshard.engine.model import PRESETS

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
    inner_lr: float
    nodes: int = 4
    # Outer step: lr 1 without momentum is parameter averaging, which these short runs from
    # scratch favour; (a) also reports the DiLoCo paper's Nesterov (0.7, 0.9) for comparison.
    outer_lr: float = 1.0
    outer_momentum: float = 0.0
    device: str = "cpu"


QUICK = Setup("micro", inner_steps=8, rounds=8, batch=8, inner_lr=1e-3)
FULL = Setup("tiny", inner_steps=10, rounds=12, batch=8, inner_lr=1e-3)
PAPER_OUTER = (0.7, 0.9)
DENSE = CompressionConfig(kind="none")
TOPK = CompressionConfig(kind="topk", chunk_size=2048, topk=16)


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
        diloco=DiLoCoConfig(
            inner_steps=s.inner_steps,
            batch_size=s.batch,
            inner_lr=s.inner_lr,
            outer_lr=s.outer_lr,
            outer_momentum=s.outer_momentum,
        ),
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
) -> Run:
    """``s.nodes`` honest nodes (plus one attacker if ``attack``) train ``s.rounds`` DiLoCo rounds."""
    t0 = time.perf_counter()
    peers = [f"peer-{i}" for i in range(s.nodes)]
    engines = {p: TorchEngine(engine_config(s, compression, rule, p), genesis) for p in peers}
    sent = 0
    tokens = 0
    rejected: dict[str, int] = {}
    for r in range(s.rounds):
        payloads: dict[str, bytes] = {}
        for p, e in engines.items():
            u = e.train_round(r, genesis.shard_bytes(e.assigned_shard(p, r)))
            payloads[p] = u.payload
            sent += u.size
            tokens += u.tokens
        if attack is not None:
            victim = decode_tensors(payloads[peers[0]])
            bad = {n: ATTACKS[attack](v) for n, v in victim.items()}
            payloads["peer-x-attacker"] = encode_tensors(bad, EncodeOptions())
        outcomes = [e.apply_round(r, payloads) for e in engines.values()]
        assert len({o.model_hash for o in outcomes}) == 1, "simulated nodes disagree"
        for reason in outcomes[0].rejected.values():
            rejected[reason] = rejected.get(reason, 0) + 1
    final = engines[peers[0]].evaluate()
    elapsed = time.perf_counter() - t0
    return Run(final, sent / (s.rounds * s.nodes), tokens, elapsed, rejected)


def baseline(s: Setup, genesis: Genesis) -> Run:
    """One process, the same tokens: AdamW on an ``s.nodes``-times larger batch.

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="micro model, under 60 s")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = parser.parse_args()
    torch.set_num_threads(1)
    s = replace(QUICK if args.quick else FULL, device=args.device)
    genesis = default_genesis()
    start = time.perf_counter()
    n_params = TorchEngine(engine_config(s, DENSE, "mean", "x"), genesis).n_params
    print(
        f"preset={s.preset} ({n_params:,} params)  nodes={s.nodes}  rounds={s.rounds}  "
        f"H={s.inner_steps}  batch={s.batch}x{PRESETS[s.preset].context}  device={s.device}  "
        f"(nodes simulated in-process; see module docstring)"
    )

    dense = simulate(s, genesis)
    paper = simulate(replace(s, outer_lr=PAPER_OUTER[0], outer_momentum=PAPER_OUTER[1]), genesis)
    base = baseline(s, genesis)
    print("\n(a) DiLoCo vs single-process baseline, same tokens         goal: ratio <= 1.05")
    print(f"  {'run':<40}{'tokens':>10}{'final loss':>12}{'ratio':>8}{'time':>8}")
    rows = [
        ("baseline: AdamW, 4x batch", base),
        (f"DiLoCo {s.nodes} nodes, outer lr 1, no momentum", dense),
        (f"DiLoCo {s.nodes} nodes, Nesterov {PAPER_OUTER}", paper),
    ]
    for label, run in rows:
        print(
            f"  {label:<40}{run.tokens:>10}{run.final_loss:>12.4f}"
            f"{run.final_loss / base.final_loss:>8.3f}{run.seconds:>7.1f}s"
        )

    topk = simulate(s, genesis, compression=TOPK)
    print("\n(b) bytes per node per round                 goal: >= 100x fewer, loss within 2%")
    print(f"  {'compression':<32}{'bytes/round':>12}{'reduction':>11}{'final loss':>12}{'vs fp32':>9}")
    print(
        f"  {'dense fp32 (lz4)':<32}{dense.bytes_per_round:>12,.0f}{1.0:>10.1f}x"
        f"{dense.final_loss:>12.4f}{1.0:>9.3f}"
    )
    label = f"top-{TOPK.topk}/{TOPK.chunk_size} int8 + EF (lz4)"
    print(
        f"  {label:<32}{topk.bytes_per_round:>12,.0f}"
        f"{dense.bytes_per_round / topk.bytes_per_round:>10.1f}x"
        f"{topk.final_loss:>12.4f}{topk.final_loss / dense.final_loss:>9.3f}"
    )

    print(
        f"\n(c) 1 attacker among {s.nodes + 1} nodes: final loss / clean {s.nodes}-node loss "
        f"({dense.final_loss:.4f})      goal: robust <= 1.05"
    )
    print(f"  {'rule':<16}" + "".join(f"{a:>22}" for a in ATTACKS))
    screened: set[str] = set()
    for rule in RULES:
        cells = []
        for attack in ATTACKS:
            run = simulate(s, genesis, rule=rule, attack=attack)
            ratio = run.final_loss / dense.final_loss
            mark = "*" if run.rejected else " "
            screened.update(run.rejected)
            cells.append(f"{run.final_loss:>12.4f} ({ratio:5.3f}){mark}")
        print(f"  {rule:<16}" + "".join(f"{c:>22}" for c in cells), flush=True)
    print(f"  * the attacker's updates were rejected before aggregation: {sorted(screened)}")
    print(f"\ntotal {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
