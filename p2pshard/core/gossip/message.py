"""The application-facing view of a pubsub message and the validation verdicts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Final

from p2pshard.core.wire import rpc_pb2


class ValidationResult(Enum):
    """Verdict of a validator (libp2p semantics).

    ACCEPT: deliver and forward. IGNORE: drop without penalty (e.g. too old, not interesting).
    REJECT: drop and penalise the peers that sent it (score P4) -- only for provably bad messages.
    """

    ACCEPT = "accept"
    REJECT = "reject"
    IGNORE = "ignore"


@dataclass(frozen=True, slots=True)
class Verdict:
    """A validator's result and its stable reason (snake_case; a metric label and a log word).

    The one verdict type of p2pshard: topic validators, the round rules and the ledger's checks all
    return it, so a rejection reads the same wherever it is counted."""

    result: ValidationResult
    reason: str = "ok"

    @property
    def accepted(self) -> bool:
        return self.result is ValidationResult.ACCEPT


ACCEPT: Final = Verdict(ValidationResult.ACCEPT)


def reject(reason: str) -> Verdict:
    return Verdict(ValidationResult.REJECT, reason)


def ignore(reason: str) -> Verdict:
    return Verdict(ValidationResult.IGNORE, reason)


@dataclass(frozen=True, slots=True)
class GossipMessage:
    """One pubsub message as delivered to the application.

    ``source`` is the ``from`` field (the author's raw peer-id bytes, empty under StrictNoSign);
    it is *not* the peer that forwarded the message to us (see ``Deliver.received_from``).
    """

    topic: str
    data: bytes
    source: bytes = b""
    seqno: bytes = b""
    signature: bytes = b""
    key: bytes = b""

    @classmethod
    def from_pb(cls, msg: rpc_pb2.Message) -> GossipMessage:
        """Build from a parsed wire message (topic must already be checked to be ``str``)."""
        return cls(msg.topic, msg.data, getattr(msg, "from"), msg.seqno, msg.signature, msg.key)


#: A message-id function: maps a message to the id used by the seen cache, IHAVE/IWANT and
#: IDONTWANT. It must be deterministic and identical on every node of a network.
MessageIdFn = Callable[[GossipMessage], bytes]


def default_message_id(msg: GossipMessage) -> bytes:
    """libp2p's default message id: ``from || seqno`` (go: ``string(from) + string(seqno)``)."""
    return msg.source + msg.seqno
