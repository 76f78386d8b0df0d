"""The sans-IO forward rules and session table (specs/pipeline.md): each bad request gets its
typed reason and changes nothing; time is passed in, never read."""

from __future__ import annotations

import numpy as np
import pytest

from p2pshard.core.pipeline import (
    ForwardRejected,
    Reason,
    SessionLimits,
    SessionTable,
    StageSpec,
    check_forward,
    encode_forward,
)
from p2pshard.core.pipeline.chain import ChainError, Hop, plan_chain
from p2pshard.core.wire import tensor_pb2
from p2pshard.core.wire.tensor import EncodeOptions, Encoding, encode_tensors

FIRST = StageSpec("m", 0, 2, 4, vocab_size=256, d_model=48, context=32, n_heads=4, max_batch=2, n_blocks=1)
MIDDLE = StageSpec("m", 2, 3, 4, vocab_size=256, d_model=48, context=32, n_heads=4, max_batch=2, n_blocks=1)


def _reason(req: object, spec: StageSpec) -> Reason:
    with pytest.raises(ForwardRejected) as info:
        check_forward(req, spec)  # type: ignore[arg-type]
    return info.value.reason


def _hidden(b: int = 1, t: int = 3, d: int = 48) -> np.ndarray:
    return np.ones((b, t, d), dtype=np.float32)


def test_a_good_request_passes() -> None:
    inp = check_forward(encode_forward((0, 2), np.array([[1, 2, 3]]), first=True), FIRST)
    assert (inp.batch, inp.tokens, inp.start) == (1, 3, 0)
    inp = check_forward(
        encode_forward((2, 3), _hidden(), first=False, session_id=b"s", use_cache=True), MIDDLE
    )
    assert inp.values.shape == (1, 3, 48) and inp.use_cache


def test_wrong_range() -> None:
    assert _reason(encode_forward((0, 3), np.array([[1]]), first=True), FIRST) == Reason.WRONG_RANGE


def test_wrong_model() -> None:
    req = encode_forward((0, 2), np.array([[1]]), first=True, model_id="other")
    assert _reason(req, FIRST) == Reason.WRONG_MODEL


def test_wrong_shape() -> None:
    assert _reason(encode_forward((2, 3), _hidden(d=47), first=False), MIDDLE) == Reason.WRONG_SHAPE
    assert _reason(encode_forward((2, 3), _hidden(b=3), first=False), MIDDLE) == Reason.WRONG_SHAPE
    flat = encode_forward((2, 3), np.ones((1, 48), dtype=np.float32), first=False)
    assert _reason(flat, MIDDLE) == Reason.WRONG_SHAPE


def test_wrong_dtype() -> None:
    req = encode_forward((2, 3), _hidden(), first=False)
    req.input = encode_tensors({"hidden": _hidden()}, EncodeOptions(encoding=Encoding.INT8))
    assert _reason(req, MIDDLE) == Reason.WRONG_DTYPE
    req.input = encode_tensors({"hidden": _hidden()}, EncodeOptions(topk=4, chunk_size=16))
    assert _reason(req, MIDDLE) == Reason.WRONG_DTYPE
    ids = encode_forward((0, 2), np.array([[1, 2]]), first=True)
    ids.input = encode_tensors({"tokens": np.array([[1.0, 2.0]])}, EncodeOptions(encoding=Encoding.FLOAT16))
    assert _reason(ids, FIRST) == Reason.WRONG_DTYPE


def test_fp16_hidden_states_are_accepted() -> None:
    req = encode_forward((2, 3), _hidden(), first=False)
    req.input = encode_tensors({"hidden": _hidden()}, EncodeOptions(encoding=Encoding.FLOAT16))
    assert check_forward(req, MIDDLE).values.dtype == np.float32


def test_a_tensor_claiming_2_40_elements_is_refused_before_allocation() -> None:
    bundle = tensor_pb2.TensorBundle()
    rec = bundle.tensors.add(name="hidden", shape=[1, 1 << 20, 1 << 20], layout=tensor_pb2.LAYOUT_DENSE)
    rec.encoding, rec.chunk_size = Encoding.FLOAT32.value, 4096
    body = bundle.SerializeToString()
    payload = b"P2T1" + bytes([0]) + len(body).to_bytes(4, "little") + body
    req = encode_forward((2, 3), _hidden(), first=False)
    req.input = payload
    assert _reason(req, MIDDLE) == Reason.TOO_LARGE


