"""``/p2pshard/pipeline/forward/1.0.0`` and ``/p2pshard/pipeline/shard-info/1.0.0``
(specs/pipeline.md): serving a layer range, and running a chain of servers from a client.

Server: :class:`PipelineServer` checks each forward with the sans-IO rules
(:func:`~p2pshard.core.pipeline.rules.check_forward`, the
:class:`~p2pshard.core.pipeline.sessions.SessionTable`), then runs it on a :class:`StageBackend`
(the torch engine's :class:`~p2pshard.engine.inference.StageExecutor`) in a worker thread, one
forward at a time. A refused request is answered ``OK`` with a ``ForwardError`` (a stable reason)
and changes nothing; only an undecodable request gets a reqresp status.

Client: :func:`forward` runs one range on one peer; :class:`Chain` runs a request through
servers that cover the model in order, and :meth:`Chain.generate` does greedy generation with the
servers' KV caches, replaying the prefix when a server answers ``session_expired``.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
import trio
from libp2p.peer.id import ID

from p2pshard.core.counters import Counters
from p2pshard.core.pipeline.chain import ChainError, Hop, plan_chain
from p2pshard.core.pipeline.rules import (
    ForwardRejected,
    Reason,
    StageSpec,
    check_forward,
    encode_forward,
    encode_output,
    read_output,
)
from p2pshard.core.pipeline.sessions import SessionKey, SessionLimits, SessionTable
from p2pshard.core.wire import pipeline_pb2 as pb
from p2pshard.net.reqresp import (
    Code,
    ProtocolSpec,
    Reply,
    ReqRespClient,
    RequestContext,
    RetryPolicy,
    RpcError,
    call_unary,
    decode_or_reject,
    unary_spec,
)

log = logging.getLogger(__name__)

__all__ = [
    "FORWARD_PROTOCOL",
    "SHARD_INFO_PROTOCOL",
    "Chain",
    "ChainError",
    "PipelineServer",
    "RemoteStage",
    "SessionLimits",
    "StageBackend",
    "StageFailed",
    "fetch_shard_info",
    "forward",
]

FORWARD_PROTOCOL = "/p2pshard/pipeline/forward/1.0.0"
SHARD_INFO_PROTOCOL = "/p2pshard/pipeline/shard-info/1.0.0"
MAX_SHARD_INFO_SIZE = 4096
PROVIDER_KIND = "pipeline"
"""Servers of a network provide ``content_key(PROVIDER_KIND, SHA-256(PROVIDER_TAG || network id))``."""
PROVIDER_TAG = b"p2pshard-pipeline:"
ANNOUNCE_DELAYS_S = frozenset({0.0, 5.0, 30.0})
"""A server provides its key at these times after it starts serving (to reach the peers that join
meanwhile), then every ANNOUNCE_INTERVAL_S."""
ANNOUNCE_INTERVAL_S = 600.0
ANNOUNCE_GROWTH_S = 5.0
"""Least time between two announcements made because the node has more peers than before."""
MAX_FORWARD_RESPONSE = 256 << 20
"""Largest forward answer a client reads, whatever a server's ShardInfo implies."""
MAX_LAYERS = 4096
MAX_DIMENSION = 1 << 20
"""A ShardInfo with more layers, or a dimension above this, is not believed (the server skipped)."""
HANG_MIN_S = 1.0
"""A server that has another to replace it is given up on after max(this, HANG_FACTOR x its usual
time per forward); one that has none gets the whole ``timeout_s``."""
HANG_FACTOR = 20.0
MAX_REPLAYS = 3
"""Replays of the prefix one generation step may need before the client gives up."""

F32 = npt.NDArray[np.float32]


class StageBackend(Protocol):
    """What runs a layer range (blocking; called from one worker thread at a time)."""

    spec: StageSpec

    def forward(
        self, values: F32, start: int = 0, key: Hashable | None = None, *, last_only: bool = False
    ) -> F32: ...

    def drop(self, key: Hashable) -> None: ...

    def weights_hash(self) -> bytes: ...


