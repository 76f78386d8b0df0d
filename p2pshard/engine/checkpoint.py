"""Checkpoints: one safetensors file (tensors) whose header metadata carries JSON (everything else).

No pickle anywhere: tensors are read with ``safetensors.numpy`` and the metadata is plain JSON, so a
checkpoint fetched from an untrusted peer can at worst fail to verify. Tensor names are namespaced
(``model/…``, ``outer_momentum/…``, ``error_feedback/…``, ``inner/<param>/exp_avg``…); the metadata
records the round, the model hash, the manifest digest and the model config, and a reader recomputes
the model hash before it trusts anything.

Files are written atomically (temporary file, fsync, rename, fsync of the directory), so a node
killed mid-write (SIGKILL included) finds either the old snapshot or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import safetensors.numpy

__all__ = ["CheckpointError", "CheckpointState", "HotSnapshots", "atomic_write"]

F32 = npt.NDArray[np.float32]
FORMAT = "p2pshard-checkpoint/1"
_META_KEY = "p2pshard"
MAX_CHECKPOINT_BYTES = 4 << 30
MAX_HEADER_BYTES = 64 << 20


class CheckpointError(ValueError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class CheckpointState:
    """Everything a node needs to continue training: grouped tensors plus JSON metadata."""

    groups: Mapping[str, Mapping[str, F32]]  # group ("model", "outer_momentum", ...) -> tensors
    meta: Mapping[str, Any]

    def to_bytes(self) -> bytes:
        flat: dict[str, F32] = {}
        for group, tensors in self.groups.items():
            if "/" in group:
                raise ValueError("group names must not contain '/'")
            for name, arr in tensors.items():
                flat[f"{group}/{name}"] = np.asarray(arr, dtype=np.float32, order="C")
        meta = json.dumps({"format": FORMAT, **self.meta}, sort_keys=True)
        out: bytes = safetensors.numpy.save(flat, metadata={_META_KEY: meta})
        return out

    @staticmethod
    def from_bytes(data: bytes) -> CheckpointState:
        if len(data) > MAX_CHECKPOINT_BYTES:
            raise CheckpointError("checkpoint_too_large")
        meta = _read_metadata(data)
        try:
            flat = safetensors.numpy.load(data)
        except Exception as exc:  # safetensors raises its own SafetensorError
            raise CheckpointError(f"bad_safetensors: {exc}") from exc
        groups: dict[str, dict[str, F32]] = {}
        for key, arr in flat.items():
            group, _, name = key.partition("/")
            if not name or arr.dtype != np.float32:
                raise CheckpointError(f"bad_tensor: {key}")
            groups.setdefault(group, {})[name] = arr
        return CheckpointState(groups, meta)


def _read_metadata(data: bytes) -> dict[str, Any]:
    """Parse our JSON out of the safetensors header (8-byte LE length, then a JSON object)."""
    if len(data) < 8:
        raise CheckpointError("truncated")
    (n,) = struct.unpack_from("<Q", data)
    if n > MAX_HEADER_BYTES or 8 + n > len(data):
        raise CheckpointError("bad_header_length")
    try:
        header = json.loads(data[8 : 8 + n])
        meta = json.loads(header["__metadata__"][_META_KEY])
    except (ValueError, KeyError, TypeError, RecursionError) as exc:  # RecursionError: deep nesting
        raise CheckpointError(f"bad_metadata: {type(exc).__name__}: {str(exc)[:200]}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError("unknown_format")
    for key, kind in _META_TYPES.items():
        if key in meta and not _is(meta[key], kind):
            raise CheckpointError(f"bad_metadata: {key} is not a {kind.__name__}")
    steps = meta.get("inner_steps", {})
    if not all(_is(v, int) for v in steps.values()):
        raise CheckpointError("bad_metadata: inner_steps holds a value that is not a count")
    return meta


_META_TYPES: dict[str, type] = {
    "round": int,
    "seed": int,
    "tokens_trained": int,
    "model_hash": str,
    "manifest_digest": str,
    "model_config": dict,
    "inner_steps": dict,
}
"""The metadata a reader uses, and its JSON type (counts are non-negative integers)."""


def _is(value: Any, kind: type) -> bool:
    if kind is int:
        return type(value) is int and value >= 0  # not a bool, a float or a string of digits
    return isinstance(value, kind)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class HotSnapshots:
    """Snapshots in ``directory`` (``snapshot-<round>.safetensors``), keeping the newest ``keep``.
    When to write one is the round protocol's decision (``Timing.snapshot_interval_s``)."""

    def __init__(self, directory: Path, keep: int = 2) -> None:
        self.directory = directory
        self.keep = max(1, keep)

    def write(self, round_index: int, data: bytes) -> Path:
        path = self.directory / f"snapshot-{round_index:08d}.safetensors"
        atomic_write(path, data)
        for old in self.all()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def all(self) -> list[Path]:
        return sorted(self.directory.glob("snapshot-*.safetensors"))

    def latest(self) -> Path | None:
        snaps = self.all()
        return snaps[-1] if snaps else None
