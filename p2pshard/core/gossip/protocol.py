"""Protocol ids, per-peer feature levels and the RPC codec.

Outbound RPCs are assembled from pre-encoded pieces: protobuf lets repeated fields and embedded
messages be concatenated, so ``RPC{publish: [m1]}`` ++ ``RPC{control: c}`` is a valid
``RPC{publish: [m1], control: c}``. A message is therefore encoded once (as its ``publish``
field, tag 2) and the same bytes object is reused for every peer it goes to.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Literal

from google.protobuf.message import DecodeError

from p2pshard.core.wire import rpc_pb2
from p2pshard.core.wire.framing import FramingError, decode_uvarint, encode_uvarint

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


# Message fields in the order we write them: what identifies the message first, data last.
_MessageField = Literal["from", "seqno", "topic", "signature", "key"]
_ID_FIRST_FIELDS: tuple[tuple[_MessageField, int], ...] = (
    ("from", 0x0A),
    ("seqno", 0x1A),
    ("topic", 0x22),
    ("signature", 0x2A),
    ("key", 0x32),
)
_PUBLISH_TAG = 0x12  # RPC.publish (field 2, length-delimited); also Message.data
_FROM_TAG, _SEQNO_TAG, _TOPIC_TAG = 0x0A, 0x1A, 0x22


def encode_message(msg: rpc_pb2.Message) -> bytes:
    """Encode ``msg`` with ``from``, ``seqno``, ``topic``, ``signature`` and ``key`` first and
    ``data`` last (only the fields present, as protobuf would).

    Protobuf readers accept fields in any order, and a signature covers the field-number-order
    encoding (re-made by every verifier), so every peer reads the same message. But a receiver
    that looks at a large frame while it is still arriving finds the default message id
    (``from || seqno``) and the topic in its first hundred bytes, and can send IDONTWANT before
    the payload is in (:func:`parse_publish_head`).
    """
    return b"".join(_message_parts(msg))


def encode_publish(msg: rpc_pb2.Message) -> bytes:
    """``publish_piece(encode_message(msg))`` with one copy of the payload instead of two."""
    parts = _message_parts(msg)
    size = sum(len(p) for p in parts)
    return b"".join([bytes((_PUBLISH_TAG,)) + encode_uvarint(size), *parts])


def _message_parts(msg: rpc_pb2.Message) -> list[bytes]:
    parts: list[bytes] = []
    for name, tag in _ID_FIRST_FIELDS:
        if msg.HasField(name):
            value = getattr(msg, name)
            raw = value.encode() if isinstance(value, str) else value
            parts.append(bytes((tag,)) + encode_uvarint(len(raw)))
            parts.append(raw)
    if msg.HasField("data"):
        data = msg.data
        parts.append(bytes((_PUBLISH_TAG,)) + encode_uvarint(len(data)))
        parts.append(data)
    return parts


def parse_publish_head(head: bytes) -> tuple[int, bytes, bytes, str] | None:
    """From the first bytes of an RPC frame whose first entry is a message written id-first
    (:func:`encode_message`): ``(message length, from, seqno, topic)``, else None.

    Only a hint for an early IDONTWANT: the message itself is parsed, checked and verified when
    the whole frame is in. None whenever the head is anything else (control first, ``data``
    before ``seqno`` as go and js write it, a field cut off, a malformed varint).
    """
    try:
        if not head or head[0] != _PUBLISH_TAG:
            return None
        decoded = decode_uvarint(head, 1)
        if decoded is None:
            return None
        size, pos = decoded
        found: dict[int, bytes] = {}
        while pos < len(head) and len(found) < 3:
            tag = head[pos]
            if tag == _PUBLISH_TAG or tag & 0x07 != 2 or tag > 0x7F:
                return None  # data (or something unexpected) before the id fields
            decoded = decode_uvarint(head, pos + 1)
            if decoded is None:
                return None
            length, start = decoded
            end = start + length
            if end > len(head):
                return None
            if tag in (_FROM_TAG, _SEQNO_TAG, _TOPIC_TAG):
                found[tag] = head[start:end]
            pos = end
        if len(found) < 3:
            return None
        return size, found[_FROM_TAG], found[_SEQNO_TAG], found[_TOPIC_TAG].decode()
    except (FramingError, UnicodeDecodeError):
        return None


def is_single_publish(data: bytes) -> bool:
    """Whether an encoded RPC is exactly one ``publish`` entry and nothing else."""
    if not data or data[0] != _PUBLISH_TAG:
        return False
    try:
        decoded = decode_uvarint(data, 1)
    except FramingError:
        return False
    return decoded is not None and decoded[0] + decoded[1] == len(data)


def publish_spans(data: bytes) -> list[tuple[int, int]] | None:
    """Where each ``RPC.publish`` entry (tag, length and message) lies in an encoded RPC, in
    order, so a received message can be forwarded as the bytes it came in (no re-encoding, and
    its field order kept). None if the top level does not scan as expected; the caller then
    re-encodes."""
    spans: list[tuple[int, int]] = []
    pos, end = 0, len(data)
    try:
        while pos < end:
            decoded = decode_uvarint(data, pos)
            if decoded is None:
                return None
            key, after = decoded
            wire = key & 0x07
            if wire == 2:
                decoded = decode_uvarint(data, after)
                if decoded is None:
                    return None
                length, start = decoded
                stop = start + length
                if key == _PUBLISH_TAG:
                    spans.append((pos, stop))
            elif wire == 0:
                decoded = decode_uvarint(data, after)
                if decoded is None:
                    return None
                stop = decoded[1]
            elif wire in (1, 5):
                stop = after + (8 if wire == 1 else 4)
            else:
                return None
            if stop > end:
                return None
            pos = stop
    except FramingError:
        return None
    return spans


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
    "encode_message",
    "encode_publish",
    "encode_uvarint",
    "field_piece",
    "is_single_publish",
    "parse_publish_head",
    "peer_kind",
    "publish_piece",
    "publish_spans",
    "subscription_piece",
]
