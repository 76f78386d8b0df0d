"""Pseudo-gradient compression with error feedback, on top of the numpy tensor codec.

A node never sends its pseudo-gradient as it is: it adds it to its *residual* (what earlier rounds
failed to send), encodes the sum lossily, and keeps as the new residual exactly what the receivers
will not see (sum minus the decoded payload). Nothing is lost over time, only delayed, which is why
aggressive compression still converges (Seide et al. 2014; Karimireddy et al. 2019).

Kinds: ``none`` (fp32), ``fp16``, ``bf16``, ``int8`` / ``int4`` (one scale per chunk), ``topk``
(the ``k`` largest-magnitude elements of every ``chunk_size`` chunk, 8-, 4- or 2-bit values, offsets
packed in log2(chunk) bits), ``sparseloco`` (the default, :data:`SPARSELOCO`: top-k with a decaying
residual, tuned for >= 100x) and ``lowrank``: every weight matrix as a rank-``rank`` product P Q^T
found by ``power_iterations`` steps of subspace iteration warm-started from the previous round
(PowerSGD, Vogels et al. 2019), factors in 4-bit integers with a power-of-two scale per factor column
(which makes decoding exact, see the codec); vectors (biases, norms) in 4-bit integers with a scale
per 256 values. :func:`named` turns a kind's name (the CLI's ``--compression``) into its settings.

Why low rank: DiLoCo's pseudo-gradients come from AdamW, whose per-coordinate normalisation spreads
the change over every element (top-k of 0.8% keeps ~4% of the energy of a tiny-model round), while
the change of a weight matrix stays close to low rank (the sum of outer products of activations and
gradients; Adam's sign-like scaling keeps a rank-1 matrix rank-1). Rank 8 keeps ~80% of the energy
of the same round in 1/50 of the elements.

Why top-k still wins at >= 100x (:data:`SPARSELOCO`, Sarfi et al. 2025, arXiv 2508.15706): one
round's energy is the wrong measure. With a residual that decays (``error_feedback_decay`` 0.95) the
residual is a running sum of the rounds' changes -- it *is* the outer momentum, so the outer step
uses none -- and the largest coordinates of that sum are sent once they have grown, each as a 2-bit
value with its offset (2 + 7.45 bits, the offsets Elias-Fano coded): 2.1% of the elements per
round at 152x (103x with fixed 12-bit offsets). On tiny
(d=128) low rank cannot get there: 100x leaves rank 6 at 4 bits (30% of a round's energy lost every
round, measured final loss +20%) or rank 13 at 2 bits (worse: 2-bit factors lose ~25% by themselves).
The outer step applies the sum of the contributions, not their mean (``diloco.SPARSE_OUTER``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
import numpy.typing as npt

from p2pshard.core.wire.tensor import (
    DecodeLimits,
    EncodeOptions,
    Encoding,
    ErrorFeedback,
    LowRankFactors,
    SparseTensor,
    decode_tensors,
    encode_tensors,
)

__all__ = [
    "DEFAULT",
    "KINDS",
    "SPARSELOCO",
    "SPARSELOCO_12BIT",
    "CompressionConfig",
    "Compressor",
    "EncodedUpdate",
    "named",
]

F32 = npt.NDArray[np.float32]

KINDS = ("none", "fp16", "bf16", "int8", "int4", "topk", "sparseloco", "sparseloco-12bit", "lowrank")
_ENCODING = {
    "none": Encoding.FLOAT32,
    "fp16": Encoding.FLOAT16,
    "bf16": Encoding.BFLOAT16,
    "int8": Encoding.INT8,
    "int4": Encoding.INT4,
    "lowrank": Encoding.INT4,
}  # (top-k kinds: ``value_bits``)

_BITS = {2: Encoding.INT2, 4: Encoding.INT4, 8: Encoding.INT8}


@dataclass(frozen=True)
class CompressionConfig:
    """``kind`` is one of :data:`KINDS`; the rest applies to the kinds that use it."""

    kind: str
    chunk_size: int = 2048
    topk: int = 16  # kept per chunk: 16/2048 = 0.8% of the elements
    rank: int = 32  # lowrank: factor rank per weight matrix (tiny: 23x; 1024x1024 matrices: 128x)
    power_iterations: int = 2  # lowrank: subspace iterations per round
    factor_bits: int = 4  # lowrank: 2, 4 or 8 bits per factor entry
    value_bits: int = 8  # topk: 2, 4 or 8 bits per kept value
    packed_indices: bool = True  # topk: offsets in ceil(log2(chunk_size)) bits instead of 16
    elias_fano: bool = False  # topk: offsets Elias-Fano coded per chunk (~7.5 bits for 88 of 4096)
    error_feedback: bool = True
    # The residual is multiplied by this before it is added to the next round's update: 1 keeps
    # everything (classic error feedback); below 1 lets what the compressor keeps failing to send
    # fade out (see the module docstring).
    error_feedback_decay: float = 1.0
    lz4: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown compression {self.kind!r}; one of {KINDS}")
        if not 0.0 <= self.error_feedback_decay <= 1.0:
            raise ValueError("error_feedback_decay must be in [0, 1]")
        if not 1 <= self.rank <= 1024 or self.power_iterations < 1:
            raise ValueError("rank must be in [1, 1024] and power_iterations >= 1")
        if self.factor_bits not in _BITS or self.value_bits not in _BITS:
            raise ValueError(f"factor_bits and value_bits must be one of {sorted(_BITS)}")

    def encode_options(self) -> EncodeOptions:
        if self.sparse:
            return EncodeOptions(
                _BITS[self.value_bits],
                self.chunk_size,
                self.topk,
                self.lz4,
                self.packed_indices,
                self.elias_fano,
            )
        return EncodeOptions(_ENCODING[self.kind], chunk_size=self.chunk_size, lz4=self.lz4)

    @property
    def sparse(self) -> bool:
        """Whether updates are chunked top-k (each node sends a different few coordinates)."""
        return self.kind in ("topk", *SPARSELOCO_KINDS)

    @property
    def sparseloco(self) -> bool:
        """Whether the outer step is SparseLoCo's (the residual is the momentum; see the module)."""
        return self.kind in SPARSELOCO_KINDS

    @property
    def per_tensor(self) -> bool:
        """Whether updates must be sent tensor by tensor (low rank needs the matrix shapes)."""
        return self.kind == "lowrank"