class PipelineServer:
    """Serves one layer range: ``for spec in server.specs(): reqresp_server.register(spec)``."""

    def __init__(
        self,
        backend: StageBackend,
        counters: Counters,
        limits: SessionLimits | None = None,
        clock: Callable[[], float] = trio.current_time,
        max_concurrent: int = 32,
    ) -> None:
        self.backend = backend
        self.spec = backend.spec
        self.counters = counters
        self.clock = clock
        self.table = SessionTable(limits or SessionLimits(), self.spec.kv_bytes_per_token)
        self.max_concurrent = max_concurrent
        self._torch = trio.CapacityLimiter(1)

    def specs(self) -> list[ProtocolSpec]:
        return [
            ProtocolSpec(
                FORWARD_PROTOCOL,
                self.handle_forward,
                max_request_size=self.spec.max_request_bytes(),
                default_deadline_s=30.0,
                max_deadline_s=120.0,
                max_concurrent=self.max_concurrent,
            ),
            unary_spec(
                SHARD_INFO_PROTOCOL,
                pb.ShardInfoRequest,
                self.handle_shard_info,
                max_request_size=256,
                default_deadline_s=5.0,
                max_concurrent=16,
            ),
        ]

    def shard_info(self) -> pb.ShardInfo:
        return self.spec.to_proto(self.table.free_sessions(), self.backend.weights_hash())

    async def handle_shard_info(self, ctx: RequestContext, request: pb.ShardInfoRequest) -> pb.ShardInfo:
        return self.shard_info()

    def expire(self) -> None:
        for key in self.table.expire(self.clock()):
            self.backend.drop(key)
            self.counters.incr("pipeline.sessions_expired")

    async def handle_forward(self, ctx: RequestContext, body: bytes) -> Reply:
        request = decode_or_reject(pb.ForwardRequest, body)
        result = await self.run(ctx.peer_id.to_bytes(), request)
        return Reply(body=result.SerializeToString())

    async def run(self, peer: bytes, request: pb.ForwardRequest) -> pb.ForwardResponse:
        """Check and run one forward for ``peer``; every refusal is a ForwardError answer."""
        self.expire()
        key: SessionKey | None = None
        try:
            inp = check_forward(request, self.spec)
            if inp.use_cache:
                key = (peer, inp.session_id)
                self.table.begin(key, inp.start, inp.batch, inp.tokens, self.clock())
        except ForwardRejected as exc:
            self.counters.incr(f"pipeline.rejected.{exc.reason.value}")
            return exc.to_proto()
        ok = False
        try:
            out = await trio.to_thread.run_sync(
                lambda: self.backend.forward(inp.values, inp.start, key, last_only=inp.last_only),
                limiter=self._torch,
            )
            ok = True
        except Exception as exc:  # the engine failed: the client's fault or not, say so, stay up
            log.exception("pipeline forward failed")
            self.counters.incr("pipeline.rejected.internal")
            return ForwardRejected(Reason.INTERNAL, type(exc).__name__).to_proto()
        finally:
            if key is not None:
                if ok:
                    self.table.commit(key, self.clock())
                else:  # failed or cancelled: the cache is in doubt
                    self.table.abort(key, self.clock())
                    self.backend.drop(key)
        self.counters.incr("pipeline.forwards")
        self.counters.incr("pipeline.tokens", inp.batch * inp.tokens)
        return encode_output(out, self.spec.is_last)


def providers_digest(network_id: str) -> bytes:
    """What the servers of ``network_id`` provide (kind PROVIDER_KIND) in the DHT."""
    return hashlib.sha256(PROVIDER_TAG + network_id.encode()).digest()


class Provider(Protocol):
    async def provide(self, kind: str, digest: bytes) -> bool: ...


