"""The decoder: deterministic init, and layer-range stages that compose into the full model."""

from __future__ import annotations

import pytest
import torch

from p2pshard.engine.model import PRESETS, LayerRange, ModelConfig, build_model

CFG = PRESETS["micro"]


def test_init_depends_only_on_seed() -> None:
    a, b, c = build_model(CFG, 1), build_model(CFG, 1), build_model(CFG, 2)
    for (na, pa), (_, pb), (_, pc) in zip(
        a.named_parameters(), b.named_parameters(), c.named_parameters(), strict=True
    ):
        assert torch.equal(pa, pb), na
        if pa.dim() == 2:
            assert not torch.equal(pa, pc), na


def test_stages_compose_to_the_full_model() -> None:
    cfg = ModelConfig(context=16, d_model=32, n_layers=3, n_heads=2, tied_head=False)
    full = build_model(cfg, 5)
    cuts = [LayerRange(0, 2), LayerRange(2, 4), LayerRange(4, 5)]
    stages = [build_model(cfg, 5, r) for r in cuts]
    ids = torch.randint(0, cfg.vocab_size, (2, cfg.context), generator=torch.Generator().manual_seed(0))
    x = ids
    for s in stages:
        x = s(x)
    torch.testing.assert_close(x, full(ids), rtol=0, atol=1e-6)
    assert x.shape == (2, cfg.context, cfg.vocab_size)


def test_causal_and_range_checks() -> None:
    m = build_model(CFG, 0)
    ids = torch.randint(0, 256, (1, CFG.context), generator=torch.Generator().manual_seed(1))
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 256
    torch.testing.assert_close(m(ids)[:, :-1], m(changed)[:, :-1])  # the future stays unseen
    with pytest.raises(ValueError, match="outside"):
        build_model(CFG, 0, LayerRange(0, CFG.n_layers + 3))
    with pytest.raises(ValueError, match="tied head"):
        build_model(CFG, 0, LayerRange(2, CFG.n_layers + 2))
