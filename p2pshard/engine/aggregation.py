"""Screening and robust aggregation of pseudo-gradients (numpy; deterministic).

Two steps, kept apart on purpose:

1. :func:`screen_update` judges one decoded update on its own: the exact tensor names and shapes of
   the model, finite values, and an L2 norm under a bound. A failure raises
   :class:`UpdateRejected` with a reason, and the update never reaches aggregation.
2. :func:`aggregate` combines the updates that passed, stacked as rows of a matrix in contributor
   order (the caller sorts by contributor id), with one of the rules in :data:`RULES`.

Sparse updates: the codec decodes a top-k update into a dense vector with explicit zeros, and
every rule sees exactly that. For coordinate-wise rules (trimmed mean, median) an element a peer
did not send is a vote for "no change" at that coordinate, which makes them conservative with
sparse inputs; Krum and centered clipping see the zeros as part of the vector geometry.
With SparseLoCo most coordinates have a single sender, so no per-coordinate statistic can be
robust there: only row-level rules keep their strength. Measured (benchmarks/training.py, table
c, micro, 1 attacker of 5): multi_krum and centered_clip stay within 5% of the clean mean, median
and trimmed mean move only where most nodes agree (1.05-1.10), and Krum, which applies one row,
ends 1.47x higher.

Determinism: sums are taken in float64 in row order and rounded to float32 once, so every node
that aggregates the same rows gets the same bits. (With SparseLoCo's outer step on the sum and the
mean rule, the engine does not call :func:`aggregate`: it adds the rows in float32 from +0.0 in
contributor order, ``tensor.sum_rows``, touching only the kept elements of sparse rows.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from p2pshard.core.wire.tensor import SparseTensor
from p2pshard.protocols.engine_api import UpdateRejected

__all__ = ["RULES", "AggregationConfig", "AggregationResult", "aggregate", "dense_rows", "screen_update"]

F32 = npt.NDArray[np.float32]


def screen_update(
    tensors: Mapping[str, F32 | SparseTensor], shapes: Mapping[str, tuple[int, ...]], max_norm: float
) -> F32 | SparseTensor:
    """Check one decoded update and return it flattened (in sorted-name order).

    An update that is one sparse tensor (a top-k payload of the flat wire form) stays sparse: its
    kept values are judged (an unsent element is a zero, finite and adding nothing to the norm).
    """
    missing = sorted(set(shapes) - set(tensors))
    if missing:
        raise UpdateRejected("missing_tensor", missing[0])
    extra = sorted(set(tensors) - set(shapes))
    if extra:
        raise UpdateRejected("unexpected_tensor", extra[0])
    for name in sorted(shapes):
        if tuple(tensors[name].shape) != tuple(shapes[name]):
            raise UpdateRejected("wrong_shape", f"{name}: {tensors[name].shape} != {shapes[name]}")
    only = next(iter(tensors.values())) if len(tensors) == 1 else None
    flat: F32 | SparseTensor
    if isinstance(only, SparseTensor):
        flat = SparseTensor((int(np.prod(only.shape)),), only.index, only.values)
        values = only.values
    else:
        flat = np.concatenate([_dense(tensors[n]).reshape(-1) for n in sorted(shapes)]).astype(np.float32)
        values = flat
    if not np.isfinite(values).all():
        raise UpdateRejected("non_finite")
    norm = float(np.sqrt(_sq_norm(values.astype(np.float64))))
    if norm > max_norm:
        raise UpdateRejected("norm_too_large", f"{norm:.4g} > {max_norm:.4g}")
    return flat


def _dense(t: F32 | SparseTensor) -> F32:
    return t.dense() if isinstance(t, SparseTensor) else t


@dataclass(frozen=True)
class AggregationConfig:
    """``rule`` is a key of :data:`RULES`; ``f`` is the number of Byzantine rows tolerated."""

    rule: str = "mean"
    f: int = 1
    clip_iterations: int = 3
    clip_tau: float | None = None  # None: median distance to the starting centre

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"unknown aggregation rule {self.rule!r}; one of {sorted(RULES)}")
        if self.f < 0 or self.clip_iterations < 1:
            raise ValueError("f must be >= 0 and clip_iterations >= 1")


@dataclass(frozen=True)
class AggregationResult:
    vector: F32
    selected: tuple[int, ...]  # row indices that entered the result


def dense_rows(rows: Sequence[F32 | SparseTensor]) -> F32:
    """Screened rows (flat, of one size) stacked as the ``(n, d)`` matrix :func:`aggregate` takes."""
    return np.stack([_dense(r) for r in rows])


def aggregate(rows: F32, cfg: AggregationConfig, weights: Sequence[float] | None = None) -> AggregationResult:
    """Combine the ``(n, d)`` matrix ``rows`` into one ``d`` vector with ``cfg.rule``.

    ``weights`` (one per row, finite, >= 0; None: all 1.0) are the rows' verification weights
    (specs/work.md): a row of weight 0 does not enter the result at all; the mean rule takes the
    weighted mean ``sum(w x) / sum(w)`` of the others (summed in row order in float64, so all
    weights 1.0 give the unweighted mean's bits); every other rule takes the rows of positive
    weight unweighted. At least one row must have a positive weight."""
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise ValueError("aggregate needs a non-empty (n, d) matrix")
    if weights is None:
        return RULES[cfg.rule](rows.astype(np.float64), cfg)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (rows.shape[0],) or not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("weights must be one finite, non-negative number per row")
    keep = [i for i in range(rows.shape[0]) if w[i] > 0]
    if not keep:
        raise ValueError("no row has a positive weight")
    x = rows[keep].astype(np.float64)
    if cfg.rule == "mean":
        kept = w[keep]
        return _result((x * kept[:, None]).sum(axis=0) / kept.sum(), keep)
    result = RULES[cfg.rule](x, cfg)
    return AggregationResult(result.vector, tuple(keep[i] for i in result.selected))


def _sq_norm(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Squared L2 norm along the last axis, without BLAS (whose summation order varies by CPU)."""
    out: npt.NDArray[np.float64] = (x * x).sum(axis=-1)
    return out


def _result(v: npt.NDArray[np.float64], selected: range | list[int]) -> AggregationResult:
    return AggregationResult(v.astype(np.float32), tuple(int(i) for i in selected))


def _mean(x: npt.NDArray[np.float64], cfg: AggregationConfig) -> AggregationResult:
    return _result(x.sum(axis=0) / x.shape[0], range(x.shape[0]))


def _trimmed_mean(x: npt.NDArray[np.float64], cfg: AggregationConfig) -> AggregationResult:
    n = x.shape[0]
    t = min(cfg.f, (n - 1) // 2)  # always keep at least one value per coordinate
    kept = np.sort(x, axis=0)[t : n - t]
    return _result(kept.sum(axis=0) / kept.shape[0], range(n))


def _median(x: npt.NDArray[np.float64], cfg: AggregationConfig) -> AggregationResult:
    return _result(np.median(x, axis=0), range(x.shape[0]))


def _krum_scores(x: npt.NDArray[np.float64], f: int) -> npt.NDArray[np.float64]:
    """Krum score of each row: sum of squared distances to its n - f - 2 nearest others."""
    n = x.shape[0]
    d2 = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            d2[i, j] = d2[j, i] = _sq_norm(x[i] - x[j])
    m = max(1, n - f - 2)
    scores = np.empty(n)
    for i in range(n):
        others = np.delete(d2[i], i)
        scores[i] = np.sort(others)[:m].sum() if others.size else 0.0
    return scores


def _krum(x: npt.NDArray[np.float64], cfg: AggregationConfig) -> AggregationResult:
    best = int(np.argmin(_krum_scores(x, cfg.f)))  # ties: the first row (lowest contributor id)
    return _result(x[best], [best])


def _multi_krum(x: npt.NDArray[np.float64], cfg: AggregationConfig) -> AggregationResult:
    n = x.shape[0]
    m = max(1, n - cfg.f)
    order = np.argsort(_krum_scores(x, cfg.f), kind="stable")[:m]
    chosen = sorted(int(i) for i in order)
    return _result(x[chosen].sum(axis=0) / m, chosen)


def _centered_clip(x: npt.NDArray[np.float64], cfg: AggregationConfig) -> AggregationResult:
    """Karimireddy et al. (2021): v <- v + mean_i clip(x_i - v, tau), from the median."""
    v = np.median(x, axis=0)
    tau = cfg.clip_tau
    if tau is None:
        tau = float(np.median(np.sqrt(_sq_norm(x - v))))
    for _ in range(cfg.clip_iterations):
        diff = x - v
        norms = np.sqrt(_sq_norm(diff))
        scale = np.minimum(1.0, tau / np.maximum(norms, 1e-30))
        v = v + (diff * scale[:, None]).sum(axis=0) / x.shape[0]
    return _result(v, range(x.shape[0]))


RULES: dict[str, Callable[[npt.NDArray[np.float64], AggregationConfig], AggregationResult]] = {
    "mean": _mean,
    "trimmed_mean": _trimmed_mean,
    "median": _median,
    "krum": _krum,
    "multi_krum": _multi_krum,
    "centered_clip": _centered_clip,
}
