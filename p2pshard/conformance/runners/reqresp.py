"""Runner ``reqresp``: what a server answers to the bytes of one request stream (specs/framing.md).

Handlers ``status`` (``/p2pshard/status/1.0.0``) and ``blob`` (``/p2pshard/blob/1.0.0``). The
reference answer runs p2pshard's real :class:`~p2pshard.net.reqresp.ReqRespServer` over an
in-memory stream: the request bytes are read, then the client's end of writing, and everything
the server writes back is parsed as one ``Response`` frame plus ``stream_length`` raw bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import trio
from google.protobuf.message import DecodeError
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID

from p2pshard.conformance.model import JSON, AnswerError, Case, Runner, diff, unhex
from p2pshard.core.counters import Counters
from p2pshard.core.wire import blob_pb2, reqresp_pb2, status_pb2
from p2pshard.core.wire.framing import EOF, FrameDecoder, FramingError, encode_frame, encode_uvarint

NAME = "reqresp"
FILES = {"status": frozenset({"request.bin"}), "blob": frozenset({"input.json", "request.bin"})}

_PEER = ID(bytes.fromhex("0025080212210279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"))


def _request(body: bytes, deadline_ms: int = 0) -> bytes:
    return encode_frame(reqresp_pb2.Request(body=body, deadline_ms=deadline_ms).SerializeToString())


def _blob_req(digest: bytes, offset: int = 0, length: int = 0) -> bytes:
    return _request(blob_pb2.BlobRequest(digest=digest, offset=offset, length=length).SerializeToString())


BLOB = bytes(range(200)) + b"p2pshard" * 7
DIGEST = hashlib.sha256(BLOB).digest()


def generate() -> list[Case]:
    cases: list[Case] = []

    def status(name: str, desc: str, valid: bool, request: bytes, expected: dict[str, JSON]) -> None:
        cases.append(
            Case(NAME, "status", name, desc, valid, input_bin={"request": request}, expected=expected)
        )

    ok: dict[str, JSON] = {"code": "OK", "stream_length": 0, "body_type": "p2pshard.status.StatusResponse"}
    status("empty_request", "an empty Request (no body, default deadline)", True, _request(b""), ok)
    status("with_deadline", "an empty StatusRequest with a 2 s deadline", True, _request(b"", 2000), ok)
    status(
        "garbage_request",
        "a frame whose payload is not a Request protobuf",
        False,
        encode_frame(b"\xff\xff\xff"),
        {"code": "INVALID_ARGUMENT"},
    )
    status(
        "garbage_body",
        "a Request whose body is not a StatusRequest",
        False,
        _request(b"\x0a\x05ab"),
        {"code": "INVALID_ARGUMENT"},
    )
    status(
        "no_request", "the client closes without writing anything", False, b"", {"code": "INVALID_ARGUMENT"}
    )
    status(
        "truncated_frame",
        "the prefix promises 10 bytes, 3 arrive",
        False,
        b"\x0a\x0a\x00\x00",
        {"code": "INVALID_ARGUMENT"},
    )
    status(
        "malformed_prefix",
        "a 10-byte length prefix",
        False,
        b"\xff" * 9 + b"\x01",
        {"code": "INVALID_ARGUMENT"},
    )
    status(
        "oversized_prefix",
        "a prefix above the protocol's 1024-byte request limit",
        False,
        encode_uvarint(1025) + b"\x00" * 8,
        {"code": "RESOURCE_EXHAUSTED"},
    )
    status(
        "huge_prefix",
        "a prefix of 2^40 bytes: refused before any payload",
        False,
        encode_uvarint(1 << 40),
        {"code": "RESOURCE_EXHAUSTED"},
    )

    def blob(
        name: str,
        desc: str,
        valid: bool,
        request: bytes,
        expected: dict[str, JSON],
        blobs: tuple[bytes, ...] = (BLOB,),
    ) -> None:
        cases.append(
            Case(
                NAME,
                "blob",
                name,
                desc,
                valid,
                input_json={"blobs": [b.hex() for b in blobs]},
                input_bin={"request": request},
                expected=expected,
            )
        )

    def ok_range(offset: int, end: int) -> dict[str, JSON]:
        info = blob_pb2.BlobInfo(total_size=len(BLOB), offset=offset).SerializeToString()
        return {
            "code": "OK",
            "body": info.hex(),
            "stream_length": end - offset,
            "payload": BLOB[offset:end].hex(),
        }

    blob("whole", "the whole blob (length 0 = to the end)", True, _blob_req(DIGEST), ok_range(0, len(BLOB)))
    blob("range", "bytes [10, 42)", True, _blob_req(DIGEST, 10, 32), ok_range(10, 42))
    blob(
        "range_past_end",
        "a length past the end is cut at the end",
        True,
        _blob_req(DIGEST, 250, 1000),
        ok_range(250, len(BLOB)),
    )
    blob(
        "offset_at_end",
        "offset = size: an empty range",
        True,
        _blob_req(DIGEST, len(BLOB), 0),
        ok_range(len(BLOB), len(BLOB)),
    )
    blob(
        "unknown_digest",
        "a 32-byte digest the server does not hold",
        True,
        _blob_req(b"\x00" * 32),
        {"code": "NOT_FOUND"},
    )
    blob(
        "offset_past_end",
        "offset > size",
        False,
        _blob_req(DIGEST, len(BLOB) + 1),
        {"code": "INVALID_ARGUMENT"},
    )
    blob("short_digest", "a 31-byte digest", False, _blob_req(DIGEST[:31]), {"code": "INVALID_ARGUMENT"})
    blob("no_digest", "an empty BlobRequest", False, _blob_req(b""), {"code": "INVALID_ARGUMENT"})
    blob(
        "garbage_body",
        "a Request whose body is not a BlobRequest",
        False,
        _request(b"\x0a\x40"),
        {"code": "INVALID_ARGUMENT"},
    )
    blob(
        "oversized_prefix",
        "a prefix above the protocol's 256-byte request limit",
        False,
        encode_uvarint(257),
        {"code": "RESOURCE_EXHAUSTED"},
    )
    blob(
        "truncated_frame",
        "the stream ends inside the request frame",
        False,
        _blob_req(DIGEST)[:-4],
        {"code": "INVALID_ARGUMENT"},
    )
    return cases


# ------------------------------------------------------------------------------ reference answer


@dataclass
class _Conn:
    peer_id: ID = _PEER


@dataclass
class _MemoryStream:
    """Just enough of py-libp2p's INetStream for the server: reads a fixed input, records output."""

    incoming: bytes
    written: bytearray = field(default_factory=bytearray)
    reset_called: bool = False
    muxed_conn: _Conn = field(default_factory=_Conn)

    async def read(self, n: int = -1) -> bytes:
        await trio.lowlevel.checkpoint()
        if not self.incoming:
            raise StreamEOF("end of request")
        size = len(self.incoming) if n is None or n < 0 else n
        data, self.incoming = self.incoming[:size], self.incoming[size:]
        return data

    async def write(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self.written += data

    async def close(self) -> None:
        await trio.lowlevel.checkpoint()

    async def reset(self) -> None:
        await trio.lowlevel.checkpoint()
        self.reset_called = True


class _Host:
    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def set_stream_handler(self, protocol: str, handler: Any) -> None:
        self.handlers[str(protocol)] = handler


def _serve(handler: str, request: bytes, blobs: list[bytes]) -> _MemoryStream:
    from p2pshard.net.blob import BlobService, BlobStore
    from p2pshard.net.reqresp import ReqRespServer
    from p2pshard.protocols.status import STATUS_PROTOCOL, status_spec

    host = _Host()
    counters = Counters()
    server = ReqRespServer(host, counters)  # type: ignore[arg-type]
    if handler == "status":
        server.register(status_spec(lambda peer: status_pb2.StatusResponse(peer_id="reference", version="0")))
        protocol = STATUS_PROTOCOL
    else:
        store = BlobStore()
        for data in blobs:
            store.put(data)
        service = BlobService(store, None, counters)  # type: ignore[arg-type]
        spec = service.spec()
        server.register(spec)
        protocol = spec.protocol_id
    stream = _MemoryStream(request)

    async def main() -> None:
        with trio.fail_after(5):
            await host.handlers[protocol](stream)

    trio.run(main)
    return stream


def parse_response(written: bytes) -> dict[str, JSON]:
    """Split a server's output into the Response header and the raw payload after it."""
    decoder = FrameDecoder(1 << 20)
    decoder.receive_data(written)
    decoder.receive_eof()
    try:
        frame = decoder.next_event()
    except FramingError as exc:
        return {"code": None, "problem": f"response framing: {exc.reason}"}
    if frame is EOF or not isinstance(frame, bytes):
        return {"code": None, "problem": "no response frame"}
    resp = reqresp_pb2.Response()
    try:
        resp.ParseFromString(frame)
    except DecodeError:
        return {"code": None, "problem": "response is not a Response protobuf"}
    rest = decoder.take_buffered()
    name = reqresp_pb2.Code.Name(resp.code) if resp.code in reqresp_pb2.Code.values() else str(resp.code)
    return {
        "code": name,
        "body": bytes(resp.body).hex(),
        "stream_length": resp.stream_length,
        "payload": rest.hex(),
    }


def answer(handler: str, inp: Mapping[str, JSON]) -> Mapping[str, JSON]:
    if handler not in FILES:
        raise AnswerError(f"unknown handler {handler!r}")
    request = unhex(inp.get("request"), "request")
    blobs_json = inp.get("blobs", [])
    if not isinstance(blobs_json, list):
        raise AnswerError("blobs must be a list of hex strings")
    blobs = [unhex(b, "blobs[]") for b in blobs_json]
    stream = _serve(handler, request, blobs)
    out = parse_response(bytes(stream.written))
    out["reset"] = stream.reset_called
    return out


def check(
    handler: str, inp: Mapping[str, JSON], expected: Mapping[str, JSON], out: Mapping[str, JSON]
) -> list[str]:
    fails = diff("code", expected["code"], out.get("code"))
    for key in ("body", "stream_length", "payload"):
        if key in expected:
            fails += diff(key, expected[key], out.get(key))
    if expected["code"] != "OK":
        fails += diff("stream_length", 0, out.get("stream_length", 0))
    if expected.get("body_type") == "p2pshard.status.StatusResponse":
        body = out.get("body")
        try:
            status_pb2.StatusResponse().ParseFromString(bytes.fromhex(str(body)))
        except (DecodeError, ValueError):
            fails.append("body: not a StatusResponse")
    return fails


RUNNER = Runner(NAME, FILES, generate, answer, check)