SPARSELOCO_KINDS = ("sparseloco", "sparseloco-12bit")

# SparseLoCo: per chunk of 4096 the 88 largest of the decaying residual (2.1%), 2-bit values with
# a least-squares scale per chunk, offsets Elias-Fano coded (7.45 bits each; 12 bits fixed-width in
# ``sparseloco-12bit``, the coding of Covenant-72B); lz4 is off (it cannot shrink packed bits).
# 152x fewer bytes than fp32 (103x with 12-bit offsets); the index coding is lossless, so both
# train the same model. The outer step is ``DiLoCoConfig.for_preset(..., sparse=True)``, which
# ``TorchEngine.create`` picks for them.
SPARSELOCO = CompressionConfig(
    kind="sparseloco",
    chunk_size=4096,
    topk=88,
    value_bits=2,
    packed_indices=True,
    elias_fano=True,
    error_feedback_decay=0.95,
    lz4=False,
)
SPARSELOCO_12BIT = replace(SPARSELOCO, kind="sparseloco-12bit", elias_fano=False)
DEFAULT = SPARSELOCO


def named(kind: str) -> CompressionConfig:
    """The settings a kind's name stands for: :data:`SPARSELOCO` for ``sparseloco`` (and
    :data:`SPARSELOCO_12BIT`), else the field defaults (``topk``: 16 of every 2048 in 8 bits;
    ``lowrank``: rank 32)."""
    presets = {"sparseloco": SPARSELOCO, "sparseloco-12bit": SPARSELOCO_12BIT}
    return presets.get(kind) or CompressionConfig(kind=kind)


@dataclass(frozen=True)
class EncodedUpdate:
    payload: bytes
    dense_bytes: int  # fp32 size of the same tensors
    limits: DecodeLimits | None = field(default=None, repr=False)
    # Top-k kinds: what ``decode_sparse`` makes of the payload, bit for bit, known without
    # decoding it (the encoder's kept elements).
    sparse: dict[str, SparseTensor] | None = field(default=None, repr=False)

    @cached_property
    def decoded(self) -> dict[str, F32]:
        """Exactly what every receiver will reconstruct (decoded on first use)."""
        return decode_tensors(self.payload, self.limits)