async def announce(
    discovery: Provider, network_id: str, counters: Counters, peer_count: Callable[[], int] = lambda: 0
) -> None:
    """Provide the network's pipeline key at ANNOUNCE_DELAYS_S, then every ANNOUNCE_INTERVAL_S, and
    when this node has more peers than ever before (at most every ANNOUNCE_GROWTH_S): a server that
    started alone stored its record only at home, and the peers that came since should hold it.
    Clients find the server with ``find_providers``. Runs until cancelled."""
    digest = providers_digest(network_id)
    began = trio.current_time()
    due = sorted(ANNOUNCE_DELAYS_S)
    last, most = -ANNOUNCE_GROWTH_S, 0
    while True:
        now = trio.current_time()
        grown = peer_count() > most and now - last >= ANNOUNCE_GROWTH_S
        if grown or (due and now - began >= due[0]) or (not due and now - last >= ANNOUNCE_INTERVAL_S):
            while due and now - began >= due[0]:
                due.pop(0)
            most = max(most, peer_count())
            last = now
            try:
                ok = await discovery.provide(PROVIDER_KIND, digest)
            except Exception as exc:  # a DHT failure is retried at the next announcement
                log.info("pipeline announcement failed: %s", exc)
                ok = False
            counters.incr("pipeline.announced" if ok else "pipeline.announce_failed")
        await trio.sleep(1.0)


# ------------------------------------------------------------------------------------ client


async def fetch_shard_info(client: ReqRespClient, peer: ID, timeout_s: float = 5.0) -> pb.ShardInfo:
    return await call_unary(
        client,
        peer,
        SHARD_INFO_PROTOCOL,
        pb.ShardInfoRequest(),
        pb.ShardInfo,
        timeout_s=timeout_s,
        max_response_size=MAX_SHARD_INFO_SIZE,
    )


@dataclass(frozen=True)
class RemoteStage:
    """A server and the range it said it serves."""

    peer: ID
    info: pb.ShardInfo

    @property
    def is_first(self) -> bool:
        return self.info.layer_start == 0

    @property
    def is_last(self) -> bool:
        return self.info.layer_end == self.info.total_layers

    @property
    def width(self) -> int:
        return self.info.vocab_size if self.is_last else self.info.d_model

    def max_response_bytes(self, batch: int, tokens: int) -> int:
        return min(MAX_FORWARD_RESPONSE, 4 * batch * tokens * self.width + 8192)


def plausible(info: pb.ShardInfo) -> bool:
    """A ShardInfo whose numbers a client may size buffers by (a server could claim anything)."""
    dims = (info.vocab_size, info.d_model, info.context, info.n_heads, info.max_batch)
    return (
        0 <= info.layer_start < info.layer_end <= info.total_layers <= MAX_LAYERS
        and all(1 <= d <= MAX_DIMENSION for d in dims)
        and len(info.model_id) <= 256
    )


async def forward(
    client: ReqRespClient,
    stage: RemoteStage,
    values: npt.NDArray[np.floating] | npt.NDArray[np.integer],
    *,
    session_id: bytes = b"",
    start: int = 0,
    use_cache: bool = False,
    last_only: bool = False,
    timeout_s: float = 30.0,
) -> F32:
    """Run ``stage``'s range on ``values`` (token ids for the first range, else hidden states);
    returns hidden states or logits. Raises ForwardRejected (the server's reason) or RpcError."""
    info = stage.info
    request = encode_forward(
        (info.layer_start, info.layer_end),
        values,
        first=stage.is_first,
        session_id=session_id,
        start=start,
        use_cache=use_cache,
        last_only=last_only,
        model_id=info.model_id,
    )
    batch, tokens = int(values.shape[0]), int(values.shape[1])
    out_tokens = 1 if last_only else tokens
    body = await client.call(
        stage.peer,
        FORWARD_PROTOCOL,
        request.SerializeToString(),
        timeout_s=timeout_s,
        retry=RetryPolicy(attempts=2),
        max_response_size=stage.max_response_bytes(batch, out_tokens),
    )
    response = decode_or_reject(pb.ForwardResponse, body)
    return read_output(response, last=stage.is_last, batch=batch, tokens=out_tokens, width=stage.width)


