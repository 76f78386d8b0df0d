"""Runner ``messages``: protobuf decode / re-encode round trips of every p2pshard message.

One handler per message (``<file>.<Message>``, e.g. ``topics.GradientAnnouncement``). A valid case
is canonically encoded (fields in field-number order, map entries sorted by key, proto3 defaults
omitted); an invalid case is bytes the protobuf wire format refuses (truncated, a bad wire type,
field number 0, invalid UTF-8 in a proto3 string).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage

from p2pshard.conformance.model import JSON, AnswerError, Case, Runner, diff, unhex
from p2pshard.core.wire import (
    blob_pb2,
    records_pb2,
    reqresp_pb2,
    rpc_pb2,
    status_pb2,
    tensor_pb2,
    topics_pb2,
)

NAME = "messages"

H32 = bytes(range(32))
H32B = bytes(range(100, 132))
PEER = bytes.fromhex("0025080212210279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")


def _rpc_full() -> rpc_pb2.RPC:
    rpc = rpc_pb2.RPC()
    rpc.subscriptions.add(subscribe=True, topicid="/p2pshard/minimal/votes/proto")
    msg = rpc.publish.add(
        data=b"hello",
        seqno=b"\x00" * 7 + b"\x01",
        topic="/p2pshard/minimal/votes/proto",
        signature=b"\x30\x06\x02\x01\x01\x02\x01\x01",
    )
    setattr(msg, "from", PEER)
    ctrl = rpc.control
    ctrl.ihave.add(topicID="t", messageIDs=[b"\x01" * 20, b"\x02" * 20])
    ctrl.iwant.add(messageIDs=[b"\x03" * 20])
    ctrl.graft.add(topicID="t")
    prune = ctrl.prune.add(topicID="u", backoff=60)
    prune.peers.add(peerID=PEER)
    ctrl.idontwant.add(messageIDs=[b"\x04" * 20])
    return rpc


def _message_full() -> rpc_pb2.Message:
    m = rpc_pb2.Message(data=b"\x00\x01", seqno=b"\x00" * 8, topic="x", signature=b"\x01", key=b"\x02")
    setattr(m, "from", PEER)
    return m


def _status_full() -> status_pb2.StatusResponse:
    s = status_pb2.StatusResponse(
        peer_id="16Uiu2HAkx",
        version="0.1.0",
        agent="p2pshard/0.1.0",
        protocols=["/p2pshard/blob/1.0.0", "/p2pshard/status/1.0.0"],
        listen_addrs=["/ip4/127.0.0.1/tcp/4001"],
        uptime_s=12.5,
        network_id="minimal",
    )
    s.peers.add(peer_id="16Uiu2HAky", addrs=["/ip4/127.0.0.1/tcp/4002"])
    s.mesh.add(topic="/p2pshard/minimal/votes/proto", mesh_peers=3)
    s.scores.add(peer_id="16Uiu2HAky", score=-0.5)
    s.training.round = 7
    s.training.loss = 2.25
    s.training.model_hash = H32
    s.training.tokens = 4096
    s.counters["b.second"] = 2
    s.counters["a.first"] = 1
    return s


def _tensor_full() -> tensor_pb2.TensorBundle:
    b = tensor_pb2.TensorBundle()
    b.tensors.add(
        name="w",
        shape=[2, 2],
        layout=tensor_pb2.LAYOUT_DENSE,
        encoding=tensor_pb2.VALUE_ENCODING_FLOAT32,
        chunk_size=4,
        values=b"\x00\x00\x80\x3f" * 4,
    )
    b.tensors.add(
        name="v",
        shape=[8],
        layout=tensor_pb2.LAYOUT_CHUNKED_TOPK,
        encoding=tensor_pb2.VALUE_ENCODING_INT8,
        chunk_size=4,
        k=1,
        values=b"\x7f\x81",
        scales=b"\x00\x00\x80\x3f" * 2,
        indices=b"\x01\x00\x03\x00",
    )
    return b


SAMPLES: dict[str, tuple[type[ProtoMessage], list[tuple[str, Callable[[], ProtoMessage]]], list[str]]] = {
    "reqresp.Request": (
        reqresp_pb2.Request,
        [
            ("empty", reqresp_pb2.Request),
            ("full", lambda: reqresp_pb2.Request(body=b"\x0a\x20" + H32, deadline_ms=5000)),
        ],
        [],
    ),
    "reqresp.Response": (
        reqresp_pb2.Response,
        [
            ("ok_empty", reqresp_pb2.Response),
            ("error", lambda: reqresp_pb2.Response(code=reqresp_pb2.NOT_FOUND, message="no blob 0001…")),
            ("stream", lambda: reqresp_pb2.Response(body=b"\x08\x80\x02", stream_length=256)),
        ],
        ["message"],
    ),
    "status.StatusRequest": (status_pb2.StatusRequest, [("empty", status_pb2.StatusRequest)], []),
    "status.StatusResponse": (
        status_pb2.StatusResponse,
        [
            ("minimal", lambda: status_pb2.StatusResponse(peer_id="16Uiu2HAkx")),
            ("full", _status_full),
        ],
        ["peer_id"],
    ),
    "blob.BlobRequest": (
        blob_pb2.BlobRequest,
        [
            ("digest_only", lambda: blob_pb2.BlobRequest(digest=H32)),
            ("range", lambda: blob_pb2.BlobRequest(digest=H32, offset=1 << 20, length=1 << 24)),
        ],
        [],
    ),
    "blob.BlobInfo": (
        blob_pb2.BlobInfo,
        [("full", lambda: blob_pb2.BlobInfo(total_size=300, offset=10))],
        [],
    ),
    "records.SignedRecord": (
        records_pb2.SignedRecord,
        [
            (
                "full",
                lambda: records_pb2.SignedRecord(
                    public_key=b"\x08\x02\x12\x21\x02" + H32, payload=b"{}", seq=3, signature=b"\x30\x00"
                ),
            ),
        ],
        [],
    ),
    "topics.GradientAnnouncement": (
        topics_pb2.GradientAnnouncement,
        [
            (
                "full",
                lambda: topics_pb2.GradientAnnouncement(
                    round=12,
                    model_hash=H32,
                    content_hash=H32B,
                    size=1 << 20,
                    tokens=8192,
                    loss=2.5,
                    contributor=PEER,
                    timestamp_ms=1_700_000_000_000,
                    signature=b"\x30\x00",
                ),
            ),
        ],
        [],
    ),
    "topics.WorkProof": (
        topics_pb2.WorkProof,
        [
            (
                "full",
                lambda: topics_pb2.WorkProof(
                    worker=PEER,
                    round=3,
                    model_hash=H32,
                    tokens=100,
                    timestamp_ms=1_700_000_000_000,
                    nonce=b"\x07" * 16,
                    signature=b"\x30\x00",
                ),
            ),
        ],
        [],
    ),
    "topics.Stake": (
        topics_pb2.Stake,
        [
            ("stake", lambda: topics_pb2.Stake(staker=PEER, amount=500, nonce=1, timestamp_ms=1)),
            ("unstake", lambda: topics_pb2.Stake(staker=PEER, amount=-500, nonce=2, timestamp_ms=2)),
        ],
        [],
    ),
    "topics.Transaction": (
        topics_pb2.Transaction,
        [
            (
                "full",
                lambda: topics_pb2.Transaction(
                    sender=PEER, recipient=PEER[::-1], amount=9, nonce=4, timestamp_ms=5, signature=b"\x01"
                ),
            ),
        ],
        [],
    ),
    "topics.ValidationVote": (
        topics_pb2.ValidationVote,
        [
            (
                "valid_true",
                lambda: topics_pb2.ValidationVote(validator=PEER, proof_id=H32, valid=True, timestamp_ms=9),
            ),
        ],
        [],
    ),
    "topics.Capacity": (
        topics_pb2.Capacity,
        [
            (
                "full",
                lambda: topics_pb2.Capacity(
                    peer=PEER,
                    first_layer=0,
                    last_layer=12,
                    device="cpu",
                    tokens_per_s=1536.0,
                    timestamp_ms=10,
                ),
            ),
        ],
        ["device"],
    ),
    "tensor.TensorBundle": (tensor_pb2.TensorBundle, [("two_tensors", _tensor_full)], []),
    "pubsub.RPC": (rpc_pb2.RPC, [("empty", rpc_pb2.RPC), ("full", _rpc_full)], []),
    "pubsub.Message": (rpc_pb2.Message, [("full", _message_full)], []),
}
"""handler -> (message class, valid samples, proto3 string fields to break with invalid UTF-8)."""

FILES = {handler: frozenset({"serialized.bin"}) for handler in SAMPLES}


def _encode(msg: ProtoMessage) -> bytes:
    return msg.SerializeToString(deterministic=True)


def _to_json(msg: ProtoMessage) -> JSON:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def _refused(cls: type[ProtoMessage], data: bytes) -> bool:
    try:
        cls().ParseFromString(data)
    except DecodeError:
        return True
    return False


def generate() -> list[Case]:
    cases: list[Case] = []
    for handler, (cls, samples, strings) in SAMPLES.items():
        full = b""
        for name, make in samples:
            msg = make()
            data = _encode(msg)
            full = max(full, data, key=len)
            cases.append(
                Case(
                    NAME,
                    handler,
                    name,
                    f"canonical {handler} ({name})",
                    True,
                    input_bin={"serialized": data},
                    expected={"valid": True, "value": _to_json(msg)},
                )
            )
        invalid: list[tuple[str, str, bytes]] = [
            ("bad_wire_type", "wire type 7 does not exist", full + b"\x0f"),
            ("field_zero", "field number 0 is reserved", b"\x00\x00" + full),
            ("length_past_end", "a length-delimited field longer than the input", full + b"\x7a\x05ab"),
        ]
        if full:
            invalid.append(("truncated", "the last byte is missing", full[:-1]))
        for field_name in strings:
            number = cls.DESCRIPTOR.fields_by_name[field_name].number
            invalid.append(
                (
                    f"bad_utf8_{field_name}",
                    f"proto3 string {field_name} holding invalid UTF-8",
                    bytes([number << 3 | 2, 2]) + b"\xff\xfe",
                )
            )
        for name, desc, data in invalid:
            if not _refused(cls, data):
                continue  # e.g. a cut that happens to end on a field boundary
            cases.append(
                Case(
                    NAME,
                    handler,
                    name,
                    desc,
                    False,
                    input_bin={"serialized": data},
                    expected={"valid": False},
                )
            )
    return cases


def answer(handler: str, inp: Mapping[str, JSON]) -> Mapping[str, JSON]:
    if handler not in SAMPLES:
        raise AnswerError(f"unknown handler {handler!r}")
    cls = SAMPLES[handler][0]
    data = unhex(inp.get("serialized"), "serialized")
    msg = cls()
    try:
        msg.ParseFromString(data)
    except DecodeError:
        return {"valid": False}
    return {"valid": True, "value": _to_json(msg), "reencoded": _encode(msg).hex()}


def check(
    handler: str, inp: Mapping[str, JSON], expected: Mapping[str, JSON], out: Mapping[str, JSON]
) -> list[str]:
    fails = diff("valid", expected["valid"], out.get("valid"))
    if fails or not expected["valid"]:
        return fails
    cls = SAMPLES[handler][0]
    want = json_format.ParseDict(expected["value"], cls())
    value = out.get("value")
    if not isinstance(value, dict):
        return ["value: not a JSON object"]
    try:
        got = json_format.ParseDict(value, cls())
    except (json_format.ParseError, TypeError, AttributeError) as exc:
        return [f"value: not the proto3 JSON of {handler}: {exc}"]
    if got != want:
        fails.append(f"value: expected {expected['value']}, got {out.get('value')}")
    fails += diff("reencoded", inp.get("serialized"), out.get("reencoded"))
    return fails


RUNNER = Runner(NAME, FILES, generate, answer, check)
