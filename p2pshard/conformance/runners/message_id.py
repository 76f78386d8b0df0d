"""Runner ``message_id``: the pubsub message id of a message (specs/pubsub.md, "Message id").

Handler ``compute``: p2pshard topics (``/p2pshard/…``) use the content id
``SHA-256("p2pshard-msgid:" || topic || 0x00 || data)[:20]``; every other topic keeps libp2p's
``from || seqno``.
"""

from __future__ import annotations

from collections.abc import Mapping

from p2pshard.conformance.model import JSON, AnswerError, Case, Runner, exact, unhex
from p2pshard.conformance.runners.signing import peer_of, secret
from p2pshard.core.gossip import GossipMessage
from p2pshard.core.topics import message_id

NAME = "message_id"
FILES = {"compute": frozenset({"input.json"})}


def generate() -> list[Case]:
    author = peer_of(secret(40))
    other = peer_of(secret(41))
    seq = b"\x00" * 7 + b"\x01"
    rows: list[tuple[str, str, bool, str, bytes, bytes, bytes]] = [
        (
            "content_votes",
            "a p2pshard topic: the id depends on topic and data only",
            True,
            "/p2pshard/minimal/votes/proto",
            b"vote",
            author,
            seq,
        ),
        (
            "content_other_author",
            "same topic and data from another author: the same id",
            True,
            "/p2pshard/minimal/votes/proto",
            b"vote",
            other,
            b"\x09" * 8,
        ),
        ("content_empty_data", "empty data", True, "/p2pshard/minimal/gradients/proto", b"", author, seq),
        (
            "content_binary",
            "data with every byte value",
            True,
            "/p2pshard/minimal/proofs/proto",
            bytes(range(256)),
            author,
            seq,
        ),
        (
            "content_other_network",
            "another network id: another id",
            True,
            "/p2pshard/mainnet/votes/proto",
            b"vote",
            author,
            seq,
        ),
        (
            "content_unknown_name",
            "any topic under /p2pshard/ uses the content id",
            True,
            "/p2pshard/minimal/unknown",
            b"x",
            author,
            seq,
        ),
        (
            "content_no_separator_confusion",
            "topic/data split differs: the 0x00 separator keeps ids apart",
            True,
            "/p2pshard/minimal/votes/protox",
            b"",
            author,
            seq,
        ),
        (
            "default_other_topic",
            "a non-p2pshard topic: from || seqno",
            True,
            "/eth2/beacon_block/ssz",
            b"x",
            author,
            seq,
        ),
        (
            "default_prefix_without_slash",
            "'/p2pshard' without the trailing slash is not a p2pshard topic",
            True,
            "/p2pshard",
            b"x",
            author,
            seq,
        ),
        (
            "default_empty_seqno",
            "a non-p2pshard topic with an empty seqno",
            False,
            "other",
            b"x",
            author,
            b"",
        ),
        (
            "default_unsigned",
            "a non-p2pshard topic without from or seqno: an empty id (the router refuses it)",
            False,
            "other",
            b"x",
            b"",
            b"",
        ),
    ]
    cases = []
    for name, desc, valid, topic, data, source, seqno in rows:
        mid = message_id(GossipMessage(topic, data, source, seqno))
        cases.append(
            Case(
                NAME,
                "compute",
                name,
                desc,
                valid,
                input_json={"topic": topic, "data": data.hex(), "from": source.hex(), "seqno": seqno.hex()},
                expected={"id": mid.hex()},
            )
        )
    return cases


def answer(handler: str, inp: Mapping[str, JSON]) -> Mapping[str, JSON]:
    if handler != "compute":
        raise AnswerError(f"unknown handler {handler!r}")
    msg = GossipMessage(
        str(inp.get("topic")),
        unhex(inp.get("data"), "data"),
        unhex(inp.get("from"), "from"),
        unhex(inp.get("seqno"), "seqno"),
    )
    return {"id": message_id(msg).hex()}


RUNNER = Runner(NAME, FILES, generate, answer, exact)
