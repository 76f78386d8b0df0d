"""Commands the router returns for the driver to carry out (frozen, in order).

The router never does I/O; every input method returns ``list[Command]``. The driver handles
them in list order: ``SendRpc`` writes a frame to a peer, ``Deliver`` hands a message to local
subscribers, ``Validate`` starts an asynchronous validation (answer later with
``report_validation``), ``Connect`` asks to dial a peer (peer exchange / direct peers),
``Rejected`` reports a peer's misbehaviour for logging (it is already counted and scored).
"""

from __future__ import annotations

from dataclasses import dataclass

from .message import GossipMessage
from .stats import DropReason


@dataclass(frozen=True, slots=True)
class SendRpc:
    """Write ``data`` (one encoded ``RPC``, without length prefix) to ``peer_id``.

    The driver adds the uvarint length prefix. Frames never exceed the config's
    ``max_rpc_size``; a large batch is split into several ``SendRpc``. ``message_count`` is the
    number of ``publish`` entries in the frame (for metrics and backpressure accounting).
    """

    peer_id: bytes
    data: bytes
    message_count: int = 0


@dataclass(frozen=True, slots=True)
class Deliver:
    """Hand ``message`` to the local subscribers of ``topic``; emitted once per message id.

    ``received_from`` is the peer that first delivered it, ``None`` for our own publish.
    """

    topic: str
    msg_id: bytes
    message: GossipMessage
    received_from: bytes | None


@dataclass(frozen=True, slots=True)
class Validate:
    """Validate ``message`` asynchronously; call ``router.report_validation(msg_id, result, now)``.

    Emitted only for topics registered with ``set_async_validation(topic, True)``. The router
    treats a validation not reported within ``config.validation_timeout`` as IGNORE.
    """

    msg_id: bytes
    message: GossipMessage
    source: bytes


@dataclass(frozen=True, slots=True)
class Connect:
    """Dial ``peer_id`` (learned through peer exchange, or a direct peer that is not connected).

    ``signed_peer_record`` is the raw signed envelope from PRUNE PX, if any; the driver must
    verify it (core holds no key types) before using its addresses.
    """

    peer_id: bytes
    signed_peer_record: bytes | None
    reason: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """A peer sent something invalid; already counted in ``stats`` and scored. For logs."""

    peer_id: bytes
    reason: DropReason
    detail: str = ""


Command = SendRpc | Deliver | Validate | Connect | Rejected
