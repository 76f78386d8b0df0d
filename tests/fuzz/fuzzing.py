"""Shared pieces of the decoder fuzzers: the settings profile, byte mutations, and a fake stream.

The number of cases per decoder comes from ``P2PSHARD_FUZZ_EXAMPLES`` (default 1000, what CI
runs; ``nox -s fuzz`` sets 100,000). Runs are derandomized and keep no example database, so a
CI run is the same every time; a failure prints the ``@example`` to add as a regression.

Every fuzzer feeds a decoder two kinds of input: arbitrary bytes, and mutations of valid
encodings (bit flips, byte and word overwrites, truncation, deletion, insertion, duplication,
splices with another valid encoding, and edits of length fields), so that most cases get past
the first check and reach the deeper ones.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from p2pshard.core.wire.framing import decode_uvarint, encode_uvarint

EXAMPLES = int(os.environ.get("P2PSHARD_FUZZ_EXAMPLES", "1000"))
PROFILE = "p2pshard-fuzz"

settings.register_profile(
    PROFILE,
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
)
FUZZ = settings(settings.get_profile(PROFILE))
"""Decorator for every fuzz test (applied per test, so other suites keep their own settings)."""

T = TypeVar("T")

# Integers that break length and count fields: edges of 7-bit groups, 32 and 64 bits.
INTERESTING_INTS = (
    0,
    1,
    2,
    7,
    8,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0x3FFF,
    0x4000,
    0xFFFF,
    0x10000,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFFF,
    1 << 32,
    (1 << 63) - 1,
    1 << 63,
    (1 << 64) - 1,
)


def _varint_positions(data: bytes) -> list[int]:
    """Likely length fields: after a byte that reads as a protobuf tag of wire type 2, and 0."""
    return [0] + [i + 1 for i in range(len(data) - 1) if data[i] & 0x07 == 2]


def _mutate_once(draw: st.DrawFn, data: bytearray, valid: st.SearchStrategy[bytes]) -> bytearray:
    """One mutation (a plain function drawing from ``draw``: a composite strategy built per call
    would have Hypothesis describe ``valid``, lambdas' source included, on every draw)."""
    op = draw(
        st.sampled_from(
            ("flip", "byte", "truncate", "delete", "insert", "duplicate", "splice", "varint", "word")
        )
    )
    n = len(data)
    pos = draw(st.integers(0, n))
    if op == "flip" and n:
        pos = min(pos, n - 1)
        data[pos] ^= 1 << draw(st.integers(0, 7))
    elif op == "byte" and n:
        pos = min(pos, n - 1)
        data[pos] = draw(st.sampled_from((0x00, 0x01, 0x7F, 0x80, 0xFF)) | st.integers(0, 255))
    elif op == "truncate":
        del data[pos:]
    elif op == "delete":
        del data[pos : pos + draw(st.integers(1, 16))]
    elif op == "insert":
        data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
    elif op == "duplicate" and n:
        start = min(pos, n - 1)
        piece = data[start : start + draw(st.integers(1, 64))]
        at = draw(st.integers(0, n))
        data[at:at] = piece
    elif op == "splice":
        other = draw(valid)
        cut = draw(st.integers(0, len(other)))
        data[pos:] = other[cut:] if draw(st.booleans()) else other
    elif op == "varint" and n:
        where = draw(st.sampled_from(_varint_positions(bytes(data))))
        old = decode_uvarint_lenient(data, where)
        if old is not None:
            value, end = old
            new = draw(
                st.sampled_from(INTERESTING_INTS)
                | st.sampled_from((value + 1, max(0, value - 1), value * 2, value + 7))
            )
            data[where:end] = encode_uvarint(new)
    elif op == "word" and n:
        fmt = draw(st.sampled_from(("<I", "<Q", "<H", ">I")))
        width = struct.calcsize(fmt)
        value = draw(st.sampled_from(INTERESTING_INTS)) & ((1 << (8 * width)) - 1)
        pos = min(pos, max(0, n - width))
        data[pos : pos + width] = struct.pack(fmt, value)
    return data


def decode_uvarint_lenient(data: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    try:
        return decode_uvarint(data, pos)
    except ValueError:
        return None
    except Exception:
        return None


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[bytes], max_mutations: int = 4) -> bytes:
    """A valid encoding with 1..``max_mutations`` mutations applied."""
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(1, max_mutations))):
        data = _mutate_once(draw, data, valid)
    return bytes(data)


def hostile(valid: st.SearchStrategy[bytes], max_size: int = 4096) -> st.SearchStrategy[bytes]:
    """What a decoder is fed: valid encodings, mutated ones (most cases) and arbitrary bytes."""
    return st.one_of(
        valid,
        mutated(valid),
        mutated(valid),
        mutated(valid),
        st.binary(max_size=max_size),
    )


def expect(
    typed: type[BaseException] | tuple[type[BaseException], ...], fn: Callable[..., T], *args: Any
) -> T | None:
    """Call ``fn``; its own typed error is an answer (None), anything else propagates as a crash."""
    try:
        return fn(*args)
    except typed:
        return None


