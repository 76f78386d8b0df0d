"""Runner ``pipeline``: what a layer-range server decides about one ``pipeline/forward`` request
(specs/pipeline.md, "Forward rules").

Handler ``forward``: the stage (``input.json``), its session table (open sessions, evicted ids,
the time now) and one ``ForwardRequest`` body (``request.bin``) from ``peer``; the answer is
``ACCEPT`` or ``REJECT`` with the rule's reason. The reference answer is p2pshard's sans-IO core:
idle sessions past their TTL are evicted first, then :func:`check_forward` and
:meth:`SessionTable.check`. No model runs: the rules are the same whatever the weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from p2pshard.conformance.model import JSON, AnswerError, Case, Runner, exact, unhex
from p2pshard.core.pipeline import ForwardRejected, SessionLimits, SessionTable, StageSpec, check_forward
from p2pshard.core.pipeline.rules import encode_forward
from p2pshard.core.wire import pipeline_pb2, tensor_pb2
from p2pshard.core.wire.tensor import EncodeOptions, Encoding, encode_tensors

NAME = "pipeline"
FILES = {"forward": frozenset({"input.json", "request.bin"})}

PEER = "0025080212210279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
OTHER = "00250802122102c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5"
THIRD = "00250802122102f9308a019258c31049344f85f89d5229b531c845836f99b08601f113bce036f9"
D = 8
FIRST: dict[str, JSON] = {
    "model_id": "m1",
    "layer_start": 0,
    "layer_end": 2,
    "total_layers": 4,
    "vocab_size": 16,
    "d_model": D,
    "context": 64,
    "n_heads": 2,
    "max_batch": 2,
    "n_blocks": 1,
}
MIDDLE: dict[str, JSON] = {**FIRST, "layer_start": 2, "layer_end": 3}
LIMITS: dict[str, JSON] = {
    "max_sessions": 3,
    "max_sessions_per_peer": 2,
    "max_bytes": 4096,
    "max_bytes_per_peer": 2048,
    "idle_ttl_s": 60.0,
    "max_tombstones": 16,
    "tombstone_ttl_s": 600.0,
}
KV_PER_TOKEN = 1 * 2 * D * 4  # one block: a key and a value of d_model float32


def _hidden(batch: int = 1, tokens: int = 2, d: int = D) -> np.ndarray:
    return np.arange(batch * tokens * d, dtype=np.float32).reshape(batch, tokens, d) / 10


def _req(
    rng: tuple[int, int] = (2, 3),
    values: np.ndarray | None = None,
    *,
    first: bool = False,
    sid: bytes = b"s1",
    start: int = 0,
    cache: bool = True,
    model_id: str = "",
    payload: bytes | None = None,
) -> bytes:
    x = values if values is not None else (np.array([[1, 2]]) if first else _hidden())
    req = encode_forward(rng, x, first=first, session_id=sid, start=start, use_cache=cache, model_id=model_id)
    if payload is not None:
        req.input = payload
    return req.SerializeToString()


def _huge() -> bytes:
    bundle = tensor_pb2.TensorBundle()
    rec = bundle.tensors.add(name="hidden", shape=[1 << 20, 1 << 20], layout=tensor_pb2.LAYOUT_DENSE)
    rec.encoding, rec.chunk_size = Encoding.FLOAT32.value, 4096
    body = bundle.SerializeToString()
    return b"P2T1\x00" + len(body).to_bytes(4, "little") + body


def _session(sid: bytes, length: int, last_used: float = 0.0, batch: int = 1, peer: str = PEER) -> JSON:
    return {"peer": peer, "session_id": sid.hex(), "batch": batch, "length": length, "last_used": last_used}


def generate() -> list[Case]:
    cases: list[Case] = []

    def case(
        name: str,
        desc: str,
        request: bytes,
        reason: str | None,
        *,
        stage: dict[str, JSON] = MIDDLE,
        sessions: list[JSON] | None = None,
        evicted: list[JSON] | None = None,
        busy: list[str] | None = None,
        now: float = 10.0,
    ) -> None:
        inp: dict[str, JSON] = {
            "stage": stage,
            "limits": LIMITS,
            "peer": PEER,
            "now": now,
            "sessions": sessions or [],
            "evicted": evicted or [],
            "busy": busy or [],
        }
        expected: dict[str, JSON] = {"verdict": "REJECT" if reason else "ACCEPT", "reason": reason}
        cases.append(Case(NAME, "forward", name, desc, reason is None, inp, {"request": request}, expected))

    open_s1 = [_session(b"s1", 2)]
    # -- accepted
    case(
        "tokens_no_cache",
        "token ids to the first range, no cache",
        _req((0, 2), first=True, cache=False),
        None,
        stage=FIRST,
    )
    case("hidden_new_session", "hidden states open a session", _req(), None)
    case(
        "continue_session",
        "the next token at the session's length",
        _req(values=_hidden(1, 1), start=2),
        None,
        sessions=open_s1,
    )
    case(
        "replay_from_zero",
        "position 0 of an open session starts it over (a replay)",
        _req(values=_hidden(1, 3)),
        None,
        sessions=open_s1,
    )
    fp16 = encode_tensors({"hidden": _hidden()}, EncodeOptions(encoding=Encoding.FLOAT16))
    case("fp16_hidden", "hidden states in FLOAT16", _req(payload=fp16), None)
    case("model_id_matches", "the stated model is the served one", _req(model_id="m1"), None)
    case(
        "replay_after_expiry",
        "position 0 of an expired session is welcome",
        _req(),
        None,
        evicted=[{"peer": PEER, "session_id": b"s1".hex(), "at": 5.0}],
    )
    # -- refused by the stateless rules
    case("wrong_range", "a range the server does not run", _req((2, 4)), "wrong_range")
    case("wrong_model", "another model id", _req(model_id="m2"), "wrong_model")
    case("no_session_id", "a cached forward without a session id", _req(sid=b""), "bad_session_id")
    case("long_session_id", "a 65-byte session id", _req(sid=b"x" * 65), "bad_session_id")
    case("claims_2_40_elements", "a record claiming 2^40 elements", _req(payload=_huge()), "too_large")
    bad = b"P2T1\x00" + (3).to_bytes(4, "little") + b"\xff\xff\xff"
    case(
        "not_a_tensor_bundle",
        "an envelope around bytes that are no TensorBundle",
        _req(payload=bad),
        "bad_tensor",
    )
    case("tokens_to_a_middle_range", "token ids where hidden states belong", _req(first=True), "wrong_input")
    int8 = encode_tensors({"hidden": _hidden()}, EncodeOptions(encoding=Encoding.INT8))
    case("int8_hidden", "hidden states in INT8", _req(payload=int8), "wrong_dtype")
    topk = encode_tensors({"hidden": _hidden()}, EncodeOptions(topk=2, chunk_size=8))
    case("topk_hidden", "hidden states as a top-k record", _req(payload=topk), "wrong_dtype")
    case("wrong_width", "hidden states of width d_model + 1", _req(values=_hidden(d=D + 1)), "wrong_shape")
    case("batch_too_large", "a batch of 3 (max_batch 2)", _req(values=_hidden(batch=3)), "wrong_shape")
    case(
        "past_the_context",
        "positions 63..65 pass the context of 64",
        _req(values=_hidden(1, 2), start=63),
        "too_long",
    )
    case(
        "no_cache_not_at_zero",
        "a cacheless forward must start at 0",
        _req(start=1, cache=False),
        "wrong_position",
    )
    nan = _hidden()
    nan[0, 1, 3] = np.nan
    case("nan", "a NaN in the hidden states", _req(values=nan), "non_finite")
    case(
        "token_out_of_vocab",
        "token id 16 (vocabulary 16)",
        _req((0, 2), np.array([[1, 16]]), first=True),
        "bad_token",
        stage=FIRST,
    )
    case(
        "fractional_token",
        "token id 1.5",
        _req((0, 2), np.array([[1.5]]), first=True),
        "bad_token",
        stage=FIRST,
    )
    # -- refused by the session table
    case(
        "busy",
        "a forward of the session is still running",
        _req(values=_hidden(1, 1), start=2),
        "session_busy",
        sessions=open_s1,
        busy=[b"s1".hex()],
    )
    case(
        "expired_evicted",
        "the session was evicted",
        _req(values=_hidden(1, 1), start=2),
        "session_expired",
        evicted=[{"peer": PEER, "session_id": b"s1".hex(), "at": 5.0}],
    )
    case(
        "expired_by_ttl",
        "the session was idle past its TTL at this request",
        _req(values=_hidden(1, 1), start=2),
        "session_expired",
        sessions=[_session(b"s1", 2, last_used=0.0)],
        now=61.0,
    )
    case("unknown_session", "a session never opened", _req(values=_hidden(1, 1), start=2), "unknown_session")
    case(
        "another_peers_session",
        "a session of the same id, opened by another peer",
        _req(values=_hidden(1, 1), start=2),
        "unknown_session",
        sessions=[_session(b"s1", 2, peer=OTHER)],
    )
    case(
        "tombstone_forgotten",
        "evicted longer than tombstone_ttl_s ago",
        _req(values=_hidden(1, 1), start=2),
        "unknown_session",
        evicted=[{"peer": PEER, "session_id": b"s1".hex(), "at": 5.0}],
        now=700.0,
    )
    case(
        "wrong_position",
        "position 1 of a session holding 2",
        _req(values=_hidden(1, 1), start=1),
        "wrong_position",
        sessions=open_s1,
    )
    case(
        "batch_changed",
        "batch 2 in a session of batch 1",
        _req(values=_hidden(2, 1), start=2),
        "wrong_shape",
        sessions=open_s1,
    )
    case(
        "peer_sessions_full",
        "a third session of one peer (2 per peer)",
        _req(sid=b"s3"),
        "too_many_sessions",
        sessions=[_session(b"s1", 1), _session(b"s2", 1)],
    )
    case(
        "sessions_full",
        "a fourth session (3 in all)",
        _req(sid=b"s9"),
        "too_many_sessions",
        sessions=[_session(b"s1", 1), _session(b"a", 1, peer=OTHER), _session(b"b", 1, peer=OTHER)],
    )
    case(
        "peer_memory_full",
        "past the peer's 2048 bytes (64 per token)",
        _req(values=_hidden(1, 1), start=7),
        "out_of_memory",
        sessions=[_session(b"s1", 7), _session(b"s2", 25)],
    )
    case(
        "memory_full",
        "past the server's 4096 bytes",
        _req(values=_hidden(2, 2)),
        "out_of_memory",
        sessions=[_session(b"a", 32, peer=OTHER), _session(b"b", 30, peer=THIRD)],
    )
    return cases


# ------------------------------------------------------------------------------ reference answer


def _int(obj: Mapping[str, JSON], key: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise AnswerError(f"{key} must be an integer")
    return value


def _num(obj: Mapping[str, JSON], key: str) -> float:
    value = obj.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise AnswerError(f"{key} must be a number")
    return float(value)


def _list(obj: Mapping[str, JSON], key: str) -> list[Any]:
    value = obj.get(key, [])
    if not isinstance(value, list):
        raise AnswerError(f"{key} must be a list")
    return value


def answer(handler: str, inp: Mapping[str, JSON]) -> Mapping[str, JSON]:
    if handler not in FILES:
        raise AnswerError(f"unknown handler {handler!r}")
    stage, limits = inp.get("stage"), inp.get("limits")
    if not isinstance(stage, dict) or not isinstance(limits, dict):
        raise AnswerError("stage and limits must be objects")
    try:
        spec = StageSpec(**stage)
        table = SessionTable(SessionLimits(**limits), spec.kv_bytes_per_token)
    except (TypeError, ValueError) as exc:
        raise AnswerError(f"bad stage or limits: {exc}") from exc
    busy = {unhex(b, "busy[]") for b in _list(inp, "busy")}
    for e in _list(inp, "evicted"):
        key = (unhex(e.get("peer"), "peer"), unhex(e.get("session_id"), "session_id"))
        table.begin(key, 0, 1, 1, _num(e, "at"))
        table.abort(key, _num(e, "at"))  # an eviction at that time
    for s in _list(inp, "sessions"):
        key = (unhex(s.get("peer"), "peer"), unhex(s.get("session_id"), "session_id"))
        table.begin(key, 0, _int(s, "batch"), _int(s, "length"), _num(s, "last_used"))
        if key[1] not in busy:
            table.commit(key, _num(s, "last_used"))
    now = _num(inp, "now")
    peer = unhex(inp.get("peer"), "peer")
    request = pipeline_pb2.ForwardRequest()
    try:
        request.ParseFromString(unhex(inp.get("request"), "request"))
        table.expire(now)
        forward = check_forward(request, spec)
        if forward.use_cache:
            table.check((peer, forward.session_id), forward.start, forward.batch, forward.tokens, now)
    except ForwardRejected as exc:
        return {"verdict": "REJECT", "reason": exc.reason.value}
    except Exception as exc:  # DecodeError: the case's request is not a ForwardRequest
        raise AnswerError(f"request: {exc}") from exc
    return {"verdict": "ACCEPT", "reason": None}


RUNNER = Runner(NAME, FILES, generate, answer, exact)