def test_garbage_tensor_and_wrong_names() -> None:
    req = encode_forward((2, 3), _hidden(), first=False)
    req.input = b"P2T1\x00" + (5).to_bytes(4, "little") + b"\xff" * 5  # not a TensorBundle
    assert _reason(req, MIDDLE) == Reason.BAD_TENSOR
    assert _reason(encode_forward((2, 3), np.array([[1, 2]]), first=True), MIDDLE) == Reason.WRONG_INPUT


def test_bad_tokens_and_non_finite_states() -> None:
    assert _reason(encode_forward((0, 2), np.array([[1, 256]]), first=True), FIRST) == Reason.BAD_TOKEN
    assert _reason(encode_forward((0, 2), np.array([[1.5]]), first=True), FIRST) == Reason.BAD_TOKEN
    assert _reason(encode_forward((0, 2), np.array([[-1]]), first=True), FIRST) == Reason.BAD_TOKEN
    nan = _hidden()
    nan[0, 0, 0] = np.nan
    assert _reason(encode_forward((2, 3), nan, first=False), MIDDLE) == Reason.NON_FINITE


def test_positions_past_the_context_and_sessions_ids() -> None:
    req = encode_forward((0, 2), np.array([[1] * 3]), first=True, session_id=b"s", start=30, use_cache=True)
    assert _reason(req, FIRST) == Reason.TOO_LONG
    req = encode_forward((0, 2), np.array([[1]]), first=True, start=3)
    assert _reason(req, FIRST) == Reason.WRONG_POSITION  # no cache: the sequence starts at 0
    req = encode_forward((0, 2), np.array([[1]]), first=True, use_cache=True)
    assert _reason(req, FIRST) == Reason.BAD_SESSION_ID
    req = encode_forward((0, 2), np.array([[1]]), first=True, session_id=b"x" * 65, use_cache=True)
    assert _reason(req, FIRST) == Reason.BAD_SESSION_ID


# -- sessions -------------------------------------------------------------------------------

LIMITS = SessionLimits(
    max_sessions=3, max_sessions_per_peer=2, max_bytes=10_000, max_bytes_per_peer=6_000, idle_ttl_s=60
)
A, B = (b"peer-a", b"s1"), (b"peer-b", b"s1")


def _table() -> SessionTable:
    return SessionTable(LIMITS, kv_bytes_per_token=100)


def _state(t: SessionTable) -> tuple[object, ...]:
    return (
        len(t),
        t.used_bytes,
        sorted((k, vars(s).copy().items().__repr__()) for k, s in t._sessions.items()),
    )


def _refused(
    t: SessionTable, key: tuple[bytes, bytes], start: int, batch: int, tokens: int, now: float
) -> Reason:
    before = _state(t)
    with pytest.raises(ForwardRejected) as info:
        t.begin(key, start, batch, tokens, now)
    assert _state(t) == before  # a refusal changes nothing
    return info.value.reason


def test_a_session_grows_and_counts_its_memory() -> None:
    t = _table()
    assert t.begin(A, 0, 1, 5, now=0.0)
    t.commit(A, 0.0)
    assert t.used_bytes == 500 and t.peer_usage(b"peer-a") == (1, 500)
    assert not t.begin(A, 5, 1, 1, now=1.0)
    t.commit(A, 1.0)
    assert t.used_bytes == 600
    assert t.begin(A, 0, 1, 2, now=2.0)  # a replay from 0 starts over
    t.commit(A, 2.0)
    assert t.used_bytes == 200 and len(t) == 1


def test_unknown_session() -> None:
    assert _refused(_table(), A, 3, 1, 1, 0.0) == Reason.UNKNOWN_SESSION


def test_another_peers_session_is_not_reachable() -> None:
    t = _table()
    t.begin(A, 0, 1, 3, 0.0)
    t.commit(A, 0.0)
    assert _refused(t, B, 3, 1, 1, 0.0) == Reason.UNKNOWN_SESSION


