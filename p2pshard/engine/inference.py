"""Running one layer range for pipeline inference, with per-session KV caches.

A :class:`StageExecutor` holds the layers of one :class:`~p2pshard.engine.model.LayerRange` and
runs them on numpy arrays (what the wire codec gives and takes): token ids or hidden states in,
hidden states or logits out. With a session key it keeps each block's attention keys and values,
so a session's next forward only computes its new tokens. Which sessions exist, how much memory
they may take and when they expire is decided by the sans-IO
:class:`~p2pshard.core.pipeline.sessions.SessionTable`; the executor only stores and drops.

Calls are blocking torch code: one thread at a time (the protocol layer serialises them).

A model with a tied head keeps the LM projection equal to the token embedding; a last range that
does not hold the embedding gets its own copy of the token embedding's weights, built from the same
seed (inference only: training still needs the head and the embedding on one stage).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Hashable

import numpy as np
import numpy.typing as npt
import torch

from p2pshard.core.pipeline.rules import StageSpec
from p2pshard.engine.diloco import model_hash
from p2pshard.engine.model import PRESETS, Block, Embedding, Head, LayerRange, ModelConfig, Stage, build_model

__all__ = ["StageExecutor", "local_generate", "model_id"]

KV = tuple[torch.Tensor, torch.Tensor]


def model_id(cfg: ModelConfig, seed: int) -> str:
    """Names a freshly initialised model: its configuration and seed."""
    text = json.dumps({"config": cfg.to_json(), "seed": seed}, sort_keys=True)
    return "init-" + hashlib.sha256(text.encode()).hexdigest()[:16]


class StageExecutor:
    def __init__(
        self,
        cfg: ModelConfig,
        rng: LayerRange,
        seed: int = 0,
        *,
        max_batch: int = 8,
        device: str | torch.device = "cpu",
        name: str | None = None,
    ) -> None:
        rng.check(cfg)
        self.cfg = cfg
        self.range = rng
        self.seed = seed
        self.device = torch.device(device)
        self._tied: torch.Tensor | None = None
        if cfg.tied_head and rng.is_last(cfg) and not rng.is_first():
            untied = dataclasses.replace(cfg, tied_head=False)
            stage = build_model(untied, seed, rng)
            head = stage.layers[-1]
            assert isinstance(head, Head)
            head.proj = None  # the tied head: the token embedding's weights, below
            emb = build_model(cfg, seed, LayerRange(0, 1)).layers[0]
            assert isinstance(emb, Embedding)
            self._tied = emb.tok.weight.detach().to(self.device)
        else:
            stage = build_model(cfg, seed, rng)
        self.stage: Stage = stage.to(self.device).eval()
        if self._tied is None and cfg.tied_head and rng.is_last(cfg):
            first = self.stage.layers[0]
            assert isinstance(first, Embedding)
            self._tied = first.tok.weight
        n_blocks = sum(isinstance(layer, Block) for layer in self.stage.layers)
        self.spec = StageSpec(
            model_id=name or model_id(cfg, seed),
            layer_start=rng.start,
            layer_end=rng.end,
            total_layers=cfg.n_stages_layers,
            vocab_size=cfg.vocab_size,
            d_model=cfg.d_model,
            context=cfg.context,
            n_heads=cfg.n_heads,
            max_batch=max_batch,
            n_blocks=n_blocks,
        )
        self._caches: dict[Hashable, tuple[int, list[KV]]] = {}
        """Session key -> (tokens cached, each block's keys and values)."""
        self._weights_hash: bytes | None = None

    @classmethod
    def for_preset(cls, preset: str, rng: LayerRange, seed: int = 0, **kwargs: object) -> StageExecutor:
        return cls(PRESETS[preset], rng, seed, **kwargs)  # type: ignore[arg-type]

    def weights_hash(self) -> bytes:
        if self._weights_hash is None:
            params = {k: v.detach().cpu().numpy() for k, v in self.stage.state_dict().items()}
            if self._tied is not None and not self.range.is_first():
                params["tied_head.weight"] = self._tied.detach().cpu().numpy()
            self._weights_hash = model_hash(params)
        return self._weights_hash

    def sessions(self) -> int:
        return len(self._caches)

    def cached_tokens(self, key: Hashable) -> int:
        cache = self._caches.get(key)
        return cache[0] if cache is not None else 0

    def drop(self, key: Hashable) -> None:
        self._caches.pop(key, None)

    @torch.inference_mode()
    def forward(
        self,
        values: npt.NDArray[np.float32],
        start: int = 0,
        key: Hashable | None = None,
        *,
        last_only: bool = False,
    ) -> npt.NDArray[np.float32]:
        """Run the range on ``values`` (token ids batch x tokens, or hidden states batch x
        tokens x d_model) at positions ``start...``. With ``key`` the session's cache is used and
        extended (``start == 0`` starts it afresh); it must hold exactly ``start`` tokens."""
        if self.range.is_first():
            x = torch.from_numpy(np.ascontiguousarray(values)).to(self.device, torch.long)
        else:
            x = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(self.device)
        past: list[KV] | None = None
        if key is not None:
            if start == 0:
                self._caches.pop(key, None)
            else:
                held = self._caches.get(key)
                if held is None or held[0] != start:
                    raise ValueError(f"session cache holds {self.cached_tokens(key)} tokens, not {start}")
                past = held[1]
        new_cache: list[KV] = []
        i = 0
        for layer in self.stage.layers:
            if isinstance(layer, Embedding):
                x = layer(x, start)
            elif isinstance(layer, Block):
                x, kv = layer.forward_cached(x, past[i] if past is not None else None)
                new_cache.append(kv)
                i += 1
            elif isinstance(layer, Head):
                if last_only:
                    x = x[:, -1:]
                x = layer(x, self._tied)
        if key is not None:
            self._caches[key] = (start + int(values.shape[1]), new_cache)
        if last_only and not self.range.is_last(self.cfg):
            x = x[:, -1:]
        out: npt.NDArray[np.float32] = x.float().cpu().numpy()
        return out


@torch.inference_mode()
def local_generate(
    cfg: ModelConfig, seed: int, prompt: list[int], max_new_tokens: int, *, use_cache: bool = True
) -> list[int]:
    """Greedy generation with the whole model in this process (the reference for the network's)."""
    whole = StageExecutor(cfg, LayerRange.full(cfg), seed, max_batch=1)
    tokens = list(prompt)
    key = "local" if use_cache else None
    logits = whole.forward(np.array([tokens], dtype=np.float32), 0, key, last_only=True)
    for _ in range(max_new_tokens):
        nxt = int(np.argmax(logits[0, -1]))
        tokens.append(nxt)
        if len(tokens) >= cfg.context or len(tokens) - len(prompt) >= max_new_tokens:
            break
        if use_cache:
            step = np.array([[nxt]], dtype=np.float32)
            logits = whole.forward(step, len(tokens) - 1, key, last_only=True)
        else:
            logits = whole.forward(np.array([tokens], dtype=np.float32), 0, None, last_only=True)
    return tokens[len(prompt) :]
