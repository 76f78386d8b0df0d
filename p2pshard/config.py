"""Node configuration from, in increasing precedence: defaults, a TOML file, the environment, flags.

Environment variables are ``P2PSHARD_<FIELD>`` (e.g. ``P2PSHARD_LISTEN``, ``P2PSHARD_KEY``);
list fields take comma-separated values. The TOML file holds the same field names at top level.
The keys that bound what remote peers may use (connections, streams, handshakes, memory, request
timing, the connection manager's watermarks) are described, with their defaults, in specs/limits.md.
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
    """Everything a node is told: build one directly, or with :meth:`load` from a TOML file, the
    environment and flags (``p2pshard start`` and ``join`` do). Every field has a default; a
    network's nodes must agree on ``preset``, ``inner_steps``, ``compression``, ``aggregation``
    and ``genesis`` (they make the network id)::

        NodeConfig(listen=["/ip4/0.0.0.0/tcp/4001"], key=Path("node.key"), train=True)
        NodeConfig(bootstrap=["/ip4/198.51.100.7/tcp/4001/p2p/16Uiu2…"], train=True)
    """

    listen: list[str] = field(default_factory=lambda: [DEFAULT_LISTEN])
    """Multiaddrs to listen on (``/ip4/<address>/tcp/<port>``; port 0 = any free port). The
    default listens on 127.0.0.1 only: nothing is reachable from other machines unless asked."""
    key: Path | None = None
    """Key file; created (mode 0600) when absent. None = an ephemeral key (or ``data_dir``'s)."""
    data_dir: Path | None = None
    """One folder for a node's state: its key (``node.key``), snapshots (``snapshots/``) and
    settings (``config.toml``, read when present), each unless given on its own. Made (mode
    0700) when absent."""
    bootstrap: list[str] = field(default_factory=list)
    """Full addresses (``/ip4/…/tcp/…/p2p/<peer id>``) of nodes to join through; empty = start a
    network."""
    muxers: list[str] = field(default_factory=lambda: ["yamux", "mplex"])
    """Stream multiplexers offered, in order of preference."""
    max_peers: int = 50
    """Stop discovering new peers at this many connections."""
    network_id: str = "devnet"
    """The network's id for a node that does not train (a training node takes its engine's: a
    digest of the genesis manifest and the training rules)."""
    blob_store_bytes: int = 2 << 30
    """Memory for content-addressed blobs (payloads, checkpoints, shards); unpinned ones are
    evicted oldest first beyond it."""
    dial_timeout_s: float = 5.0
    """Time one dial may take."""
    bootstrap_timeout_s: float = 60.0
    """Keep dialling the bootstrap peers this long (saying so every 10 s), then give up."""
    gossip_heartbeat_s: float = 1.0
    """Gossipsub heartbeat (mesh upkeep, IHAVE gossip, score decay)."""
    # limits on what remote peers may use (specs/limits.md); 0 = sized to the machine
    max_inbound_connections: int = 0
    """Connections peers open to us (0 = sized to the machine)."""
    max_outbound_connections: int = 0
    """Connections we open (0 = sized to the machine)."""
    max_connections_per_ip: int = 0
    """Inbound connections from one IP address."""
    max_connections_per_subnet: int = 0
    """Inbound connections from one /24 (IPv4) or /48 (IPv6)."""
    max_streams_per_connection: int = 0
    """Streams the remote side may hold open on one connection (0 = 256)."""
    max_memory_bytes: int = 0
    """Memory that peers can make us fill with buffers (0 = an eighth of the machine's, 128 MiB to 8 GiB)."""
    max_fds: int = 0
    """File descriptors for connections (0 = half the process limit)."""
    max_pending_handshakes: int = 0
    """Inbound connections in their Noise + yamux handshake at once (0 = 32)."""
    max_pending_handshakes_per_ip: int = 0
    """Inbound connections from one IP in their handshake at once (0 = 32)."""
    handshake_timeout_s: float = 5.0
    """Time an inbound connection has to finish its handshake."""
    request_timeout_s: float = 1.0
    """Time a client has to send its whole request once it opened a request stream."""
    request_peer_share: float = 0.25
    """The fraction of a protocol's concurrent request slots one peer may hold."""
    conn_low_water: int = 0
    """Connection manager: trim down to this many connections (0 = ``max_peers``)."""
    conn_high_water: int = 0
    """Connection manager: trim when above this many connections (0 = twice ``max_peers``)."""
    conn_grace_s: float = 30.0
    """A new connection is not trimmed for this long."""
    bootstrap_grace_s: float = 300.0
    """Bootstrap peers are not trimmed for this long after the node starts."""
    # training (see p2pshard/protocols/training.py)
    train: bool = False
    """Train the network's model (``p2pshard start``/``join`` default to True; the library to
    False, a node that only relays, serves and discovers)."""
    preset: str = "tiny"
    """Model size: micro, tiny, small or base."""
    rounds: int = 0
    """Stop training after this many rounds (0 = until stopped)."""
    round_s: float = 12.0
    """Length of one round in seconds (the first node of a network decides; joiners adopt it)."""
    inner_steps: int = 30
    """Local optimizer steps per round (DiLoCo's H)."""
    compression: str = ""
    """Pseudo-gradient compression: none, fp16, bf16, int8, int4, topk, sparseloco, lowrank ('' = the
    engine's default, sparseloco: top 88 of every 4096 in 2 bits, decaying error feedback). Part of
    the network's identity: every node of a network uses the same."""
    aggregation: str = ""
    """Robust aggregation rule: mean, trimmed_mean, median, krum, multi_krum, centered_clip ('' = default)."""
    snapshot_dir: Path | None = None
    """Keep hot snapshots here and resume from the newest on restart (None = none kept)."""
    snapshot_interval_s: float = 120.0
    """Write a snapshot at most this often (also on SIGTERM/Ctrl-C in ``p2pshard start``/``join``)."""
    genesis: Path | None = None
    """Directory written by `p2pshard genesis build` (default: the embedded corpus)."""
    metrics: str = ""
    """``host:port`` to serve Prometheus metrics (``/metrics``) and the live dashboard (``/``) on,
    e.g. ``127.0.0.1:9464`` (port 0 = any free port); empty = no such port is opened."""

    serve_layers: str = ""
    """Serve layers ``A:B`` (``[A, B)`` of the flat list: 0 the embedding, 1..n the blocks, n+1
    the head) of the ``preset`` model for pipeline inference (specs/pipeline.md); empty = none."""

    def __post_init__(self) -> None:
        if self.serve_layers:
            layer_range(self.serve_layers)
        if not self.listen:
            raise ConfigError("listen: at least one multiaddr is needed")
        unknown = set(self.muxers) - {"yamux", "mplex"}
        if unknown or not self.muxers:
            raise ConfigError(f"muxers: choose from yamux, mplex (got {self.muxers})")
        if self.max_peers < 1:
            raise ConfigError("max_peers must be at least 1")
        if self.dial_timeout_s <= 0 or self.bootstrap_timeout_s <= 0:
            raise ConfigError("dial_timeout_s and bootstrap_timeout_s must be positive")
        if self.round_s < 0.5 or self.inner_steps < 1 or self.rounds < 0:
            raise ConfigError("round_s must be at least 0.5 s, inner_steps >= 1 and rounds >= 0")
        if self.gossip_heartbeat_s <= 0:
            raise ConfigError("gossip_heartbeat_s must be positive")
        for name in _LIMIT_COUNTS:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 (sized to the machine) or positive")
        if self.handshake_timeout_s <= 0 or self.request_timeout_s <= 0:
            raise ConfigError("handshake_timeout_s and request_timeout_s must be positive")
        if not 0 < self.request_peer_share <= 1:
            raise ConfigError("request_peer_share must be in (0, 1]")
        if self.conn_high_water and self.conn_low_water > self.conn_high_water:
            raise ConfigError("conn_low_water must not exceed conn_high_water")
        if self.metrics:
            host, sep, port = self.metrics.rpartition(":")
            if not sep or not host or not port.isdigit() or int(port) > 65535:
                raise ConfigError(f"metrics: want host:port (e.g. 127.0.0.1:9464), not {self.metrics!r}")
        if self.conn_grace_s < 0 or self.bootstrap_grace_s < 0:
            raise ConfigError("conn_grace_s and bootstrap_grace_s must not be negative")

    @classmethod
    def load(
        cls, file: Path | None = None, env: Mapping[str, str] | None = None, **overrides: Any
    ) -> NodeConfig:
        """Defaults < TOML ``file`` < ``env`` (``P2PSHARD_*``) < ``overrides`` that are not None."""
        values: dict[str, Any] = {}
        env = os.environ if env is None else env
        data_dir = overrides.get("data_dir") or env.get("P2PSHARD_DATA_DIR")
        if file is None and data_dir and (Path(data_dir) / "config.toml").is_file():
            file = Path(data_dir) / "config.toml"
        if file is not None:
            try:
                values.update(tomllib.loads(file.read_text()))
            except (OSError, ValueError, RecursionError) as exc:  # TOMLDecodeError, UnicodeDecodeError
                raise ConfigError(f"cannot read config file {file}: {type(exc).__name__}: {exc}") from exc
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name in fields:
            raw = env.get(f"P2PSHARD_{name.upper()}")
            if raw is not None:
                values[name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - set(fields)
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
        if values.get("data_dir"):
            folder = Path(values["data_dir"])
            values.setdefault("key", folder / "node.key")
            values.setdefault("snapshot_dir", folder / "snapshots")
        return cls(**{k: _coerce(k, v, fields[k].type) for k, v in values.items()})


_LIMIT_COUNTS = (
    "max_inbound_connections",
    "max_outbound_connections",
    "max_connections_per_ip",
    "max_connections_per_subnet",
    "max_streams_per_connection",
    "max_memory_bytes",
    "max_fds",
    "max_pending_handshakes",
    "max_pending_handshakes_per_ip",
    "conn_low_water",
    "conn_high_water",
)


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


def layer_range(text: str) -> tuple[int, int]:
    """``"A:B"`` -> ``(A, B)`` with ``0 <= A < B``; ConfigError otherwise."""
    start, sep, end = text.partition(":")
    if not sep or not start.strip().isdigit() or not end.strip().isdigit() or int(start) >= int(end):
        raise ConfigError(f"serve_layers: want A:B with 0 <= A < B (e.g. 0:3), not {text!r}")
    return int(start), int(end)
