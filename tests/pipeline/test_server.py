"""The forward handler (no network): each bad request is answered with its typed reason and
leaves the server as it was (sessions, memory, caches); time comes from a clock the test moves."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from p2pshard.core.counters import Counters
from p2pshard.core.pipeline import Reason, SessionLimits, encode_forward
from p2pshard.core.wire import pipeline_pb2 as pb
from p2pshard.core.wire import tensor_pb2
from p2pshard.core.wire.tensor import EncodeOptions, Encoding, encode_tensors
from p2pshard.engine.inference import StageExecutor
from p2pshard.engine.model import PRESETS, LayerRange
from p2pshard.protocols.pipeline import PipelineServer

CFG = PRESETS["micro"]
D = CFG.d_model
PEER = b"peer-1"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _server() -> tuple[PipelineServer, StageExecutor, Clock]:
    clock = Clock()
    executor = StageExecutor(CFG, LayerRange(1, 3))  # the two blocks: hidden states in and out
    server = PipelineServer(executor, Counters(), SessionLimits(idle_ttl_s=30), clock=clock)
    return server, executor, clock


def _hidden(t: int = 3) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((1, t, D)).astype(np.float32)


def _req(t: int = 3, start: int = 0, sid: bytes = b"s1", **kw: object) -> pb.ForwardRequest:
    return encode_forward((1, 3), _hidden(t), first=False, session_id=sid, start=start, use_cache=True, **kw)  # type: ignore[arg-type]


def _state(server: PipelineServer, executor: StageExecutor) -> tuple[object, ...]:
    sessions = {k: (s.batch, s.length, s.busy) for k, s in server.table._sessions.items()}
    caches = {k: executor.cached_tokens(k) for k in executor._caches}
    return sessions, server.table.used_bytes, caches


async def _open(server: PipelineServer) -> None:
    resp = await server.run(PEER, _req())
    assert resp.WhichOneof("result") == "output"


def _bad_shape() -> pb.ForwardRequest:
    req = _req()
    req.input = encode_tensors({"hidden": np.ones((1, 3, D + 2), np.float32)}, EncodeOptions())
    return req


def _bad_dtype() -> pb.ForwardRequest:
    req = _req()
    req.input = encode_tensors({"hidden": _hidden()}, EncodeOptions(encoding=Encoding.INT8))
    return req


def _bad_range() -> pb.ForwardRequest:
    req = _req()
    req.layer_end = 4
    return req


def _huge() -> pb.ForwardRequest:
    bundle = tensor_pb2.TensorBundle()
    rec = bundle.tensors.add(name="hidden", shape=[1 << 20, 1 << 20], layout=tensor_pb2.LAYOUT_DENSE)
    rec.encoding, rec.chunk_size = Encoding.FLOAT32.value, 4096
    body = bundle.SerializeToString()
    req = _req()
    req.input = b"P2T1\x00" + len(body).to_bytes(4, "little") + body  # claims 2^40 elements
    return req


CASES: dict[str, tuple[Callable[[], pb.ForwardRequest], Reason]] = {
    "wrong_shape": (_bad_shape, Reason.WRONG_SHAPE),
    "wrong_dtype": (_bad_dtype, Reason.WRONG_DTYPE),
    "wrong_range": (_bad_range, Reason.WRONG_RANGE),
    "2^40_elements": (_huge, Reason.TOO_LARGE),
    "unknown_session": (lambda: _req(1, start=3, sid=b"nobody"), Reason.UNKNOWN_SESSION),
    "wrong_position": (lambda: _req(1, start=2), Reason.WRONG_POSITION),
    "too_long": (lambda: _req(3, start=CFG.context - 2), Reason.TOO_LONG),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_a_bad_forward_gets_its_reason_and_changes_nothing(case: str) -> None:
    server, executor, _clock = _server()
    await _open(server)  # one live session (s1, 3 tokens) that must survive untouched
    make, reason = CASES[case]
    before = _state(server, executor)
    resp = await server.run(PEER, make())
    assert resp.WhichOneof("result") == "error" and resp.error.reason == reason.value
    assert _state(server, executor) == before
    assert server.counters.get(f"pipeline.rejected.{reason.value}") == 1
    # and the session still continues where it was
    assert (await server.run(PEER, _req(1, start=3))).WhichOneof("result") == "output"


async def test_an_expired_session_gets_session_expired_and_changes_nothing() -> None:
    server, executor, clock = _server()
    await _open(server)
    clock.now = 31.0  # past the idle TTL
    server.expire()
    before = _state(server, executor)
    assert before == ({}, 0, {})  # the cache itself is gone
    resp = await server.run(PEER, _req(1, start=3))
    assert resp.error.reason == "session_expired"
    assert _state(server, executor) == before
    # the replay from position 0 is served
    assert (await server.run(PEER, _req(4))).WhichOneof("result") == "output"
    assert executor.cached_tokens((PEER, b"s1")) == 4


async def test_memory_is_counted_per_session_and_freed_on_expiry() -> None:
    server, executor, clock = _server()
    await _open(server)
    per_token = 2 * 2 * D * 4  # two blocks, a key and a value, float32
    assert server.table.used_bytes == 3 * per_token
    await server.run(PEER, _req(2, start=3))
    assert server.table.used_bytes == 5 * per_token and executor.cached_tokens((PEER, b"s1")) == 5
    clock.now = 100.0
    server.expire()
    assert server.table.used_bytes == 0 and executor.sessions() == 0
