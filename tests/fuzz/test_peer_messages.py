"""Fuzz what peers send besides gossip frames: topic messages (structural validation and author
signatures), signed DHT records, checkpoint info and its schedule, status answers, and both ends
of the request/response and blob protocols (driven through in-memory streams).

Typed answers: a Verdict (topics), RecordError (records), DecodeError/ValueError (checkpoint
info and schedule), RpcError (request/response), BlobError (blob fetches); a server never lets
an error escape its stream handler (``reqresp.stream_errors`` stays 0)."""

from __future__ import annotations

import hashlib
import io
import time
from typing import Any, cast

import trio
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError
from hypothesis import example, given
from hypothesis import strategies as st
from libp2p.abc import INetStream
from libp2p.peer.id import ID
from trio.testing import MockClock

from p2pshard.core import records
from p2pshard.core import topics as core_topics
from p2pshard.core.counters import Counters
from p2pshard.core.gossip import GossipMessage
from p2pshard.core.gossip.signing import Secp256k1Signer, inlined_public_key
from p2pshard.core.rounds.schedule import RoundSchedule
from p2pshard.core.wire import blob_pb2, checkpoint_pb2, records_pb2, reqresp_pb2, status_pb2
from p2pshard.core.wire.framing import encode_frame
from p2pshard.net.blob import BlobError, BlobService, BlobStore
from p2pshard.net.discovery import verify_libp2p_signature
from p2pshard.net.reqresp import ProtocolSpec, ReqRespClient, ReqRespServer, RetryPolicy, RpcError
from p2pshard.protocols.checkpoint import checkpoint_spec
from p2pshard.protocols.status import status_spec
from tests.fuzz.fuzzing import FUZZ, FakeStream, chunked, encoded, hostile, proto_message, run_sync

NETWORK = "fuzznet"
SIGNER = Secp256k1Signer(b"\x07" * 32)
AUTHOR = SIGNER.peer_id
NOW_MS = 1_700_000_000_000

# ------------------------------------------------------------------------------------ topics


@st.composite
def _topic_messages(draw: st.DrawFn) -> tuple[str, bytes]:
    name = draw(st.sampled_from(sorted(core_topics.TOPICS)))
    spec = core_topics.TOPICS[name]
    msg = draw(
        proto_message(
            spec.message_type,
            overrides={
                spec.author_field: st.just(AUTHOR) | st.binary(max_size=40),
                "timestamp_ms": st.just(NOW_MS) | st.integers(0, (1 << 64) - 1),
            },
        )
    )
    msg.signature = SIGNER.sign(core_topics.signing_bytes(name, msg))
    return name, msg.SerializeToString()


topic_payloads = _topic_messages()


@FUZZ
@given(
    st.sampled_from(sorted(core_topics.TOPICS)),
    hostile(topic_payloads.map(lambda t: t[1])),
    st.sampled_from([AUTHOR, b""]),
    st.text(max_size=6),
)
def test_topic_messages(name: str, data: bytes, source: bytes, junk: str) -> None:
    topic = core_topics.topic_name(NETWORK, name) if junk == "" else f"/p2pshard/{junk}/{name}/proto"
    msg = GossipMessage(topic, data, source)
    verdict = core_topics.validate(msg, NETWORK, NOW_MS)
    assert isinstance(verdict.reason, str)
    if verdict.accepted:
        decoded = core_topics.TOPICS[name].message_type.FromString(data)
        signed = core_topics.signing_bytes(name, decoded)
        author = getattr(decoded, core_topics.TOPICS[name].author_field)
        assert isinstance(core_topics.verify_author(author, signed, decoded.signature), bool)
    assert core_topics.verify_author(data[:40], data, data[40:]) in (True, False)


# ----------------------------------------------------------------------------------- records

RECORD_KEY = f"/p2pshard/peer/{ID(AUTHOR).to_base58()}"


def _record(payload: bytes, seq: int) -> bytes:
    return records.make_record(RECORD_KEY, seq, payload, _PUBLIC_KEY, SIGNER.sign)


_PUBLIC_KEY = inlined_public_key(AUTHOR) or b""
signed_records = st.builds(_record, st.binary(max_size=64), st.integers(0, (1 << 64) - 1))


@FUZZ
@given(hostile(signed_records | encoded(proto_message(records_pb2.SignedRecord))), st.booleans())
def test_signed_records(value: bytes, other_key: bool) -> None:
    key = "/p2pshard/layers/x" if other_key else RECORD_KEY
    try:
        rec = records.verify_record(key, value, verify_libp2p_signature)
    except records.RecordError as exc:
        assert exc.reason in records.REASONS
    else:
        assert rec.key == key and isinstance(rec.payload, bytes)
    assert records.select_record(key, [value, value[:-1]], verify_libp2p_signature) in (0, 1)


# ----------------------------------------------------------------------- checkpoint and status

schedules = proto_message(
    checkpoint_pb2.Schedule,
    overrides={
        "genesis_time": st.just(time.time()) | st.floats(),
        "period_s": st.sampled_from([0.5, 10.0, 86400.0]) | st.floats(),
    },
)
checkpoint_infos = encoded(proto_message(checkpoint_pb2.CheckpointInfo, overrides={"schedule": schedules}))


@FUZZ
@given(hostile(checkpoint_infos))
@example(
    checkpoint_pb2.CheckpointInfo(schedule=checkpoint_pb2.Schedule(period_s=float("nan"))).SerializeToString()
)
def test_checkpoint_info(data: bytes) -> None:
    try:
        info = checkpoint_pb2.CheckpointInfo.FromString(data)
    except DecodeError:
        return
    s = info.schedule  # as the round protocol adopts a peer's offer
    try:
        schedule = RoundSchedule.offered(
            s.genesis_time, s.period_s, s.announce_deadline_s, s.fetch_timeout_s, time.time()
        )
    except ValueError:
        return
    assert schedule.period > 0
    assert schedule.round_at(schedule.genesis_time + schedule.period * 1.5) == 1


