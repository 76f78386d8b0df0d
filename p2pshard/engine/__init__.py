"""The torch training engine (the only package that imports torch).

Roles: ``model`` (GPT stages over layer ranges), ``corpus`` + ``genesis`` (the data a network trains
on and its id), ``diloco`` (inner loop, outer step, model hash), ``compression`` (error feedback over
the numpy codec), ``aggregation`` (screening and robust rules), ``checkpoint`` (safetensors + JSON,
atomic, hot snapshots) and ``engine`` (``TorchEngine``, the ``Engine`` the protocol layer calls).
"""

from p2pshard.engine.engine import EngineConfig, TorchEngine, default_device
from p2pshard.engine.genesis import Genesis, Manifest, build_genesis, default_genesis
from p2pshard.engine.model import PRESETS, LayerRange, ModelConfig, build_model

__all__ = [
    "PRESETS",
    "EngineConfig",
    "Genesis",
    "LayerRange",
    "Manifest",
    "ModelConfig",
    "TorchEngine",
    "build_genesis",
    "build_model",
    "default_device",
    "default_genesis",
]
