"""Runner ``framing``: uvarints and length-prefixed frames (specs/framing.md).

Handlers: ``uvarint_encode``, ``uvarint_decode``, ``encode``, ``decode``. See
specs/vectors/formats/framing.md for the files, the request/answer schema and the condition.
"""

from __future__ import annotations

from collections.abc import Mapping

from p2pshard.conformance.model import JSON, AnswerError, Case, Runner, exact, unhex
from p2pshard.core.wire.framing import (
    EOF,
    MAX_FRAME_SIZE,
    MAX_VARINT_BYTES,
    NEED_DATA,
    FrameDecoder,
    FramingError,
    decode_uvarint,
    encode_frame,
    encode_uvarint,
)

NAME = "framing"
FILES = {
    "uvarint_encode": frozenset({"input.json"}),
    "uvarint_decode": frozenset({"data.bin"}),
    "encode": frozenset({"payload.bin"}),
    "decode": frozenset({"input.json", "stream.bin"}),
}


def _case(handler: str, name: str, desc: str, valid: bool, expected: dict[str, JSON], **kw: object) -> Case:
    return Case(NAME, handler, name, desc, valid, expected=expected, **kw)  # type: ignore[arg-type]


def generate() -> list[Case]:
    cases: list[Case] = []
    for value, hexed in [
        (0, "00"),
        (1, "01"),
        (127, "7f"),
        (128, "8001"),
        (300, "ac02"),
        (16383, "ff7f"),
        (16384, "808001"),
        (MAX_FRAME_SIZE, "80808002"),
        (2**63 - 1, "ffffffffffffffff7f"),
    ]:
        cases.append(
            _case(
                "uvarint_encode",
                f"value_{value}",
                f"uvarint of {value}",
                True,
                {"bytes": hexed},
                input_json={"value": value},
            )
        )
    dec: list[tuple[str, str, bool, str, dict[str, JSON]]] = [
        ("zero", "00", True, "one byte, zero", {"value": 0, "length": 1}),
        ("max_one_byte", "7f", True, "largest one-byte value", {"value": 127, "length": 1}),
        ("two_bytes", "ac02", True, "300", {"value": 300, "length": 2}),
        ("trailing_bytes", "0105", True, "only the first varint is decoded", {"value": 1, "length": 1}),
        (
            "nine_bytes",
            "ffffffffffffffff7f",
            True,
            "the longest accepted uvarint (2^63-1)",
            {"value": 2**63 - 1, "length": 9},
        ),
        ("empty", "", False, "no bytes: more are needed", {"error": "need_data"}),
        (
            "unterminated",
            "8080",
            False,
            "continuation bit on the last byte: more are needed",
            {"error": "need_data"},
        ),
        ("non_minimal_zero", "8000", False, "0 written in two bytes", {"error": "malformed_varint"}),
        (
            "non_minimal_one",
            "818000",
            False,
            "1 padded with a zero continuation",
            {"error": "malformed_varint"},
        ),
        ("ten_bytes", "ff" * 9 + "01", False, "longer than MAX_VARINT_BYTES", {"error": "malformed_varint"}),
        (
            "nine_continuations",
            "80" * 9,
            False,
            "nine bytes all with the continuation bit",
            {"error": "malformed_varint"},
        ),
    ]
    for name, hexed, valid, desc, exp in dec:
        cases.append(
            _case("uvarint_decode", name, desc, valid, exp, input_bin={"data": bytes.fromhex(hexed)})
        )
    for name, payload in [
        ("empty", b""),
        ("short", b"hello"),
        ("len_127", b"\x01" * 127),
        ("len_128", b"\x02" * 128),
        ("len_300", bytes(range(256)) + b"\x03" * 44),
    ]:
        cases.append(
            _case(
                "encode",
                name,
                f"frame of {len(payload)} bytes",
                True,
                {"frame": encode_uvarint(len(payload)).hex() + payload.hex()},
                input_bin={"payload": payload},
            )
        )
    small = 16

    def stream(
        name: str,
        desc: str,
        valid: bool,
        data: bytes,
        frames: list[bytes],
        error: str | None,
        limit: int = small,
    ) -> None:
        cases.append(
            _case(
                "decode",
                name,
                desc,
                valid,
                {"frames": [f.hex() for f in frames], "error": error},
                input_json={"max_frame_size": limit},
                input_bin={"stream": data},
            )
        )

    stream("empty_stream", "a stream that ends at once holds no frames", True, b"", [], None)
    stream("one_frame", "one frame", True, b"\x03abc", [b"abc"], None)
    stream("three_frames", "three frames back to back", True, b"\x01a\x00\x02bc", [b"a", b"", b"bc"], None)
    stream("zero_length", "an empty frame is a frame", True, b"\x00", [b""], None)
    stream(
        "at_limit", "a frame of exactly max_frame_size bytes", True, b"\x10" + b"x" * 16, [b"x" * 16], None
    )
    stream(
        "default_limit_large",
        "a 300-byte frame under a 4 MiB limit",
        True,
        encode_frame(b"y" * 300),
        [b"y" * 300],
        None,
        MAX_FRAME_SIZE,
    )
    stream("over_limit", "one byte over max_frame_size", False, b"\x11" + b"x" * 17, [], "frame_too_large")
    stream(
        "over_limit_prefix_only",
        "an oversized prefix is refused before any payload arrives",
        False,
        encode_uvarint(1 << 40),
        [],
        "frame_too_large",
    )
    stream(
        "over_default_limit",
        "a prefix of MAX_FRAME_SIZE + 1 under the default limit",
        False,
        encode_uvarint(MAX_FRAME_SIZE + 1),
        [],
        "frame_too_large",
        MAX_FRAME_SIZE,
    )
    stream(
        "frames_then_oversized",
        "frames before the bad prefix are delivered",
        False,
        b"\x01a\x02bc" + encode_uvarint(1000),
        [b"a", b"bc"],
        "frame_too_large",
    )
    stream(
        "truncated_prefix",
        "the stream ends inside a length prefix",
        False,
        b"\x01a\x80",
        [b"a"],
        "truncated_frame",
    )
    stream(
        "truncated_payload",
        "the stream ends 2 bytes short of the payload",
        False,
        b"\x05abc",
        [],
        "truncated_frame",
    )
    stream(
        "truncated_after_frames",
        "a good frame, then a cut one",
        False,
        b"\x02ab\x03a",
        [b"ab"],
        "truncated_frame",
    )
    stream(
        "non_minimal_prefix",
        "a length prefix with a zero continuation byte",
        False,
        b"\x81\x00a",
        [],
        "malformed_varint",
    )
    stream(
        "ten_byte_prefix",
        "a length prefix longer than MAX_VARINT_BYTES",
        False,
        b"\xff" * 9 + b"\x01",
        [],
        "malformed_varint",
    )
    stream("garbage", "bytes that are no frame at all (0xff…)", False, b"\xff" * 12, [], "malformed_varint")
    stream("prefix_overflow_small_limit", "0x80 0x01 = 128 > 16", False, b"\x80\x01", [], "frame_too_large")
    assert MAX_VARINT_BYTES == 9
    return cases


