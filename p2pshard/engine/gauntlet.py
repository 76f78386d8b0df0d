"""The Gauntlet: a validator's check of the work itself (specs/work.md, "The Gauntlet score").

After Templar's Gauntlet (Covenant-72B): a validator takes a contributor's update, applies it to
the round's model as the outer step would, and measures how much it lowers the loss on the
windows the contributor trained on (recomputed from the public batch sampler, see
:func:`p2pshard.engine.engine.sampler_seed`) versus on random windows of the same shard. Training
memorises a little of the exact windows seen, so an honest update improves its own windows
relatively more than random ones; an update trained elsewhere (copied from another peer, scaled
or noised, or stale) does not, and a zero, random, sign-flipped or x100 update does not improve
the loss at all. With ``d(u; B) = L(w; B) - L(w - η u; B)``::

    score = min(d(u; O), 0)               if d(u; O) <= 0 or d(u; R) <= 0
          = d(u; O) / d(u; R) - c          otherwise

where ``O`` are the own windows, ``R`` the random ones and ``c`` the same ratio for a control
update (the mean of the round's other updates; 1 without one), which removes the bias of the
particular window sets. :class:`CopyDetector` flags near-duplicates of earlier announcements,
scaled or lightly noised (cosine centred on the round's median within a round, plain cosine
against earlier rounds).

Blocking and torch-bound, like every engine call: run it in the engine's worker thread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

from p2pshard.engine.diloco import sample_batch
from p2pshard.engine.engine import TorchEngine, sampler_seed
from p2pshard.engine.genesis import load_shard

__all__ = [
    "CopyDetector",
    "Gauntlet",
    "GauntletConfig",
    "GauntletScore",
    "aggregation_weights",
    "cosine",
    "verdict",
]

F32 = npt.NDArray[np.float32]
SKETCH_SIZE = 1 << 14
"""Updates longer than this are compared through a count sketch of this many buckets."""


@dataclass(frozen=True)
class GauntletConfig:
    """The parameters of specs/work.md's Gauntlet table."""

    own_windows: int = 256
    random_factor: int = 4
    min_score: float = -0.02
    min_gain_ratio: float = 0.25
    """An update must lower the loss on its own windows by at least this share of what the
    control update does there (zero, random and poisoned updates do not)."""
    copy_cosine: float = 0.5
    duplicate_cosine: float = 0.99
    history_rounds: int = 2
    max_per_round: int = 64
    """Updates of one round the copy detector keeps (later ones are compared, not kept)."""

    def __post_init__(self) -> None:
        if (
            self.own_windows < 1
            or self.random_factor < 1
            or self.history_rounds < 0
            or self.max_per_round < 1
        ):
            raise ValueError("own_windows, random_factor, max_per_round must be >= 1, history_rounds >= 0")


@dataclass(frozen=True)
class GauntletScore:
    own_gain: float
    """d(u; O): the loss improvement on the contributor's own windows."""
    random_gain: float
    """d(u; R): the loss improvement on random windows of the same shard."""
    control: float
    score: float
    control_gain: float | None = None
    """d(v; O): the control's loss improvement on the same own windows (None without one)."""

    @property
    def millionths(self) -> int:
        """The score as a vote carries it (``ValidationVote.score``)."""
        return int(self.score * 1_000_000)


Windows = tuple[torch.Tensor, torch.Tensor]