def test_an_idle_session_expires_and_says_so() -> None:
    t = _table()
    t.begin(A, 0, 1, 3, 0.0)
    t.commit(A, 0.0)
    assert t.expire(59.0) == []
    assert t.expire(60.0) == [A]
    assert len(t) == 0 and t.used_bytes == 0 and t.peer_usage(b"peer-a") == (0, 0)
    assert _refused(t, A, 3, 1, 1, 61.0) == Reason.SESSION_EXPIRED
    assert t.begin(A, 0, 1, 4, 62.0)  # the replay is welcome
    t.commit(A, 62.0)
    assert t.used_bytes == 400


def test_tombstones_are_bounded_in_time() -> None:
    t = _table()
    t.begin(A, 0, 1, 3, 0.0)
    t.commit(A, 0.0)
    t.expire(60.0)
    t.expire(60.0 + LIMITS.tombstone_ttl_s + 1)
    assert _refused(t, A, 3, 1, 1, 60.0 + LIMITS.tombstone_ttl_s + 2) == Reason.UNKNOWN_SESSION


def test_wrong_position_and_batch_in_a_session() -> None:
    t = _table()
    t.begin(A, 0, 1, 3, 0.0)
    t.commit(A, 0.0)
    assert _refused(t, A, 2, 1, 1, 1.0) == Reason.WRONG_POSITION
    assert _refused(t, A, 3, 2, 1, 1.0) == Reason.WRONG_SHAPE


def test_a_busy_session_refuses_a_second_forward() -> None:
    t = _table()
    t.begin(A, 0, 1, 3, 0.0)
    assert _refused(t, A, 3, 1, 1, 0.5) == Reason.SESSION_BUSY
    assert t.expire(1000.0) == []  # a running session is never evicted


def test_session_limits() -> None:
    t = _table()
    for sid in (b"1", b"2"):
        t.begin((b"peer-a", sid), 0, 1, 1, 0.0)
    assert _refused(t, (b"peer-a", b"3"), 0, 1, 1, 0.0) == Reason.TOO_MANY_SESSIONS  # per peer
    t.begin((b"peer-b", b"1"), 0, 1, 1, 0.0)
    assert _refused(t, (b"peer-c", b"1"), 0, 1, 1, 0.0) == Reason.TOO_MANY_SESSIONS  # in all


def test_memory_limits() -> None:
    t = _table()
    assert _refused(t, A, 0, 1, 61, 0.0) == Reason.OUT_OF_MEMORY  # past the peer's share
    t.begin(A, 0, 1, 60, 0.0)
    t.begin(B, 0, 1, 40, 0.0)
    assert _refused(t, (b"peer-c", b"1"), 0, 1, 1, 0.0) == Reason.OUT_OF_MEMORY  # past the total


def test_a_failed_forward_drops_the_session() -> None:
    t = _table()
    t.begin(A, 0, 1, 3, 0.0)
    t.abort(A, 0.0)
    assert len(t) == 0 and t.used_bytes == 0
    assert _refused(t, A, 3, 1, 1, 1.0) == Reason.SESSION_EXPIRED


# -- chains ---------------------------------------------------------------------------------


def test_the_shortest_chain_is_planned_in_preference_order() -> None:
    hops = [Hop("a", "m", 0, 3, 6), Hop("b", "m", 0, 2, 6), Hop("c", "m", 2, 6, 6), Hop("d", "m", 3, 5, 6)]
    assert [h.peer for h in plan_chain(hops)] == ["b", "c"]
    hops.append(Hop("e", "m", 0, 6, 6))
    assert [h.peer for h in plan_chain(hops)] == ["e"]


def test_no_chain_names_the_gap() -> None:
    with pytest.raises(ChainError, match="starting at layer 3"):
        plan_chain([Hop("a", "m", 0, 3, 6), Hop("d", "m", 4, 6, 6)])
    with pytest.raises(ChainError, match="no server"):
        plan_chain([])
    with pytest.raises(ChainError):
        plan_chain([Hop("a", "m", 0, 3, 6), Hop("b", "other", 3, 6, 6)])
