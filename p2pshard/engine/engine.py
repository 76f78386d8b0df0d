"""``TorchEngine``: the :class:`~p2pshard.protocols.engine_api.Engine` the protocol layer calls.

It owns one model on one device and all the state a DiLoCo node carries between rounds: the
shared master weights and outer momentum (numpy, bit-reproducible), the inner AdamW state and the
error-feedback residual (node-local). It does no networking and reads no clock; every method is a
blocking call meant to run in a worker thread, one at a time.

Construction::

    engine = TorchEngine.create(preset="tiny", genesis=default_genesis(), seed=0)
    engine = TorchEngine.from_checkpoint_bytes(data, genesis=..., config=...)
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from p2pshard.core.wire.tensor import DecodeLimits, SparseTensor, TensorDecodeError, decode_sparse, sum_rows
from p2pshard.engine.aggregation import AggregationConfig, aggregate, dense_rows, screen_update
from p2pshard.engine.checkpoint import CheckpointError, CheckpointState, atomic_write
from p2pshard.engine.compression import DEFAULT as DEFAULT_COMPRESSION
from p2pshard.engine.compression import CompressionConfig, Compressor
from p2pshard.engine.diloco import DiLoCoConfig, OuterNesterov, inner_train, model_hash, restore_norm
from p2pshard.engine.genesis import Genesis, Manifest, assign_shard, canonical_json, load_shard, sha256_hex
from p2pshard.engine.model import PRESETS, ModelConfig, Stage, build_model
from p2pshard.protocols.engine_api import LocalUpdate, RoundOutcome, UpdateRejected

__all__ = ["EngineConfig", "TorchEngine", "default_device", "diloco_for", "network_id", "sampler_seed"]

F32 = npt.NDArray[np.float32]
_SAMPLER_TAG = b"p2pshard/batch-sampler/v1\x00"
_NETWORK_TAG = b"p2pshard/network-id/v1\x00"
# On the wire a pseudo-gradient is one flat float32 tensor: every parameter, by sorted name,
# concatenated. Chunks then span small tensors (biases, norms) too, so top-k compresses evenly.
# Low-rank compression needs the matrices, so it sends one tensor per parameter instead; a receiver
# accepts either form whatever its own compression is.
UPDATE_TENSOR = "update"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def diloco_for(preset: str, compression: CompressionConfig, **overrides: Any) -> DiLoCoConfig:
    """The preset's DiLoCo settings with the outer step ``compression`` needs: SparseLoCo steps on
    the sum with no momentum (``diloco.SPARSE_OUTER``), every other kind on the preset's own."""
    return DiLoCoConfig.for_preset(preset, sparse=compression.sparseloco, **overrides)


@dataclass(frozen=True)
class EngineConfig:
    """Everything that shapes training. ``model``, ``seed``, ``diloco``, ``compression``,
    ``aggregation`` and ``norm_bound_factor`` are the network's rules (:func:`network_id`); the
    rest is a node's own choice. The defaults are the devnet's: tiny, SparseLoCo and its outer step."""

    model: ModelConfig = field(default_factory=lambda: PRESETS["tiny"])
    seed: int = 0
    diloco: DiLoCoConfig = field(default_factory=lambda: diloco_for("tiny", DEFAULT_COMPRESSION))
    compression: CompressionConfig = DEFAULT_COMPRESSION
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    # Largest acceptable pseudo-gradient norm, as a multiple of the most that AdamW can move the
    # weights in one round (about lr per coordinate per step); inf disables the check.
    norm_bound_factor: float = 8.0
    device: str = field(default_factory=default_device)
    node_salt: bytes = b""  # decorrelates batch sampling between nodes on the same shard
    eval_batches: int = 8


def network_id(manifest: Manifest, cfg: EngineConfig) -> str:
    """16 hex digits of SHA-256 over the manifest digest and the network's rules.

    Why the rules too: nodes that train the same data with a different model, outer step,
    compression, aggregation or screening bound would compute different models from the same
    contributions and fork silently. With the rules in the id they are different networks (their
    topics differ), and a node that dials one says so by name.
    """
    rules = {
        "manifest": manifest.digest,
        "model": cfg.model.to_json(),
        "seed": cfg.seed,
        "diloco": asdict(cfg.diloco),
        "compression": asdict(cfg.compression),
        "aggregation": asdict(cfg.aggregation),
        "norm_bound_factor": cfg.norm_bound_factor,
    }
    return hashlib.sha256(_NETWORK_TAG + canonical_json(rules)).hexdigest()[:16]


