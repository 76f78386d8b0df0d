from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from p2pshard.engine.compression import CompressionConfig
from p2pshard.engine.diloco import DiLoCoConfig
from p2pshard.engine.engine import TorchEngine
from p2pshard.engine.genesis import Genesis, default_genesis

torch.set_num_threads(1)

EngineFactory = Callable[..., TorchEngine]


@pytest.fixture(scope="session")
def genesis() -> Genesis:
    return default_genesis()


@pytest.fixture
def make_engine(genesis: Genesis) -> EngineFactory:
    """A micro-model engine on CPU with few inner steps; keyword arguments override config."""

    def make(**overrides: Any) -> TorchEngine:
        cfg: dict[str, Any] = {
            "device": "cpu",
            "diloco": DiLoCoConfig(inner_steps=4, batch_size=8),
            "compression": CompressionConfig(kind="none"),
            "eval_batches": 2,
        }
        cfg.update(overrides)
        return TorchEngine.create("micro", genesis, **cfg)

    return make
