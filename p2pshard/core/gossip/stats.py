"""Counters of everything the router decides, so that no discard is silent.

Every place in the router that drops, ignores or refuses something increments
``RouterStats.dropped[reason]`` with a :class:`DropReason`; ordinary events (messages
delivered, forwarded, RPCs sent) go to ``RouterStats.events``. The driver exports both.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum


class DropReason(StrEnum):
    """Why something a peer sent (or we were asked to do) was not acted upon."""

    # whole RPCs
    RPC_TOO_LARGE = "rpc_too_large"
    RPC_MALFORMED = "rpc_malformed"
    RPC_GRAYLISTED = "rpc_graylisted"
    RPC_UNKNOWN_PEER = "rpc_unknown_peer"
    # subscriptions
    SUBSCRIPTION_INVALID_TOPIC = "subscription_invalid_topic"
    SUBSCRIPTION_LIMIT = "subscription_limit"
    # messages
    MESSAGE_TOO_LARGE = "message_too_large"
    MESSAGE_INVALID_TOPIC = "message_invalid_topic"
    MESSAGE_UNKNOWN_TOPIC = "message_unknown_topic"
    MESSAGE_NOT_SUBSCRIBED = "message_not_subscribed"
    MESSAGE_DUPLICATE = "message_duplicate"
    MESSAGE_SELF_ORIGIN = "message_self_origin"
    MESSAGE_MISSING_SIGNATURE = "message_missing_signature"
    MESSAGE_INVALID_SIGNATURE = "message_invalid_signature"
    MESSAGE_UNEXPECTED_SIGNATURE = "message_unexpected_signature"
    MESSAGE_UNEXPECTED_AUTHOR = "message_unexpected_author"
    MESSAGE_BAD_ID = "message_bad_id"
    MESSAGE_TOO_MANY_IN_RPC = "message_too_many_in_rpc"
    VALIDATION_REJECT = "validation_reject"
    VALIDATION_IGNORE = "validation_ignore"
    VALIDATION_ERROR = "validation_error"
    VALIDATION_TIMEOUT = "validation_timeout"
    VALIDATION_QUEUE_FULL = "validation_queue_full"
    VALIDATION_UNKNOWN = "validation_unknown"
    # control
    CONTROL_FROM_FLOODSUB = "control_from_floodsub"
    IHAVE_LOW_SCORE = "ihave_low_score"
    IHAVE_TOO_MANY = "ihave_too_many"
    IHAVE_UNKNOWN_TOPIC = "ihave_unknown_topic"
    IHAVE_IDS_OVER_LIMIT = "ihave_ids_over_limit"
    IWANT_LOW_SCORE = "iwant_low_score"
    IWANT_UNKNOWN_MESSAGE = "iwant_unknown_message"
    IWANT_RETRANSMISSION_LIMIT = "iwant_retransmission_limit"
    IWANT_OVER_LIMIT = "iwant_over_limit"
    GRAFT_UNKNOWN_TOPIC = "graft_unknown_topic"
    GRAFT_DIRECT_PEER = "graft_direct_peer"
    GRAFT_BACKOFF = "graft_backoff"
    GRAFT_NEGATIVE_SCORE = "graft_negative_score"
    GRAFT_MESH_FULL = "graft_mesh_full"
    PRUNE_PX_LOW_SCORE = "prune_px_low_score"
    PRUNE_PX_OVER_LIMIT = "prune_px_over_limit"
    IDONTWANT_OVER_LIMIT = "idontwant_over_limit"
    # outbound
    SEND_IDONTWANT_HONORED = "send_idontwant_honored"
    SEND_MESSAGE_TOO_LARGE = "send_message_too_large"
    PUBLISH_NO_PEERS = "publish_no_peers"
    # cache
    BROKEN_PROMISE = "broken_promise"


@dataclass(slots=True)
class RouterStats:
    """Counters owned by one router. ``dropped`` is keyed by :class:`DropReason`."""

    dropped: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)

    def snapshot(self) -> dict[str, dict[str, int]]:
        """A plain copy for logging/metrics export."""
        return {"dropped": dict(self.dropped), "events": dict(self.events)}
