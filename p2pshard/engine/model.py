"""A GPT-style decoder that can be cut into layer ranges.

The model is a flat list of *layers*: ``[embedding, block_0, ..., block_{n-1}, head]`` where the
head is the final LayerNorm plus the LM projection. A :class:`LayerRange` names a contiguous slice
of that list, and :class:`Stage` hosts one slice, so pipeline work can later put ranges on different
nodes: the first stage takes token ids, the last returns logits, the ones between pass hidden states.
A full model is simply the stage for ``LayerRange(0, n_layers + 2)``.

Initialisation is a pure function of the seed (a private CPU generator, never the global RNG), so
every node that builds the same preset with the same seed holds bit-identical weights.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PRESETS", "Block", "LayerRange", "ModelConfig", "Stage", "build_model"]


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 256
    context: int = 64
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: int = 4
    tied_head: bool = True

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError("d_model must be divisible by n_heads")
        if min(self.vocab_size, self.context, self.d_model, self.n_layers, self.n_heads) < 1:
            raise ValueError("model dimensions must be positive")

    @property
    def n_stages_layers(self) -> int:
        """Length of the flat layer list: embedding + blocks + head."""
        return self.n_layers + 2

    def to_json(self) -> dict[str, int | bool]:
        return asdict(self)


PRESETS: dict[str, ModelConfig] = {
    # ~0.1M parameters: unit tests and the quick benchmark.
    "micro": ModelConfig(context=32, d_model=48, n_layers=2, n_heads=4),
    # ~0.8M parameters: trains on 2 CPU cores in minutes (devnet default).
    "tiny": ModelConfig(context=64, d_model=128, n_layers=4, n_heads=4),
    # ~25M parameters: one GPU.
    "small": ModelConfig(context=256, d_model=512, n_layers=8, n_heads=8),
    # ~110M parameters (GPT-2 small shape, byte-level vocabulary): one GPU per node.
    "base": ModelConfig(context=512, d_model=768, n_layers=12, n_heads=12),
}


@dataclass(frozen=True)
class LayerRange:
    """Half-open slice ``[start, end)`` of the flat layer list."""

    start: int
    end: int

    def check(self, cfg: ModelConfig) -> None:
        if not 0 <= self.start < self.end <= cfg.n_stages_layers:
            raise ValueError(f"layer range {self} outside [0, {cfg.n_stages_layers})")

    def is_first(self) -> bool:
        return self.start == 0

    def is_last(self, cfg: ModelConfig) -> bool:
        return self.end == cfg.n_stages_layers

    @staticmethod
    def full(cfg: ModelConfig) -> LayerRange:
        return LayerRange(0, cfg.n_stages_layers)


class Embedding(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.context, cfg.d_model)

    def forward(self, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Embeddings of ``ids`` (batch x tokens) at positions ``start, start + 1, ...``."""
        positions = torch.arange(start, start + ids.shape[1], device=ids.device)
        out: torch.Tensor = self.tok(ids) + self.pos(positions)
        return out


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.fc = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model)
        self.out = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_cached(x, None)[0]

    def forward_cached(
        self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The block on new tokens ``x`` that follow the ``past`` keys and values (each
        batch x heads x past tokens x head size; None: no past); returns the output and the keys
        and values of past and new tokens together (the cache after this step).

        Without a past this is exactly :meth:`forward`; with one, new token ``i`` attends to
        every past token and to new tokens ``0..i``.
        """
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        heads = (b, t, self.n_heads, d // self.n_heads)
        q, k, v = (z.view(heads).transpose(1, 2) for z in (q, k, v))
        if past is None or past[0].shape[2] == 0:
            att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            k = torch.cat((past[0], k), dim=2)
            v = torch.cat((past[1], v), dim=2)
            if t == 1:  # the one new token sees everything
                att = F.scaled_dot_product_attention(q, k, v)
            else:
                p = k.shape[2] - t
                rows = torch.arange(t, device=x.device).unsqueeze(1)
                mask = torch.arange(p + t, device=x.device).unsqueeze(0) <= rows + p
                att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        out: torch.Tensor = x + self.out(F.gelu(self.fc(self.ln2(x))))
        return out, (k, v)


class Head(nn.Module):
    """Final LayerNorm and LM projection; a tied head borrows the token embedding's weight."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(cfg.d_model)
        self.proj: nn.Linear | None = (
            None if cfg.tied_head else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        )

    def forward(self, x: torch.Tensor, tied_weight: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ln(x)
        if self.proj is not None:
            out: torch.Tensor = self.proj(h)
            return out
        if tied_weight is None:
            raise RuntimeError("a tied head needs the embedding on the same stage")
        return F.linear(h, tied_weight)


class Stage(nn.Module):
    """The layers ``rng`` of a model: token ids or hidden states in, hidden states or logits out."""

    def __init__(self, cfg: ModelConfig, rng: LayerRange) -> None:
        super().__init__()
        rng.check(cfg)
        if cfg.tied_head and rng.is_last(cfg) and not rng.is_first():
            raise ValueError("a tied head must share a stage with the embedding; use tied_head=False")
        self.cfg = cfg
        self.range = rng
        self.layers = nn.ModuleList()
        for i in range(rng.start, rng.end):
            if i == 0:
                self.layers.append(Embedding(cfg))
            elif i == cfg.n_stages_layers - 1:
                self.layers.append(Head(cfg))
            else:
                self.layers.append(Block(cfg))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            if isinstance(layer, Head):
                emb = self.layers[0]
                tied = emb.tok.weight if isinstance(emb, Embedding) else None
                x = layer(x, tied)
            else:
                x = layer(x)
        return x

    def loss(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy (only for a full model)."""
        logits = self(ids)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def build_model(cfg: ModelConfig, seed: int, rng: LayerRange | None = None) -> Stage:
    """Build a stage with weights that depend only on ``(cfg, seed)`` and the layer indices.

    Each layer is initialised from its own generator seeded by ``(seed, layer index)``, so a stage
    holding layers 3..5 has exactly the weights layers 3..5 have in the full model.
    """
    layer_range = rng or LayerRange.full(cfg)
    with torch.device("cpu"):
        stage = Stage(cfg, layer_range)
    std = 0.02
    resid_std = std / math.sqrt(2 * cfg.n_layers)  # GPT-2's scaled init of residual projections
    for offset, layer in enumerate(stage.layers):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + layer_range.start + offset)
        with torch.no_grad():
            for name, p in sorted(layer.named_parameters()):
                if name.endswith("bias"):
                    p.zero_()
                elif ".ln" in f".{name}" or name.startswith("ln"):
                    p.fill_(1.0)
                else:
                    residual = isinstance(layer, Block) and name.split(".")[0] in ("proj", "out")
                    s = resid_std if residual else std
                    p.copy_(torch.randn(p.shape, generator=gen) * s)
    return stage