def answer(handler: str, inp: Mapping[str, JSON]) -> Mapping[str, JSON]:
    if handler == "uvarint_encode":
        value = inp.get("value")
        if not isinstance(value, int):
            raise AnswerError("value must be an integer")
        return {"bytes": encode_uvarint(value).hex()}
    if handler == "uvarint_decode":
        data = unhex(inp.get("data"), "data")
        try:
            decoded = decode_uvarint(data)
        except FramingError as exc:
            return {"error": exc.reason}
        if decoded is None:
            return {"error": "need_data"}
        return {"value": decoded[0], "length": decoded[1]}
    if handler == "encode":
        return {"frame": encode_frame(unhex(inp.get("payload"), "payload")).hex()}
    if handler == "decode":
        limit = inp.get("max_frame_size")
        if not isinstance(limit, int):
            raise AnswerError("max_frame_size must be an integer")
        decoder = FrameDecoder(limit)
        decoder.receive_data(unhex(inp.get("stream"), "stream"))
        decoder.receive_eof()
        frames: list[JSON] = []
        error: str | None = None
        for _ in range(100_000):
            try:
                event = decoder.next_event()
            except FramingError as exc:
                error = exc.reason
                break
            if event is EOF or event is NEED_DATA:
                break
            assert isinstance(event, bytes)
            frames.append(event.hex())
        return {"frames": frames, "error": error}
    raise AnswerError(f"unknown handler {handler!r}")


RUNNER = Runner(NAME, FILES, generate, answer, exact)