class FakeStream:
    """An in-memory libp2p stream: hands out ``chunks`` one read at a time (cut to the size
    asked), then raises ``end``; records what is written."""

    def __init__(self, chunks: list[bytes], end: type[Exception] | None = None) -> None:
        from libp2p.network.stream.exceptions import StreamEOF

        self.chunks = list(chunks)
        self.end: type[Exception] = end or StreamEOF
        self.written: list[bytes] = []
        self.reads = 0
        self.closed = False
        self.was_reset = False

    async def read(self, n: int | None = None) -> bytes:
        self.reads += 1
        if self.reads > 100_000:
            raise AssertionError("a reader looped without end")
        if not self.chunks:
            raise self.end()
        chunk = self.chunks.pop(0)
        if n is not None and len(chunk) > n:
            self.chunks.insert(0, chunk[n:])
            chunk = chunk[:n]
        return chunk

    async def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    async def close(self) -> None:
        self.closed = True

    async def close_write(self) -> None:
        pass

    async def reset(self) -> None:
        self.was_reset = True


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut into pieces as a network might deliver it."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    pieces, last = [], 0
    for c in [*cuts, len(data)]:
        if c > last:
            pieces.append(data[last:c])
            last = c
    return pieces


def run_sync(coro: Any) -> Any:
    """Run a coroutine that never really suspends (it only awaits a :class:`FakeStream`)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise AssertionError("the coroutine suspended: it awaited something other than the fake stream")


# ------------------------------------------------------------------------ protobuf messages

_INT_RANGES = {
    "TYPE_UINT32": (0, (1 << 32) - 1),
    "TYPE_FIXED32": (0, (1 << 32) - 1),
    "TYPE_UINT64": (0, (1 << 64) - 1),
    "TYPE_FIXED64": (0, (1 << 64) - 1),
    "TYPE_INT32": (-(1 << 31), (1 << 31) - 1),
    "TYPE_SINT32": (-(1 << 31), (1 << 31) - 1),
    "TYPE_SFIXED32": (-(1 << 31), (1 << 31) - 1),
    "TYPE_INT64": (-(1 << 63), (1 << 63) - 1),
    "TYPE_SINT64": (-(1 << 63), (1 << 63) - 1),
    "TYPE_SFIXED64": (-(1 << 63), (1 << 63) - 1),
}


_TYPE_NAMES: dict[int, str] = {}


def _type_name(fd: Any) -> str:
    if not _TYPE_NAMES:
        from google.protobuf.descriptor import FieldDescriptor

        _TYPE_NAMES.update({v: k for k, v in vars(FieldDescriptor).items() if k.startswith("TYPE_")})
    return _TYPE_NAMES[fd.type]


def _field_values(
    fd: Any, depth: int, overrides: dict[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[Any]:
    if fd.name in overrides:
        return overrides[fd.name]
    type_name = _type_name(fd)
    if type_name in _INT_RANGES:
        lo, hi = _INT_RANGES[type_name]
        small = st.integers(max(lo, -3), min(hi, 1000))
        return small | st.sampled_from([v for v in (lo, hi, 0, 1) if lo <= v <= hi]) | st.integers(lo, hi)
    if type_name == "TYPE_BOOL":
        return st.booleans()
    if type_name in ("TYPE_DOUBLE", "TYPE_FLOAT"):
        return st.floats(width=32 if type_name == "TYPE_FLOAT" else 64)
    if type_name == "TYPE_STRING":  # markup-like text too: some strings end up on a terminal
        return st.text(max_size=24) | st.sampled_from(["[/bold]", "[link=x]", "[", "]", "[red]x", "\x1b[2J"])
    if type_name == "TYPE_BYTES":
        return st.binary(max_size=48) | st.binary(min_size=32, max_size=32)
    if type_name == "TYPE_ENUM":
        return st.sampled_from([v.number for v in fd.enum_type.values])
    assert type_name in ("TYPE_MESSAGE", "TYPE_GROUP"), type_name
    return proto_message(fd.message_type._concrete_class, depth - 1, overrides)


def proto_message(
    cls: type[Any], depth: int = 2, overrides: dict[str, st.SearchStrategy[Any]] | None = None
) -> st.SearchStrategy[Any]:
    """Messages of protobuf class ``cls`` with any subset of fields set (``overrides`` gives
    fields of that name, at any depth, their own values); nested messages down to ``depth``."""
    over = overrides or {}
    plan: list[tuple[str, str, st.SearchStrategy[Any]]] = []  # (field, how to set it, values)
    for fd in cls.DESCRIPTOR.fields:
        is_msg = fd.message_type is not None
        if is_msg and depth <= 0:
            continue
        if is_msg and fd.message_type.GetOptions().map_entry:
            key_fd, value_fd = fd.message_type.fields_by_name["key"], fd.message_type.fields_by_name["value"]
            values = st.dictionaries(
                _field_values(key_fd, depth, {}), _field_values(value_fd, depth, {}), max_size=3
            )
            plan.append((fd.name, "map", values))
        elif fd.is_repeated:
            plan.append(
                (fd.name, "add" if is_msg else "extend", st.lists(_field_values(fd, depth, over), max_size=3))
            )
        else:
            plan.append((fd.name, "copy" if is_msg else "set", _field_values(fd, depth, over)))
    chosen = (
        st.lists(st.sampled_from(range(len(plan))), max_size=len(plan), unique=True) if plan else st.just([])
    )

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        msg = cls()
        for i in sorted(draw(chosen)):
            name, how, values = plan[i]
            value = draw(values)
            if how == "set":
                setattr(msg, name, value)
            elif how == "copy":
                getattr(msg, name).CopyFrom(value)
            elif how == "extend":
                getattr(msg, name).extend(value)
            elif how == "add":
                for v in value:
                    getattr(msg, name).add().CopyFrom(v)
            else:
                target = getattr(msg, name)
                for k, v in value.items():
                    if isinstance(v, (int, float, str, bytes, bool)):
                        target[k] = v
                    else:
                        target[k].CopyFrom(v)
        return msg

    return build()


def encoded(messages: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return messages.map(lambda m: m.SerializeToString())