def sampler_seed(node_salt: bytes, round_index: int, shard_id: str) -> int:
    """The seed of the batch sampler of a round's inner steps. A node's salt is its base58 peer id
    (``node.py``), so any validator can recompute the windows a contributor trained on
    (specs/work.md, "The Gauntlet score")."""
    h = hashlib.sha256(_SAMPLER_TAG + node_salt + round_index.to_bytes(8, "big") + shard_id.encode()).digest()
    return int.from_bytes(h[:8], "big") & ((1 << 63) - 1)


def _scaled(row: F32 | SparseTensor, weight: float) -> F32 | SparseTensor:
    w = np.float32(weight)
    if isinstance(row, SparseTensor):
        return SparseTensor(row.shape, row.index, np.multiply(row.values, w, dtype=np.float32))
    return np.multiply(row, w, dtype=np.float32)


def l2_norm(vector: F32, block: int = 1 << 20) -> float:
    """The L2 norm in float64, one cache-sized block at a time (no 8-byte copy of the vector)."""
    total = 0.0
    for start in range(0, vector.size, block):
        part = vector[start : start + block].astype(np.float64)
        total += float(np.dot(part, part))
    return float(np.sqrt(total))


@dataclass(frozen=True)
class EngineStats:
    """What :meth:`TorchEngine.stats` reports (for embedders and benchmarks; not part of Engine)."""

    round: int  # next round to train; rounds before it are applied
    model_hash: bytes
    parameters: int
    tokens_trained: int
    bytes_sent: int  # payload bytes produced by train_round (what a node serves)
    dense_bytes_equivalent: int  # what those payloads would have cost as raw fp32
    last_loss: float | None
    device: str


