"""``/p2pshard/status/1.0.0``: a node describes itself (what `p2pshard status` prints)."""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.message import DecodeError
from libp2p.peer.id import ID

from p2pshard.core.wire import status_pb2
from p2pshard.net.reqresp import Code, ProtocolSpec, Reply, ReqRespClient, RequestContext, RpcError

STATUS_PROTOCOL = "/p2pshard/status/1.0.0"
MAX_STATUS_SIZE = 1 << 20

StatusSource = Callable[[ID], status_pb2.StatusResponse]
"""Builds the status for the asking peer (which it leaves out of the peer list)."""


def status_spec(source: StatusSource) -> ProtocolSpec:
    async def handle(ctx: RequestContext, body: bytes) -> Reply:
        try:
            status_pb2.StatusRequest().ParseFromString(body)
        except DecodeError as exc:
            raise RpcError(Code.INVALID_ARGUMENT, "not a StatusRequest") from exc
        return Reply(body=source(ctx.peer_id).SerializeToString())

    return ProtocolSpec(
        STATUS_PROTOCOL, handle, max_request_size=1024, default_deadline_s=5.0, max_concurrent=16
    )


async def fetch_status(client: ReqRespClient, peer: ID, timeout_s: float = 5.0) -> status_pb2.StatusResponse:
    body = await client.call(
        peer,
        STATUS_PROTOCOL,
        status_pb2.StatusRequest().SerializeToString(),
        timeout_s=timeout_s,
        max_response_size=MAX_STATUS_SIZE,
    )
    resp = status_pb2.StatusResponse()
    try:
        resp.ParseFromString(body)
    except DecodeError as exc:
        raise RpcError(Code.INTERNAL, f"{peer} sent an undecodable status") from exc
    return resp