def _status_view(body: bytes) -> str:
    """What ``p2pshard status`` does with an answer: decode, to dict, hex hashes, print."""
    from rich.console import Console

    from p2pshard.cli import _hex_hashes
    from p2pshard.net.reqresp import decode_or_reject
    from p2pshard.ui import print_status

    resp = decode_or_reject(status_pb2.StatusResponse, body)
    view = _hex_hashes(
        MessageToDict(resp, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    )
    out = io.StringIO()
    print_status(view, Console(file=out, width=100))
    return out.getvalue()


status_answers = encoded(proto_message(status_pb2.StatusResponse, depth=2))


@FUZZ
@given(hostile(status_answers))
def test_status_answer(data: bytes) -> None:
    try:
        _status_view(data)
    except RpcError:
        return


def test_status_answer_printed() -> None:
    """Found by test_status_answer: a peer whose status named it ``[/]`` crashed ``p2pshard status``
    (rich read the peer's strings as markup); ui.py escapes them now."""
    assert "[/]" in _status_view(b"\n\x03[/]")


# ------------------------------------------------------------------- request/response, blobs

BLOB = bytes(range(256)) * 3
DIGEST = hashlib.sha256(BLOB).digest()
PEER = ID(AUTHOR)


class _Conn:
    peer_id = PEER


class _ServerStream(FakeStream):
    muxed_conn = _Conn()


def _server_specs(counters: Counters) -> list[ProtocolSpec]:
    store = BlobStore()
    store.put(BLOB)
    service = BlobService(store, cast(Any, None), counters)

    async def info() -> checkpoint_pb2.CheckpointInfo:
        return checkpoint_pb2.CheckpointInfo(network_id=NETWORK, round=3)

    return [
        service.spec(),
        status_spec(lambda peer: status_pb2.StatusResponse(peer_id=str(peer))),
        checkpoint_spec(info),
    ]


blob_requests = encoded(
    proto_message(blob_pb2.BlobRequest, overrides={"digest": st.just(DIGEST) | st.binary(max_size=40)})
)
requests = st.builds(
    lambda body, deadline: encode_frame(
        reqresp_pb2.Request(body=body, deadline_ms=deadline).SerializeToString()
    ),
    blob_requests | st.binary(max_size=8),
    st.integers(0, 5000),
)


@FUZZ
@given(hostile(requests), st.integers(0, 2), st.data())
@example(encode_frame(reqresp_pb2.Request(deadline_ms=1 << 31).SerializeToString()), 0, None)
def test_reqresp_server(data: bytes, which: int, draw: st.DataObject | None) -> None:
    counters = Counters()
    spec = _server_specs(counters)[which]
    stream = _ServerStream(draw.draw(chunked(data)) if draw is not None else [data])
    server = ReqRespServer(cast(Any, None), counters)
    server._limits[spec.protocol_id] = trio.Semaphore(spec.max_concurrent)
    trio.run(server._serve, spec, cast(INetStream, stream))
    assert counters.get("reqresp.stream_errors") == 0, "an error escaped the handler"
    written = b"".join(stream.written)
    frames = FakeStream([written])
    from p2pshard.net.framed import FramedStream

    header = reqresp_pb2.Response.FromString(
        run_sync(FramedStream(cast(INetStream, frames), 1 << 20).read_required())
    )
    assert header.code in reqresp_pb2.Code.values()


class _Connector:
    def __init__(self, answer: list[bytes]) -> None:
        self.answer = answer
        self.streams = 0

    async def open_stream(self, peer: ID, protocol: str) -> FakeStream:
        self.streams += 1
        assert self.streams < 50
        return FakeStream(list(self.answer))


def _answer(body: bytes, payload: bytes, stream_length: int | None = None) -> bytes:
    n = len(payload) if stream_length is None else stream_length
    return encode_frame(reqresp_pb2.Response(body=body, stream_length=n).SerializeToString()) + payload


blob_answers = st.builds(
    lambda size, payload: _answer(blob_pb2.BlobInfo(total_size=size).SerializeToString(), payload),
    st.just(len(BLOB)) | st.integers(0, 4096),
    st.just(BLOB) | st.binary(max_size=64),
)
answers = (
    blob_answers
    | st.builds(_answer, encoded(proto_message(status_pb2.StatusResponse)), st.just(b""))
    | encoded(proto_message(reqresp_pb2.Response)).map(encode_frame)
)


@FUZZ
@given(hostile(answers), st.data(), st.booleans())
def test_reqresp_client_and_blob_fetch(data: bytes, draw: st.DataObject, blob: bool) -> None:
    pieces = draw.draw(chunked(data))
    connector = _Connector(pieces)
    client = ReqRespClient(cast(Any, connector), Counters())

    async def main() -> None:
        if blob:
            service = BlobService(BlobStore(), client, Counters())
            try:
                got = await service.fetch(DIGEST, [PEER], max_size=4096, timeout_s=5.0)
            except BlobError:
                return
            assert hashlib.sha256(got).digest() == DIGEST
        else:
            try:
                body = await client.call(PEER, "/x", b"", retry=RetryPolicy(attempts=2, base_delay_s=0))
            except RpcError:
                return
            assert isinstance(body, bytes)

    trio.run(main, clock=MockClock(autojump_threshold=0))  # retry backoffs take no time
