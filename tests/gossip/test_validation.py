"""Synchronous and asynchronous validation: ACCEPT / REJECT / IGNORE semantics."""

from __future__ import annotations

from p2pshard.core.gossip import (
    DropReason,
    GossipMessage,
    PeerScoreParams,
    TopicScoreParams,
    Validate,
    ValidationResult,
)

from .helpers import TOPIC, add_peers, config, ctrl_rpc, delivered, merged, message, msg_rpc, router
from .sim import peer_id_of

SCORED = PeerScoreParams(
    topics={TOPIC: TopicScoreParams(invalid_message_deliveries_weight=-5.0, time_in_mesh_weight=0.0)}
)
AUTHOR = peer_id_of(42)


def _mesh_router(**kw: object):  # type: ignore[no-untyped-def]
    r = router(config(score_params=SCORED, **kw))
    r.subscribe(TOPIC, 0.0)
    a, b = add_peers(r, 2)
    for pid in (a, b):
        r.handle_rpc(pid, ctrl_rpc(graft=[dict(topicID=TOPIC)]), 0.0)
    return r, a, b


def test_async_accept_delivers_and_forwards_later() -> None:
    r, a, b = _mesh_router()
    r.set_async_validation(TOPIC)
    cmds = r.handle_rpc(a, msg_rpc(message(AUTHOR, 1, b"v")), 0.1)
    (val,) = [c for c in cmds if isinstance(c, Validate)]
    assert val.source == a and val.message.data == b"v"
    assert not delivered(cmds) and not merged(cmds, b).publish
    assert r.pending_validations == 1
    # a copy from b while pending is a duplicate, not a second validation
    assert not [c for c in r.handle_rpc(b, msg_rpc(message(AUTHOR, 1, b"v")), 0.2) if isinstance(c, Validate)]
    cmds = r.report_validation(val.msg_id, ValidationResult.ACCEPT, 0.3)
    assert [d.received_from for d in delivered(cmds)] == [a]
    # forwarded to the mesh except the source (b's own copy does not exclude it, as in go)
    assert [m.data for m in merged(cmds, b).publish] == [b"v"]
    assert not merged(cmds, a).publish
    assert r.pending_validations == 0


def test_async_reject_penalises_source_and_duplicate_senders() -> None:
    r, a, b = _mesh_router()
    r.set_async_validation(TOPIC)
    (val,) = [
        c for c in r.handle_rpc(a, msg_rpc(message(AUTHOR, 1, b"evil")), 0.1) if isinstance(c, Validate)
    ]
    r.handle_rpc(b, msg_rpc(message(AUTHOR, 1, b"evil")), 0.2)
    cmds = r.report_validation(val.msg_id, ValidationResult.REJECT, 0.3)
    assert not delivered(cmds)
    assert r.peer_score(a) == -5.0 and r.peer_score(b) == -5.0
    assert r.stats.dropped[DropReason.VALIDATION_REJECT] == 1
    # answering twice, or for an unknown id, is counted and harmless
    assert r.report_validation(val.msg_id, ValidationResult.ACCEPT, 0.4) == []
    assert r.stats.dropped[DropReason.VALIDATION_UNKNOWN] == 1


def test_ignore_does_not_penalise() -> None:
    r, a, _ = _mesh_router()
    r.set_validator(TOPIC, lambda m: ValidationResult.IGNORE)
    cmds = r.handle_rpc(a, msg_rpc(message(AUTHOR, 1, b"old")), 0.1)
    assert not delivered(cmds)
    assert r.peer_score(a) >= 0
    assert r.stats.dropped[DropReason.VALIDATION_IGNORE] == 1
    assert r.seen(AUTHOR + (1).to_bytes(8, "big"))  # not revalidated on the next copy


def test_validator_exception_is_ignore_not_reject() -> None:
    r, a, _ = _mesh_router()

    def broken(m: GossipMessage) -> ValidationResult:
        raise RuntimeError("bug")

    r.set_validator(TOPIC, broken)
    r.handle_rpc(a, msg_rpc(message(AUTHOR, 1, b"x")), 0.1)
    assert r.stats.dropped[DropReason.VALIDATION_ERROR] == 1
    assert r.peer_score(a) >= 0


def test_async_timeout_becomes_ignore() -> None:
    r, a, _ = _mesh_router(validation_timeout=2.0)
    r.set_async_validation(TOPIC)
    r.handle_rpc(a, msg_rpc(message(AUTHOR, 1, b"slow")), 0.1)
    r.heartbeat(1.0)
    assert r.pending_validations == 1
    r.heartbeat(3.0)
    assert r.pending_validations == 0
    assert r.stats.dropped[DropReason.VALIDATION_TIMEOUT] == 1


def test_pending_validations_are_bounded() -> None:
    r, a, _ = _mesh_router(max_pending_validations=2)
    r.set_async_validation(TOPIC)
    r.handle_rpc(a, msg_rpc(*[message(AUTHOR, i, b"m") for i in range(5)]), 0.1)
    assert r.pending_validations == 2
    assert r.stats.dropped[DropReason.VALIDATION_QUEUE_FULL] == 3


def test_own_publish_is_delivered_locally_once() -> None:
    r, a, b = _mesh_router()
    mid, cmds = r.publish(TOPIC, b"mine", 0.1)
    assert [(d.msg_id, d.received_from) for d in delivered(cmds)] == [(mid, None)]
    # our message echoed back by a peer is a duplicate
    echo = merged(cmds, a).SerializeToString()
    assert not delivered(r.handle_rpc(a, echo, 0.2))
    assert {c.peer_id for c in cmds if hasattr(c, "data")} == {a, b}
