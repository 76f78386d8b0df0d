"""Protocol ids, per-peer feature levels and the RPC codec.

Outbound RPCs are assembled from pre-encoded pieces: protobuf lets repeated fields and embedded
messages be concatenated, so ``RPC{publish: [m1]}`` ++ ``RPC{control: c}`` is a valid
``RPC{publish: [m1], control: c}``. A message is therefore encoded once (as its ``publish``
field, tag 2) and the same bytes object is reused for every peer it goes to.
"""

from __future__ import annotations

from enum import IntEnum

from google.protobuf.message import DecodeError

from p2pshard.core.wire import rpc_pb2
from p2pshard.core.wire.framing import encode_uvarint

from .errors import UnknownProtocolError

FLOODSUB_ID = "/floodsub/1.0.0"
MESHSUB_V10 = "/meshsub/1.0.0"
MESHSUB_V11 = "/meshsub/1.1.0"
MESHSUB_V12 = "/meshsub/1.2.0"

#: Protocol ids we speak, most preferred first (the order a driver offers them in).
SUPPORTED_PROTOCOLS: tuple[str, ...] = (MESHSUB_V12, MESHSUB_V11, MESHSUB_V10, FLOODSUB_ID)


class PeerKind(IntEnum):
    """What a peer negotiated; ordered so that ``kind >= PeerKind.GOSSIPSUB_V11`` tests features."""

    FLOODSUB = 0
    GOSSIPSUB_V10 = 1
    GOSSIPSUB_V11 = 2
    GOSSIPSUB_V12 = 3

    @property
    def is_gossipsub(self) -> bool:
        """Mesh, GRAFT/PRUNE and IHAVE/IWANT are possible with this peer."""
        return self >= PeerKind.GOSSIPSUB_V10

    @property
    def supports_px(self) -> bool:
        """PRUNE may carry peer exchange and a backoff (v1.1+)."""
        return self >= PeerKind.GOSSIPSUB_V11

    @property
    def supports_idontwant(self) -> bool:
        """IDONTWANT may be sent to this peer (v1.2+)."""
        return self >= PeerKind.GOSSIPSUB_V12


_KINDS = {
    FLOODSUB_ID: PeerKind.FLOODSUB,
    MESHSUB_V10: PeerKind.GOSSIPSUB_V10,
    MESHSUB_V11: PeerKind.GOSSIPSUB_V11,
    MESHSUB_V12: PeerKind.GOSSIPSUB_V12,
}


def peer_kind(protocol: str) -> PeerKind:
    """Map a negotiated protocol id to a :class:`PeerKind` or raise :class:`UnknownProtocolError`."""
    try:
        return _KINDS[protocol]
    except KeyError:
        raise UnknownProtocolError(f"unsupported pubsub protocol {protocol!r}") from None


def field_piece(tag: int, payload: bytes) -> bytes:
    """One length-delimited field (wire type 2) of an ``RPC``: tag byte, length, payload."""
    return _TAG_BYTES[tag] + encode_uvarint(len(payload)) + payload


_TAG_BYTES = {tag: bytes([(tag << 3) | 2]) for tag in (1, 2, 3)}


def publish_piece(message_bytes: bytes) -> bytes:
    """An encoded ``Message`` as an ``RPC.publish`` entry, ready to concatenate into a frame."""
    return field_piece(2, message_bytes)


def subscription_piece(topic: str, subscribe: bool) -> bytes:
    """An ``RPC.subscriptions`` entry."""
    sub = rpc_pb2.RPC.SubOpts(subscribe=subscribe, topicid=topic)
    return field_piece(1, sub.SerializeToString())


def control_piece(control: rpc_pb2.ControlMessage) -> bytes:
    """An ``RPC.control`` entry (several may be concatenated; protobuf merges them)."""
    return field_piece(3, control.SerializeToString())


def decode_rpc(data: bytes) -> rpc_pb2.RPC:
    """Parse one RPC; raises :class:`google.protobuf.message.DecodeError` on malformed input.

    The caller bounds ``len(data)`` before calling; protobuf itself never allocates more than
    the input size for bytes fields.
    """
    rpc = rpc_pb2.RPC()
    rpc.ParseFromString(data)
    return rpc


__all__ = [
    "FLOODSUB_ID",
    "MESHSUB_V10",
    "MESHSUB_V11",
    "MESHSUB_V12",
    "SUPPORTED_PROTOCOLS",
    "DecodeError",
    "PeerKind",
    "control_piece",
    "decode_rpc",
    "encode_uvarint",
    "field_piece",
    "peer_kind",
    "publish_piece",
    "subscription_piece",
]
