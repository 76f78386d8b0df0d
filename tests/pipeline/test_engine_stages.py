"""The stage executor: cut ranges chained give the whole model's logits, with and without the
KV cache, and cached greedy generation equals generation that recomputes every step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from p2pshard.engine.inference import StageExecutor, local_generate
from p2pshard.engine.model import PRESETS, LayerRange, build_model

CFG = PRESETS["micro"]  # 2 blocks: flat layers [emb, b0, b1, head]
CUTS_2 = [LayerRange(0, 2), LayerRange(2, 4)]
CUTS_4 = [LayerRange(0, 1), LayerRange(1, 2), LayerRange(2, 3), LayerRange(3, 4)]


def _tokens(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, CFG.vocab_size, size=(1, n)).astype(np.float32)


def _whole_logits(tokens: np.ndarray) -> np.ndarray:
    model = build_model(CFG, 0).eval()
    with torch.no_grad():
        out: np.ndarray = model(torch.from_numpy(tokens).long()).numpy()
    return out


@pytest.mark.parametrize("cuts", [CUTS_2, CUTS_4], ids=["2", "4"])
def test_chained_ranges_give_the_whole_models_logits(cuts: list[LayerRange]) -> None:
    tokens = _tokens(12)
    stages = [StageExecutor(CFG, r, 0) for r in cuts]
    x = tokens
    for s in stages:
        x = s.forward(x)
    np.testing.assert_allclose(x, _whole_logits(tokens), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cuts", [CUTS_2, CUTS_4], ids=["2", "4"])
def test_the_kv_cache_gives_the_same_logits_step_by_step(cuts: list[LayerRange]) -> None:
    tokens = _tokens(10)
    whole = _whole_logits(tokens)
    stages = [StageExecutor(CFG, r, 0) for r in cuts]
    # a prefix of 6, then one token at a time, then the last two at once
    pieces = [(0, 6), (6, 7), (7, 8), (8, 10)]
    for a, b in pieces:
        x = tokens[:, a:b]
        for s in stages:
            x = s.forward(x, a, "s")
        np.testing.assert_allclose(x, whole[:, a:b], rtol=1e-4, atol=1e-5)
    assert all(s.cached_tokens("s") == 10 for s in stages)


def test_a_tied_head_without_its_embedding_borrows_a_copy() -> None:
    assert CFG.tied_head
    last = StageExecutor(CFG, LayerRange(3, 4), 0)
    whole = build_model(CFG, 0)
    emb = whole.layers[0]
    assert last._tied is not None
    assert torch.equal(last._tied, emb.tok.weight)  # type: ignore[union-attr]


def test_cached_greedy_generation_equals_recomputing_generation() -> None:
    prompt = [int(t) for t in _tokens(5, seed=3)[0]]
    cached = local_generate(CFG, 0, prompt, 12, use_cache=True)
    plain = local_generate(CFG, 0, prompt, 12, use_cache=False)
    assert len(cached) == 12
    assert cached == plain


def test_generation_stops_at_the_context() -> None:
    prompt = [1] * (CFG.context - 3)
    assert len(local_generate(CFG, 0, prompt, 50)) == 3
