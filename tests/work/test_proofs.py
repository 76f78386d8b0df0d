"""Work proof rules: each REJECT and IGNORE, and a seen state that survives a restart."""

from __future__ import annotations

import pytest

from p2pshard.core.gossip import Verdict
from p2pshard.core.wire import topics_pb2
from p2pshard.core.work import SeenDecodeError, SeenEntry, SeenProofs, check_proof, decode_proof
from p2pshard.core.work.seen import MAX_PROOFS_PER_WINDOW, RATE_WINDOW_MS, SEEN_ERRORS

from .helpers import CTX, IDS, NOW, proof, shard


def verdict(data: bytes, seen: SeenProofs | None = None, now: int = NOW) -> tuple[str, str]:
    v, _ = check_proof(data, CTX, seen if seen is not None else SeenProofs(), now)
    return v.result.name, v.reason


def tampered(data: bytes, **changes: object) -> bytes:
    msg = topics_pb2.WorkProof()
    msg.ParseFromString(data)
    for k, v in changes.items():
        setattr(msg, k, v)
    return msg.SerializeToString()


def test_an_honest_proof_is_accepted_once_and_recorded() -> None:
    seen = SeenProofs()
    data = proof()
    assert verdict(data, seen) == ("ACCEPT", "ok")
    decoded = decode_proof(data)
    assert not isinstance(decoded, Verdict) and seen.seen(decoded.proof_id) and len(seen) == 1
    assert verdict(data, seen) == ("IGNORE", "replayed")
    assert verdict(proof(nonce=1), seen) == ("IGNORE", "duplicate_round")
    assert verdict(proof(round_=2), seen) == ("ACCEPT", "ok")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x0a\xff\x01", "undecodable"),
        (proof() + b"\xfa\x07\x90\x10" + b"\x00" * 2048, "oversized"),
        (tampered(proof(), worker=b"\x01" * 39), "bad_worker"),
        (proof(model_hash=b"\x11" * 31), "bad_model_hash"),
        (proof(update_hash=b""), "bad_update_hash"),
        (tampered(proof(), nonce=b"\x00" * 15), "bad_nonce"),
        (proof(tokens=0), "bad_tokens"),
        (proof(batches=0), "bad_batches"),
        (proof(tokens=5, batches=6), "bad_batches"),
        (proof(layers=(3, 3)), "bad_layers"),
        (proof(data_shards=()), "bad_data_shards"),
        (proof(data_shards=(b"\x01" * 32, b"\x01" * 32)), "bad_data_shards"),
        (tampered(proof(), tokens=6_001), "bad_signature"),
        (tampered(proof(key=1), worker=IDS[0]), "bad_signature"),
        (proof(data_shards=(shard(IDS[0], 2),)), "wrong_shards"),
        (proof(tokens=7_501), "implausible_tokens"),
    ],
)
def test_rejections(data: bytes, reason: str) -> None:
    result, got = verdict(data)
    assert got == reason
    assert result == "REJECT"


def test_ignores_depend_on_what_the_node_knows() -> None:
    assert verdict(proof(timestamp_ms=NOW - 300_001)) == ("IGNORE", "outside_clock_window")
    assert verdict(proof(timestamp_ms=NOW + 300_000)) == ("ACCEPT", "ok")
    assert verdict(proof(round_=1000, data_shards=(b"\x00" * 32,))) == ("IGNORE", "unknown_assignment")
    assert verdict(proof(key=4)) == ("IGNORE", "unknown_capacity")
    assert verdict(proof(tokens=7_500)) == ("ACCEPT", "ok")


def test_rate_limit_counts_one_hour_of_accepted_proofs() -> None:
    seen = SeenProofs()
    for r in range(MAX_PROOFS_PER_WINDOW):
        assert verdict(proof(round_=r, timestamp_ms=NOW + r * 1000), seen, NOW + r * 1000)[0] == "ACCEPT"
    late = NOW + MAX_PROOFS_PER_WINDOW * 1000
    assert verdict(proof(round_=500, timestamp_ms=late), seen, late) == ("IGNORE", "rate_limited")
    assert verdict(proof(key=1, round_=500, timestamp_ms=late), seen, late) == ("ACCEPT", "ok")
    # an hour after the first, the first no longer counts
    later = NOW + RATE_WINDOW_MS
    assert verdict(proof(round_=501, timestamp_ms=later), seen, later) == ("ACCEPT", "ok")


def test_a_full_seen_state_refuses_rather_than_forgets() -> None:
    seen = SeenProofs(capacity=2)
    assert verdict(proof(round_=1), seen)[0] == "ACCEPT"
    assert verdict(proof(round_=2), seen)[0] == "ACCEPT"
    assert verdict(proof(round_=3), seen) == ("IGNORE", "seen_full")
    assert verdict(proof(round_=1), seen) == ("IGNORE", "replayed")


def test_seen_state_survives_a_restart_byte_for_byte() -> None:
    seen = SeenProofs()
    for key in range(3):
        for r in range(4):
            assert verdict(proof(key=key, round_=r), seen)[0] == "ACCEPT"
    data = seen.encode()
    restored = SeenProofs.decode(data)
    assert restored.encode() == data and len(restored) == 12
    assert verdict(proof(key=2, round_=3), restored) == ("IGNORE", "replayed")
    assert verdict(proof(key=2, round_=3, nonce=9), restored) == ("IGNORE", "duplicate_round")
    assert restored.count(IDS[1]) == 4


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: b"x" + d[1:], "bad_seen_tag"),
        (lambda d: d[:-1], "truncated"),
        (lambda d: d + b"\x00", "trailing_bytes"),
        (lambda d: d.replace(b"seen:\x02", b"seen:\x82\x00", 1), "malformed_varint"),
    ],
)
def test_seen_decoder_refuses_what_it_did_not_write(mutate: object, reason: str) -> None:
    seen = SeenProofs()
    seen.add(SeenEntry(NOW, b"\x01" * 32, IDS[0], 1))
    seen.add(SeenEntry(NOW + 1, b"\x02" * 32, IDS[1], 1))
    with pytest.raises(SeenDecodeError) as info:
        SeenProofs.decode(mutate(seen.encode()))  # type: ignore[operator]
    assert info.value.reason == reason and reason in SEEN_ERRORS


def test_seen_decoder_checks_order_duplicates_and_capacity() -> None:
    one = SeenProofs()
    one.add(SeenEntry(NOW + 5, b"\x01" * 32, IDS[0], 1))
    two = SeenProofs()
    two.add(SeenEntry(NOW, b"\x01" * 32, IDS[0], 1))
    body = lambda s: s.encode()[len(b"p2pshard-work-seen:") + 1 :]  # noqa: E731
    tag = b"p2pshard-work-seen:\x02"
    with pytest.raises(SeenDecodeError, match="unsorted_entries"):
        SeenProofs.decode(tag + body(one) + body(two))
    with pytest.raises(SeenDecodeError, match="duplicate_entry"):
        SeenProofs.decode(tag + body(two) + body(one))
    with pytest.raises(SeenDecodeError) as info:
        SeenProofs.decode(tag + body(two) + body(one), capacity=1)
    assert info.value.reason == "too_many_entries"