class Gauntlet:
    """Scores updates against ``engine``'s current master weights (the round's model)."""

    def __init__(self, engine: TorchEngine, cfg: GauntletConfig | None = None, seed: int = 0) -> None:
        self.engine = engine
        self.cfg = cfg or GauntletConfig()
        self._gen = torch.Generator().manual_seed(seed)

    def _tokens(self, shard_id: str) -> torch.Tensor:
        data = self.engine.genesis.shard_bytes(shard_id)
        return torch.from_numpy(load_shard(data, shard_id).astype(np.int64))

    def own_windows(self, peer_id: str, round_index: int) -> Windows:
        """The windows ``peer_id`` trained on in ``round_index`` (the last ``own_windows``)."""
        shard_id = self.engine.assigned_shard(peer_id, round_index)
        tokens = self._tokens(shard_id)
        d = self.engine.cfg.diloco
        gen = torch.Generator().manual_seed(sampler_seed(peer_id.encode(), round_index, shard_id))
        context = self.engine.cfg.model.context
        batches = [sample_batch(tokens, d.batch_size, context, gen) for _ in range(d.inner_steps)]
        ids = torch.cat([b[0] for b in batches])[-self.cfg.own_windows :]
        targets = torch.cat([b[1] for b in batches])[-self.cfg.own_windows :]
        return ids, targets

    def random_windows(self, peer_id: str, round_index: int, count: int) -> Windows:
        """``count`` windows of the same shard from the validator's own generator."""
        tokens = self._tokens(self.engine.assigned_shard(peer_id, round_index))
        return sample_batch(tokens, count, self.engine.cfg.model.context, self._gen)

    def _weights(self, update: F32 | None) -> dict[str, torch.Tensor]:
        e = self.engine
        lr = np.float32(e.cfg.diloco.outer_lr)
        out: dict[str, torch.Tensor] = {}
        offset = 0
        for name in e.names:
            master = e.master[name]
            w = master
            if update is not None:
                part = update[offset : offset + master.size].reshape(master.shape)
                w = np.subtract(master, np.multiply(lr, part, dtype=np.float32), dtype=np.float32)
            offset += master.size
            out[name] = torch.from_numpy(np.ascontiguousarray(w)).to(e.device)
        return out

    @torch.no_grad()
    def _loss(self, weights: dict[str, torch.Tensor], windows: Windows) -> float:
        ids, targets = windows
        model = self.engine.model
        model.eval()
        total = 0.0
        batch = 64
        for i in range(0, ids.shape[0], batch):
            x = ids[i : i + batch].to(self.engine.device)
            y = targets[i : i + batch].to(self.engine.device)
            logits = torch.func.functional_call(model, weights, (x,))
            total += float(
                torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"
                )
            )
        return total / targets.numel()

    def score(self, peer_id: str, round_index: int, update: F32, control: F32 | None = None) -> GauntletScore:
        """The Gauntlet score of ``update`` (a flat vector, :meth:`TorchEngine.decoded_update`)
        claimed by ``peer_id`` for ``round_index``; ``control``: the mean of the round's other
        updates, or None."""
        own = self.own_windows(peer_id, round_index)
        rand = self.random_windows(peer_id, round_index, self.cfg.random_factor * own[0].shape[0])
        base = self._weights(None)
        own0, rand0 = self._loss(base, own), self._loss(base, rand)

        def gains(u: F32) -> tuple[float, float]:
            w = self._weights(u)
            return own0 - self._loss(w, own), rand0 - self._loss(w, rand)

        own_gain, random_gain = gains(update)
        c = 1.0
        c_own: float | None = None
        if control is not None:
            c_own, c_rand = gains(control)
            if c_own > 0 and c_rand > 0:
                c = c_own / c_rand
        improves = own_gain > 0 and random_gain > 0
        score = own_gain / random_gain - c if improves else min(own_gain, 0.0)
        return GauntletScore(own_gain, random_gain, c, score, c_own)


def _sketch(vector: F32) -> npt.NDArray[np.float64]:
    """A count sketch (fixed buckets and signs per length): inner products are kept in expectation,
    cosines within about 1/sqrt(SKETCH_SIZE)."""
    v = vector.astype(np.float64, copy=False)
    if v.size <= SKETCH_SIZE:
        return v.copy()
    rng = np.random.default_rng(v.size)
    buckets = rng.integers(0, SKETCH_SIZE, v.size)
    signs = rng.integers(0, 2, v.size) * 2.0 - 1.0
    return np.bincount(buckets, weights=signs * v, minlength=SKETCH_SIZE).astype(np.float64, copy=False)


