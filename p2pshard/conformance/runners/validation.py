"""Runner ``gossip_validation``: the structural verdict on a p2pshard topic message (specs/topics.md).

One handler per topic name (``gradients``, ``proofs``, …) plus ``topic`` for the rules about the
topic string itself. Input: the message's topic, ``from`` (the pubsub author, already
signature-checked by the router), its data, the receiver's network id and clock. Output: the
verdict (``ACCEPT`` / ``REJECT`` / ``IGNORE``) and the reason string of the first rule that
decided, in the order of the validation table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from google.protobuf.message import Message as ProtoMessage

from p2pshard.conformance.model import JSON, AnswerError, Case, Runner, exact, unhex
from p2pshard.conformance.runners.signing import peer_of, secret
from p2pshard.core.gossip import GossipMessage
from p2pshard.core.topics import CLOCK_WINDOW_MS, MAX_GOSSIP_MESSAGE, TOPICS, topic_name, validate
from p2pshard.core.wire import topics_pb2

NAME = "gossip_validation"
FILES = {name: frozenset({"input.json", "data.bin"}) for name in [*TOPICS, "topic"]}

NETWORK = "minimal"
NOW_MS = 1_700_000_000_000
AUTHOR = peer_of(secret(50))
OTHER = peer_of(secret(51))
H = bytes(range(32))

BUILDERS: dict[str, Callable[[], ProtoMessage]] = {
    "gradients": lambda: topics_pb2.GradientAnnouncement(
        round=4,
        model_hash=H,
        content_hash=H[::-1],
        size=4096,
        tokens=512,
        loss=2.5,
        contributor=AUTHOR,
        timestamp_ms=NOW_MS,
        signature=b"\x30\x00",
    ),
    "proofs": lambda: topics_pb2.WorkProof(
        worker=AUTHOR,
        round=4,
        model_hash=H,
        tokens=512,
        timestamp_ms=NOW_MS,
        nonce=b"\x05" * 16,
        signature=b"\x30\x00",
    ),
    "stakes": lambda: topics_pb2.Stake(
        staker=AUTHOR, amount=100, nonce=1, timestamp_ms=NOW_MS, signature=b"\x30\x00"
    ),
    "transactions": lambda: topics_pb2.Transaction(
        sender=AUTHOR, recipient=OTHER, amount=5, nonce=1, timestamp_ms=NOW_MS, signature=b"\x30\x00"
    ),
    "votes": lambda: topics_pb2.ValidationVote(
        validator=AUTHOR, proof_id=H, valid=True, timestamp_ms=NOW_MS, signature=b"\x30\x00"
    ),
    "capacity": lambda: topics_pb2.Capacity(
        peer=AUTHOR,
        first_layer=0,
        last_layer=4,
        device="cpu",
        tokens_per_s=100.0,
        timestamp_ms=NOW_MS,
        signature=b"\x30\x00",
    ),
}


def valid_data(name: str, **changes: object) -> bytes:
    msg = BUILDERS[name]()
    for k, v in changes.items():
        if v is None:
            msg.ClearField(k)
        else:
            setattr(msg, k, v)
    return msg.SerializeToString()


def generate() -> list[Case]:
    cases: list[Case] = []

    def case(
        handler: str,
        name: str,
        desc: str,
        valid: bool,
        data: bytes,
        result: str,
        reason: str,
        *,
        topic: str | None = None,
        source: bytes = AUTHOR,
        now_ms: int = NOW_MS,
    ) -> None:
        t = topic if topic is not None else topic_name(NETWORK, handler)
        cases.append(
            Case(
                NAME,
                handler,
                name,
                desc,
                valid,
                input_json={"network_id": NETWORK, "now_ms": now_ms, "topic": t, "from": source.hex()},
                input_bin={"data": data},
                expected={"result": result, "reason": reason},
            )
        )

    for name, spec in TOPICS.items():
        author = spec.author_field
        case(
            name,
            "valid",
            f"a well-formed {spec.message_type.__name__}",
            True,
            valid_data(name),
            "ACCEPT",
            "ok",
        )
        case(
            name,
            "clock_edge_past",
            "stamped exactly CLOCK_WINDOW_MS ago",
            True,
            valid_data(name),
            "ACCEPT",
            "ok",
            now_ms=NOW_MS + CLOCK_WINDOW_MS,
        )
        case(
            name,
            "clock_edge_future",
            "stamped exactly CLOCK_WINDOW_MS ahead",
            True,
            valid_data(name),
            "ACCEPT",
            "ok",
            now_ms=NOW_MS - CLOCK_WINDOW_MS,
        )
        case(
            name,
            "unknown_field",
            "an unknown field is skipped (protobuf rules)",
            True,
            valid_data(name) + b"\xf8\x07\x01",
            "ACCEPT",
            "ok",
        )
        case(
            name,
            "undecodable",
            "data that is not the topic's message",
            False,
            b"\x0a\xff\x01",
            "REJECT",
            "undecodable",
        )
        case(
            name,
            "missing_author",
            f"{author} is empty",
            False,
            valid_data(name, **{author: None}),
            "REJECT",
            "missing_author",
        )
        case(
            name,
            "author_not_sender",
            f"{author} names a peer other than the signed from",
            False,
            valid_data(name, **{author: OTHER}),
            "REJECT",
            "author_not_sender",
        )
        for field in spec.hash_fields:
            case(
                name,
                f"bad_{field}_short",
                f"{field} of 31 bytes",
                False,
                valid_data(name, **{field: H[:31]}),
                "REJECT",
                f"bad_{field}",
            )
            case(
                name,
                f"bad_{field}_long",
                f"{field} of 33 bytes",
                False,
                valid_data(name, **{field: H + b"\x00"}),
                "REJECT",
                f"bad_{field}",
            )
        case(
            name,
            "too_old",
            "stamped CLOCK_WINDOW_MS + 1 ago",
            False,
            valid_data(name),
            "IGNORE",
            "outside_clock_window",
            now_ms=NOW_MS + CLOCK_WINDOW_MS + 1,
        )
        case(
            name,
            "too_new",
            "stamped CLOCK_WINDOW_MS + 1 ahead",
            False,
            valid_data(name),
            "IGNORE",
            "outside_clock_window",
            now_ms=NOW_MS - CLOCK_WINDOW_MS - 1,
        )
        case(
            name,
            "no_timestamp",
            "timestamp_ms missing (0)",
            False,
            valid_data(name, timestamp_ms=None),
            "IGNORE",
            "outside_clock_window",
        )
        case(
            name,
            "other_network",
            "the same message on another network's topic",
            True,
            valid_data(name),
            "IGNORE",
            "other_network",
            topic=topic_name("othernet", name),
        )
    gradients = "gradients"
    case(
        gradients,
        "oversized",
        f"data over MAX_GOSSIP_MESSAGE ({MAX_GOSSIP_MESSAGE} bytes): this rule comes "
        "first, and the limit is the same on every topic",
        False,
        valid_data(gradients) + _padding(MAX_GOSSIP_MESSAGE + 1 - len(valid_data(gradients))),
        "REJECT",
        "oversized",
    )
    case(
        gradients,
        "order_author_before_hash",
        "wrong author and bad hash: the author rule comes first",
        False,
        valid_data(gradients, contributor=OTHER, model_hash=b"\x01"),
        "REJECT",
        "author_not_sender",
    )
    case(
        gradients,
        "order_hash_before_clock",
        "bad hash and stale: REJECT beats IGNORE",
        False,
        valid_data(gradients, model_hash=b"\x01"),
        "REJECT",
        "bad_model_hash",
        now_ms=NOW_MS + 10 * CLOCK_WINDOW_MS,
    )
    case(
        gradients,
        "empty_hash_allowed",
        "an unset hash field is not checked",
        True,
        valid_data(gradients, content_hash=None),
        "ACCEPT",
        "ok",
    )
    t = "topic"
    for name, topic, desc in [
        ("not_p2pshard", "/eth2/beacon_block/ssz", "a topic outside /p2pshard/"),
        ("wrong_encoding", f"/p2pshard/{NETWORK}/votes/json", "an encoding other than proto"),
        ("unknown_name", f"/p2pshard/{NETWORK}/blocks/proto", "a name that is not a p2pshard topic"),
        ("empty_network", "/p2pshard//votes/proto", "an empty network id"),
        ("extra_segment", f"/p2pshard/{NETWORK}/votes/proto/x", "an extra path segment"),
        ("no_leading_slash", f"p2pshard/{NETWORK}/votes/proto", "no leading slash"),
    ]:
        case(t, name, desc, False, valid_data("votes"), "IGNORE", "not_a_p2pshard_topic", topic=topic)
    return cases


def _padding(n: int) -> bytes:
    """``n`` bytes that decode as an unknown field (field 1000, length-delimited) — i.e. any message."""
    if n < 4:
        return b"\x00" * n
    body = n - 2 - _varint_len(n)
    while 2 + _varint_len(body) + body != n:
        body += n - (2 + _varint_len(body) + body)
    return b"\xc2\x3e" + _varint(body) + b"\x00" * body


def _varint(v: int) -> bytes:
    out = bytearray()
    while v > 0x7F:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _varint_len(v: int) -> int:
    return len(_varint(v))


def answer(handler: str, inp: Mapping[str, JSON]) -> Mapping[str, JSON]:
    if handler not in FILES:
        raise AnswerError(f"unknown handler {handler!r}")
    now_ms = inp.get("now_ms")
    if not isinstance(now_ms, int):
        raise AnswerError("now_ms must be an integer")
    msg = GossipMessage(
        topic=str(inp.get("topic")),
        data=unhex(inp.get("data"), "data"),
        source=unhex(inp.get("from"), "from"),
    )
    verdict = validate(msg, str(inp.get("network_id")), now_ms)
    return {"result": verdict.result.name, "reason": verdict.reason}


RUNNER = Runner(NAME, FILES, generate, answer, exact)