class TorchEngine:
    def __init__(self, cfg: EngineConfig, genesis: Genesis) -> None:
        if cfg.model.vocab_size != genesis.manifest.vocab_size:
            raise ValueError("model vocabulary does not match the manifest's tokenizer")
        self.cfg = cfg
        self.genesis = genesis
        self.device = torch.device(cfg.device)
        self.model: Stage = build_model(cfg.model, cfg.seed).to(self.device)
        self.names = sorted(n for n, _ in self.model.named_parameters())
        self._params = dict(self.model.named_parameters())
        self.master: dict[str, F32] = {
            n: p.detach().cpu().numpy().astype(np.float32, copy=True) for n, p in self._params.items()
        }
        self.shapes = {n: tuple(a.shape) for n, a in self.master.items()}
        self.n_params = sum(a.size for a in self.master.values())
        self.wire_shapes = {UPDATE_TENSOR: (self.n_params,)}
        d = cfg.diloco
        self.inner_opt = torch.optim.AdamW(
            [self._params[n] for n in self.names],
            lr=d.inner_lr,
            betas=d.betas,
            weight_decay=d.weight_decay,
        )
        self.outer = OuterNesterov(d.outer_lr, d.outer_momentum, self.shapes)
        self._sum_out: F32 | None = None  # the sum of a round's rows, kept from round to round
        self.compressor = Compressor(cfg.compression)
        self.limits = DecodeLimits(
            max_bytes=8 * self.n_params + (1 << 20),
            max_tensors=len(self.names),
            max_elements=self.n_params,
            max_decode_work=64 * self.n_params,
        )
        self.max_update_norm = (
            cfg.norm_bound_factor * d.inner_steps * d.inner_lr * float(np.sqrt(self.n_params))
        )
        self._network_id = network_id(genesis.manifest, cfg)
        self._round = 0
        self._hash = model_hash(self.master)
        self._tokens = 0
        self._bytes_sent = 0
        self._dense_bytes = 0
        self._last_loss: float | None = None

    @classmethod
    def create(
        cls, preset: str = "tiny", genesis: Genesis | None = None, seed: int = 0, **overrides: Any
    ) -> TorchEngine:
        """An engine for a named model preset; ``overrides`` are :class:`EngineConfig` fields."""
        from p2pshard.engine.genesis import default_genesis

        if "diloco" not in overrides:
            compression = overrides.get("compression", DEFAULT_COMPRESSION)
            overrides["diloco"] = diloco_for(preset, compression)
        cfg = EngineConfig(model=PRESETS[preset], seed=seed, **overrides)
        return cls(cfg, genesis or default_genesis())

    @classmethod
    def from_checkpoint_bytes(
        cls, data: bytes, genesis: Genesis, cfg: EngineConfig | None = None
    ) -> TorchEngine:
        state = CheckpointState.from_bytes(data)
        try:
            model_cfg = ModelConfig(**state.meta["model_config"])
            seed = int(state.meta["seed"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError("bad_model_config") from exc
        base = cfg or EngineConfig()
        engine = cls(replace(base, model=model_cfg, seed=seed), genesis)
        engine._restore(state)
        return engine

    # ------------------------------------------------------------------------------ identity

    @property
    def network_id(self) -> str:
        return self._network_id

    @property
    def round(self) -> int:
        return self._round

    def model_hash(self) -> bytes:
        return self._hash

    def assigned_shard(self, peer_id: str, round_index: int) -> str:
        return assign_shard(self.genesis.manifest, peer_id, round_index)

    # ------------------------------------------------------------------------------ training

    def train_round(self, round_index: int, shard: bytes) -> LocalUpdate:
        if round_index < self._round:
            raise ValueError(f"round {round_index} is already applied (next is {self._round})")
        shard_id = sha256_hex(shard)
        if shard_id not in self.genesis.manifest.train_shards:
            raise ValueError("shard is not a training shard of this network's manifest")
        tokens = torch.from_numpy(load_shard(shard, shard_id).astype(np.int64))
        self._load_master_into_model()
        gen = torch.Generator().manual_seed(self._sampler_seed(round_index, shard_id))
        loss = inner_train(self.model, self.inner_opt, tokens, self.cfg.diloco, gen, self.device)
        local = {n: self._params[n].detach().cpu().numpy() for n in self.names}
        diffs = {n: np.subtract(self.master[n], local[n], dtype=np.float32) for n in self.names}
        if self.cfg.compression.per_tensor:
            encoded = self.compressor.encode(diffs, self.limits)
        else:
            pseudo = np.concatenate([diffs[n].reshape(-1) for n in self.names])
            encoded = self.compressor.encode({UPDATE_TENSOR: pseudo}, self.limits)
        d = self.cfg.diloco
        n_tokens = d.inner_steps * d.batch_size * self.cfg.model.context
        self._tokens += n_tokens
        self._bytes_sent += len(encoded.payload)
        self._dense_bytes += encoded.dense_bytes
        self._last_loss = loss
        return LocalUpdate(
            round=round_index,
            payload=encoded.payload,
            content_hash=hashlib.sha256(encoded.payload).digest(),
            base_model_hash=self._hash,
            shard=shard_id,
            tokens=n_tokens,
            loss=loss,
            inner_steps=d.inner_steps,
            dense_bytes=encoded.dense_bytes,
        )

    def _sampler_seed(self, round_index: int, shard_id: str) -> int:
        return sampler_seed(self.cfg.node_salt, round_index, shard_id)

    def _load_master_into_model(self) -> None:
        with torch.no_grad():
            for n in self.names:
                self._params[n].copy_(torch.from_numpy(self.master[n]))

    # ------------------------------------------------------------------------------ aggregation

    def _screen(self, payload: bytes) -> F32 | SparseTensor:
        try:
            tensors = decode_sparse(payload, self.limits)
        except TensorDecodeError as exc:
            raise UpdateRejected(f"decode_{exc.reason}", exc.detail) from exc
        shapes = self.wire_shapes if UPDATE_TENSOR in tensors else self.shapes
        return screen_update(tensors, shapes, self.max_update_norm)

    def check_update(self, payload: bytes) -> None:
        self._screen(payload)

    def decoded_update(self, payload: bytes) -> F32:
        """A payload screened like a contribution, as one dense flat vector in sorted-name order
        (what the Gauntlet scores). Raises UpdateRejected as :meth:`check_update` does."""
        row = self._screen(payload)
        return row.dense() if isinstance(row, SparseTensor) else row

    def apply_round(
        self, round_index: int, payloads: Mapping[str, bytes], weights: Mapping[str, float] | None = None
    ) -> RoundOutcome:
        """``weights``: contributor -> verification weight (specs/work.md; a contributor not named
        weighs 1.0). A payload of weight 0 is screened (and counted as accepted) but does not
        move the model; None weighs every payload 1.0, as before the Gauntlet."""
        if round_index < self._round:
            raise ValueError(f"round {round_index} is already applied (next is {self._round})")
        rows: list[F32 | SparseTensor] = []
        row_weights: list[float] = []
        accepted: list[str] = []
        rejected: dict[str, str] = {}
        for contributor in sorted(payloads):  # the order every node uses
            try:
                row = self._screen(payloads[contributor])
            except UpdateRejected as exc:
                rejected[contributor] = exc.reason
                continue
            accepted.append(contributor)
            weight = 1.0 if weights is None else float(weights.get(contributor, 1.0))
            if not weight >= 0.0 or weight == float("inf"):
                raise ValueError(f"weight of {contributor} must be finite and >= 0")
            if weight > 0.0:
                rows.append(row)
                row_weights.append(weight)
        selected: tuple[str, ...] = ()
        norm = 0.0
        entered = [c for c in accepted if weights is None or weights.get(c, 1.0) > 0.0]
        if rows:
            vector, chosen = self._aggregate(rows, row_weights)
            selected = tuple(entered[i] for i in chosen)
            norm = l2_norm(vector)
            self.outer.step(self.master, self._unflatten(vector))
            self._hash = model_hash(self.master)
        self._load_master_into_model()
        self._round = round_index + 1
        return RoundOutcome(round_index, self._hash, tuple(accepted), rejected, selected, norm)

    def _aggregate(
        self, rows: list[F32 | SparseTensor], weights: Sequence[float]
    ) -> tuple[F32, Sequence[int]]:
        """The vector the outer step applies, and which rows it took (every weight is > 0)."""
        d = self.cfg.diloco
        uniform = all(w == 1.0 for w in weights)
        if d.outer_sum and self.cfg.aggregation.rule == "mean" and not d.norm_restore:
            # The sum of the contributions (SparseLoCo): float32 from +0.0 in contributor order,
            # touching only the kept elements of sparse rows; each scaled by its weight.
            if self._sum_out is None:
                self._sum_out = np.empty(self.n_params, dtype=np.float32)
            if not uniform:
                rows = [_scaled(r, w) for r, w in zip(rows, weights, strict=True)]
            return sum_rows(rows, self.n_params, out=self._sum_out), range(len(rows))
        stacked = dense_rows(rows)
        result = aggregate(stacked, self.cfg.aggregation, None if uniform else weights)
        vector = result.vector
        if d.norm_restore:
            vector, _ = restore_norm(vector, stacked[list(result.selected)])
        if d.outer_sum:  # elementwise float32: the same bits on every node
            vector = np.multiply(vector, np.float32(len(result.selected)), dtype=np.float32)
        return vector, result.selected

    def _unflatten(self, flat: F32) -> dict[str, F32]:
        out: dict[str, F32] = {}
        offset = 0
        for n in self.names:
            size = self.master[n].size
            out[n] = flat[offset : offset + size].reshape(self.shapes[n])
            offset += size
        return out

    # ------------------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss of the master weights on fixed, evenly spaced windows of the eval shards."""
        ctx = self.cfg.model.context
        batch = self.cfg.diloco.batch_size
        weights = {n: torch.from_numpy(self.master[n]).to(self.device) for n in self.names}
        windows: list[torch.Tensor] = []
        for shard_id in self.genesis.manifest.eval_shards:
            toks = torch.from_numpy(self.genesis.tokens(shard_id).astype(np.int64))
            per = (self.cfg.eval_batches * batch) // len(self.genesis.manifest.eval_shards) or 1
            starts = torch.linspace(0, toks.numel() - ctx - 2, per).long()
            windows.extend(toks[s : s + ctx + 1] for s in starts.tolist())
        data = torch.stack(windows).to(self.device)
        self.model.eval()
        total = 0.0
        for i in range(0, data.shape[0], batch):
            chunk = data[i : i + batch]
            logits = torch.func.functional_call(self.model, weights, (chunk[:, :-1],))
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="sum"
            )
            total += float(loss)
        return total / (data.shape[0] * ctx)

    # ------------------------------------------------------------------------------ checkpoints

    def _state(self) -> CheckpointState:
        inner: dict[str, F32] = {}
        steps: dict[str, int] = {}
        for n in self.names:
            st = self.inner_opt.state.get(self._params[n])
            if st:
                inner[f"{n}/exp_avg"] = st["exp_avg"].detach().cpu().numpy()
                inner[f"{n}/exp_avg_sq"] = st["exp_avg_sq"].detach().cpu().numpy()
                steps[n] = int(st["step"])
        meta = {
            "round": self._round,
            "model_hash": self._hash.hex(),
            "manifest_digest": self.genesis.manifest.digest,
            "model_config": self.cfg.model.to_json(),
            "seed": self.cfg.seed,
            "inner_steps": steps,
            "tokens_trained": self._tokens,
        }
        groups = {
            "model": self.master,
            "outer_momentum": self.outer.momentum,
            "error_feedback": self._residual_by_name(),
            "lowrank_subspace": dict(self.compressor.subspace),
            "inner": inner,
        }
        return CheckpointState(groups, meta)

    def checkpoint_bytes(self) -> bytes:
        return self._state().to_bytes()

    def _restore(self, state: CheckpointState) -> None:
        meta = state.meta
        if meta.get("manifest_digest") != self.genesis.manifest.digest:
            raise CheckpointError("manifest_mismatch")
        if meta.get("model_config") != self.cfg.model.to_json():
            raise CheckpointError("model_config_mismatch")
        model = self._check_group(state, "model", required=True)
        if model_hash(model).hex() != meta.get("model_hash"):
            raise CheckpointError("model_hash_mismatch")
        momentum = self._check_group(state, "outer_momentum", required=True)
        residual = self._check_group(state, "error_feedback", required=False)
        inner = state.groups.get("inner", {})
        steps = meta.get("inner_steps", {})
        self.master = {n: a.copy() for n, a in model.items()}
        self.outer.momentum = {n: a.copy() for n, a in momentum.items()}
        self.compressor.subspace = self._check_subspace(state.groups.get("lowrank_subspace", {}))
        if not residual:
            self.compressor.residual = {}
        elif self.cfg.compression.per_tensor:
            self.compressor.residual = {n: a.copy() for n, a in residual.items()}
        else:
            flat = np.concatenate([residual[n].reshape(-1) for n in self.names])
            self.compressor.residual = {UPDATE_TENSOR: flat}
        self.inner_opt.state.clear()
        for n in self.names:
            if n in steps:
                avg, sq = inner.get(f"{n}/exp_avg"), inner.get(f"{n}/exp_avg_sq")
                if avg is None or sq is None or self.shapes[n] not in (avg.shape, sq.shape):
                    raise CheckpointError(f"bad_optimizer_state: {n}")
                self.inner_opt.state[self._params[n]] = {
                    "step": torch.tensor(float(steps[n])),
                    "exp_avg": torch.from_numpy(avg.copy()).to(self.device),
                    "exp_avg_sq": torch.from_numpy(sq.copy()).to(self.device),
                }
        self._round = int(meta["round"])
        self._tokens = int(meta.get("tokens_trained", 0))
        self._hash = model_hash(self.master)
        self._load_master_into_model()

    def _residual_by_name(self) -> dict[str, F32]:
        res = self.compressor.residual
        if not res:
            return {}
        if UPDATE_TENSOR in res:
            return self._unflatten(res[UPDATE_TENSOR])
        return dict(res)

    def _check_subspace(self, tensors: Mapping[str, F32]) -> dict[str, F32]:
        """Low-rank warm starts: matrices' names only, (columns, rank) shapes, finite."""
        out: dict[str, F32] = {}
        r = self.cfg.compression.rank
        for n, a in tensors.items():
            if n not in self.shapes or len(self.shapes[n]) < 2:
                raise CheckpointError(f"lowrank_subspace_unknown_tensor: {n}")
            cols = int(np.prod(self.shapes[n][1:]))
            if a.shape != (cols, r) or not np.isfinite(a).all():
                raise CheckpointError(f"lowrank_subspace_bad_tensor: {n}")
            out[n] = a.copy()
        return out

    def _check_group(self, state: CheckpointState, group: str, required: bool) -> dict[str, F32]:
        tensors = dict(state.groups.get(group, {}))
        if not tensors and not required:
            return {}
        if set(tensors) != set(self.names):
            raise CheckpointError(f"{group}_names_mismatch")
        for n, a in tensors.items():
            if a.shape != self.shapes[n] or not np.isfinite(a).all():
                raise CheckpointError(f"{group}_bad_tensor: {n}")
        return tensors

    def load_checkpoint_bytes(self, data: bytes) -> None:
        self._restore(CheckpointState.from_bytes(data))

    def save_checkpoint(self, path: Path) -> None:
        atomic_write(path, self.checkpoint_bytes())

    def load_checkpoint(self, path: Path) -> None:
        self.load_checkpoint_bytes(path.read_bytes())

    def stats(self) -> EngineStats:
        return EngineStats(
            round=self._round,
            model_hash=self._hash,
            parameters=self.n_params,
            tokens_trained=self._tokens,
            bytes_sent=self._bytes_sent,
            dense_bytes_equivalent=self._dense_bytes,
            last_loss=self._last_loss,
            device=str(self.device),
        )