def cosine(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> float:
    na, nb = float(np.sqrt((a * a).sum())), float(np.sqrt((b * b).sum()))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return max(-1.0, min(1.0, float((a * b).sum() / (na * nb))))


@dataclass(frozen=True)
class CopyFlag:
    contributor: str
    original: str
    """The earlier contributor it copies (for a stale update, possibly itself)."""
    round: int
    cosine: float
    kind: str
    """``copy`` (same round) or ``stale`` (an earlier round)."""


@dataclass
class CopyDetector:
    """Flags near-duplicates among a round's updates and against the last rounds' (see the module
    doc). Bounded: ``history_rounds`` rounds of at most ``max_per_round`` sketches each."""

    cfg: GauntletConfig = field(default_factory=GauntletConfig)
    _history: deque[tuple[int, str, npt.NDArray[np.float64]]] = field(default_factory=deque)

    def judge_round(self, round_index: int, updates: Sequence[tuple[str, F32]]) -> dict[str, CopyFlag]:
        """``updates`` in announcement order -> the contributors flagged, with what they copy."""
        sketches = [(c, _sketch(u)) for c, u in updates]
        centred: list[npt.NDArray[np.float64]] = []
        if len(sketches) >= 3:
            # the coordinate-wise median, not the mean: zero or negated updates in the round pull
            # a mean towards 0, and honest residuals then share the common direction (measured:
            # honest centred cosines up to 0.75 around the mean, 0.30 around the median)
            centre = np.median([s for _, s in sketches], axis=0)
            centred = [s - centre for _, s in sketches]
        flags: dict[str, CopyFlag] = {}
        for i, (contributor, s) in enumerate(sketches):
            best: CopyFlag | None = None
            for j in range(i):
                other = sketches[j][0]
                if other == contributor:
                    continue
                plain = cosine(s, sketches[j][1])
                cen = cosine(centred[i], centred[j]) if centred else -1.0
                if plain >= self.cfg.duplicate_cosine or cen >= self.cfg.copy_cosine:
                    value = max(plain, cen)
                    if best is None or value > best.cosine:
                        best = CopyFlag(contributor, other, round_index, value, "copy")
            if best is None:
                for r, other, h in self._history:
                    if r < round_index:
                        plain = cosine(s, h)
                        if plain >= self.cfg.duplicate_cosine and (best is None or plain > best.cosine):
                            best = CopyFlag(contributor, other, r, plain, "stale")
            if best is not None:
                flags[contributor] = best
        for contributor, s in sketches[: self.cfg.max_per_round]:
            self._history.append((round_index, contributor, s))
        while self._history and self._history[0][0] <= round_index - max(self.cfg.history_rounds, 1):
            self._history.popleft()
        while len(self._history) > self.cfg.max_per_round * max(self.cfg.history_rounds, 1):
            self._history.popleft()
        return flags


def verdict(score: GauntletScore, flag: CopyFlag | None, cfg: GauntletConfig) -> tuple[bool, str]:
    """The vote a validator casts: (valid, reason)."""
    if flag is not None:
        return False, flag.kind
    if score.own_gain <= 0:
        return False, "no_improvement"
    if score.control_gain is not None and score.own_gain < cfg.min_gain_ratio * score.control_gain:
        return False, "too_little_improvement"
    if score.score <= cfg.min_score:
        return False, "low_score"
    return True, "ok"


def aggregation_weights(verdicts: Mapping[str, bool | None]) -> dict[str, float]:
    """The weight :meth:`TorchEngine.apply_round` gives each contributor: 0.0 for an update
    found invalid (by this validator's verdict, or by a settled ``rejected`` outcome), 1.0 for one
    found valid or not scored (``None``: validators sample). A gate rather than a scale: the
    score's size depends on the preset, the inner steps and the round (specs/work.md)."""
    return {c: 0.0 if v is False else 1.0 for c, v in verdicts.items()}
