"""Fuzz the loaders of files a user or a peer hands us: checkpoints (safetensors + JSON metadata,
fetched from peers), the genesis manifest (fetched or built), and the node's TOML config file and
environment. Typed errors: CheckpointError, GenesisError, ConfigError."""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st

from p2pshard.config import ConfigError, NodeConfig
from p2pshard.engine.checkpoint import CheckpointError, CheckpointState
from p2pshard.engine.genesis import GenesisError, Manifest, canonical_json, default_genesis
from tests.fuzz.fuzzing import FUZZ, hostile

# ------------------------------------------------------------------------------- checkpoints

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
metas = st.fixed_dictionaries(
    {},
    optional={
        "round": st.integers(0, 1 << 40) | json_values,
        "model_hash": st.just("ab" * 32) | json_values,
        "manifest_digest": st.just("cd" * 32) | json_values,
        "model_config": st.just({"d_model": 8, "n_layers": 1}) | json_values,
        "seed": st.integers(0, 100) | json_values,
        "inner_steps": st.dictionaries(st.sampled_from(["w", "b"]), st.integers(0, 99), max_size=2)
        | json_values,
        "tokens_trained": st.integers(0, 1 << 40) | json_values,
    },
)
shapes = st.lists(st.integers(0, 4), max_size=3).map(tuple)


@st.composite
def _checkpoints(draw: st.DrawFn) -> bytes:
    groups: dict[str, dict[str, np.ndarray]] = {}
    names = st.sampled_from(["model", "outer_momentum", "inner"])
    for group in draw(st.lists(names, max_size=2, unique=True)):
        groups[group] = {
            name: np.full(draw(shapes), 0.5, dtype=np.float32)
            for name in draw(st.lists(st.sampled_from(["w", "b", "w/exp_avg"]), max_size=2, unique=True))
        }
    return CheckpointState(groups, draw(metas)).to_bytes()


def _header(obj: object, rest: bytes = b"") -> bytes:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return struct.pack("<Q", len(raw)) + raw + rest


_META_HEAD = '{"format": "p2pshard-checkpoint/1", '
META_KEYS = {
    "round": int,
    "seed": int,
    "tokens_trained": int,
    "model_hash": str,
    "manifest_digest": str,
    "model_config": dict,
    "inner_steps": dict,
}


@FUZZ
@given(hostile(_checkpoints()))
# json nested deeper than the interpreter's recursion limit: RecursionError, not CheckpointError
@example(_header(b"[" * 100_000))
@example(_header({"__metadata__": {"p2pshard": "[" * 100_000}}))
# an integer of 5000 digits: int() refuses it with a plain ValueError (not a JSONDecodeError)
@example(_header({"__metadata__": {"p2pshard": _META_HEAD + '"round": ' + "9" * 5000 + "}"}}))
# metadata of the wrong type, which a reader would trip on later (int("x"), float([]), ...)
@example(_header({"__metadata__": {"p2pshard": _META_HEAD + '"round": "7"}'}}))
@example(_header({"__metadata__": {"p2pshard": _META_HEAD + '"inner_steps": {"w": []}}'}}))
def test_checkpoint_metadata(data: bytes) -> None:
    try:
        state = CheckpointState.from_bytes(data)
    except CheckpointError:
        return
    for key, kind in META_KEYS.items():
        if key in state.meta:
            value = state.meta[key]
            assert isinstance(value, kind) and not isinstance(value, bool), key
            if kind is int:
                assert value >= 0, key
    for group, tensors in state.groups.items():
        assert group and "/" not in group
        for arr in tensors.values():
            assert arr.dtype == np.float32


# ---------------------------------------------------------------------------------- genesis

GENESIS = default_genesis(n_shards=4, shard_size=64)


@st.composite
def _manifests(draw: st.DrawFn) -> bytes:
    base = GENESIS.manifest.to_json()
    n_train = draw(st.integers(1, 3))
    hashes = [draw(st.binary(min_size=32, max_size=32)).hex() for _ in range(n_train + 1)]
    sizes = {h: draw(st.integers(1, 1 << 40)) for h in hashes}
    m = Manifest(draw(st.text(max_size=10)), tuple(hashes[:n_train]), tuple(hashes[n_train:]), sizes)
    return m.to_bytes() if draw(st.booleans()) else canonical_json(base)


@FUZZ
@given(hostile(_manifests()))
@example(b"[" * 100_000)
@example(b'{"format": "p2pshard-genesis/1", "x": ' + b"1" * 5000 + b"}")
def test_genesis_manifest(data: bytes) -> None:
    try:
        m = Manifest.from_bytes(data)
    except GenesisError:
        return
    assert m.to_bytes() == data and m.train_shards
    assert all(type(m.shard_sizes[h]) is int and m.shard_sizes[h] > 0 for h in m.shard_sizes)


# ----------------------------------------------------------------------------------- config

_DIR = Path(tempfile.mkdtemp(prefix="p2pshard-fuzz-config-"))
_FILE = _DIR / "node.toml"

toml_values = st.sampled_from(
    [
        '"x"',
        "1",
        "-1",
        "0",
        "1.5",
        "inf",
        "nan",
        "-inf",
        "true",
        "false",
        '["a", "b"]',
        "[1, 2]",
        "1979-05-27T07:32:00Z",
        "{a = 1}",
        "1e400",
        "9" * 30,
        '""',
    ]
)
fields = st.sampled_from(
    [
        "listen",
        "key",
        "bootstrap",
        "muxers",
        "max_peers",
        "network_id",
        "blob_store_bytes",
        "dial_timeout_s",
        "gossip_heartbeat_s",
        "train",
        "preset",
        "rounds",
        "round_s",
        "inner_steps",
        "compression",
        "aggregation",
        "snapshot_dir",
        "snapshot_interval_s",
        "genesis",
        "fault",
        "unknown",
    ]
)
tomls = st.lists(st.tuples(fields, toml_values), max_size=4).map(
    lambda kv: "\n".join(f"{k} = {v}" for k, v in dict(kv).items()).encode()
)
envs = st.dictionaries(
    fields.map(lambda f: f"P2PSHARD_{f.upper()}"),
    st.sampled_from(["1", "-5", "x", "true", "nan", "inf", "1e400", "", "a,b", "yamux"]),
    max_size=3,
)


@FUZZ
@given(hostile(tomls, max_size=512), envs)
@example(b"max_peers = inf", {})
@example(b"round_s = nan", {})
@example(b"dial_timeout_s = " + b"9" * 400, {})
@example(b"\xff\xfe", {})
@example(b"a = " + b"[" * 5000, {})
@example(b"", {"P2PSHARD_DIAL_TIMEOUT_S": "nan"})
def test_config_file(data: bytes, env: dict[str, str]) -> None:
    _FILE.write_bytes(data)
    try:
        cfg = NodeConfig.load(_FILE, env=env)
    except ConfigError:
        return
    for name in ("dial_timeout_s", "gossip_heartbeat_s", "round_s", "snapshot_interval_s"):
        value = getattr(cfg, name)
        assert isinstance(value, float) and np.isfinite(value), name
