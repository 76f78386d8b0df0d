"""DiLoCo (Douillard et al. 2023): many local steps, then one outer step on the averaged change.

Per round every node copies the shared ("master") weights into its model, runs ``inner_steps`` of
AdamW on its own shard, and reports the pseudo-gradient ``master - local``. The network aggregates
the pseudo-gradients and every node applies the same outer Nesterov-SGD step to the master weights.

The master weights and the outer momentum live in numpy float32 on the CPU and the outer step uses
only elementwise numpy ufuncs (no fused multiply-add, no BLAS), so any two nodes that apply the
same aggregated vector get the same bits whatever their CPU or accelerator. The model hash is
SHA-256 over a canonical serialisation of the master weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from p2pshard.engine.model import Stage

__all__ = [
    "OUTER_DEFAULTS",
    "SPARSE_OUTER",
    "DiLoCoConfig",
    "OuterNesterov",
    "inner_train",
    "model_hash",
    "restore_norm",
    "sample_batch",
]

F32 = npt.NDArray[np.float32]
_HASH_TAG = b"p2pshard/model-hash/v1\x00"


# Outer step (lr, Nesterov momentum) per model preset. Measured with benchmarks/training.py, 4 nodes
# from scratch: on ``tiny`` (H=20, 10 rounds) momentum 0.5 at lr 1 ended 17% lower than plain
# averaging (lr 1, no momentum) and slightly below the DiLoCo paper's (0.7, 0.9), which needs more
# rounds for its momentum to build up; on ``micro`` (H=8, 8 rounds), which converges in a few
# rounds, any momentum overshoots and plain averaging is best. Larger presets train for many rounds,
# where the paper's setting is the established one.
OUTER_DEFAULTS: dict[str, tuple[float, float]] = {
    "micro": (1.0, 0.0),
    "tiny": (1.0, 0.5),
    "small": (0.7, 0.9),
    "base": (0.7, 0.9),
}

# Outer step (lr, momentum) for sparse compression with a decaying residual (compression.SPARSELOCO),
# applied to the *sum* of the selected contributions (``DiLoCoConfig.outer_sum``). No momentum: the
# residual already sums the past rounds' changes. The sum, not the mean: the mean of n sparse updates
# divides a coordinate that only one node sent by n. Measured on tiny, 4 nodes, 30 rounds, as lr x
# mean (dense DiLoCo: final loss 0.441): top-64/4096 at lr 2 -> 0.536, 3 -> 0.460, 4 (= the sum)
# -> 0.455, 6 -> 0.548 (residual decay 0.9 at lr 4: 0.461, 1.0: 0.469); top-88/4096
# (compression.SPARSELOCO) at lr 3.5 -> 0.423, 4 -> 0.419.
SPARSE_OUTER: tuple[float, float] = (1.0, 0.0)


@dataclass(frozen=True)
class DiLoCoConfig:
    """Defaults are the ``tiny`` preset's (the devnet's); :meth:`for_preset` picks per preset."""

    inner_steps: int = 50
    batch_size: int = 16
    inner_lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    outer_lr: float = 1.0
    outer_momentum: float = 0.5
    # Rescale the aggregated pseudo-gradient to the median norm of the contributions, at most by
    # sqrt(n) (see ``restore_norm``).
    norm_restore: bool = False
    # Step on the aggregate times the number of contributions it selected (for a mean: their sum),
    # so that a sparse coordinate one node sent moves by what it sent whatever the network's size.
    outer_sum: bool = False

    def __post_init__(self) -> None:
        if self.inner_steps < 1 or self.batch_size < 1:
            raise ValueError("inner_steps and batch_size must be >= 1")

    @classmethod
    def for_preset(cls, preset: str, sparse: bool = False, **overrides: Any) -> DiLoCoConfig:
        """This preset's outer step (:data:`OUTER_DEFAULTS`; for sparse compression with a decaying
        residual :data:`SPARSE_OUTER` on the sum), then ``overrides``."""
        lr, momentum = OUTER_DEFAULTS.get(preset, (cls.outer_lr, cls.outer_momentum))
        if sparse:
            lr, momentum = SPARSE_OUTER
        return cls(**{"outer_lr": lr, "outer_momentum": momentum, "outer_sum": sparse, **overrides})


def model_hash(params: Mapping[str, F32]) -> bytes:
    """SHA-256 over (name, dtype, shape, little-endian bytes) of every tensor, by sorted name."""
    h = hashlib.sha256(_HASH_TAG)
    for name in sorted(params):
        arr = np.asarray(params[name], dtype="<f4", order="C")
        header = f"{name}\x00float32\x00{','.join(map(str, arr.shape))}\x00".encode()
        h.update(len(header).to_bytes(4, "big") + header)
        h.update(arr.tobytes())
    return h.digest()


def sample_batch(
    tokens: torch.Tensor, batch: int, context: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` random windows of ``context + 1`` tokens: (inputs, next-token targets)."""
    if tokens.numel() < context + 2:
        raise ValueError("shard shorter than one context window")
    starts = torch.randint(0, tokens.numel() - context - 1, (batch,), generator=gen)
    windows = torch.stack([tokens[s : s + context + 1] for s in starts.tolist()])
    return windows[:, :-1], windows[:, 1:]