class StageFailed(Exception):
    """A server of the chain did not answer (unreachable, reset, past the deadline, not serving
    the protocol) or failed running an accepted forward (``internal``)."""

    def __init__(self, stage: RemoteStage, cause: Exception) -> None:
        super().__init__(f"{stage.peer} (layers {stage.info.layer_start}:{stage.info.layer_end}): {cause}")
        self.stage = stage
        self.cause = cause


def _hops(stages: Sequence[RemoteStage]) -> list[Hop[RemoteStage]]:
    return [
        Hop(s, s.info.model_id, s.info.layer_start, s.info.layer_end, s.info.total_layers) for s in stages
    ]


class Chain:
    """Servers covering every layer of one model, in order, and spare servers to reroute to.

    When a server of the chain fails during :meth:`generate`, the chain is planned again from the
    other servers (those in use first, so working stages stay), and the sequence so far is
    replayed from position 0 on the new chain: the output continues unchanged.
    """

    def __init__(
        self,
        client: ReqRespClient,
        stages: Sequence[RemoteStage],
        timeout_s: float = 30.0,
        spares: Sequence[RemoteStage] = (),
    ) -> None:
        if not stages:
            raise ChainError("an empty chain")
        self.client = client
        self.stages = list(stages)
        self.spares = [s for s in spares if s not in self.stages]
        self.timeout_s = timeout_s
        self.replays = 0
        self.failovers: list[StageFailed] = []
        self.hang_min_s = HANG_MIN_S
        self._latency: dict[ID, float] = {}  # peer -> moving average of seconds per forward
        pos = 0
        for s in self.stages:
            if s.info.layer_start != pos or s.info.model_id != self.stages[0].info.model_id:
                raise ChainError("the stages do not cover the model's layers in order")
            pos = s.info.layer_end
        if pos != self.stages[0].info.total_layers:
            raise ChainError(f"the stages stop at layer {pos} of {self.stages[0].info.total_layers}")

    @classmethod
    async def discover(cls, client: ReqRespClient, peers: Sequence[ID], timeout_s: float = 30.0) -> Chain:
        """Ask each peer what it serves and plan the shortest chain (peers given first preferred).
        Raises ChainError naming the uncovered layers when no chain covers the model."""
        infos: list[RemoteStage] = []
        for peer in peers:
            try:
                info = await fetch_shard_info(client, peer)
            except Exception as exc:  # RpcError, a reset stream: this peer serves nothing to us
                log.info("no shard info from %s: %s", peer, exc)
                continue
            if plausible(info):
                infos.append(RemoteStage(peer, info))
            else:
                log.info("implausible shard info from %s: skipped", peer)
        chain = [h.peer for h in plan_chain(_hops(infos))]
        return cls(client, chain, timeout_s, spares=[s for s in infos if s not in chain])

    def _replaceable(self, stage: RemoteStage) -> bool:
        try:
            plan_chain(_hops([s for s in self.stages + self.spares if s.peer != stage.peer]))
        except ChainError:
            return False
        return True

    def _deadline(self, stage: RemoteStage, tokens: int) -> float:
        """How long to wait for ``stage``: a server seen to answer in t seconds and that another
        could replace is given up on after max(hang_min_s, HANG_FACTOR x t), longer for a longer
        input; otherwise the whole ``timeout_s``."""
        usual = self._latency.get(stage.peer)
        if usual is None or not self._replaceable(stage):
            return self.timeout_s
        return min(self.timeout_s, max(self.hang_min_s, HANG_FACTOR * usual) * (1 + tokens / 32))

    def reroute(self, failed: StageFailed) -> None:
        """Plan the chain again without the failed server; ChainError when no chain is left."""
        self.failovers.append(failed)
        left = [s for s in self.stages + self.spares if s.peer != failed.stage.peer]
        model = self.stages[0].info.model_id
        try:
            chain = [h.peer for h in plan_chain(_hops(left), model)]
        except ChainError as exc:
            raise ChainError(f"{failed}; and no other chain: {exc}") from exc
        self.stages = chain
        self.spares = [s for s in left if s not in chain]

    @property
    def context(self) -> int:
        return min(s.info.context for s in self.stages)

    async def forward(
        self,
        tokens: npt.NDArray[np.integer] | npt.NDArray[np.floating],
        *,
        session_id: bytes = b"",
        start: int = 0,
        use_cache: bool = False,
        last_only: bool = False,
    ) -> F32:
        """Logits for ``tokens`` (batch x tokens) through every server in order."""
        x: npt.NDArray[np.floating] | npt.NDArray[np.integer] = tokens
        for i, stage in enumerate(self.stages):
            last_stage = i == len(self.stages) - 1
            began = trio.current_time()
            try:
                x = await forward(
                    self.client,
                    stage,
                    x,
                    session_id=session_id,
                    start=start,
                    use_cache=use_cache,
                    last_only=last_only and last_stage,
                    timeout_s=self._deadline(stage, int(x.shape[1])),
                )
            except ForwardRejected as exc:
                if exc.reason == Reason.INTERNAL:
                    raise StageFailed(stage, exc) from exc
                raise
            except RpcError as exc:
                if exc.code == Code.RESOURCE_EXHAUSTED:  # busy, not failed: the caller's to retry
                    raise
                raise StageFailed(stage, exc) from exc
            took = trio.current_time() - began
            usual = self._latency.get(stage.peer)
            self._latency[stage.peer] = took if usual is None else 0.8 * usual + 0.2 * took
        return np.asarray(x, dtype=np.float32)

    async def generate(
        self,
        prompt: Sequence[int],
        max_new_tokens: int,
        *,
        use_cache: bool = True,
        on_token: Callable[[int], None] | None = None,
    ) -> list[int]:
        """Greedy generation: the argmax token, one at a time, until ``max_new_tokens`` or the
        context is full. With ``use_cache`` each step sends one token; a server that answers
        ``session_expired`` (or lost the session) gets the whole sequence again from position 0.
        A server that fails is replaced (:meth:`reroute`) and the sequence is replayed likewise;
        ChainError when no server is left for its layers."""
        if not prompt:
            raise ValueError("generation needs a prompt of at least one token")
        tokens = list(prompt)
        session = secrets.token_bytes(16)
        new: list[int] = []
        sent = 0  # tokens the servers have cached
        replays = 0
        while len(new) < max_new_tokens and len(tokens) < self.context:
            try:
                if use_cache:
                    step = np.array([tokens[sent:]])
                    logits = await self.forward(
                        step, session_id=session, start=sent, use_cache=True, last_only=True
                    )
                    sent = len(tokens)
                else:
                    logits = await self.forward(np.array([tokens]), last_only=True)
            except StageFailed as failed:
                self.reroute(failed)  # ChainError when no server is left for its layers
                sent = 0  # the new chain rebuilds its caches from the whole sequence
                continue
            except ForwardRejected as exc:
                expired = exc.reason in (Reason.SESSION_EXPIRED, Reason.UNKNOWN_SESSION)
                if not use_cache or not expired or replays >= MAX_REPLAYS:
                    raise
                replays += 1
                self.replays += 1
                sent = 0  # replay the prefix from position 0 on every server
                continue
            replays = 0
            nxt = int(np.argmax(logits[0, -1]))
            tokens.append(nxt)
            new.append(nxt)
            if on_token is not None:
                on_token(nxt)
        return new
