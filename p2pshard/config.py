"""Node configuration from, in increasing precedence: defaults, a TOML file, the environment, flags.

Environment variables are ``P2PSHARD_<FIELD>`` (e.g. ``P2PSHARD_LISTEN``, ``P2PSHARD_KEY``);
list fields take comma-separated values. The TOML file holds the same field names at top level.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_LISTEN = "/ip4/127.0.0.1/tcp/0"


class ConfigError(ValueError):
    """A configuration value is missing, malformed or out of range."""


@dataclass(frozen=True)
class NodeConfig:
    listen: list[str] = field(default_factory=lambda: [DEFAULT_LISTEN])
    key: Path | None = None
    """Key file; created (mode 0600) when absent. None = an ephemeral key."""
    bootstrap: list[str] = field(default_factory=list)
    muxers: list[str] = field(default_factory=lambda: ["yamux", "mplex"])
    max_peers: int = 50
    network_id: str = "devnet"
    blob_store_bytes: int = 2 << 30
    dial_timeout_s: float = 5.0
    gossip_heartbeat_s: float = 1.0
    # training (see p2pshard/protocols/training.py)
    train: bool = False
    preset: str = "tiny"
    rounds: int = 0
    """Stop training after this many rounds (0 = until stopped)."""
    round_s: float = 12.0
    inner_steps: int = 30
    compression: str = ""
    """Pseudo-gradient compression: none, fp16, bf16, int8, int4, topk, sparseloco, lowrank ('' = the
    engine's default, sparseloco: top 88 of every 4096 in 2 bits, decaying error feedback). Part of
    the network's identity: every node of a network uses the same."""
    aggregation: str = ""
    """Robust aggregation rule: mean, trimmed_mean, median, krum, multi_krum, centered_clip ('' = default)."""
    snapshot_dir: Path | None = None
    snapshot_interval_s: float = 120.0
    genesis: Path | None = None
    """Directory written by `p2pshard genesis build` (default: the embedded corpus)."""

    def __post_init__(self) -> None:
        if not self.listen:
            raise ConfigError("listen: at least one multiaddr is needed")
        unknown = set(self.muxers) - {"yamux", "mplex"}
        if unknown or not self.muxers:
            raise ConfigError(f"muxers: choose from yamux, mplex (got {self.muxers})")
        if self.max_peers < 1:
            raise ConfigError("max_peers must be at least 1")
        if self.dial_timeout_s <= 0:
            raise ConfigError("dial_timeout_s must be positive")
        if self.round_s <= 0 or self.inner_steps < 1 or self.rounds < 0:
            raise ConfigError("round_s must be positive, inner_steps >= 1 and rounds >= 0")
        if self.gossip_heartbeat_s <= 0:
            raise ConfigError("gossip_heartbeat_s must be positive")

    @classmethod
    def load(
        cls, file: Path | None = None, env: Mapping[str, str] | None = None, **overrides: Any
    ) -> NodeConfig:
        """Defaults < TOML ``file`` < ``env`` (``P2PSHARD_*``) < ``overrides`` that are not None."""
        values: dict[str, Any] = {}
        if file is not None:
            try:
                values.update(tomllib.loads(file.read_text()))
            except (OSError, ValueError, RecursionError) as exc:  # TOMLDecodeError, UnicodeDecodeError
                raise ConfigError(f"cannot read config file {file}: {type(exc).__name__}: {exc}") from exc
        env = os.environ if env is None else env
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name in fields:
            raw = env.get(f"P2PSHARD_{name.upper()}")
            if raw is not None:
                values[name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - set(fields)
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return cls(**{k: _coerce(k, v, fields[k].type) for k, v in values.items()})


def _coerce(name: str, value: Any, typ: Any) -> Any:
    typ = str(typ)
    try:
        if typ.startswith("list"):
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            return [str(v) for v in value]
        if typ.startswith("Path"):
            return Path(value) if value not in (None, "") else None
        if typ == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if typ == "int":
            return int(value)
        if typ == "float":
            number = float(value)
            if not math.isfinite(number):
                raise ValueError("expected a finite number")
            return number
        return str(value)
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: int(inf), float(10**400)
        raise ConfigError(f"{name}: cannot use {value!r} ({exc})") from exc
