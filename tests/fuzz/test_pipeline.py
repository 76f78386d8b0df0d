"""Fuzz what a pipeline peer sends (specs/pipeline.md): a ``ForwardRequest`` as a server reads it
(decoded, checked against the stage, then run past the session table), a ``ForwardResponse`` as a
client reads it, and the ShardInfos a client plans a chain from. Typed answers: RpcError
(undecodable request), ForwardRejected (every rule), ChainError (no chain); anything else is a
crash. An accepted request never holds more than the stage allows."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st
from libp2p.peer.id import ID

from p2pshard.core.pipeline import ForwardRejected, SessionLimits, SessionTable, StageSpec, check_forward
from p2pshard.core.pipeline.chain import ChainError, Hop, plan_chain
from p2pshard.core.pipeline.rules import encode_forward, encode_output, read_output
from p2pshard.core.wire import pipeline_pb2 as pb
from p2pshard.net.reqresp import RpcError, decode_or_reject
from p2pshard.protocols.pipeline import MAX_FORWARD_RESPONSE, RemoteStage, plausible
from tests.fuzz.fuzzing import FUZZ, hostile, proto_message

FIRST = StageSpec("m", 0, 2, 4, vocab_size=256, d_model=8, context=16, n_heads=2, max_batch=2, n_blocks=1)
LAST = StageSpec("m", 2, 4, 4, vocab_size=256, d_model=8, context=16, n_heads=2, max_batch=2, n_blocks=1)


@st.composite
def _requests(draw: st.DrawFn) -> bytes:
    spec = draw(st.sampled_from([FIRST, LAST]))
    batch, tokens = draw(st.integers(1, 2)), draw(st.integers(1, 4))
    shape = (batch, tokens) if spec.is_first else (batch, tokens, spec.d_model)
    values = np.asarray(
        draw(st.lists(st.integers(0, 255), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    )
    req = encode_forward(
        (spec.layer_start, spec.layer_end),
        values.reshape(shape),
        first=spec.is_first,
        session_id=draw(st.binary(max_size=3)),
        start=draw(st.integers(0, 14)),
        use_cache=draw(st.booleans()),
        last_only=draw(st.booleans()),
    )
    return req.SerializeToString()


@st.composite
def _responses(draw: st.DrawFn) -> bytes:
    tokens = draw(st.integers(1, 3))
    values = np.full((1, tokens, 8), draw(st.floats(-10, 10)), dtype=np.float32)
    return encode_output(values, last=False).SerializeToString()


@FUZZ
@given(hostile(_requests()), st.sampled_from([FIRST, LAST]))
@example(b"", FIRST)
def test_forward_request(data: bytes, spec: StageSpec) -> None:
    try:
        req = decode_or_reject(pb.ForwardRequest, data)
        inp = check_forward(req, spec)
    except (RpcError, ForwardRejected):
        return
    assert inp.batch <= spec.max_batch and inp.start + inp.tokens <= spec.context
    assert inp.values.dtype == np.float32 and inp.values.size <= spec.max_input_elements()
    table = SessionTable(SessionLimits(), spec.kv_bytes_per_token)
    if inp.use_cache:
        try:
            table.begin((b"peer", inp.session_id), inp.start, inp.batch, inp.tokens, 0.0)
        except ForwardRejected:
            assert len(table) == 0 and table.used_bytes == 0
            return
        assert table.used_bytes == inp.batch * inp.tokens * spec.kv_bytes_per_token


@FUZZ
@given(hostile(_responses()), st.integers(1, 3))
def test_forward_response(data: bytes, tokens: int) -> None:
    try:
        resp = decode_or_reject(pb.ForwardResponse, data)
        out = read_output(resp, last=False, batch=1, tokens=tokens, width=8)
    except (RpcError, ForwardRejected):
        return
    assert out.shape == (1, tokens, 8) and out.dtype == np.float32


@FUZZ
@given(st.lists(proto_message(pb.ShardInfo), max_size=4))
def test_shard_infos_a_client_plans_from(infos: list[pb.ShardInfo]) -> None:
    """Whatever servers claim, planning a chain from their ShardInfos gives a chain or
    ChainError, and a believed claim never sizes a read past MAX_FORWARD_RESPONSE."""
    stages = [RemoteStage(ID(bytes([0, 2, 8, i])), info) for i, info in enumerate(infos) if plausible(info)]
    for stage in stages:
        assert stage.max_response_bytes(stage.info.max_batch, stage.info.context) <= MAX_FORWARD_RESPONSE
    try:
        chain = plan_chain(
            [
                Hop(s, s.info.model_id, s.info.layer_start, s.info.layer_end, s.info.total_layers)
                for s in stages
            ]
        )
    except ChainError:
        return
    assert chain[0].start == 0 and chain[-1].end == chain[0].total
    assert all(a.end == b.start for a, b in itertools.pairwise(chain))
