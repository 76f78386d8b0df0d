"""A tiny numpy engine implementing the Engine protocol, so round-protocol tests run in seconds.

Its "model" is a vector; an update is a deterministic vector per (peer, round); aggregation is
the mean in contributor order; the model hash is SHA-256 of the vector's bytes. ``fault`` makes
it misbehave the way a Byzantine node would: ``nan`` (non-finite values) or ``shape`` (a payload
of the wrong length).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import numpy as np

from p2pshard.protocols.engine_api import LocalUpdate, RoundOutcome, UpdateRejected

DIM = 64
SHARD = b"fake shard"


class _Genesis:
    shards = {hashlib.sha256(SHARD).hexdigest(): SHARD}

    def shard_bytes(self, shard_id: str) -> bytes:
        return self.shards[shard_id]


class FakeEngine:
    genesis = _Genesis()

    def __init__(self, peer: str, fault: str = "") -> None:
        self.peer = peer
        self.fault = fault
        self.master = np.zeros(DIM, dtype=np.float32)
        self._round = 0
        self.applied: list[tuple[int, tuple[str, ...]]] = []

    @property
    def network_id(self) -> str:
        return "fake"

    @property
    def round(self) -> int:
        return self._round

    def model_hash(self) -> bytes:
        return hashlib.sha256(self.master.tobytes() + self._round.to_bytes(8, "big")).digest()

    def assigned_shard(self, peer_id: str, round_index: int) -> str:
        return hashlib.sha256(SHARD).hexdigest()

    def train_round(self, round_index: int, shard: bytes) -> LocalUpdate:
        seed = int.from_bytes(hashlib.sha256(f"{self.peer}/{round_index}".encode()).digest()[:4], "big")
        update = np.random.default_rng(seed).normal(0, 0.01, DIM).astype(np.float32)
        if self.fault == "nan":
            update[3] = np.nan
        if self.fault == "shape":
            update = np.zeros(DIM + 5, dtype=np.float32)
        payload = update.tobytes()
        return LocalUpdate(
            round=round_index,
            payload=payload,
            content_hash=hashlib.sha256(payload).digest(),
            base_model_hash=self.model_hash(),
            shard=self.assigned_shard(self.peer, round_index),
            tokens=100,
            loss=1.0 / (round_index + 1),
            inner_steps=1,
            dense_bytes=len(payload),
        )

    def _check(self, payload: bytes) -> None:
        if len(payload) != DIM * 4:
            raise UpdateRejected("wrong_shape", f"{len(payload)} bytes")
        if not np.isfinite(np.frombuffer(payload, dtype=np.float32)).all():
            raise UpdateRejected("non_finite")

    def apply_round(self, round_index: int, payloads: Mapping[str, bytes]) -> RoundOutcome:
        assert round_index == self._round, (round_index, self._round)
        accepted, rejected = [], {}
        rows = []
        for contributor in sorted(payloads):
            try:
                self._check(payloads[contributor])
            except UpdateRejected as exc:
                rejected[contributor] = exc.reason
                continue
            accepted.append(contributor)
            rows.append(np.frombuffer(payloads[contributor], dtype=np.float32))
        if rows:
            self.master = self.master - np.mean(rows, axis=0).astype(np.float32)
        self._round += 1
        self.applied.append((round_index, tuple(accepted)))
        return RoundOutcome(
            round=round_index,
            model_hash=self.model_hash(),
            accepted=tuple(accepted),
            rejected=rejected,
            selected=tuple(accepted),
        )

    def checkpoint_bytes(self) -> bytes:
        return json.dumps({"round": self._round, "master": self.master.tolist()}).encode()

    def load_checkpoint_bytes(self, data: bytes) -> None:
        state = json.loads(data)
        self.master = np.array(state["master"], dtype=np.float32)
        self._round = int(state["round"])
