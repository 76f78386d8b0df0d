"""Pseudo-gradient compression with error feedback, on top of the numpy tensor codec.

A node never sends its pseudo-gradient as it is: it adds it to its *residual* (what earlier rounds
failed to send), encodes the sum lossily, and keeps as the new residual exactly what the receivers
will not see (sum minus the decoded payload). Nothing is lost over time, only delayed, which is why
chunked top-k with 8-bit values still converges (Seide et al. 2014; Karimireddy et al. 2019).

Kinds: ``none`` (fp32), ``fp16``, ``bf16``, ``int8`` (one scale per chunk) and ``topk`` (the ``k``
largest-magnitude elements of every ``chunk_size`` chunk, values in int8 with a scale per chunk).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from p2pshard.core.wire.tensor import DecodeLimits, EncodeOptions, Encoding, decode_tensors
from p2pshard.core.wire.tensor import encode_tensors as _encode

__all__ = ["KINDS", "CompressionConfig", "Compressor", "EncodedUpdate"]

F32 = npt.NDArray[np.float32]

KINDS = ("none", "fp16", "bf16", "int8", "topk")


@dataclass(frozen=True)
class CompressionConfig:
    kind: str = "topk"
    chunk_size: int = 2048
    topk: int = 16  # kept per chunk: 16/2048 = 0.8% of the elements
    error_feedback: bool = True
    lz4: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown compression {self.kind!r}; one of {KINDS}")

    def encode_options(self) -> EncodeOptions:
        encoding = {
            "none": Encoding.FLOAT32,
            "fp16": Encoding.FLOAT16,
            "bf16": Encoding.BFLOAT16,
            "int8": Encoding.INT8,
            "topk": Encoding.INT8,
        }[self.kind]
        topk = self.topk if self.kind == "topk" else None
        return EncodeOptions(encoding, chunk_size=self.chunk_size, topk=topk, lz4=self.lz4)


@dataclass(frozen=True)
class EncodedUpdate:
    payload: bytes
    decoded: dict[str, F32]  # exactly what every receiver will reconstruct
    dense_bytes: int  # fp32 size of the same tensors


class Compressor:
    """Encodes successive pseudo-gradients, carrying the error-feedback residual between them."""

    def __init__(self, cfg: CompressionConfig) -> None:
        self.cfg = cfg
        self.residual: dict[str, F32] = {}

    def encode(self, update: Mapping[str, F32], limits: DecodeLimits | None = None) -> EncodedUpdate:
        if self.cfg.error_feedback:
            target = {n: v + self.residual[n] if n in self.residual else v for n, v in update.items()}
        else:
            target = dict(update)
        payload = _encode(target, self.cfg.encode_options())
        decoded = decode_tensors(payload, limits)
        if self.cfg.error_feedback:
            self.residual = {n: (target[n] - decoded[n]).astype(np.float32) for n in target}
        dense = sum(4 * v.size for v in update.values())
        return EncodedUpdate(payload, decoded, dense)