class Compressor:
    """Encodes successive pseudo-gradients, carrying the error-feedback residual between them.

    For ``lowrank`` it also keeps each matrix's right factor as the next round's starting subspace
    (``subspace``: node-local state, saved in checkpoints beside the residual).
    """

    def __init__(self, cfg: CompressionConfig) -> None:
        self.cfg = cfg
        self.residual: dict[str, F32] = {}
        self.subspace: dict[str, F32] = {}

    def encode(self, update: Mapping[str, F32], limits: DecodeLimits | None = None) -> EncodedUpdate:
        dense = sum(4 * v.size for v in update.values())
        if not self.cfg.error_feedback:
            return EncodedUpdate(self._payload(update), dense, limits)
        if self.cfg.sparse:
            payload, sparse = self._encode_sparse(update)
            return EncodedUpdate(payload, dense, limits, sparse)
        target = self._with_residual(update)
        payload = self._payload(target)
        out = EncodedUpdate(payload, dense, limits)
        self.residual = {
            n: np.subtract(target[n], out.decoded[n], dtype=np.float32).reshape(target[n].shape)
            for n in target
        }
        return out

    def _encode_sparse(self, update: Mapping[str, F32]) -> tuple[bytes, dict[str, SparseTensor]]:
        """Top-k from the residual buffers, which the codec updates in place as it goes
        (:class:`ErrorFeedback`): decay, add the update, choose, subtract what was sent."""
        residual: dict[str, F32] = {}
        for name, value in update.items():
            old = self.residual.get(name)
            if old is None or old.shape != value.shape:
                old = np.zeros(value.shape, dtype=np.float32)
            residual[name] = old
        self.residual = residual
        feedback = ErrorFeedback(update, self.cfg.error_feedback_decay)
        kept: dict[str, tuple[npt.NDArray[np.int64], F32]] = {}
        payload = encode_tensors(residual, self.cfg.encode_options(), sparse_out=kept, feedback=feedback)
        sparse = {n: SparseTensor(update[n].shape, index, values) for n, (index, values) in kept.items()}
        return payload, sparse

    def _with_residual(self, update: Mapping[str, F32]) -> dict[str, F32]:
        """``update + decay * residual`` per tensor, computed in the residual's own buffer (it is
        replaced after encoding anyway): no 2x-size temporaries for a large model."""
        decay = np.float32(self.cfg.error_feedback_decay)
        target: dict[str, F32] = {}
        for name, value in update.items():
            old = self.residual.get(name)
            if old is None or old.shape != value.shape:
                target[name] = np.array(value, dtype=np.float32, copy=True)
                continue
            np.multiply(old, decay, out=old)
            np.add(old, value, out=old)
            target[name] = old
        return target

    def _payload(self, target: Mapping[str, F32]) -> bytes:
        if self.cfg.kind == "lowrank":
            return self._encode_low_rank(target)
        return encode_tensors(target, self.cfg.encode_options())

    def _encode_low_rank(self, target: Mapping[str, F32]) -> bytes:
        r = self.cfg.rank
        items: dict[str, F32 | LowRankFactors] = {}
        vectors = EncodeOptions(Encoding.INT4, chunk_size=256, lz4=self.cfg.lz4)
        overrides: dict[str, EncodeOptions] = {}
        for name, value in target.items():
            arr = np.asarray(value, dtype=np.float32)
            rows = arr.shape[0] if arr.ndim >= 2 else 0
            cols = arr.size // rows if rows else 0
            # Factors cost (rows + cols) * r values; below ~2r on a side, send the matrix itself.
            if arr.ndim < 2 or min(rows, cols) <= 2 * r:
                items[name] = arr
                overrides[name] = vectors
                continue
            items[name] = self._factor(name, arr.reshape(rows, cols), arr.shape, r)
        factors = _BITS[self.cfg.factor_bits]
        return encode_tensors(items, EncodeOptions(factors, chunk_size=r, lz4=self.cfg.lz4), overrides)

    def _factor(self, name: str, m: F32, shape: tuple[int, ...], r: int) -> LowRankFactors:
        q = self.subspace.get(name)
        if q is None or q.shape != (m.shape[1], r):
            seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
            q = np.random.default_rng(seed).standard_normal((m.shape[1], r)).astype(np.float32)
        p = m @ q
        for i in range(self.cfg.power_iterations):
            p = _orthonormal(p)
            q = m.T @ p
            if i + 1 < self.cfg.power_iterations:
                p = m @ _orthonormal(q)
        self.subspace[name] = _orthonormal(q)
        # Balance the two factors' scales so that both quantise alike: P Q^T is unchanged.
        pn = np.sqrt((p * p).sum(axis=0)) + 1e-30
        qn = np.sqrt((q * q).sum(axis=0)) + 1e-30
        g = np.sqrt(pn * qn)
        return LowRankFactors(shape, (p / pn * g).astype(np.float32), (q / qn * g).astype(np.float32))


def _orthonormal(x: F32) -> F32:
    """An orthonormal basis of the columns of ``x`` (same shape; zero columns stay harmless)."""
    q, _ = np.linalg.qr(x.astype(np.float64))
    out: F32 = q.astype(np.float32)
    return out