def inner_train(
    model: Stage,
    optimizer: torch.optim.Optimizer,
    tokens: torch.Tensor,
    cfg: DiLoCoConfig,
    gen: torch.Generator,
    device: torch.device,
) -> float:
    """Run ``cfg.inner_steps`` AdamW steps on windows of ``tokens``; return the mean loss."""
    model.train()
    total = torch.zeros((), device=device)
    for _ in range(cfg.inner_steps):
        ids, targets = sample_batch(tokens, cfg.batch_size, model.cfg.context, gen)
        loss = model.loss(ids.to(device, torch.long), targets.to(device, torch.long))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        total += loss.detach()
    return float(total) / cfg.inner_steps


def restore_norm(aggregated: F32, rows: F32) -> tuple[F32, float]:
    """Scale ``aggregated`` up to the median L2 norm of ``rows``, by a factor in [1, sqrt(n)].

    Why: each row is the change H AdamW steps made on one node. Where the nodes disagree their
    changes partly cancel in the average, so the averaged step is shorter than any node's, while one
    AdamW run on the n-times larger batch would still move about lr per coordinate per step (Adam
    normalises the step length). Restoring the length keeps the averaged *direction* and gives it the
    length a single large-batch run would take. The median (not the mean) of the norms keeps one
    oversized row from setting the length, and sqrt(n) -- the factor for n orthogonal rows of equal
    length -- bounds the amplification. Norms are float64 sums without BLAS, so every node computes
    the same factor.
    """
    n = rows.shape[0]
    agg64 = aggregated.astype(np.float64)
    agg_norm = float(np.sqrt((agg64 * agg64).sum()))
    r64 = rows.astype(np.float64)
    median_norm = float(np.median(np.sqrt((r64 * r64).sum(axis=1))))
    if agg_norm <= 0.0 or not np.isfinite(agg_norm):
        return aggregated, 1.0
    factor = min(max(median_norm / agg_norm, 1.0), float(np.sqrt(n)))
    out: F32 = np.multiply(aggregated, np.float32(factor), dtype=np.float32)
    return out, factor


class OuterNesterov:
    """SGD with Nesterov momentum on numpy arrays: m <- mu m + g; p <- p - lr (g + mu m)."""

    def __init__(self, lr: float, momentum: float, shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.lr = np.float32(lr)
        self.mu = np.float32(momentum)
        self.momentum: dict[str, F32] = {n: np.zeros(s, dtype=np.float32) for n, s in shapes.items()}
        self._scratch: dict[str, F32] = {}

    def step(self, params: dict[str, F32], grad: Mapping[str, F32]) -> None:
        """Update ``params`` in place with the aggregated pseudo-gradient ``grad``.

        The arithmetic is the formula's, one float32 operation at a time, written into kept
        buffers (a 50M-parameter step allocated ~1 GB of fresh arrays a round, mostly page faults).
        With no momentum (SparseLoCo: the decaying residual is the memory) the direction is ``g``
        itself (``g + 0*g`` equals ``g`` for every finite ``g``), so only ``p -= lr g``
        is computed and the momentum stays zero."""
        for name in sorted(params):
            g, p = grad[name], params[name]
            scratch = self._scratch.get(name)
            if scratch is None or scratch.shape != g.shape:
                scratch = self._scratch[name] = np.empty(g.shape, dtype=np.float32)
            if self.mu == 0:
                np.multiply(self.lr, g, out=scratch)
            else:
                m = self.momentum[name]
                np.multiply(self.mu, m, out=m)
                np.add(m, g, out=m)
                np.multiply(self.mu, m, out=scratch)
                np.add(g, scratch, out=scratch)
                np.multiply(self.lr, scratch, out=scratch)
            np.subtract(p, scratch, out=p)
